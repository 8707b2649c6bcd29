"""Every user mistake is one clear line: the installed `bigbird-pegasus` console script, run on a table of bad inputs.

Each case runs in a subprocess, in a folder of its own, and must exit with status 2, print exactly one line on stderr
that names the culprit (a file or an option) and no traceback, print nothing on stdout, and write nothing: neither in
its folder nor among the shared inputs. Most cases fail on the cheap checks, before torch and transformers are
imported; the few that need the model or the tokenizer loaded say so in their name (`loaded`). The cases run a few
at a time, side by side (module fixture `results`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from test_cli import installed_script
from tiny import builtin_config, tiny_config

from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
from bigbird_pegasus_hub.repo import build_repo

TF_REFERENCE = Path(__file__).parent / "fixtures" / "tf_reference"
MAX_POSITIONS = 256
SMALL_VOCAB = 500  # smaller than the test tokenizer's 1103 ids
PARALLEL_RUNS = 4
FOREIGN = "evil-user/evil-repo--evil.Evil"


@dataclass(frozen=True)
class Case:
    """`args` may name `{i}` (the shared inputs) and `{o}` (the case's own folder, its working directory)."""

    args: tuple[str, ...]
    culprit: tuple[str, ...]  # what the one stderr line must say
    prepare: str | None = None  # "file": {o}/file is a file; "folder": {o}/repo is a folder; "repo-file": {o}/repo is a file


SUMMARIZE = ("summarize", "{i}/text.txt")
CONVERT = ("convert-tf", str(TF_REFERENCE / "model.ckpt-0"), "{o}/repo", "--params", "{i}/params.json",
           "--spm-model", "{i}/reference-tokenizer")
BUILD = ("build", "{o}/repo", "--config", "{i}/repo/config.json", "--weights", "{i}/repo/model.safetensors",
         "--tokenizer", "{i}/tokenizer")


def with_option(command: tuple[str, ...], option: str, value: str) -> tuple[str, ...]:
    """`command` with `option`'s value replaced."""
    index = command.index(option)
    return (*command[: index + 1], value, *command[index + 2 :])


def without_option(command: tuple[str, ...], option: str) -> tuple[str, ...]:
    index = command.index(option)
    return (*command[:index], *command[index + 2 :])


def summarize_model(folder: str) -> tuple[str, ...]:
    return ("summarize", "--model", f"{{i}}/{folder}", "{i}/text.txt")


def upgrade(folder: str) -> tuple[str, ...]:
    return ("upgrade", f"{{i}}/{folder}", "{o}/repo")


CASES = {
    # summarize: documents and options
    "summarize-missing-file": Case(("summarize", "{o}/missing.txt"), ("missing.txt: no such file",)),
    "summarize-empty-file": Case(("summarize", "{i}/empty.txt"), ("empty.txt is empty",)),
    "summarize-whitespace-file": Case(("summarize", "{i}/blank.txt"), ("blank.txt is empty or only whitespace",)),
    "summarize-not-utf8": Case(("summarize", "{i}/latin1.txt"), ("latin1.txt is not UTF-8 text", "iconv")),
    "summarize-folder-as-file": Case(("summarize", "{i}"), ("is a folder",)),
    "summarize-unknown-option": Case((*SUMMARIZE, "--nope"), ("unrecognized arguments: --nope",)),
    "summarize-unknown-dtype": Case((*SUMMARIZE, "--dtype", "float8"), ("--dtype", "float8")),
    "summarize-batch-size-0": Case((*SUMMARIZE, "--batch-size", "0"), ("--batch-size", "at least 1")),
    "summarize-num-beams-0": Case((*SUMMARIZE, "--num-beams", "0"), ("--num-beams", "at least 1")),
    "summarize-max-length-negative": Case((*SUMMARIZE, "--max-length", "-5"), ("--max-length", "at least 2")),
    "summarize-max-length-1": Case((*SUMMARIZE, "--max-length", "1"), ("--max-length", "at least 2", "start token")),
    "summarize-max-length-not-a-number": Case((*SUMMARIZE, "--max-length", "ten"), ("--max-length", "'ten'")),
    "summarize-chunk-overlap-without-chunk": Case((*SUMMARIZE, "--chunk-overlap", "10"),
                                                  ("--chunk-overlap only applies with --chunk",)),
    "summarize-chunk-overlap-negative": Case((*SUMMARIZE, "--chunk", "--chunk-overlap", "-1"),
                                             ("--chunk-overlap", "at least 0")),
    "summarize-revision-of-a-folder": Case((*summarize_model("repo"), "--revision", "main"),
                                           ("--revision only applies to Hub repo ids",)),
    # summarize: the model folder
    "summarize-model-folder-missing": Case(("summarize", "--model", "{o}/nowhere", "{i}/text.txt"),
                                           ("nowhere does not exist",)),
    "summarize-model-without-config": Case(summarize_model("empty-folder"), ("empty-folder has no config.json",)),
    "summarize-config-not-json": Case(summarize_model("repo-config-not-json"),
                                      ("repo-config-not-json/config.json is not valid JSON",)),
    "summarize-config-of-t5": Case(summarize_model("repo-t5"), ("repo-t5/config.json describes a 't5' model",)),
    "summarize-weights-empty": Case(summarize_model("repo-weights-empty"),
                                    ("repo-weights-empty/model.safetensors is empty",)),
    "summarize-weights-truncated": Case(summarize_model("repo-weights-truncated"),
                                        ("repo-weights-truncated/model.safetensors is truncated",)),
    "summarize-weights-garbage": Case(summarize_model("repo-weights-garbage"),
                                      ("repo-weights-garbage/model.safetensors is not a safetensors file",)),
    "summarize-shard-outside-the-folder": Case(summarize_model("repo-shard-outside"),
                                               ("model.safetensors.index.json lists shard(s) outside its folder",
                                                "'../model.safetensors'")),
    "summarize-tokenizer-config-not-json": Case(summarize_model("repo-tokenizer-config-not-json"),
                                                ("tokenizer_config.json is not valid JSON",)),
    "summarize-tokenizer-json-not-json": Case(summarize_model("repo-tokenizer-json-not-json"),
                                              ("repo-tokenizer-json-not-json/tokenizer.json is not valid JSON",)),
    "summarize-tokenizer-files-missing": Case(summarize_model("repo-no-vocabulary"),
                                              ("repo-no-vocabulary has tokenizer_config.json but no vocabulary",)),
    "summarize-loaded-weights-of-another-shape": Case(summarize_model("repo-shape-mismatch"),
                                                      ("repo-shape-mismatch do not fit its config.json",
                                                       "of the wrong shape", "model.encoder.layers.0.fc1.weight")),
    "summarize-loaded-missing-weights": Case(summarize_model("repo-missing-layer"),
                                             ("repo-missing-layer do not fit its config.json",
                                              "missing: model.decoder.layers.1.fc1.bias")),
    "summarize-loaded-unexpected-weights": Case(summarize_model("repo-extra-weight"),
                                                ("repo-extra-weight do not fit its config.json",
                                                 "unexpected: model.decoder.layers.9.fc1.weight")),
    "summarize-loaded-tokenizer-too-big": Case(summarize_model("repo-small-vocabulary"),
                                               ("1103 ids but the model's vocabulary has only 500",)),
    # convert-tf
    "convert-tf-set-not-a-number": Case((*CONVERT, "--set", "beam_size=abc"),
                                        ("beam_size='abc' must be a whole number >= 1",)),
    "convert-tf-set-negative-length": Case((*CONVERT, "--set", "max_decoder_length=-5"),
                                           ("max_decoder_length=-5 must be a whole number >= 1",)),
    "convert-tf-set-bool-as-count": Case((*CONVERT, "--set", "num_rand_blocks=true"),
                                         ("num_rand_blocks=True must be a whole number >= 0",)),
    "convert-tf-set-string-as-bool": Case((*CONVERT, "--set", "use_bias=no"), ("use_bias='no' must be true or false",)),
    "convert-tf-set-unknown": Case((*CONVERT, "--set", "beam_sise=4"), ("unknown hyperparameter override(s) beam_sise",)),
    "convert-tf-set-without-value": Case((*CONVERT, "--set", "beam_size"), ("--set", "expected KEY=VALUE")),
    "convert-tf-params-missing": Case(with_option(CONVERT, "--params", "{o}/nope.json"),
                                      ("--params file", "nope.json does not exist")),
    "convert-tf-params-not-json": Case(with_option(CONVERT, "--params", "{i}/not-json.json"),
                                       ("params file", "not-json.json is not valid JSON")),
    "convert-tf-params-not-an-object": Case(with_option(CONVERT, "--params", "{i}/list.json"),
                                            ("params file", "list.json must hold a JSON object")),
    "convert-tf-no-hyperparameters": Case(without_option(CONVERT, "--params"), ("the hyperparameters lack", "--params")),
    "convert-tf-no-tokenizer": Case(without_option(CONVERT, "--spm-model"), ("the following arguments are required: --spm-model",)),
    "convert-tf-tokenizer-missing": Case(with_option(CONVERT, "--spm-model", "{o}/nope.model"),
                                         ("nope.model does not exist",)),
    "convert-tf-tokenizer-not-a-model-file": Case(with_option(CONVERT, "--spm-model", "{i}/text.txt"),
                                                  ("text.txt is neither a sentencepiece .model file nor a tokenizer "
                                                   "folder",)),
    "convert-tf-checkpoint-missing": Case(("convert-tf", "{o}/nowhere/model.ckpt-1", *CONVERT[2:]),
                                          ("No checkpoint at", "nowhere/model.ckpt-1")),
    "convert-tf-output-exists": Case(CONVERT, ("repo already exists", "--overwrite"), prepare="folder"),
    "convert-tf-output-parent-is-a-file": Case((*CONVERT[:2], "{o}/file/repo", *CONVERT[3:]),
                                               ("file is a file, not a folder",), prepare="file"),
    "convert-tf-loaded-tokenizer-too-big": Case(with_option(CONVERT, "--spm-model", "{i}/tokenizer"),
                                                ("tokenizer has 1103 ids but the model's vocabulary has only 320",)),
    # build
    "build-missing-option": Case(without_option(BUILD, "--weights"), ("the following arguments are required: "
                                                                      "--weights",)),
    "build-config-missing": Case(with_option(BUILD, "--config", "{o}/nope.json"), ("--config", "nope.json does not "
                                                                                   "exist")),
    "build-config-is-a-folder": Case(with_option(BUILD, "--config", "{i}/repo"), ("--config", "is a folder",
                                                                                   "config.json")),
    "build-config-not-json": Case(with_option(BUILD, "--config", "{i}/not-json.json"),
                                  ("--config", "not-json.json is not valid JSON")),
    "build-config-of-t5": Case(with_option(BUILD, "--config", "{i}/repo-t5/config.json"), ("--config", "'t5'")),
    "build-loaded-config-with-bool-count": Case(with_option(BUILD, "--config", "{i}/bool-count.json"),
                                                ("bool-count.json is not a valid BigBirdPegasus config",
                                                 "num_random_blocks")),
    "build-loaded-config-of-other-weights": Case(with_option(BUILD, "--config", "{i}/repo-shape-mismatch/config.json"),
                                                 ("weights do not fit the config", "model.encoder.layers.0.fc1.weight "
                                                  "[37, 32] (the config needs [40, 32])")),
    "build-weights-not-safetensors": Case(with_option(BUILD, "--weights", "{i}/text.txt"),
                                          ("--weights", "text.txt is not a .safetensors file")),
    "build-weights-truncated": Case(with_option(BUILD, "--weights", "{i}/repo-weights-truncated/model.safetensors"),
                                    ("repo-weights-truncated/model.safetensors is truncated",)),
    "build-loaded-weights-with-nan": Case(with_option(BUILD, "--weights", "{i}/nan.safetensors"),
                                          ("NaN or infinite values in 1 tensor(s): model.encoder.layers.0.fc1.weight",)),
    "build-tokenizer-missing": Case(with_option(BUILD, "--tokenizer", "{o}/nope"), ("--tokenizer", "nope does not "
                                                                                    "exist")),
    "build-tokenizer-without-config": Case(with_option(BUILD, "--tokenizer", "{i}/tokenizer-no-config"),
                                           ("tokenizer-no-config holds no tokenizer_config.json",)),
    "build-tokenizer-without-vocabulary": Case(with_option(BUILD, "--tokenizer", "{i}/repo-no-vocabulary"),
                                               ("repo-no-vocabulary has tokenizer_config.json but no vocabulary",)),
    "build-tokenizer-config-not-json": Case(with_option(BUILD, "--tokenizer", "{i}/repo-tokenizer-config-not-json"),
                                            ("repo-tokenizer-config-not-json/tokenizer_config.json is not valid JSON",)),
    "build-loaded-tokenizer-of-foreign-class": Case(with_option(BUILD, "--tokenizer", "{i}/tokenizer-foreign-class"),
                                                    ("tokenizer-foreign-class/tokenizer_config.json names the "
                                                     "tokenizer class 'EvilTokenizer'",)),
    "build-loaded-tokenizer-too-big": Case(with_option(with_option(BUILD, "--config",
                                                                   "{i}/repo-small-vocabulary/config.json"),
                                                       "--weights", "{i}/repo-small-vocabulary/model.safetensors"),
                                           ("tokenizer has 1103 ids but the model's vocabulary has only 500",)),
    "build-output-is-a-file": Case((*BUILD, "--overwrite"), ("repo is a file, not a folder",), prepare="repo-file"),
    "build-output-parent-is-a-file": Case(("build", "{o}/file/repo", *BUILD[2:]), ("file is a file, not a folder",),
                                          prepare="file"),
    # upgrade
    "upgrade-revision-of-a-folder": Case((*upgrade("builtin"), "--revision", "main"),
                                         ("--revision only applies to Hub repo ids",)),
    "upgrade-no-config": Case(upgrade("empty-folder"), ("empty-folder has no config.json",)),
    "upgrade-config-not-json": Case(upgrade("builtin-config-not-json"),
                                    ("builtin-config-not-json/config.json is not valid JSON",)),
    "upgrade-config-of-pegasus": Case(upgrade("builtin-pegasus"), ("builtin-pegasus/config.json describes a 'pegasus' "
                                                                   "model",)),
    "upgrade-no-tokenizer": Case(upgrade("builtin-no-tokenizer"), ("builtin-no-tokenizer has no tokenizer",)),
    "upgrade-tokenizer-config-not-json": Case(upgrade("builtin-tokenizer-config-not-json"),
                                              ("builtin-tokenizer-config-not-json/tokenizer_config.json is not valid "
                                               "JSON",)),
    "upgrade-shard-outside-the-folder": Case(upgrade("builtin-shard-outside"),
                                             ("lists shard(s) outside its folder", "'../model.safetensors'")),
    "upgrade-shard-absolute-path": Case(upgrade("builtin-shard-absolute"),
                                        ("lists shard(s) outside its folder", "/model.safetensors'")),
    "upgrade-index-not-json": Case(upgrade("builtin-index-not-json"),
                                   ("model.safetensors.index.json is not valid JSON",)),
    "upgrade-weights-truncated": Case(upgrade("builtin-weights-truncated"),
                                      ("builtin-weights-truncated/model.safetensors is truncated",)),
    "upgrade-loaded-bin-of-a-bare-tensor": Case(upgrade("builtin-bare-tensor"),
                                                ("pytorch_model.bin holds a Tensor, not a state dict",)),
    "upgrade-loaded-bin-of-non-tensors": Case(upgrade("builtin-non-tensors"),
                                              ("pytorch_model.bin is not a state dict of tensors", "'step' (int)")),
    "upgrade-loaded-weights-with-nan": Case(upgrade("builtin-nan"), ("NaN or infinite values in 1 tensor(s): "
                                                                     "model.decoder.layers.0.fc2.weight",)),
    "upgrade-output-exists": Case(upgrade("builtin"), ("repo already exists", "--overwrite"), prepare="folder"),
    # push
    "push-folder-missing": Case(("push", "{o}/nope", "test-user/x"), ("FOLDER", "nope does not exist")),
    "push-incomplete-repo": Case(("push", "{i}/repo-no-weights", "test-user/x"),
                                 ("repo-no-weights is incomplete, missing: model.safetensors",)),
    "push-without-auto-map": Case(("push", "{i}/builtin", "test-user/x"), ("builtin/config.json has no auto_map",)),
    "push-foreign-model-code": Case(("push", "{i}/repo-foreign-config", "test-user/x"),
                                    ("repo-foreign-config/config.json references code outside the repo",
                                     f"auto_map.AutoConfig -> {FOREIGN}Config")),
    "push-foreign-tokenizer-code": Case(("push", "{i}/repo-foreign-tokenizer", "test-user/x"),
                                        ("repo-foreign-tokenizer/tokenizer_config.json references code outside the "
                                         "repo", f"auto_map.AutoTokenizer -> {FOREIGN}Tokenizer")),
    "push-module-the-repo-lacks": Case(("push", "{i}/repo-missing-module", "test-user/x"),
                                       ("references code outside the repo",
                                        "auto_map.AutoModel -> modeling_other.OtherModel")),
    "unknown-command": Case(("sumarize", "{i}/text.txt"), ("invalid choice: 'sumarize'",)),
}


# ----------------------------------------------------------------------------------------------------------------
# The inputs: a tiny plugin repo, a tiny built-in checkpoint, and broken copies of both.


def edit_json(path: Path, **changes) -> None:
    content = json.loads(path.read_text())
    content.update(changes)
    path.write_text(json.dumps(content))


def edit_weights(folder: Path, edit) -> None:
    weights = load_file(folder / "model.safetensors")
    edit(weights)
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def shard_index(folder: Path, shard: str) -> None:
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": dict.fromkeys(weights, shard)}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def poison(name: str):
    def edit(weights):
        weights[name] = weights[name].clone()
        weights[name][0, 0] = float("nan")

    return edit


def drop_layer(weights):
    for name in [name for name in weights if name.startswith("model.decoder.layers.1.fc1.")]:
        del weights[name]


def add_layer(weights):
    weights["model.decoder.layers.9.fc1.weight"] = torch.zeros(2, 2)


# Copies of a good folder, each broken one way: name -> (good folder, how to break it).
BROKEN = {
    "repo-config-not-json": ("repo", lambda f: (f / "config.json").write_text("{not json")),
    "repo-t5": ("repo", lambda f: edit_json(f / "config.json", model_type="t5")),
    "repo-weights-empty": ("repo", lambda f: (f / "model.safetensors").write_bytes(b"")),
    "repo-weights-truncated": ("repo", lambda f: truncate(f / "model.safetensors")),
    "repo-weights-garbage": ("repo", lambda f: (f / "model.safetensors").write_bytes(b"\x10" + b"\0" * 7 + b"x" * 99)),
    "repo-shard-outside": ("repo", lambda f: shard_index(f, "../model.safetensors")),
    "repo-tokenizer-config-not-json": ("repo", lambda f: (f / "tokenizer_config.json").write_text("{'single': 1}")),
    "repo-tokenizer-json-not-json": ("repo", lambda f: (f / "tokenizer.json").write_text("")),
    "repo-no-vocabulary": ("repo", lambda f: [(f / name).unlink() for name in ("spiece.model", "tokenizer.json")]),
    "repo-shape-mismatch": ("repo", lambda f: edit_json(f / "config.json", encoder_ffn_dim=40)),
    "repo-missing-layer": ("repo", lambda f: edit_weights(f, drop_layer)),
    "repo-extra-weight": ("repo", lambda f: edit_weights(f, add_layer)),
    "repo-no-weights": ("repo", lambda f: (f / "model.safetensors").unlink()),
    "repo-foreign-config": ("repo", lambda f: edit_json(f / "config.json", auto_map={
        "AutoConfig": f"{FOREIGN}Config", "AutoModelForSeq2SeqLM": f"{FOREIGN}Model"})),
    "repo-foreign-tokenizer": ("repo", lambda f: edit_json(f / "tokenizer_config.json", auto_map={
        "AutoTokenizer": [f"{FOREIGN}Tokenizer", None]})),
    "repo-missing-module": ("repo", lambda f: edit_json(f / "config.json", auto_map={
        "AutoConfig": "configuration_bigbird_pegasus.BigBirdPegasusConfig", "AutoModel": "modeling_other.OtherModel"})),
    "tokenizer-foreign-class": ("tokenizer", lambda f: edit_json(f / "tokenizer_config.json", tokenizer_class=
                                                                 "EvilTokenizer", auto_map={"AutoTokenizer": [
                                                                     f"{FOREIGN}Tokenizer", None]})),
    "tokenizer-no-config": ("tokenizer", lambda f: (f / "tokenizer_config.json").unlink()),
    "builtin-config-not-json": ("builtin", lambda f: (f / "config.json").write_text("")),
    "builtin-pegasus": ("builtin", lambda f: edit_json(f / "config.json", model_type="pegasus")),
    "builtin-no-tokenizer": ("builtin", lambda f: (f / "tokenizer_config.json").unlink()),
    "builtin-tokenizer-config-not-json": ("builtin", lambda f: (f / "tokenizer_config.json").write_text("[")),
    "builtin-shard-outside": ("builtin", lambda f: shard_index(f, "../model.safetensors")),
    "builtin-shard-absolute": ("builtin", lambda f: shard_index(f, str(f.parent / "builtin" / "model.safetensors"))),
    "builtin-index-not-json": ("builtin", lambda f: (shard_index(f, "model.safetensors"),
                                                     (f / "model.safetensors.index.json").write_text("{,}"))),
    "builtin-weights-truncated": ("builtin", lambda f: truncate(f / "model.safetensors")),
    "builtin-bare-tensor": ("builtin", lambda f: ((f / "model.safetensors").unlink(),
                                                  torch.save(torch.zeros(3), f / "pytorch_model.bin"))),
    "builtin-non-tensors": ("builtin", lambda f: ((f / "model.safetensors").unlink(),
                                                  torch.save({"step": 7, "w": torch.zeros(1)}, f / "pytorch_model.bin"))),
    "builtin-nan": ("builtin", lambda f: edit_weights(f, poison("model.decoder.layers.0.fc2.weight"))),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tokenizer_dir, tokenizer_size, reference_tokenizer_dir) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    texts = {"text.txt": b"Bees dance to tell the hive where flowers are.", "empty.txt": b"", "blank.txt": b" \n\t\n",
             "latin1.txt": "Caf\xe9.".encode("latin-1"), "not-json.json": b"{nope", "list.json": b"[1, 2]"}
    for name, data in texts.items():
        (folder / name).write_bytes(data)
    (folder / "empty-folder").mkdir()
    params = json.loads((TF_REFERENCE / "config.json").read_text())["base_params"]
    (folder / "params.json").write_text(json.dumps(params))
    shutil.copytree(tokenizer_dir, folder / "tokenizer")
    shutil.copytree(reference_tokenizer_dir, folder / "reference-tokenizer")

    torch.manual_seed(0)
    config = tiny_config(vocab_size=tokenizer_size, max_position_embeddings=MAX_POSITIONS)
    build_repo(folder / "repo", model=BigBirdPegasusForConditionalGeneration(config), tokenizer=tokenizer_dir)
    transformers.BigBirdPegasusForConditionalGeneration(builtin_config(config)).save_pretrained(folder / "builtin")
    shutil.copytree(tokenizer_dir, folder / "builtin", dirs_exist_ok=True)
    small = BigBirdPegasusForConditionalGeneration(tiny_config(vocab_size=SMALL_VOCAB,
                                                               max_position_embeddings=MAX_POSITIONS))
    small.save_pretrained(folder / "repo-small-vocabulary")
    shutil.copytree(tokenizer_dir, folder / "repo-small-vocabulary", dirs_exist_ok=True)

    for name, (good, breaking) in BROKEN.items():
        shutil.copytree(folder / good, folder / name)
        breaking(folder / name)
    weights = load_file(folder / "repo" / "model.safetensors")
    poison("model.encoder.layers.0.fc1.weight")(weights)
    save_file(weights, folder / "nan.safetensors", metadata={"format": "pt"})
    bool_count = json.loads((folder / "repo" / "config.json").read_text())
    (folder / "bool-count.json").write_text(json.dumps({**bool_count, "num_random_blocks": True}))
    return folder


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and modification time: what "nothing written" compares."""
    return {str(path.relative_to(folder)): (path.lstat().st_size, path.lstat().st_mtime_ns)
            for path in sorted(folder.rglob("*"))}


def prepare(folder: Path, how: str | None) -> None:
    if how == "file":
        (folder / "file").write_text("not a folder")
    elif how == "folder":
        (folder / "repo").mkdir()
        (folder / "repo" / "mine.txt").write_text("keep me")
    elif how == "repo-file":
        (folder / "repo").write_text("my notes")


def run_case(case: Case, inputs: Path, folder: Path) -> tuple[dict, subprocess.CompletedProcess, dict]:
    prepare(folder, case.prepare)
    before = tree(folder)
    args = [arg.format(i=inputs, o=folder) for arg in case.args]
    result = subprocess.run([installed_script(), *args], cwd=folder, stdin=subprocess.DEVNULL, capture_output=True,
                            text=True, timeout=600, env=os.environ)
    return before, result, tree(folder)


@pytest.fixture(scope="module")
def results(inputs, tmp_path_factory):
    """Every case's (folder before, result, folder after), run PARALLEL_RUNS at a time; and the inputs untouched."""
    inputs_before = tree(inputs)
    folders = {name: tmp_path_factory.mktemp(name) for name in CASES}
    with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
        futures = {name: pool.submit(run_case, case, inputs, folders[name]) for name, case in CASES.items()}
        outcomes = {name: future.result() for name, future in futures.items()}
    assert tree(inputs) == inputs_before, "a bad-input case wrote into the shared inputs"
    return outcomes


def test_there_are_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_clear_line_and_writes_nothing(name, results):
    before, result, after = results[name]
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bigbird-pegasus"), lines[0]
    for fragment in CASES[name].culprit:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert after == before, "the command wrote into its folder"


CHEAP_CASES_IN_ONE_PROCESS = """
import contextlib, io, json, sys
from bigbird_pegasus_hub.cli import main
heavy = []
for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stderr(io.StringIO()):
        try:
            main(args)
        except SystemExit:
            pass  # argparse's usage errors
    heavy += [[args, name] for name in ("torch", "transformers", "huggingface_hub") if name in sys.modules]
print(json.dumps(heavy))
"""


def test_cheap_mistakes_are_found_before_torch_and_transformers_are_imported(inputs, tmp_path):
    """Every case but the `loaded` ones fails before the heavy imports, so the user hears of it at once."""
    cases = {name: case for name, case in CASES.items() if "-loaded-" not in name}
    commands = []
    for name, case in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        prepare(folder, case.prepare)
        commands.append([arg.format(i=inputs, o=folder) for arg in case.args])
    result = subprocess.run([sys.executable, "-c", CHEAP_CASES_IN_ONE_PROCESS, json.dumps(commands)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
