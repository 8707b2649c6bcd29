"""Converting Google's original TensorFlow checkpoints: outputs of the original code reproduced, the name table,
the hyperparameters, optimizer state, and broken or inconsistent inputs (one clear error, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM

from bigbird_pegasus_hub.conversion.presets import PRESETS
from bigbird_pegasus_hub.conversion.tf_checkpoint import TFCheckpoint, TFCheckpointError
from bigbird_pegasus_hub.conversion.tf_to_plugin import (
    ConversionError,
    config_from_params,
    convert_tf_checkpoint,
    generation_config_from_params,
    is_optimizer_state,
    original_names,
    tf_checkpoint_to_state_dict,
)
from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
from tf_bundle_writer import write_bundle

FIXTURES = Path(__file__).parent / "fixtures" / "tf_reference"
REFERENCE = json.loads((FIXTURES / "config.json").read_text())
MODEL_PREFIX = FIXTURES / "model.ckpt-0"
TRAIN_STEP_PREFIX = FIXTURES / "train_step_ckpt" / "model.ckpt-1"
TRAIN_STEP_PARAMS = FIXTURES / "train_step_ckpt" / "config.json"
EOS = 1
# The README's tolerances for a port that uses the original LayerNorm epsilon (1e-12).
ENCODER_TOLERANCE = 5e-5
LOGITS_TOLERANCE = 2e-5


def variant_params(variant: str) -> dict:
    return {**REFERENCE["base_params"], **REFERENCE["variants"][variant]["overrides"]}


def fixture_tensors(prefix: Path = MODEL_PREFIX) -> dict[str, torch.Tensor]:
    return dict(TFCheckpoint(prefix).items())


def converted_model(prefix: Path, params: dict) -> BigBirdPegasusForConditionalGeneration:
    config = config_from_params(params)
    model = BigBirdPegasusForConditionalGeneration(config)
    model.load_state_dict(tf_checkpoint_to_state_dict(prefix, config), strict=True)
    return model.eval()


# -- the original code's outputs -----------------------------------------------------------------------------


def assert_matches_reference(model, reference) -> None:
    """Encoder output at non-pad positions, teacher-forced logits at target positions, greedy ids up to EOS."""
    input_ids = torch.from_numpy(reference["input_ids"]).long()
    attention_mask = (input_ids > 0).long()  # the original's encoder mask
    targets = reference["target_ids"]
    with torch.no_grad():
        output = model(input_ids=input_ids, attention_mask=attention_mask,
                       decoder_input_ids=torch.from_numpy(reference["decoder_input_ids"]).long())
        generated = model.generate(input_ids, attention_mask=attention_mask, num_beams=1, do_sample=False,
                                   max_length=targets.shape[1] + 1)  # + the start token
    encoder_diff = np.abs(output.encoder_last_hidden_state.numpy() - reference["encoder_output"])
    assert encoder_diff[reference["input_ids"] > 0].max() <= ENCODER_TOLERANCE
    for row, target in enumerate(targets):
        # The original zeroes the decoder input from the EOS position on; earlier logits are comparable.
        length = np.count_nonzero(target)
        logits_diff = np.abs(output.logits[row, :length].numpy() - reference["logits"][row, :length])
        assert logits_diff.max() <= LOGITS_TOLERANCE, row
        # The original keeps writing after a row's EOS until every row has one; generate() pads instead.
        expected = reference["greedy_pred_ids"][row].tolist()
        expected = expected[: expected.index(EOS) + 1] if EOS in expected else expected
        assert generated[row, 1 : len(expected) + 1].tolist() == expected, row


@pytest.mark.parametrize("variant", sorted(REFERENCE["variants"]))
def test_converted_model_reproduces_the_original_code(variant):
    model = converted_model(MODEL_PREFIX, variant_params(variant))
    reference = np.load(FIXTURES / f"ref_{variant}.npz")
    assert reference["input_ids"].shape[1] == REFERENCE["variants"][variant]["max_encoder_length"]
    assert_matches_reference(model, reference)


def test_converted_repo_loads_through_auto_class_and_reproduces_the_original_code(tmp_path, reference_tokenizer_dir):
    variant = "block_sparse_1024_gelu"
    out = convert_tf_checkpoint(MODEL_PREFIX, tmp_path / "repo", params=variant_params(variant),
                                spm_model=reference_tokenizer_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(model).__name__ == "BigBirdPegasusForConditionalGeneration"
    assert (model.config.layer_norm_eps, model.config.activation_function) == (1e-12, "gelu_new")
    assert_matches_reference(model, np.load(FIXTURES / f"ref_{variant}.npz"))
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["max_length"], generation["decoder_start_token_id"], generation["eos_token_id"]) == (33, 2, 1)


# -- names, values and shapes --------------------------------------------------------------------------------

# The mapping spelled out independently of the converter's table, one row per kind of variable.
NAME_EXAMPLES = {
    "pegasus/embeddings/word_embeddings": ("model.shared.weight",),
    "pegasus/embeddings/position_embeddings": (
        "model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"),
    "pegasus/encoder/LayerNorm/gamma": ("model.encoder.layernorm_embedding.weight",),
    "pegasus/decoder/LayerNorm/beta": ("model.decoder.layernorm_embedding.bias",),
    "pegasus/encoder/layer_1/attention/self/query/kernel": ("model.encoder.layers.1.self_attn.self.query.weight",),
    "pegasus/encoder/layer_0/attention/self/value/kernel": ("model.encoder.layers.0.self_attn.self.value.weight",),
    "pegasus/encoder/layer_1/attention/output/dense/kernel": ("model.encoder.layers.1.self_attn.output.weight",),
    "pegasus/encoder/layer_0/attention/self/LayerNorm/gamma": ("model.encoder.layers.0.self_attn_layer_norm.weight",),
    "pegasus/encoder/layer_1/intermediate/dense/bias": ("model.encoder.layers.1.fc1.bias",),
    "pegasus/encoder/layer_0/output/dense/kernel": ("model.encoder.layers.0.fc2.weight",),
    "pegasus/encoder/layer_1/intermediate/LayerNorm/beta": ("model.encoder.layers.1.final_layer_norm.bias",),
    "pegasus/decoder/layer_0/attention/self/key/kernel": ("model.decoder.layers.0.self_attn.k_proj.weight",),
    "pegasus/decoder/layer_1/attention/output/dense/kernel": ("model.decoder.layers.1.self_attn.out_proj.weight",),
    "pegasus/decoder/layer_1/attention/self/LayerNorm/beta": ("model.decoder.layers.1.self_attn_layer_norm.bias",),
    "pegasus/decoder/layer_0/attention/encdec/query/kernel": ("model.decoder.layers.0.encoder_attn.q_proj.weight",),
    "pegasus/decoder/layer_1/attention/encdec/value/kernel": ("model.decoder.layers.1.encoder_attn.v_proj.weight",),
    "pegasus/decoder/layer_0/attention/encdec_output/dense/kernel": (
        "model.decoder.layers.0.encoder_attn.out_proj.weight",),
    "pegasus/decoder/layer_1/attention/encdec/LayerNorm/gamma": (
        "model.decoder.layers.1.encoder_attn_layer_norm.weight",),
    "pegasus/decoder/layer_0/intermediate/LayerNorm/gamma": ("model.decoder.layers.0.final_layer_norm.weight",),
    "pegasus/decoder/layer_1/output/dense/bias": ("model.decoder.layers.1.fc2.bias",),
}


def test_name_table_covers_exactly_the_fixture_variables_as_documented():
    names = original_names(config_from_params(REFERENCE["base_params"]))
    assert set(names) == set(TFCheckpoint(MODEL_PREFIX).keys()) - {"global_step"}
    for original, ours in NAME_EXAMPLES.items():
        assert names[original] == ours, original


def test_kernels_are_transposed_vectors_copied_and_embeddings_tied():
    config = config_from_params(REFERENCE["base_params"])
    state_dict = tf_checkpoint_to_state_dict(MODEL_PREFIX, config)
    ckpt = TFCheckpoint(MODEL_PREFIX)
    kernel = ckpt.read("pegasus/encoder/layer_0/intermediate/dense/kernel")
    assert kernel.shape == (64, 128)
    assert torch.equal(state_dict["model.encoder.layers.0.fc1.weight"], kernel.T)
    assert torch.equal(state_dict["model.decoder.layers.1.encoder_attn_layer_norm.weight"],
                       ckpt.read("pegasus/decoder/layer_1/attention/encdec/LayerNorm/gamma"))
    positions = ckpt.read("pegasus/embeddings/position_embeddings")
    encoder_positions = state_dict["model.encoder.embed_positions.weight"]
    decoder_positions = state_dict["model.decoder.embed_positions.weight"]
    assert torch.equal(encoder_positions, positions) and torch.equal(decoder_positions, positions)
    # Two parameters of their own (not tied in the model), so they must not share memory.
    assert encoder_positions.data_ptr() != decoder_positions.data_ptr()
    shared = state_dict["model.shared.weight"]
    assert torch.equal(shared, ckpt.read("pegasus/embeddings/word_embeddings"))
    for tied in ("model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"):
        assert state_dict[tied] is shared
    assert torch.equal(state_dict["final_logits_bias"], torch.zeros(1, 320))


def with_attention_biases(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fixture plus a distinct bias next to every attention kernel, as a use_bias=True run saves them."""
    generator = torch.Generator().manual_seed(0)
    biases = {
        name.replace("/kernel", "/bias"): torch.randn(tensor.shape[1], generator=generator)
        for name, tensor in tensors.items()
        if "/attention/" in name and name.endswith("/kernel")
    }
    return {**tensors, **biases}


