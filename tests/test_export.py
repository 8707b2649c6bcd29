"""Padding to the original code's grid (`pad_to_multiple_of=1024`) and exporting with a dynamic batch and length:
torch.export of the encoder and of the whole model, and transformers' own exporter."""

import pytest
import torch
from torch.export import Dim

from bigbird_pegasus_hub.plugin import modeling_bigbird_pegasus as ours
from tiny import max_abs_diff, random_inputs, tiny_config

GRID = 1024


def grid_model(**overrides):
    torch.manual_seed(0)
    config = tiny_config(init_std=1.0, pad_to_multiple_of=GRID, **overrides)
    return ours.BigBirdPegasusForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def model():
    return grid_model()


def encode(model, input_ids, attention_mask):
    with torch.no_grad():
        return model.get_encoder()(input_ids, attention_mask).last_hidden_state


def document_alone_and_batched(model):
    """The encoder output of a 500-token document alone, and batched with a 1500-token one."""
    document, _ = random_inputs(batch=1, length=500, seed=3)
    longer, _ = random_inputs(batch=1, length=1500, seed=4)
    batch = torch.cat([torch.nn.functional.pad(document, (0, 1000)), longer])
    mask = torch.ones_like(batch)
    mask[0, 500:] = 0
    return encode(model, document, torch.ones_like(document)), encode(model, batch, mask)[:1, :500]


def test_grid_padding_makes_a_documents_output_independent_of_its_batch(model):
    alone, batched = document_alone_and_batched(model)
    assert max_abs_diff(alone, batched) < 1e-5
    unpadded = ours.BigBirdPegasusForConditionalGeneration(tiny_config(init_std=1.0)).eval()
    unpadded.load_state_dict(model.state_dict())
    alone, batched = document_alone_and_batched(unpadded)
    assert max_abs_diff(alone, batched) > 1e-3  # without it: the random blocks of another length


def test_grid_padding_is_the_original_codes_padding(model):
    """The original code pads to a fixed length (its max_encoder_length): a 500-token document padded to 1024 by
    hand, as the original would see it, gives the same output (even though 500 tokens alone would be short
    enough for full attention without the option)."""
    document, _ = random_inputs(batch=1, length=500, seed=3)
    padded = torch.nn.functional.pad(document, (0, GRID - 500))
    mask = torch.ones_like(padded)
    mask[:, 500:] = 0
    plain = ours.BigBirdPegasusForConditionalGeneration(tiny_config(init_std=1.0)).eval()
    plain.load_state_dict(model.state_dict())
    expected = encode(plain, padded, mask)[:, :500]
    assert max_abs_diff(encode(model, document, torch.ones_like(document)), expected) < 1e-5


@pytest.mark.parametrize("multiple", [1000, 0, True])
def test_pad_to_multiple_of_must_be_a_multiple_of_block_size(multiple):
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        tiny_config(pad_to_multiple_of=multiple)


# (length, batch, padded tail of the last row): inside one grid step, at its edge, across steps, the longest.
EXPORT_CASES = [(700, 2, 37), (1024, 1, 0), (1500, 3, 200), (4096, 1, 0), (90, 2, 20)]
BATCH, LENGTH = Dim("batch", min=1, max=8), Dim("length", min=1, max=4096)
ENCODER_SHAPES = {"input_ids": {0: BATCH, 1: LENGTH}, "attention_mask": {0: BATCH, 1: LENGTH}}


def check_encoder_program(program, model):
    for length, batch, pad_tail in EXPORT_CASES:
        input_ids, attention_mask = random_inputs(batch=batch, length=length, pad_tail=pad_tail)
        with torch.no_grad():
            actual = program(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        assert max_abs_diff(actual, encode(model, input_ids, attention_mask)) < 1e-5, (length, batch)


def test_encoder_exports_with_dynamic_batch_and_length(model):
    input_ids, attention_mask = random_inputs(length=700)
    program = torch.export.export(model.get_encoder(modality=None), (),
                                  {"input_ids": input_ids, "attention_mask": attention_mask},
                                  dynamic_shapes=ENCODER_SHAPES)
    check_encoder_program(program.module(), model)
    # One constant table: no random-block operator in the graph (so ONNX can express it too).
    assert not any("bigbird_pegasus" in str(node.target) for node in program.graph.nodes)


def test_whole_model_exports_with_dynamic_batch_and_lengths(model):
    input_ids, attention_mask = random_inputs(length=700)
    decoder_length = Dim("decoder_length", min=1, max=256)
    example = {"input_ids": input_ids, "attention_mask": attention_mask, "decoder_input_ids": input_ids[:, :5],
               "use_cache": False}
    shapes = {**ENCODER_SHAPES, "decoder_input_ids": {0: BATCH, 1: decoder_length}, "use_cache": None}
    program = torch.export.export(model, (), example, dynamic_shapes=shapes).module()
    for (length, batch, pad_tail), decoder_tokens in zip(EXPORT_CASES, (5, 1, 9, 2, 3)):
        input_ids, attention_mask = random_inputs(batch=batch, length=length, pad_tail=pad_tail)
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                      decoder_input_ids=torch.randint(3, 99, (batch, decoder_tokens)))
        with torch.no_grad():
            assert max_abs_diff(program(**inputs).logits, model(**inputs).logits) < 1e-5, (length, batch)


@pytest.mark.skipif(not ours.TRANSFORMERS_V5, reason="transformers' exporters are new in transformers 5")
def test_transformers_own_exporter(model):
    from transformers.exporters import DynamoConfig, DynamoExporter

    input_ids, attention_mask = random_inputs(length=700)
    exported = DynamoExporter().export(model.get_encoder(), {"input_ids": input_ids, "attention_mask": attention_mask},
                                       DynamoConfig(dynamic_shapes=ENCODER_SHAPES))
    check_encoder_program(exported.program.module(), model)
