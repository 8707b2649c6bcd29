"""The main job works from a wheel installed in a fresh virtual environment: the demo model ships inside the package.

The wheel is built from a copy of the checkout and installed with --no-deps into a new venv, outside the checkout;
the dependencies (torch, transformers, ...) come from this environment through a .pth file, so the test takes
seconds instead of a full install. Only the package itself comes from the wheel.
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from bigbird_pegasus_hub.bundled import example_document_lead

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "src" / "bigbird_pegasus_hub" / "data" / "example_document.txt"
NOT_COPIED = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache")


def setuptools_major() -> int:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the package installed from a wheel; returns its bin folder."""
    work = tmp_path_factory.mktemp("wheel")
    source = shutil.copytree(ROOT, work / "source", ignore=NOT_COPIED)
    # Without build isolation where a recent enough setuptools is already here: an isolated build downloads one.
    isolation = ["--no-build-isolation"] if setuptools_major() >= 68 else []
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", work / "dist", source)
    (wheel,) = (work / "dist").glob("bigbird_pegasus_hub-*.whl")
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    run(sys.executable, "-m", "pip", "--python", bin_dir / "python", "install", "--no-deps", "-q", wheel)
    # Only now (pip must not see this environment's editable install of the package): the dependencies.
    fresh_site = run(bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout
    Path(fresh_site.strip(), "dependencies-of-the-test-environment.pth").write_text(
        sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    return bin_dir


def test_the_package_comes_from_the_wheel_with_its_demo_model(installed):
    located = run(installed / "python", "-c", "import bigbird_pegasus_hub.summarize as s; print(s.__file__); "
                  "print(s.DEFAULT_MODEL_DIR)", cwd=installed).stdout.split()
    venv = installed.parent.resolve()
    assert all(Path(path).resolve().is_relative_to(venv) for path in located), located
    assert Path(located[1]).name == "demo_repo"


def test_main_job_runs_from_the_installed_wheel(installed, tmp_path):
    document = shutil.copy(EXAMPLE, tmp_path / "article.txt")
    result = run(installed / "bigbird-pegasus", "summarize", document, cwd=tmp_path)
    assert result.stdout.strip() == example_document_lead()
    assert "bundled demo model" in result.stderr