def test_use_bias_checkpoint_keeps_its_attention_biases(tmp_path):
    tensors = with_attention_biases(fixture_tensors())
    write_bundle(tmp_path / "model.ckpt-0", tensors)
    config = config_from_params(REFERENCE["base_params"], overrides={"use_bias": True})
    state_dict = tf_checkpoint_to_state_dict(tmp_path / "model.ckpt-0", config)
    expected = {
        "pegasus/encoder/layer_1/attention/self/key/bias": "model.encoder.layers.1.self_attn.self.key.bias",
        "pegasus/encoder/layer_0/attention/output/dense/bias": "model.encoder.layers.0.self_attn.output.bias",
        "pegasus/decoder/layer_0/attention/self/query/bias": "model.decoder.layers.0.self_attn.q_proj.bias",
        "pegasus/decoder/layer_1/attention/output/dense/bias": "model.decoder.layers.1.self_attn.out_proj.bias",
        "pegasus/decoder/layer_1/attention/encdec/value/bias": "model.decoder.layers.1.encoder_attn.v_proj.bias",
        "pegasus/decoder/layer_0/attention/encdec_output/dense/bias":
            "model.decoder.layers.0.encoder_attn.out_proj.bias",
    }
    for original, ours in expected.items():
        assert torch.equal(state_dict[ours], tensors[original]), original
    assert sum(".bias" in name and "_attn." in name and "norm" not in name for name in state_dict) == 2 * 4 + 2 * 8
    model = BigBirdPegasusForConditionalGeneration(config)
    model.load_state_dict(state_dict, strict=True)


