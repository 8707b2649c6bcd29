"""Our model against transformers' built-in BigBirdPegasus, same weights, fp32."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from tiny import HEADS, max_abs_diff, random_inputs, twin_models

TOL = 1e-5


def head_inputs(head, input_ids, attention_mask):
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask)
    if head != "ForCausalLM":
        inputs["decoder_input_ids"] = input_ids[:, :11]
    if head == "ForSequenceClassification":
        del inputs["decoder_input_ids"]  # the </s> positions of input_ids index the decoder states
        inputs["input_ids"] = input_ids.clone()
        inputs["input_ids"][:, -1] = 1  # every row ends with </s>
        inputs["attention_mask"] = torch.ones_like(input_ids)
    return inputs


def head_labels(head, input_ids):
    if head in ("ForConditionalGeneration", "ForCausalLM"):
        return dict(labels=(input_ids[:, :11] if head == "ForConditionalGeneration" else input_ids).contiguous())
    if head == "ForSequenceClassification":
        return dict(labels=torch.tensor([0, 2]))
    if head == "ForQuestionAnswering":
        return dict(start_positions=torch.tensor([1, 3]), end_positions=torch.tensor([4, 7]))
    return {}


def compared_outputs(output):
    names = ("loss", "logits", "last_hidden_state", "start_logits", "end_logits", "encoder_last_hidden_state")
    return {name: getattr(output, name) for name in names if getattr(output, name, None) is not None}


@pytest.mark.parametrize("head", sorted(HEADS))
def test_original_full_every_head(head):
    model, builtin = twin_models(head, attention_type="original_full", num_labels=3)
    input_ids, attention_mask = random_inputs(length=40)
    inputs = head_inputs(head, input_ids, attention_mask)
    if head == "ForCausalLM":
        inputs.pop("attention_mask")
    labels = head_labels(head, inputs["input_ids"])
    with torch.no_grad():
        expected = compared_outputs(builtin(**inputs, **labels))
        actual = compared_outputs(model(**inputs, **labels))
    assert expected.keys() == actual.keys() and len(actual) >= 2
    for name in expected:
        assert max_abs_diff(actual[name], expected[name]) <= TOL, name


@pytest.mark.parametrize("length", [1024, 4096, 700, 640])
def test_block_sparse_matches_builtin_seeded_pattern(length):
    # The built-in draws the original random blocks only in train mode (dropouts are 0 here); at 1024 and 4096
    # its 4096-token grid equals the original's because max_position_embeddings is 4096. 700 is padded to 704.
    model, builtin = twin_models(attention_type="block_sparse")
    batch = 2 if length < 4096 else 1
    input_ids, attention_mask = random_inputs(batch=batch, length=length, pad_tail=123 if batch == 2 else 0)
    decoder_input_ids = input_ids[:, :9]
    with torch.no_grad():
        expected = builtin(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
        actual = model(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids)
    assert actual.encoder_last_hidden_state.shape == (batch, length, 32)
    assert max_abs_diff(actual.encoder_last_hidden_state, expected.encoder_last_hidden_state) <= TOL
    assert max_abs_diff(actual.logits, expected.logits) <= TOL


@pytest.mark.parametrize("attention_type, length", [("original_full", 60), ("block_sparse", 1024)])
@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_ids_identical(attention_type, length, num_beams):
    model, builtin = twin_models(attention_type=attention_type)
    input_ids, attention_mask = random_inputs(length=length, pad_tail=50)
    settings = dict(max_new_tokens=12, num_beams=num_beams, do_sample=False, min_length=0)
    with torch.no_grad():
        expected = builtin.generate(input_ids, attention_mask=attention_mask, **settings)
        actual = model.generate(input_ids, attention_mask=attention_mask, **settings)
    assert actual.shape[1] > 5
    assert torch.equal(actual, expected)


def test_attentions_and_hidden_states_match_builtin():
    model, builtin = twin_models(attention_type="original_full")
    input_ids, attention_mask = random_inputs(length=30)
    kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :7],
                  output_attentions=True, output_hidden_states=True)
    with torch.no_grad():
        expected, actual = builtin(**kwargs), model(**kwargs)
    for name in ("encoder_attentions", "decoder_attentions", "cross_attentions", "encoder_hidden_states",
                 "decoder_hidden_states"):
        assert len(getattr(actual, name)) == len(getattr(expected, name)) > 0, name
        for a, e in zip(getattr(actual, name), getattr(expected, name)):
            assert a.shape == e.shape and max_abs_diff(a, e) <= TOL, name


def test_block_sparse_attention_probabilities_cover_the_pattern():
    model, builtin = twin_models(attention_type="block_sparse")
    input_ids, attention_mask = random_inputs(batch=1, length=1024, pad_tail=0)
    with torch.no_grad():
        actual = model.model.encoder(input_ids, attention_mask, output_attentions=True)
    probs = actual.attentions[0]
    assert probs.shape == (1, 4, 1024, 1024)
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 4, 1024))
    # Middle query block 10 sees at most 5 + 2 blocks of 16 keys: most of the row is exactly zero.
    row = probs[0, 0, 10 * 16]
    assert 3 * 16 <= int((row > 0).sum()) <= 7 * 16


@pytest.mark.parametrize("length", [1024, 4096])
@pytest.mark.parametrize("padded", [False, True])
def test_block_sparse_gradients_match_builtin(length, padded):
    # Training: the built-in in train mode (its original random blocks; dropouts are 0) against ours, every
    # parameter. Our block-sparse backward reaches the encoder and the embeddings; the decoder's gradients depend
    # on the kernel of its cross-attention over all encoder tokens: torch's fused CPU kernel rounds them to ~1e-5
    # (its exp is approximate), so the whole model is compared with the exact kernel as well.
    model, builtin = twin_models(attention_type="block_sparse")
    model.train()
    batch = 2 if length < 4096 else 1
    input_ids, attention_mask = random_inputs(batch=batch, length=length, pad_tail=0)
    if padded:
        input_ids[-1, -123:], attention_mask[-1, -123:] = 0, 0
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids[:, :11].contiguous())
    expected, actual = parameter_gradients(builtin, inputs), parameter_gradients(model, inputs)
    with sdpa_kernel(SDPBackend.MATH):
        exact = parameter_gradients(model, inputs)
    assert expected.keys() == actual.keys() == exact.keys() and len(expected) > 60
    encoder_side = [name for name in expected if name.startswith(("model.encoder.", "model.shared."))]
    assert len(encoder_side) > 20
    for name in expected:
        assert relative_difference(exact[name], expected[name]) <= TOL, name
    for name in encoder_side:
        assert relative_difference(actual[name], expected[name]) <= TOL, name


def parameter_gradients(model, inputs):
    model.zero_grad(set_to_none=True)
    model(**inputs).loss.backward()
    return {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}


def relative_difference(actual, expected):
    return max_abs_diff(actual, expected) / expected.abs().max().item()
