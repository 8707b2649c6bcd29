"""The `bigbird-pegasus` command line, run as a real program (a subprocess) on a tiny model built once.

Subprocesses inherit the environment that conftest.py set up (HF_ENDPOINT of the local test Hub, HF_HOME, token),
so the Hub commands only ever talk to the test server. A run that loads the model spends seconds importing torch
and transformers, so those runs are few, each checks several things, and independent ones run side by side
(module fixtures `model_runs` and `repo_runs`). The error cases fail before those imports and take a fraction of a
second.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import transformers
from tiny import builtin_config, tiny_config
from transformers import AutoTokenizer

from bigbird_pegasus_hub import cli
from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
from bigbird_pegasus_hub.repo import build_repo, check_repo
from bigbird_pegasus_hub.bundled import EXAMPLE_DOCUMENT, example_document_lead
from bigbird_pegasus_hub.summarize import SINGLE_THREAD_MAX_WIDTH, cpu_threads, token_windows

MAX_POSITIONS = 256  # small, so that a page of text already overflows the model
FAST = ("--max-length", "8", "--num-beams", "1")
SHORT_TEXT = "Bees dance to tell the hive where flowers are.\nThe queen lays all the eggs."
# About 550 tokens: cut to 256 without --chunk, three windows with it.
LONG_TEXT = " ".join(["Lightning heats the air around it, and the air expands with a crack of thunder."] * 30)
TF_REFERENCE = Path(__file__).parent / "fixtures" / "tf_reference"
COMMIT_SHA = re.compile(r"\b[0-9a-f]{40}\b")


# ----------------------------------------------------------------------------------------------------------------
# Running the command line.


@dataclass(frozen=True)
class Run:
    args: tuple
    stdin: str = ""
    env: dict = field(default_factory=dict)
    program: tuple = (sys.executable, "-m", "bigbird_pegasus_hub.cli")


def start(run: Run) -> subprocess.Popen:
    """Starts the command line in a fresh Python, with this environment (the test Hub's) plus `run.env`."""
    with tempfile.TemporaryFile() as stdin:  # a file, not a pipe: nothing waits on us to feed it
        stdin.write(run.stdin.encode())
        stdin.seek(0)
        return subprocess.Popen([*run.program, *map(str, run.args)], stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, **run.env}, text=True, encoding="utf-8")


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_cli(*args, **options) -> subprocess.CompletedProcess:
    return finish(start(Run(args, **options)))


def run_side_by_side(runs: dict[str, Run]) -> dict[str, subprocess.CompletedProcess]:
    processes = {name: start(run) for name, run in runs.items()}
    return {name: finish(process) for name, process in processes.items()}