# -- hyperparameters -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("hidden_act", "activation_function"), [("relu", "relu"), ("gelu", "gelu_new")])
def test_config_from_the_original_hyperparameters(hidden_act, activation_function):
    config = config_from_params({**REFERENCE["base_params"], "hidden_act": hidden_act})
    expected = {
        "vocab_size": 320, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128,
        "max_position_embeddings": 1024, "attention_type": "block_sparse", "block_size": 16, "num_random_blocks": 2,
        "use_bias": False, "scale_embedding": True, "activation_function": activation_function,
        "layer_norm_eps": 1e-12, "dropout": 0.1, "attention_dropout": 0.1, "pad_token_id": 0, "eos_token_id": 1,
        "bos_token_id": 2, "decoder_start_token_id": 2,
    }
    assert {name: getattr(config, name) for name in expected} == expected


def test_params_file_preset_and_overrides_merge_in_that_order(tmp_path):
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps({"num_hidden_layers": 4, "block_size": 32}))
    config = config_from_params(params_file, preset="google/bigbird-pegasus-large-arxiv", overrides={"block_size": 16})
    assert (config.encoder_layers, config.block_size, config.d_model) == (4, 16, 1024)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_describe_the_released_models(preset):
    config = config_from_params(preset=preset)
    assert (config.vocab_size, config.d_model, config.encoder_layers, config.decoder_layers) == (96103, 1024, 16, 16)
    assert (config.encoder_attention_heads, config.encoder_ffn_dim, config.max_position_embeddings) == (16, 4096, 4096)
    assert (config.block_size, config.num_random_blocks, config.attention_type) == (64, 3, "block_sparse")
    assert (config.activation_function, config.use_bias, config.scale_embedding) == ("gelu_new", False, True)
    generation = generation_config_from_params(PRESETS[preset])
    assert (generation.num_beams, generation.length_penalty, generation.max_length) == (5, 0.8, 257)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"overrides": {"norm_type": "postnorm"}}, r"norm_type='postnorm' is not supported"),
        ({"overrides": {"couple_encoder_decoder": True}}, r"couple_encoder_decoder=True is not supported"),
        ({"overrides": {"hidden_act": "swish"}}, r"hidden_act='swish' is not supported; use one of gelu, relu"),
        ({"overrides": {"attention_type": "simulated_sparse"}}, r"invalid model: attention_type must be one of"),
        ({"overrides": {"max_encoder_length": 2048}}, r"max_encoder_length=2048 exceeds max_position_embeddings=1024"),
        ({"overrides": {"hiden_size": 64}}, r"unknown hyperparameter override\(s\) hiden_size"),
        ({"params": {"hidden_size": 64}},
         r"lack vocab_size, num_hidden_layers, num_attention_heads, .*norm_type, couple_encoder_decoder:"),
        ({"params": None, "preset": "bigbird-roberta-base"}, r"unknown preset 'bigbird-roberta-base'; choose one of"),
    ],
)
def test_unusable_hyperparameters_are_refused(arguments, message):
    arguments = {"params": REFERENCE["base_params"], **arguments}
    with pytest.raises(ConversionError, match=message):
        config_from_params(arguments.pop("params"), **arguments)


