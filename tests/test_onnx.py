"""ONNX export (`bigbird-pegasus export-onnx`) and ONNX Runtime inference against our PyTorch model.

The console script exports one tiny model (fp32) and a smaller one (fp16, the other opset bounds) side by side,
once per module: the exports take most of this file's time. Every parity test reads those folders.

The exported encoder takes every length up to the model's max_position_embeddings (MAX_POSITIONS) in one graph:
it pads inputs to a multiple of 1024 tokens (`pad_to_multiple_of`, the original code's grid), so its reference is
our PyTorch model with that option, on the same unpadded input.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import onnx
import onnxruntime
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from test_cli import Run, assert_fails_clearly, assert_succeeds, installed_script, run_cli, run_side_by_side
from tiny import max_abs_diff, tiny_repo
from transformers import AutoTokenizer

from bigbird_pegasus_hub import onnx_export
from bigbird_pegasus_hub.onnx_model import OnnxBigBirdPegasusForConditionalGeneration, repeated_rows
from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration


MAX_POSITIONS = 2048  # max_position_embeddings of the exported model: two steps of the 1024-token grid
GRID = onnx_export.GRID_MULTIPLE
SMALL = dict(encoder_layers=1, decoder_layers=1, max_position_embeddings=256)  # the fp16 export's model
ONNX_FILES = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")
TRANSFORMERS_V5 = int(transformers.__version__.split(".")[0]) >= 5


# ----------------------------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def repos(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx_repos")
    return {"fp32": tiny_repo(folder / "tiny", tokenizer_dir, max_position_embeddings=MAX_POSITIONS),
            "fp16": tiny_repo(folder / "small", tokenizer_dir, seed=1, **SMALL)}


@pytest.fixture(scope="module")
def exports(tmp_path_factory, repos) -> dict[str, Path]:
    """Both exports through the installed console script, side by side."""
    folder = tmp_path_factory.mktemp("onnx_exports")
    out_dirs = {name: folder / name for name in repos}
    options = {"fp32": ("--opset", str(onnx_export.MIN_OPSET)),
               "fp16": ("--dtype", "fp16", "--opset", str(onnx_export.MAX_OPSET))}
    results = run_side_by_side({name: Run(("export-onnx", repos[name], out_dirs[name], *options[name]),
                                          program=(installed_script(),)) for name in repos})
    for name, result in results.items():
        assert_succeeds(result)
        assert f"Exported {repos[name]} to ONNX in {out_dirs[name]}" in result.stdout
        assert result.stderr == ""  # torch.onnx's notes stay hidden without --debug
    return out_dirs


@pytest.fixture(scope="module")
def pytorch_model(repos) -> BigBirdPegasusForConditionalGeneration:
    """The exported model in PyTorch: the same weights, inputs padded to the same grid."""
    return BigBirdPegasusForConditionalGeneration.from_pretrained(repos["fp32"], pad_to_multiple_of=GRID).eval()


@pytest.fixture(scope="module")
def onnx_model(exports) -> OnnxBigBirdPegasusForConditionalGeneration:
    return OnnxBigBirdPegasusForConditionalGeneration.from_pretrained(exports["fp32"])


def document_batch(vocab_size: int, length: int, padded_rows: int = 0, seed: int = 0):
    """Two documents of `length` tokens; the last `padded_rows` rows end in padding (a shorter document)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab_size, (2, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(2 - padded_rows, 2):
        attention_mask[row, length * 2 // 3:] = 0
        input_ids[row, length * 2 // 3:] = 0
    return input_ids, attention_mask


@torch.no_grad()
def pytorch_encoder(model, input_ids, attention_mask) -> torch.Tensor:
    return model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


# ----------------------------------------------------------------------------------------------------------------
# The folder.


def test_export_writes_optimum_layout_without_code(exports, repos):
    folder = exports["fp32"]
    assert {path.name for path in folder.iterdir()} >= {*ONNX_FILES, *(f"{name}_data" for name in ONNX_FILES),
                                                        "config.json", "generation_config.json",
                                                        "tokenizer_config.json"}
    assert not list(folder.glob("*.py")) and not list(folder.parent.glob("*.partial"))
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "bigbird_pegasus"
    assert "auto_map" not in config and "custom_pipelines" not in config  # the ONNX folder ships no code
    assert config["pad_to_multiple_of"] == GRID  # what the encoder graph does to every input
    source = json.loads((repos["fp32"] / "generation_config.json").read_text())
    generation = json.loads((folder / "generation_config.json").read_text())
    assert {key: generation[key] for key in ("num_beams", "length_penalty", "no_repeat_ngram_size")} == \
        {key: source[key] for key in ("num_beams", "length_penalty", "no_repeat_ngram_size")}
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert len(tokenizer) == config["vocab_size"]


def test_graphs_have_optimum_names_and_dynamic_axes(exports):
    """Optimum finds inputs and outputs by name; batch and lengths must stay symbolic (not the traced sizes)."""
    layers = json.loads((exports["fp32"] / "config.json").read_text())["decoder_layers"]
    cache = [f"{layer}.{part}.{kind}" for layer in range(layers) for part in ("decoder", "encoder")
             for kind in ("key", "value")]
    expected = {
        "encoder_model.onnx": (["input_ids", "attention_mask"], ["last_hidden_state"]),
        "decoder_model.onnx": (["input_ids", "encoder_attention_mask", "encoder_hidden_states"],
                               ["logits", *(f"present.{name}" for name in cache)]),
        "decoder_with_past_model.onnx": (
            ["input_ids", "encoder_attention_mask", "encoder_hidden_states", *(f"past_key_values.{n}" for n in cache)],
            ["logits", *(f"present.{name}" for name in cache if ".decoder." in name)]),
    }
    for file_name, (inputs, outputs) in expected.items():
        graph = onnx.load(exports["fp32"] / file_name, load_external_data=False).graph
        assert [node.name for node in graph.input] == inputs
        assert [node.name for node in graph.output] == outputs
        shapes = {node.name: [dim.dim_param or dim.dim_value for dim in node.type.tensor_type.shape.dim]
                  for node in graph.input}
        assert shapes["input_ids"][0] == "batch_size"
        assert shapes["input_ids"][1] == {"encoder_model.onnx": "encoder_sequence_length",
                                          "decoder_model.onnx": "decoder_sequence_length",
                                          "decoder_with_past_model.onnx": 1}[file_name]
        if "past_key_values.0.decoder.key" in shapes:
            assert shapes["past_key_values.0.decoder.key"][2] == "past_decoder_sequence_length"
            assert shapes["past_key_values.0.encoder.key"][2] == "encoder_sequence_length"


# ----------------------------------------------------------------------------------------------------------------
# Parity with PyTorch.


@pytest.mark.parametrize(("length", "padded_rows"), [(MAX_POSITIONS, 0), (MAX_POSITIONS, 1), (1500, 2), (300, 0),
                                                     (300, 2), (150, 1)])
def test_encoder_matches_pytorch(onnx_model, pytorch_model, length, padded_rows):
    """One exported encoder for every length up to MAX_POSITIONS, with and without padding: <= 1e-5 from PyTorch."""
    input_ids, attention_mask = document_batch(pytorch_model.config.vocab_size, length, padded_rows, seed=length)
    onnx_states = onnx_model.get_encoder()(input_ids, attention_mask).last_hidden_state
    assert onnx_states.shape == (2, length, pytorch_model.config.d_model)
    assert max_abs_diff(onnx_states, pytorch_encoder(pytorch_model, input_ids, attention_mask)) <= 1e-5


def test_one_encoder_graph_serves_lengths_on_two_grid_steps(exports, pytorch_model):
    """The encoder graph has a symbolic length and pads in the graph, never to a fixed length: in one ONNX Runtime
    session, a 700-token and a 1500-token batch (padded to 1024 and 2048 tokens: two different random-block
    tables) give our eager outputs."""
    encoder = OnnxBigBirdPegasusForConditionalGeneration.from_pretrained(exports["fp32"]).get_encoder()
    assert onnx_export.PADDED_LENGTH_KEY not in encoder.session.metadata
    assert encoder.max_length == MAX_POSITIONS
    for length in (700, 1500):
        input_ids, attention_mask = document_batch(pytorch_model.config.vocab_size, length, padded_rows=1)
        onnx_states = encoder(input_ids, attention_mask).last_hidden_state
        assert onnx_states.shape == (2, length, pytorch_model.config.d_model)
        assert max_abs_diff(onnx_states, pytorch_encoder(pytorch_model, input_ids, attention_mask)) <= 1e-5


@pytest.mark.parametrize(("changes", "expected"), [
    ({}, ({"pad_to_multiple_of": GRID}, None)),
    ({"pad_to_multiple_of": 2048}, ({"pad_to_multiple_of": 2048}, None)),
    ({"attention_type": "original_full"}, ({}, None)),
    ({"max_position_embeddings": 8192}, ({}, 8192)),  # beyond the grid: every input padded to the positions
    ({"block_size": 48}, ({}, 4096)),  # 1024 is no multiple of the block
    ({"max_position_embeddings": 1024}, ({}, 1024)),  # one grid step: one padded length
])
def test_encoder_padding_of_an_export(changes, expected):
    config = {"model_type": "bigbird_pegasus", "max_position_embeddings": 4096, "block_size": 64, **changes}
    exported, padded_length = onnx_export.dynamic_length_config(config)
    assert (exported, padded_length) == ({**config, **expected[0]}, expected[1])


def test_encoder_keeps_the_original_random_blocks(onnx_model, pytorch_model, repos):
    """The exported encoder is our eager block-sparse encoder, random blocks included: not full attention, and not
    block-sparse attention with other random blocks (those of another encoder length)."""
    input_ids, attention_mask = document_batch(pytorch_model.config.vocab_size, MAX_POSITIONS)
    onnx_states = onnx_model.get_encoder()(input_ids, attention_mask).last_hidden_state
    assert max_abs_diff(onnx_states, pytorch_encoder(pytorch_model, input_ids, attention_mask)) <= 1e-5
    full = BigBirdPegasusForConditionalGeneration.from_pretrained(repos["fp32"], attention_type="original_full").eval()
    with torch.no_grad():
        full_states = full.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert max_abs_diff(onnx_states, full_states) > 1e-2
    swapped = copy.deepcopy(pytorch_model)  # the same weights, each layer with another layer's random blocks
    layers = swapped.get_encoder().layers
    for layer, seed in zip(layers, reversed(range(len(layers)))):
        layer.self_attn.self.layer_idx = seed
    assert max_abs_diff(onnx_states, pytorch_encoder(swapped, input_ids, attention_mask)) > 1e-2


def assert_generates_pytorch_ids(model, pytorch_model, num_beams: int) -> None:
    """`model.generate` gives PyTorch's ids, for a batch with a padded document."""
    input_ids, attention_mask = document_batch(pytorch_model.config.vocab_size, 300, padded_rows=1)
    settings = dict(num_beams=num_beams, max_new_tokens=12, min_new_tokens=12, no_repeat_ngram_size=1)  # no repeats
    onnx_ids = model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    with torch.no_grad():
        pytorch_ids = pytorch_model.generate(input_ids=input_ids, attention_mask=attention_mask, **settings)
    assert onnx_ids.tolist() == pytorch_ids.tolist()
    assert len(set(onnx_ids[0].tolist())) == 13  # decoder start + 12 new tokens: each step's argmax compared


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generate_gives_pytorch_ids(onnx_model, pytorch_model, num_beams):
    assert_generates_pytorch_ids(onnx_model, pytorch_model, num_beams)


def test_generate_returns_a_standard_cache(onnx_model, pytorch_model):
    input_ids, attention_mask = document_batch(pytorch_model.config.vocab_size, 200)
    output = onnx_model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=2, max_new_tokens=4,
                                 min_new_tokens=4, return_dict_in_generate=True, output_scores=True)
    cache = output.past_key_values if hasattr(output, "past_key_values") else output.cache
    assert isinstance(cache, transformers.EncoderDecoderCache)
    assert cache.self_attention_cache.layers[0].keys.shape[:3] == (4, pytorch_model.config.decoder_attention_heads, 4)
    assert cache.cross_attention_cache.layers[0].keys.shape[2] == 200


class RecordingSession:
    """Calls the session it wraps; keeps each call's batch size and outputs."""

    def __init__(self, session):
        self.session, self.batch_sizes, self.outputs = session, [], []

    def __call__(self, **inputs):
        self.batch_sizes.append(inputs["input_ids"].shape[0])
        self.outputs.append(self.session(**inputs))
        return self.outputs[-1]


def test_first_step_runs_once_per_input_for_beams(onnx_model, pytorch_model, monkeypatch):
    """generate() repeats each input for its beams; the first-step graph, whose cross-attention keys and values
    are most of its work, runs on each input once, with PyTorch's ids."""
    recorder = RecordingSession(onnx_model.first_step_session)
    monkeypatch.setattr(onnx_model, "first_step_session", recorder)
    assert_generates_pytorch_ids(onnx_model, pytorch_model, num_beams=3)
    assert recorder.batch_sizes == [2]  # two different documents, three beams each


@pytest.mark.parametrize("rows, expected", [
    ("A", 1), ("AB", 1), ("AAAB", 1), ("ABAB", 1), ("AAAA", 4), ("AAAABB", 2), ("AABBCC", 2), ("AAABBB", 3)])
def test_repeated_rows(rows, expected):
    states = torch.stack([torch.full((3, 2), float(ord(row))) for row in rows])
    mask = torch.ones(len(rows), 3, dtype=torch.long)
    assert repeated_rows(states, mask) == expected
    if expected > 1:  # a row that differs only in one tensor (here the mask) breaks its group
        mask[-1, 0] = 0
        assert repeated_rows(states, mask) < expected


def test_cross_attention_cache_holds_the_graph_outputs_uncopied(onnx_model, pytorch_model, monkeypatch):
    recorder = RecordingSession(onnx_model.first_step_session)
    monkeypatch.setattr(onnx_model, "first_step_session", recorder)
    input_ids, attention_mask = document_batch(pytorch_model.config.vocab_size, 200, padded_rows=1)
    output = onnx_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                        decoder_input_ids=torch.zeros(2, 1, dtype=torch.long))
    cache = output.past_key_values if hasattr(output, "past_key_values") else output.cache
    assert recorder.batch_sizes == [2]
    for layer in range(pytorch_model.config.decoder_layers):
        cross = cache.cross_attention_cache.layers[layer]
        assert cross.keys is recorder.outputs[0][f"present.{layer}.encoder.key"]
        assert cross.values is recorder.outputs[0][f"present.{layer}.encoder.value"]


def test_decoder_threads_do_not_spin_by_default(onnx_model):
    def spinning(session):
        return session.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(onnx_model.first_step_session) == spinning(onnx_model.step_with_past_session) == "0"


def test_threads_apply_to_every_session(exports):
    model = OnnxBigBirdPegasusForConditionalGeneration.from_pretrained(exports["fp32"], threads=1)
    sessions = (model.encoder.session, model.first_step_session, model.step_with_past_session)
    assert [session.session.get_session_options().intra_op_num_threads for session in sessions] == [1, 1, 1]
    with pytest.raises(ValueError, match="not both"):
        OnnxBigBirdPegasusForConditionalGeneration.from_pretrained(exports["fp32"], threads=1,
                                                                   session_options=onnxruntime.SessionOptions())


def test_too_long_input_is_refused(onnx_model):
    input_ids = torch.full((1, MAX_POSITIONS + 1), 5)
    with pytest.raises(ValueError, match=f"reads at most {MAX_POSITIONS}"):
        onnx_model.generate(input_ids=input_ids, max_new_tokens=2)


@pytest.mark.skipif(TRANSFORMERS_V5, reason="optimum-onnx (0.1.0, its only release) needs transformers < 4.58")
@pytest.mark.parametrize("num_beams", [1, 3])
def test_optimum_ort_model_loads_and_generates_pytorch_ids(exports, pytorch_model, num_beams):
    from optimum.onnxruntime import ORTModelForSeq2SeqLM

    model = ORTModelForSeq2SeqLM.from_pretrained(exports["fp32"])
    assert model.decoder_with_past is not None  # the cache is used
    assert_generates_pytorch_ids(model, pytorch_model, num_beams)


def test_fp16_export_runs_close_to_fp32(exports, repos):
    model = OnnxBigBirdPegasusForConditionalGeneration.from_pretrained(exports["fp16"])
    assert model.dtype == torch.float16
    reference = BigBirdPegasusForConditionalGeneration.from_pretrained(repos["fp16"]).eval()  # pads to its positions
    length = SMALL["max_position_embeddings"]
    input_ids, attention_mask = document_batch(reference.config.vocab_size, length, padded_rows=1)
    states = model.get_encoder()(input_ids, attention_mask).last_hidden_state
    assert states.dtype == torch.float16
    with torch.no_grad():
        expected = reference.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    assert max_abs_diff(states, expected) <= 2e-2
    assert model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=3).shape == (2, 4)