def assert_succeeds(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr


def assert_fails_clearly(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 2, one line on stderr that holds every fragment, nothing on stdout, no traceback."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def jsonl(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def installed_script() -> str:
    """The console script that `pip install` made for this interpreter's environment."""
    scripts = Path(sysconfig.get_path("scripts"))
    script = shutil.which("bigbird-pegasus", path=f"{Path(sys.executable).parent}{os.pathsep}{scripts}")
    assert script is not None, "the bigbird-pegasus console script is not installed (pip install -e .)"
    return script


# ----------------------------------------------------------------------------------------------------------------
# Fixtures.


@pytest.fixture(scope="module")
def vocab_size(tokenizer_dir) -> int:
    return len(AutoTokenizer.from_pretrained(tokenizer_dir))


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, tokenizer_dir, vocab_size) -> Path:
    """A complete plugin repo folder: tiny random model (block-sparse from 145 tokens), our tokenizer."""
    torch.manual_seed(0)
    config = tiny_config(vocab_size=vocab_size, max_position_embeddings=MAX_POSITIONS)
    model = BigBirdPegasusForConditionalGeneration(config).eval()
    return build_repo(tmp_path_factory.mktemp("repos") / "tiny", model=model, tokenizer=tokenizer_dir)


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("texts")
    contents = {"short": SHORT_TEXT.encode(), "long": LONG_TEXT.encode(), "empty": b"", "blank": b"  \n\t\n",
                "latin1": "Caf\xe9 cr\xe8me.".encode("latin-1")}
    for name, data in contents.items():
        (folder / f"{name}.txt").write_bytes(data)
    return {name: folder / f"{name}.txt" for name in contents}


@pytest.fixture(scope="module")
def model_runs(tiny_repo, texts) -> dict[str, subprocess.CompletedProcess]:
    """The summarize runs that load the local model, side by side."""
    return run_side_by_side({
        "stdin": Run(("summarize", "--model", tiny_repo, *FAST, "--chunk", "--batch-size", "4", "--format", "jsonl"),
                     stdin=LONG_TEXT, program=(installed_script(),)),
        "two_files": Run(("summarize", "--model", tiny_repo, *FAST, "--format", "jsonl", "--batch-size", "2",
                          "--device", "cpu", "--dtype", "float32", texts["short"], texts["long"])),
        "cuda": Run(("summarize", "--model", tiny_repo, "--device", "cuda", texts["short"])),
        "demo": Run(("summarize", "--format", "jsonl", "--threads", "1", EXAMPLE_DOCUMENT)),
    })


@pytest.fixture(scope="module")
def repo_runs(
    tmp_path_factory, tiny_repo, tokenizer_dir, reference_tokenizer_dir, vocab_size
) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """build, convert-tf and upgrade, side by side: (the folder each was asked to write, its result)."""
    folder = tmp_path_factory.mktemp("made")
    params = folder / "params.json"
    params.write_text(json.dumps(json.loads((TF_REFERENCE / "config.json").read_text())["base_params"]))
    builtin_dir = folder / "builtin"
    config = builtin_config(tiny_config(vocab_size=vocab_size, max_position_embeddings=MAX_POSITIONS))
    transformers.BigBirdPegasusForConditionalGeneration(config).save_pretrained(builtin_dir)
    shutil.copytree(tokenizer_dir, builtin_dir, dirs_exist_ok=True)

    out_dirs = {name: folder / name for name in ("build", "convert-tf", "upgrade")}
    runs = {
        "build": Run(("build", out_dirs["build"], "--config", tiny_repo / "config.json", "--weights",
                      tiny_repo / "model.safetensors", "--tokenizer", tokenizer_dir, "--description",
                      "A tiny test model.")),
        "convert-tf": Run(("convert-tf", TF_REFERENCE / "model.ckpt-0", out_dirs["convert-tf"], "--params", params,
                           "--spm-model", reference_tokenizer_dir, "--set", "beam_size=2", "--set", "alpha=0.5")),
        "upgrade": Run(("upgrade", builtin_dir, out_dirs["upgrade"])),
    }
    results = run_side_by_side(runs)
    return {name: (out_dirs[name], results[name]) for name in runs}


# ----------------------------------------------------------------------------------------------------------------
# summarize


def test_installed_script_summarizes_standard_input_in_windows(model_runs):
    result = model_runs["stdin"]
    assert_succeeds(result)
    (summary,) = jsonl(result.stdout)
    assert summary["file"] == "-" and summary["summary"]
    window, overlap = MAX_POSITIONS - 1, (MAX_POSITIONS - 1) // 8  # content tokens (end-of-sequence aside)
    assert summary["windows"] == len(token_windows(range(summary["input_tokens"] - 1), window, overlap)) > 1
    assert summary["truncated"] is False
    assert result.stderr == ""  # no truncation warning; no progress bar for one document


def test_two_files_as_jsonl_with_progress_bar_and_truncation_warning(model_runs, texts):
    result = model_runs["two_files"]
    assert_succeeds(result)
    short, long = jsonl(result.stdout)
    assert short["file"] == str(texts["short"]) and long["file"] == str(texts["long"])
    assert set(short) == {"file", "summary", "input_tokens", "truncated", "truncated_tokens", "windows", "seconds"}
    assert short["summary"] and short["truncated"] is False and short["truncated_tokens"] == 0
    assert long["truncated"] is True and long["input_tokens"] > MAX_POSITIONS
    assert long["truncated_tokens"] == long["input_tokens"] - MAX_POSITIONS
    assert short["seconds"] > 0 and long["windows"] == 1
    warning = (f"warning: {texts['long']} is {long['input_tokens']} tokens long but the model reads at most "
               f"{MAX_POSITIONS}: its last {long['truncated_tokens']} tokens were cut")
    assert warning in result.stderr
    assert "2/2" in result.stderr  # the progress bar


def test_the_default_demo_model_says_so_on_stderr_only(model_runs):
    result = model_runs["demo"]
    assert_succeeds(result)
    (summary,) = jsonl(result.stdout)
    assert summary["summary"] == example_document_lead()
    assert result.stderr.strip() == cli.DEMO_MODEL_NOTICE


def test_narrow_models_generate_on_one_cpu_thread(tiny_repo):
    narrow = BigBirdPegasusForConditionalGeneration.from_pretrained(tiny_repo)
    assert cpu_threads(narrow) == 1
    wide = BigBirdPegasusForConditionalGeneration(tiny_config(d_model=SINGLE_THREAD_MAX_WIDTH * 2, vocab_size=128))
    assert cpu_threads(wide) is None  # torch's default: one per core


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without a GPU")
def test_cuda_without_gpu_is_one_clear_line(model_runs):
    assert_fails_clearly(model_runs["cuda"], "--device cuda", "no CUDA GPU", "--device cpu")


def test_token_windows_cover_the_sequence_with_full_overlapping_windows():
    windows = token_windows(list(range(1000)), 300, 50)
    assert len(windows) == math.ceil((1000 - 300) / (300 - 50)) + 1
    assert all(len(window) == 300 for window in windows)
    assert windows[0][0] == 0 and windows[-1][-1] == 999
    assert all(later[0] <= earlier[-1] - 49 for earlier, later in zip(windows, windows[1:]))
    assert token_windows([1, 2, 3], 300, 50) == [[1, 2, 3]]


# ----------------------------------------------------------------------------------------------------------------
# build, convert-tf, upgrade


def test_build_writes_a_complete_repo(repo_runs):
    out_dir, result = repo_runs["build"]
    assert_succeeds(result)
    assert f"Built {out_dir}" in result.stdout
    check_repo(out_dir)
    assert "A tiny test model." in (out_dir / "README.md").read_text()


def test_convert_tf_makes_a_repo_from_the_reference_checkpoint(repo_runs):
    out_dir, result = repo_runs["convert-tf"]
    assert_succeeds(result)
    check_repo(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    assert (config["d_model"], config["vocab_size"], config["activation_function"]) == (64, 320, "relu")
    generation = json.loads((out_dir / "generation_config.json").read_text())
    assert (generation["num_beams"], generation["length_penalty"]) == (2, 0.5)  # the --set overrides


def test_upgrade_turns_a_builtin_model_into_a_plugin_repo(repo_runs):
    out_dir, result = repo_runs["upgrade"]
    assert_succeeds(result)
    check_repo(out_dir)
    assert "auto_map" in json.loads((out_dir / "config.json").read_text())


@pytest.mark.parametrize("command", ["build", "convert-tf", "upgrade"])
def test_an_existing_output_folder_is_refused_untouched(command, repo_runs):
    out_dir, first = repo_runs[command]
    before = sorted(path.name for path in out_dir.iterdir())
    result = run_cli(*first.args[3:])  # the same command again (args[:3]: python -m bigbird_pegasus_hub.cli)
    assert_fails_clearly(result, f"{out_dir} already exists", "--overwrite")
    assert sorted(path.name for path in out_dir.iterdir()) == before


def test_convert_tf_help_lists_the_presets_as_typed_and_requires_the_tokenizer():
    from bigbird_pegasus_hub.conversion.presets import PRESET_NAMES, PRESETS

    assert sorted(PRESET_NAMES.values()) == sorted(PRESETS)
    usage = run_cli("convert-tf", "--help").stdout
    assert "{arxiv,pubmed,bigpatent}" in usage.replace(" ", "").replace("\n", "")
    assert "[--spm-model" not in usage and "--spm-model FILE" in usage


# ----------------------------------------------------------------------------------------------------------------
# push, and summarizing from the Hub


def test_push_then_summarize_from_the_hub_only_with_trust_remote_code(hub, hub_repo_id, tiny_repo):
    pushed = run_cli("push", tiny_repo, hub_repo_id, "--message", "First version")
    assert_succeeds(pushed)
    (commit,) = set(COMMIT_SHA.findall(pushed.stdout))
    assert f"commit: {commit}" in pushed.stdout
    assert f'"{hub_repo_id}", trust_remote_code=True, revision="{commit}"' in pushed.stdout  # the pinned snippet

    refused = run_cli("summarize", "--model", hub_repo_id, *FAST, stdin=SHORT_TEXT)
    assert_fails_clearly(refused, hub_repo_id, "ships its own Python code", "--trust-remote-code", "--revision")

    result = run_cli("summarize", "--model", hub_repo_id, "--revision", commit, "--trust-remote-code", *FAST,
                     stdin=SHORT_TEXT)
    assert_succeeds(result)
    assert len(result.stdout.splitlines()) == 1 and result.stdout.strip()


def test_hub_repos_run_their_own_code_only_when_trusted(hub, hub_repo_id):
    """resolve_model, in-process: which code a Hub repo gets, pinned to the commit that was checked."""
    from huggingface_hub import HfApi

    from bigbird_pegasus_hub.summarize import ModelSource, SummarizeError, resolve_model

    def commit_config(config: dict) -> str:
        return HfApi().upload_file(path_or_fileobj=json.dumps(config).encode(), path_in_repo="config.json",
                                   repo_id=hub_repo_id).oid

    HfApi().create_repo(hub_repo_id)
    without_code = commit_config({"model_type": "bigbird_pegasus"})
    assert resolve_model(hub_repo_id) == ModelSource(hub_repo_id, revision=without_code, remote_code=False)

    with_code = commit_config({"model_type": "bigbird_pegasus", "auto_map": {"AutoConfig": "x.Y"}})
    with pytest.raises(SummarizeError, match="ships its own Python code"):
        resolve_model(hub_repo_id)
    assert resolve_model(hub_repo_id, trust_remote_code=True) == ModelSource(hub_repo_id, with_code, True)
    # The older commit is still the one without code.
    assert resolve_model(hub_repo_id, revision=without_code).remote_code is False

    commit_config({"model_type": "t5"})
    with pytest.raises(SummarizeError, match="holds a 't5' model, not BigBirdPegasus"):
        resolve_model(hub_repo_id)
    with pytest.raises(SummarizeError, match="has no revision 'nope'"):
        resolve_model(hub_repo_id, revision="nope")


def test_push_of_a_missing_folder_fails_clearly(hub, hub_repo_id, tmp_path):
    assert_fails_clearly(run_cli("push", tmp_path / "missing", hub_repo_id), "missing does not exist")


def test_missing_hub_repo_is_one_clear_line(hub, hub_repo_id, texts):
    assert_fails_clearly(run_cli("summarize", "--model", hub_repo_id, texts["short"]), hub_repo_id, "not found")


def test_unreachable_hub_is_one_clear_line(texts):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_cli("summarize", "--model", "test-user/unreachable", "--trust-remote-code", texts["short"],
                     env={"HF_ENDPOINT": endpoint})
    assert_fails_clearly(result, f"Cannot reach the Hub at {endpoint}", "test-user/unreachable", "HF_ENDPOINT")


# ----------------------------------------------------------------------------------------------------------------
# Errors: one line on stderr, exit status 2, no traceback (but with --debug).


@pytest.mark.parametrize(
    "make_args, stdin, fragments",
    [
        pytest.param(lambda texts, tmp: [tmp / "missing.txt"], "", ["missing.txt: no such file"], id="missing-file"),
        pytest.param(lambda texts, tmp: [texts["empty"]], "", ["empty.txt is empty or only whitespace"],
                     id="empty-file"),
        pytest.param(lambda texts, tmp: [texts["blank"]], "", ["blank.txt is empty or only whitespace"],
                     id="whitespace-file"),
        pytest.param(lambda texts, tmp: [], " \n\n ", ["standard input is empty or only whitespace"],
                     id="whitespace-stdin"),
        pytest.param(lambda texts, tmp: [texts["latin1"]], "", ["latin1.txt is not UTF-8 text", "iconv"],
                     id="not-utf8"),
        pytest.param(lambda texts, tmp: [tmp], "", ["is a folder"], id="folder-as-file"),
        pytest.param(lambda texts, tmp: ["--model", tmp, texts["short"]], "",
                     ["has no config.json", "not a model folder"], id="model-without-config"),
        pytest.param(lambda texts, tmp: ["--model", tmp / "nowhere", texts["short"]], "", ["does not exist"],
                     id="model-folder-missing"),
        pytest.param(lambda texts, tmp: ["--dtype", "float8", texts["short"]], "",
                     ["argument --dtype: invalid choice: 'float8'"], id="unknown-dtype"),
        pytest.param(lambda texts, tmp: ["--batch-size", "0", texts["short"]], "",
                     ["--batch-size: must be at least 1"], id="bad-batch-size"),
        pytest.param(lambda texts, tmp: ["--model", tmp, "--revision", "main", texts["short"]], "",
                     ["--revision only applies to Hub repo ids"], id="revision-of-a-folder"),
    ],
)
def test_summarize_input_errors(make_args, stdin, fragments, texts, tmp_path):
    result = run_cli("summarize", *make_args(texts, tmp_path), stdin=stdin)
    assert_fails_clearly(result, "bigbird-pegasus summarize: error:", *fragments)


def test_debug_shows_the_traceback(texts):
    result = run_cli("summarize", "--debug", texts["empty"])
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "CommandError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("bigbird-pegasus summarize: error: ")


def test_library_errors_become_one_line_and_bugs_keep_their_traceback():
    from bigbird_pegasus_hub.conversion.tf_checkpoint import TFCheckpointError

    listing = ValueError("the checkpoint does not fit (2 problem(s)):\n  - missing variable: a\n  - shape mismatch: b")
    assert cli.user_error_message(listing) == \
        "the checkpoint does not fit (2 problem(s)): - missing variable: a - shape mismatch: b"
    assert cli.user_error_message(TFCheckpointError("model.ckpt.index is truncated")) == "model.ckpt.index is truncated"
    assert cli.user_error_message(FileNotFoundError(2, "No such file", "x")) == "[Errno 2] No such file: 'x'"
    assert cli.user_error_message(RuntimeError("a bug")) is None


def test_every_command_has_help_with_examples():
    for command in ("summarize", "convert-tf", "upgrade", "build", "push"):
        result = run_cli(command, "--help")
        assert_succeeds(result)
        assert "examples:" in result.stdout and f"bigbird-pegasus {command} " in result.stdout
    summarize_help = run_cli("summarize", "--help").stdout
    assert "--trust-remote-code" in summarize_help and "k + 1 generate calls" in summarize_help


def test_no_command_prints_help_and_fails():
    result = run_cli()
    assert result.returncode == 2 and "summarize" in result.stderr
