"""No debris: `build`, `upgrade` and `convert-tf` stopped by SIGTERM or SIGHUP while writing, concurrent writers of one
repo folder, and the modes of the files written, through the installed console script.

The model is big enough (about 200 MB of weights) that its repo is still being written when the test sees the
staging folder appear and sends the signal; the command must then remove the staging folder, write nothing, and
exit with status 128 + signal number.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest
import transformers
from test_cli import installed_script
from tf_bundle_writer import write_bundle
from tiny import builtin_config

from bigbird_pegasus_hub.conversion.tf_to_plugin import config_from_params, original_names
from bigbird_pegasus_hub.plugin.configuration_bigbird_pegasus import BigBirdPegasusConfig
from bigbird_pegasus_hub.plugin.modeling_bigbird_pegasus import BigBirdPegasusForConditionalGeneration
from bigbird_pegasus_hub.repo_files import check_repo

TF_REFERENCE = Path(__file__).parent / "fixtures" / "tf_reference"
# The original hyperparameters of a ~50M-parameter model (about 200 MB of float32 weights).
BIG = dict(hidden_size=512, num_attention_heads=8, intermediate_size=2048, num_hidden_layers=6,
           max_position_embeddings=4096, max_encoder_length=4096, block_size=64, num_rand_blocks=3)
SECONDS_TO_START = 600


@pytest.fixture(scope="module")
def big(tmp_path_factory, tokenizer_dir, tokenizer_size) -> dict[str, Path]:
    """The inputs of each command for one big model: params, TF checkpoint, plugin weights, built-in folder."""
    folder = tmp_path_factory.mktemp("big")
    params = {**json.loads((TF_REFERENCE / "config.json").read_text())["base_params"], **BIG,
              "vocab_size": tokenizer_size}
    (folder / "params.json").write_text(json.dumps(params))
    config = config_from_params(params)
    model = BigBirdPegasusForConditionalGeneration(config)
    model.save_pretrained(folder / "plugin")  # config.json + model.safetensors, the inputs of build

    state_dict = model.state_dict()
    (folder / "tf").mkdir()
    write_bundle(folder / "tf" / "model.ckpt-1", {
        original: state_dict[ours[0]].t() if original.endswith("/kernel") else state_dict[ours[0]]
        for original, ours in original_names(config).items()
    })
    builtin = folder / "builtin"
    transformers.BigBirdPegasusConfig(**builtin_config(BigBirdPegasusConfig(**config.to_dict())).to_dict()) \
        .save_pretrained(builtin)
    os.link(folder / "plugin" / "model.safetensors", builtin / "model.safetensors")
    shutil.copytree(tokenizer_dir, builtin, dirs_exist_ok=True)
    return {"folder": folder, "params": folder / "params.json", "checkpoint": folder / "tf" / "model.ckpt-1",
            "plugin": folder / "plugin", "builtin": builtin, "tokenizer": tokenizer_dir}


def command(name: str, big: dict[str, Path], out_dir: Path, *extra: str) -> list[str]:
    commands = {
        "build": ["build", out_dir, "--config", big["plugin"] / "config.json", "--weights",
                  big["plugin"] / "model.safetensors", "--tokenizer", big["tokenizer"]],
        "upgrade": ["upgrade", big["builtin"], out_dir],
        "convert-tf": ["convert-tf", big["checkpoint"], out_dir, "--params", big["params"], "--spm-model",
                       big["tokenizer"]],
    }
    return [installed_script(), *map(str, commands[name]), *extra]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_terminal)


def as_from_a_terminal() -> None:
    """The child starts as from a shell: umask 022, SIGTERM and SIGHUP at their default action even where the test
    run inherited them ignored (under `nohup` SIGHUP is ignored, which the commands respect)."""
    os.umask(0o022)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def staging_folders(parent: Path, name: str) -> list[Path]:
    return [path for path in parent.iterdir() if path.name.startswith(f".{name}.") and path.name.endswith(".partial")]


def wait_until_writing(process: subprocess.Popen, out_dir: Path) -> None:
    """Returns once the command has started writing the repo (its staging folder holds a file)."""
    deadline = time.monotonic() + SECONDS_TO_START
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the command ended before it was stopped:\n{process.communicate()}"
        if any(any(folder.iterdir()) for folder in staging_folders(out_dir.parent, out_dir.name)):
            return
        time.sleep(0.005)
    raise AssertionError("the command did not start writing in time")


@pytest.mark.parametrize(
    "name, signum",
    [("build", signal.SIGTERM), ("upgrade", signal.SIGHUP), ("convert-tf", signal.SIGTERM)],
)
def test_a_signal_while_writing_leaves_nothing(big, tmp_path, name, signum):
    out_dir = tmp_path / "repo"
    process = start(command(name, big, out_dir))
    wait_until_writing(process, out_dir)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signum, stderr
    assert stderr.strip().splitlines()[-1] == f"bigbird-pegasus: stopped by {signal.Signals(signum).name}"
    assert "Traceback" not in stderr
    assert os.listdir(tmp_path) == []  # no repo, no staging folder, no lock file


def test_concurrent_builds_of_one_folder_one_fails_unless_overwrite(big, tmp_path):
    out_dir = tmp_path / "repo"
    first, second = (start(command("build", big, out_dir)) for _ in range(2))
    results = sorted((process.wait(timeout=600), process.communicate()[1]) for process in (first, second))
    (ok, _), (failed, message) = results
    assert (ok, failed) == (0, 2), results
    assert "Traceback" not in message and len(message.splitlines()) == 1, message
    assert "being written by another process" in message or "already exists" in message
    check_repo(out_dir)
    assert os.listdir(tmp_path) == ["repo"]
    # Every file has the mode the umask gives (model.safetensors used to be 0600, everything else 0644).
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in out_dir.iterdir()}
    assert set(modes.values()) == {0o644}, modes
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o755

    # With --overwrite the second writer waits for the first, then replaces its output: both succeed.
    first, second = (start(command("build", big, out_dir, "--overwrite")) for _ in range(2))
    assert [process.wait(timeout=600) for process in (first, second)] == [0, 0]
    check_repo(out_dir)
    assert os.listdir(tmp_path) == ["repo"]