# ----------------------------------------------------------------------------------------------------------------
# Bad requests: one line, exit 2, nothing written.


def assert_nothing_written(out_dir: Path) -> None:
    assert not out_dir.exists()
    assert not [path for path in out_dir.parent.iterdir() if path.name.startswith(f".{out_dir.name}.")]


def test_bad_requests_fail_with_one_line(tmp_path, repos):
    out_dir = tmp_path / "out"
    existing = tmp_path / "existing"
    existing.mkdir()
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    other = tmp_path / "other-model"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "t5"}))
    missing_weight = tmp_path / "missing-weight"
    shutil.copytree(repos["fp32"], missing_weight)
    weights = load_file(missing_weight / "model.safetensors")
    del weights["model.decoder.layers.0.fc1.bias"]
    save_file(weights, missing_weight / "model.safetensors", metadata={"format": "pt"})
    cases = {
        "no_config": (("export-onnx", no_config, out_dir), ("no-config has no config.json",)),
        "other_model": (("export-onnx", other, out_dir), ("'t5' model, not BigBirdPegasus",)),
        "missing_folder": (("export-onnx", tmp_path / "nowhere", out_dir), ("does not exist",)),
        "existing_out": (("export-onnx", repos["fp32"], existing), ("already exists", "--overwrite")),
        "opset": (("export-onnx", repos["fp32"], out_dir, "--opset", "17"), ("opset 17", "18 to")),
        "dtype": (("export-onnx", repos["fp32"], out_dir, "--dtype", "bf16"), ("invalid choice: 'bf16'",)),
        # A graph would carry a random bias: refused as `summarize` refuses it.
        "missing_weight": (("export-onnx", missing_weight, out_dir),
                           ("missing-weight do not fit its config.json", "missing: model.decoder.layers.0.fc1.bias")),
    }
    results = run_side_by_side({name: Run(args) for name, (args, _) in cases.items()})
    for name, (_, fragments) in cases.items():
        assert_fails_clearly(results[name], *fragments)
    assert_nothing_written(out_dir)
    assert list(existing.iterdir()) == []


