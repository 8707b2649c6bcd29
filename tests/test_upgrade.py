"""Upgrading transformers' built-in bigbird_pegasus checkpoints (local folders and Hub repos) to plugin repos."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from bigbird_pegasus_hub.conversion.tf_to_plugin import ConversionError
from bigbird_pegasus_hub.conversion.upgrade import load_builtin_weights, upgrade_builtin
from tiny import max_abs_diff, random_inputs, twin_models

TOL = 1e-5
# The built-in model draws the original random blocks only in train mode (tiny's dropouts are all 0), on the
# original 4096-token grid because tiny's max_position_embeddings is 4096, at one of the paper's lengths.
BLOCK_SPARSE_LENGTH = 1024


def builtin_model(attention_type: str, vocab_size: int):
    _, builtin = twin_models(attention_type=attention_type, vocab_size=vocab_size)
    builtin.generation_config.num_beams = 3  # a non-default setting the upgrade must carry over
    return builtin


def save_builtin(builtin, folder: Path, tokenizer_dir: Path, serialization: str) -> Path:
    """Save like transformers does, with the tokenizer files beside the weights."""
    if serialization == "sharded":
        builtin.save_pretrained(folder, max_shard_size="20KB")
    else:
        builtin.save_pretrained(folder, safe_serialization=serialization == "safetensors")
    if serialization == "bin" and not (folder / "pytorch_model.bin").exists():
        # transformers 5 always writes safetensors; write the .bin that 4.x's safe_serialization=False gives.
        (folder / "model.safetensors").unlink()
        torch.save(builtin.state_dict(), folder / "pytorch_model.bin")
    shutil.copytree(tokenizer_dir, folder, dirs_exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def saved_builtin(tmp_path_factory, tokenizer_dir, tokenizer_size) -> Path:
    """An original_full built-in model saved with safetensors; tests that alter it work on a copy."""
    return save_builtin(builtin_model("original_full", tokenizer_size), tmp_path_factory.mktemp("builtin"),
                        tokenizer_dir, "safetensors")


@pytest.mark.parametrize("serialization", ["safetensors", "bin", "sharded"])
@pytest.mark.parametrize("attention_type", ["original_full", "block_sparse"])
def test_upgraded_repo_has_the_builtin_weights_and_outputs(tmp_path, tokenizer_dir, tokenizer_size, attention_type,
                                                           serialization):
    builtin = builtin_model(attention_type, tokenizer_size)
    src = save_builtin(builtin, tmp_path / "builtin", tokenizer_dir, serialization)
    out = upgrade_builtin(src, tmp_path / "plugin")

    model = AutoModelForSeq2SeqLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules.")  # the plugin code, not the built-in class
    expected = builtin.state_dict()
    actual = model.state_dict()
    assert actual.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), name
    assert model.config.layer_norm_eps == 1e-5  # transformers' LayerNorm default, which the weights were trained with
    assert json.loads((out / "generation_config.json").read_text())["num_beams"] == 3
    assert (out / "spiece.model").read_bytes() == (tokenizer_dir / "spiece.model").read_bytes()

    length = BLOCK_SPARSE_LENGTH if attention_type == "block_sparse" else 60
    input_ids, attention_mask = random_inputs(length=length, pad_tail=100)
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=input_ids[:, :9])
    with torch.no_grad():
        reference, output = builtin(**inputs), model(**inputs)
    assert max_abs_diff(output.encoder_last_hidden_state, reference.encoder_last_hidden_state) <= TOL
    assert max_abs_diff(output.logits, reference.logits) <= TOL


def test_upgrade_from_a_hub_repo_at_a_revision(hub, hub_repo_id, tmp_path, tokenizer_dir, tokenizer_size):
    builtin = builtin_model("original_full", tokenizer_size)
    src = save_builtin(builtin, tmp_path / "builtin", tokenizer_dir, "safetensors")
    api = HfApi()
    api.create_repo(hub_repo_id)
    first = api.upload_folder(repo_id=hub_repo_id, folder_path=src).oid
    with torch.no_grad():
        builtin.model.shared.weight.mul_(2)
    save_builtin(builtin, src, tokenizer_dir, "safetensors")
    api.upload_folder(repo_id=hub_repo_id, folder_path=src)

    latest = upgrade_builtin(hub_repo_id, tmp_path / "latest")
    old = upgrade_builtin(hub_repo_id, tmp_path / "old", revision=first)
    latest_weights, old_weights = load_builtin_weights(latest), load_builtin_weights(old)
    assert torch.equal(latest_weights["model.shared.weight"], builtin.model.shared.weight)
    assert torch.equal(old_weights["model.shared.weight"] * 2, builtin.model.shared.weight)


def test_builtin_hub_repo_with_only_a_bin_is_downloaded(hub, hub_repo_id, tmp_path, tokenizer_dir, tokenizer_size):
    builtin = builtin_model("original_full", tokenizer_size)
    src = save_builtin(builtin, tmp_path / "builtin", tokenizer_dir, "bin")
    HfApi().create_repo(hub_repo_id)
    HfApi().upload_folder(repo_id=hub_repo_id, folder_path=src)
    out = upgrade_builtin(hub_repo_id, tmp_path / "plugin")
    assert torch.equal(load_builtin_weights(out)["model.shared.weight"], builtin.model.shared.weight)


def test_old_config_with_decoding_settings_moves_them_to_the_generation_config(tmp_path, saved_builtin):
    # As google/bigbird-pegasus-large-*: num_beams & co. in config.json, and no generation_config.json.
    src = shutil.copytree(saved_builtin, tmp_path / "builtin")
    (src / "generation_config.json").unlink()
    config = json.loads((src / "config.json").read_text())
    config.update(num_beams=5, length_penalty=0.8, max_length=256)
    (src / "config.json").write_text(json.dumps(config))
    out = upgrade_builtin(src, tmp_path / "plugin")
    generation = json.loads((out / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["length_penalty"], generation["max_length"]) == (5, 0.8, 256)
    assert (generation["decoder_start_token_id"], generation["eos_token_id"]) == (2, 1)
    assert "num_beams" not in json.loads((out / "config.json").read_text())


def unpicklable_bin(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    torch.save({"model.shared.weight": torch.ones(2), "extra": Path("not/a/tensor")}, folder / "pytorch_model.bin")


def retyped_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "pegasus"}))


def resized_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "encoder_ffn_dim": 40, "decoder_layers": 3}))


BROKEN_SOURCES = {
    "no_config": (lambda folder: (folder / "config.json").unlink(), r"has no config.json: it is not a transformers"),
    "not_bigbird_pegasus": (retyped_config, r"describes a 'pegasus' model, not bigbird_pegasus"),
    "no_weights": (lambda folder: (folder / "model.safetensors").unlink(), r"has no weights: expected one of"),
    "corrupt_safetensors": (lambda folder: (folder / "model.safetensors").write_bytes(b"\x00" * 64),
                            r"model.safetensors is not a safetensors file"),
    "unsafe_bin": (unpicklable_bin, r"pytorch_model.bin cannot be loaded as plain tensors .*re-save it as safetensors"),
    "weights_of_another_size": (resized_config, r"(?s)do not fit their config.json .*missing weight: "
                                                r"model.decoder.layers.2.fc1.weight.*shape mismatch: "
                                                r"model.encoder.layers.0.fc1.weight has \[37, 32\], the config needs "
                                                r"\[40, 32\]"),
    "no_tokenizer": (lambda folder: (folder / "tokenizer_config.json").unlink(),
                     r"has no tokenizer .*pass the model's tokenizer with --tokenizer \(tokenizer=\)"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_SOURCES))
def test_broken_source_gives_one_clear_error_and_writes_nothing(tmp_path, saved_builtin, case):
    break_source, message = BROKEN_SOURCES[case]
    src = shutil.copytree(saved_builtin, tmp_path / "builtin")
    break_source(src)
    out = tmp_path / "out" / "plugin"
    with pytest.raises(ConversionError, match=message):
        upgrade_builtin(src, out)
    assert not out.parent.exists()


def test_a_source_without_tokenizer_files_takes_one_by_the_tokenizer_option(tmp_path, saved_builtin, tokenizer_dir):
    src = tmp_path / "weights-only"
    src.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(saved_builtin / name, src / name)
    result = subprocess.run([sys.executable, "-m", "bigbird_pegasus_hub.cli", "upgrade", src, tmp_path / "plugin",
                             "--tokenizer", tokenizer_dir / "spiece.model"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "plugin" / "tokenizer_config.json").is_file()
    assert AutoTokenizer.from_pretrained(tmp_path / "plugin")("a b").input_ids == \
        AutoTokenizer.from_pretrained(tokenizer_dir)("a b").input_ids


def test_missing_shard_is_named(tmp_path, tokenizer_dir, tokenizer_size):
    src = save_builtin(builtin_model("original_full", tokenizer_size), tmp_path / "builtin", tokenizer_dir, "sharded")
    shard = sorted(src.glob("model-*.safetensors"))[-1]
    shard.unlink()
    message = rf"shard\(s\) {shard.name} listed in model.safetensors.index.json are missing"
    with pytest.raises(ConversionError, match=message):
        upgrade_builtin(src, tmp_path / "plugin")


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("test-user/no-such-repo", r"not a local folder, and the Hub has no such repo"),
        ("not a repo id!", r"neither a local folder nor a Hub repo id"),
    ],
)
def test_unknown_source_is_refused(hub, tmp_path, src, message):
    with pytest.raises(ConversionError, match=message):
        upgrade_builtin(src, tmp_path / "plugin")


def test_unknown_revision_and_local_revision_are_refused(hub, hub_repo_id, tmp_path, saved_builtin):
    src = shutil.copytree(saved_builtin, tmp_path / "builtin")
    HfApi().create_repo(hub_repo_id)
    HfApi().upload_folder(repo_id=hub_repo_id, folder_path=src)
    with pytest.raises(ConversionError, match=r"has no revision 'v9'"):
        upgrade_builtin(hub_repo_id, tmp_path / "plugin", revision="v9")
    with pytest.raises(ConversionError, match=r"is a local folder: revision= only applies to Hub repo ids"):
        upgrade_builtin(src, tmp_path / "plugin", revision="main")


def test_existing_output_is_refused_before_any_work(tmp_path):
    (tmp_path / "plugin").mkdir()
    with pytest.raises(ConversionError, match=r"already exists"):
        upgrade_builtin(tmp_path / "does-not-matter", tmp_path / "plugin")



@pytest.mark.parametrize("shard", ["../model.safetensors", "/abs/model.safetensors", "sub/model.safetensors", ".."])
def test_shard_paths_outside_the_source_folder_are_refused(tmp_path, saved_builtin, shard):
    src = shutil.copytree(saved_builtin, tmp_path / "builtin")
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.shared.weight": shard}}))
    with pytest.raises(ConversionError, match=r"lists shard\(s\) outside its folder"):
        upgrade_builtin(src, tmp_path / "plugin")
    assert not (tmp_path / "plugin").exists()


@pytest.mark.parametrize(
    "content, message",
    [(torch.zeros(3), r"holds a Tensor, not a state dict"),
     ({"model.shared.weight": torch.zeros(3), "step": 7}, r"is not a state dict of tensors: 'step' \(int\)")],
)
def test_a_bin_that_is_not_a_state_dict_of_tensors_is_refused(tmp_path, saved_builtin, content, message):
    src = shutil.copytree(saved_builtin, tmp_path / "builtin")
    (src / "model.safetensors").unlink()
    torch.save(content, src / "pytorch_model.bin")
    with pytest.raises(ConversionError, match=message):
        upgrade_builtin(src, tmp_path / "plugin")
    assert not (tmp_path / "plugin").exists()