def test_params_file_that_is_not_json_is_refused(tmp_path):
    (tmp_path / "params.json").write_text("hidden_size: 64")
    with pytest.raises(ConversionError, match=r"params.json is not valid JSON"):
        config_from_params(tmp_path / "params.json")


# -- training checkpoints ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "skipped"),
    [
        ("global_step", True),
        ("beta1_power", True),
        ("beta2_power", True),
        ("pegasus/encoder/layer_0/intermediate/dense/kernel/Adam", True),
        ("pegasus/encoder/layer_0/intermediate/dense/kernel/Adam_1", True),
        ("pegasus/embeddings/word_embeddings/Adafactor", True),
        ("pegasus/embeddings/word_embeddings/Adafactor_1", True),
        ("pegasus/embeddings/word_embeddings/Adafactor_vr", True),
        ("pegasus/embeddings/word_embeddings/Adafactor_vc", True),
        ("pegasus/decoder/LayerNorm/gamma/Momentum", True),
        ("pegasus/decoder/LayerNorm/gamma/AdamWeightDecayOptimizer_1", True),
        ("pegasus/encoder/layer_0/intermediate/dense/kernel", False),
        ("pegasus/Adam/kernel", False),
        ("pegasus/global_step_extra", False),
    ],
)
def test_optimizer_state_is_recognised(name, skipped):
    assert is_optimizer_state(name) is skipped


def test_training_checkpoint_converts_without_its_optimizer_state_and_runs(tmp_path, train_step_tokenizer_dir):
    ckpt = TFCheckpoint(TRAIN_STEP_PREFIX)
    assert any(name.endswith("/Adam_1") for name in ckpt.keys()) and "beta1_power" in ckpt.keys()
    out = convert_tf_checkpoint(TRAIN_STEP_PREFIX, tmp_path / "repo", params=TRAIN_STEP_PARAMS,
                                spm_model=train_step_tokenizer_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True).eval()
    word_embeddings = ckpt.read("pegasus/embeddings/word_embeddings")
    assert torch.equal(model.get_input_embeddings().weight, word_embeddings)
    assert torch.equal(model.lm_head.weight, word_embeddings)
    input_ids = torch.tensor([[5, 9, 13, 40, 22, 7, 1]])
    with torch.no_grad():
        logits = model(input_ids=input_ids, decoder_input_ids=torch.tensor([[2, 5, 9]])).logits
        generated = model.generate(input_ids, num_beams=1, do_sample=False)
    assert logits.shape == (1, 3, 64) and torch.isfinite(logits).all()
    assert generated.shape[1] <= 9  # max_decoder_length 8, plus the start token


# -- broken or inconsistent inputs: one clear error, and no output folder ------------------------------------


