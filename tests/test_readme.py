"""The README's commands work: its Python blocks run, its main-job command summarizes the example, its local push
round trip works, and none of them prints a warning that the reader did not ask for."""

import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bigbird_pegasus_hub.bundled import example_document_lead

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BIN = Path(sys.executable).parent
# transformers 5 draws this bar for every model it loads from disk: it reports the loading that a block asks for.
WEIGHT_LOADING_BAR = re.compile(r"Loading weights: +\d+%\|[^\r\n]*")


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def unasked_output(stderr: str) -> str:
    """stderr without the weight-loading bars: warnings, notices, anything else."""
    return WEIGHT_LOADING_BAR.sub("", stderr).strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_exactly_two_setup_commands_come_first():
    bash_blocks = fenced_blocks("bash")
    assert len(bash_blocks) == 2
    assert README.index(bash_blocks[0]) < README.index(bash_blocks[1]) < README.index("## What this is")
    assert "bigbird-pegasus summarize" in bash_blocks[0] and "pytest" in bash_blocks[1]
    assert all("torch==2.13.0" in block for block in bash_blocks)


def test_the_demo_model_is_introduced_before_the_commands():
    top = README[: README.index(fenced_blocks("bash")[0])]
    assert "demo model" in top and "does not summarize" in top


@pytest.mark.parametrize("block", fenced_blocks("python"), ids=lambda block: block.splitlines()[0][:40])
def test_python_blocks_run_without_warnings(block):
    result = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert unasked_output(result.stderr) == ""


def test_main_job_command_copies_the_example_lead_and_says_it_is_a_demo():
    # The set-up part (venv, pip install) already happened for this test run; run what follows it.
    command = fenced_blocks("bash")[0].strip().split(" && ")[-1]
    program, *arguments = command.split()
    assert program == ".venv/bin/bigbird-pegasus"
    executable = shutil.which("bigbird-pegasus", path=str(BIN))
    assert executable, "the bigbird-pegasus console script is not installed in this environment"
    result = subprocess.run([executable, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == example_document_lead()
    notice = unasked_output(result.stderr)
    assert len(notice.splitlines()) == 1 and "bundled demo model" in notice, notice


def test_local_push_round_trip_runs(tmp_path):
    (block,) = fenced_blocks("sh")
    assert "hub_server.py" in block and "bigbird-pegasus push" in block
    # This environment's executables, a free port, and no server left behind if a command fails (the trap must
    # not fail itself: under set -e a failing EXIT trap, e.g. `kill` of an already reaped job, sets the status).
    script = block.replace(".venv/bin/", f"{BIN}/").replace("8765", str(free_port()))
    script = "set -e\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n" + script
    result = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Pushed hub_repo to test-user/demo" in result.stdout
    assert result.stdout.rstrip().endswith(example_document_lead())