def test_missing_onnx_packages_say_how_to_install(tmp_path, repos):
    """An environment where onnxscript cannot be imported (a shadowing package that fails to import)."""
    shadow = tmp_path / "shadow" / "onnxscript"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    out_dir = tmp_path / "out"
    result = run_cli("export-onnx", repos["fp32"], out_dir, env={"PYTHONPATH": str(shadow.parent)})
    assert_fails_clearly(result, "onnxscript missing", 'pip install "bigbird-pegasus-hub[onnx]"')
    assert_nothing_written(out_dir)


def test_overwrite_replaces_only_an_earlier_export(tmp_path, repos):
    result = run_cli("export-onnx", repos["fp32"], repos["fp16"], "--overwrite")
    assert_fails_clearly(result, "not an ONNX export")
    assert (repos["fp16"] / "model.safetensors").is_file()


def test_failure_during_export_leaves_nothing(tmp_path, repos, monkeypatch):
    from bigbird_pegasus_hub import onnx_graphs

    def export_then_fail(spec, folder, opset, metadata):
        (folder / spec.file_name).write_bytes(b"half")
        raise RuntimeError("the exporter failed")

    monkeypatch.setattr(onnx_graphs, "export_graph", export_then_fail)
    out_dir = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the exporter failed"):
        onnx_export.export_onnx(repos["fp16"], out_dir)
    assert_nothing_written(out_dir)


def test_padded_length_must_fit_the_positions(tmp_path, repos):
    with pytest.raises(onnx_export.OnnxExportError, match="max_position_embeddings"):
        onnx_export.export_onnx(repos["fp16"], tmp_path / "out", padded_length=SMALL["max_position_embeddings"] + 1)
