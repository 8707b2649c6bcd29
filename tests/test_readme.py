"""The README's commands work: its Python blocks run, and its main-job command summarizes the example."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def fenced_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def test_exactly_two_setup_commands_come_first():
    bash_blocks = fenced_blocks("bash")
    assert len(bash_blocks) == 2
    assert README.index(bash_blocks[0]) < README.index(bash_blocks[1]) < README.index("## What this is")
    assert "bigbird-pegasus summarize" in bash_blocks[0] and "pytest" in bash_blocks[1]
    assert all("torch==2.13.0" in block for block in bash_blocks)


@pytest.mark.parametrize("block", fenced_blocks("python"), ids=lambda block: block.splitlines()[0][:40])
def test_python_blocks_run(block):
    result = subprocess.run([sys.executable, "-c", block], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_main_job_command_summarizes_the_example():
    # The set-up part (venv, pip install) already happened for this test run; run what follows it.
    command = fenced_blocks("bash")[0].strip().split(" && ")[-1]
    program, *arguments = command.split()
    assert program == ".venv/bin/bigbird-pegasus"
    executable = shutil.which("bigbird-pegasus", path=str(Path(sys.executable).parent))
    assert executable, "the bigbird-pegasus console script is not installed in this environment"
    result = subprocess.run([executable, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(result.stdout.split()) >= 5