def copy_fixture(tmp_path: Path) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for path in FIXTURES.glob("model.ckpt-0.*"):
        shutil.copyfile(path, folder / path.name)
    return folder / "model.ckpt-0"


def data_shard(prefix: Path) -> Path:
    return prefix.with_name(prefix.name + ".data-00000-of-00001")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def rewrite(prefix: Path, change) -> None:
    """Replace the checkpoint at ``prefix`` by one holding ``change(its tensors)``."""
    tensors = change(fixture_tensors(prefix))
    for path in prefix.parent.glob(prefix.name + ".*"):
        path.unlink()
    write_bundle(prefix, tensors)


EXTRA_VARIABLE = "pegasus/encoder/layer_0/attention/extra/kernel"
DROPPED_VARIABLE = "pegasus/decoder/layer_1/output/dense/bias"


def add_extra_variable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {**tensors, EXTRA_VARIABLE: torch.ones(2, 2)}


def drop_variable(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor for name, tensor in tensors.items() if name != DROPPED_VARIABLE}


def rename_scope(tensors: dict[str, torch.Tensor], scope: str = "bigbird") -> dict[str, torch.Tensor]:
    return {name.replace("pegasus/", f"{scope}/"): tensor for name, tensor in tensors.items()}


BROKEN_CHECKPOINTS = {
    "missing_data_shard": (lambda prefix: data_shard(prefix).unlink(), TFCheckpointError,
                           r"data shard .*data-00000-of-00001 is missing"),
    "truncated_data_shard": (lambda prefix: truncate(data_shard(prefix)), TFCheckpointError,
                             r"data-00000-of-00001 is truncated"),
    "index_not_a_checkpoint": (lambda prefix: prefix.with_name("model.ckpt-0.index").write_text("{}"),
                               TFCheckpointError, r"model\.ckpt-0\.index is not a readable TensorFlow V2"),
    "unknown_variable": (lambda prefix: rewrite(prefix, add_extra_variable), ConversionError,
                         rf"unknown variable \(neither a model weight nor optimizer state\): "
                         rf"{EXTRA_VARIABLE} \[2, 2\]"),
    "missing_variable": (lambda prefix: rewrite(prefix, drop_variable), ConversionError,
                         rf"missing variable: {DROPPED_VARIABLE} \(for model\.decoder\.layers\.1\.fc2\.bias\)"),
    "other_scope": (lambda prefix: rewrite(prefix, rename_scope), ConversionError,
                    r"no variable under the scope 'pegasus'; its top-level scopes are bigbird: pass"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_CHECKPOINTS))
def test_broken_checkpoint_gives_one_clear_error_and_writes_nothing(tmp_path, reference_tokenizer_dir, case):
    break_checkpoint, error, message = BROKEN_CHECKPOINTS[case]
    prefix = copy_fixture(tmp_path)
    break_checkpoint(prefix)
    out = tmp_path / "out" / "repo"
    with pytest.raises(error, match=message):
        convert_tf_checkpoint(prefix, out, params=REFERENCE["base_params"], spm_model=reference_tokenizer_dir)
    assert not out.parent.exists()


def test_every_problem_is_listed_at_once(tmp_path):
    def break_three_ways(tensors):
        broken = drop_variable(add_extra_variable(tensors))
        broken["pegasus/decoder/layer_0/attention/self/query/kernel"] = torch.ones(64, 32)
        return broken

    prefix = copy_fixture(tmp_path)
    rewrite(prefix, break_three_ways)
    with pytest.raises(ConversionError, match=r"\(3 problem\(s\)\)") as error:
        tf_checkpoint_to_state_dict(prefix, config_from_params(REFERENCE["base_params"]))
    message = str(error.value)
    assert f"unknown variable (neither a model weight nor optimizer state): {EXTRA_VARIABLE} [2, 2]" in message
    assert f"missing variable: {DROPPED_VARIABLE} (for model.decoder.layers.1.fc2.bias)" in message
    assert ("shape mismatch: pegasus/decoder/layer_0/attention/self/query/kernel has shape [64, 32], "
            "model.decoder.layers.0.self_attn.q_proj.weight needs [64, 64]") in message


def test_hyperparameters_that_contradict_the_shapes_are_named_with_both_values(tmp_path, reference_tokenizer_dir):
    params = {**REFERENCE["base_params"], "hidden_size": 128, "vocab_size": 999, "num_hidden_layers": 3,
              "intermediate_size": 256, "max_position_embeddings": 2048, "use_bias": True}
    out = tmp_path / "repo"
    with pytest.raises(ConversionError, match=r"contradict the checkpoint") as error:
        convert_tf_checkpoint(MODEL_PREFIX, out, params=params, spm_model=reference_tokenizer_dir)
    message = str(error.value)
    for line in (
        "vocab_size is 999 in the given hyperparameters but 320 in the checkpoint "
        "(pegasus/embeddings/word_embeddings has shape [320, 64])",
        "hidden_size is 128 in the given hyperparameters but 64 in the checkpoint",
        "max_position_embeddings is 2048 in the given hyperparameters but 1024",
        "intermediate_size is 256 in the given hyperparameters but 128 in the checkpoint "
        "(pegasus/encoder/layer_0/intermediate/dense/kernel has shape [64, 128]; "
        "pegasus/decoder/layer_0/intermediate/dense/kernel has shape [64, 128])",
        "num_hidden_layers is 3 in the given hyperparameters but 2 in the checkpoint "
        "(it has encoder layers up to layer_1; it has decoder layers up to layer_1)",
        "use_bias is True in the given hyperparameters but False in the checkpoint (it has no attention biases)",
    ):
        assert line in message
    # One line per hyperparameter, however many variables tell.
    for name in ("vocab_size", "hidden_size", "max_position_embeddings", "intermediate_size", "num_hidden_layers"):
        assert message.count(f"- {name} is") == 1, message
    assert not out.exists()


def test_params_nested_in_a_wrapper_object_are_pointed_out(tmp_path):
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps({"base_params": REFERENCE["base_params"], "variants": {}}))
    with pytest.raises(ConversionError, match=r"none of the original hyperparameters at its top level .*"
                                              r"under 'base_params': pass that object by itself"):
        config_from_params(params_file)


def test_presets_are_known_by_their_short_names():
    by_model_name = config_from_params(preset="google/bigbird-pegasus-large-arxiv")
    assert config_from_params(preset="arxiv").to_dict() == by_model_name.to_dict()


def test_bias_checkpoint_converted_without_use_bias_is_a_contradiction(tmp_path):
    write_bundle(tmp_path / "model.ckpt-0", with_attention_biases(fixture_tensors()))
    with pytest.raises(ConversionError, match=r"use_bias is False in the given hyperparameters but True .*"
                                              r"it has attention biases such as pegasus/decoder/layer_0/attention/"):
        tf_checkpoint_to_state_dict(tmp_path / "model.ckpt-0", config_from_params(REFERENCE["base_params"]))


def test_another_scope_converts_when_named(tmp_path):
    write_bundle(tmp_path / "model.ckpt-0", rename_scope(fixture_tensors()))
    config = config_from_params(REFERENCE["base_params"])
    renamed = tf_checkpoint_to_state_dict(tmp_path / "model.ckpt-0", config, scope="bigbird")
    original = tf_checkpoint_to_state_dict(MODEL_PREFIX, config)
    assert renamed.keys() == original.keys()
    assert all(torch.equal(renamed[name], original[name]) for name in original)


@pytest.mark.parametrize(
    ("spm_model", "message"),
    [(None, r"needs the checkpoint's tokenizer: pass spm_model="), ("missing.model", r"missing.model does not exist")],
)
def test_tokenizer_is_checked_before_the_conversion(tmp_path, spm_model, message):
    with pytest.raises(ConversionError, match=message):
        convert_tf_checkpoint(MODEL_PREFIX, tmp_path / "repo", params=REFERENCE["base_params"],
                              spm_model=spm_model and tmp_path / spm_model)
    assert not (tmp_path / "repo").exists()


def test_existing_output_is_kept_unless_overwrite(tmp_path, train_step_tokenizer_dir):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConversionError, match=r"already exists: .*overwrite=True"):
        convert_tf_checkpoint(TRAIN_STEP_PREFIX, out, params=TRAIN_STEP_PARAMS, spm_model=train_step_tokenizer_dir)
    assert (out / "keep.txt").read_text() == "mine"
    convert_tf_checkpoint(TRAIN_STEP_PREFIX, out, params=TRAIN_STEP_PARAMS, spm_model=train_step_tokenizer_dir,
                          overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()

