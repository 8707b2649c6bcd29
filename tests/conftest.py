"""Shared test setup: point every Hugging Face client at a local fake Hub (tests/hub_server.py).

huggingface_hub reads HF_ENDPOINT (and the cache paths) once, when it is first imported, so the
environment is set here at import time -- pytest imports conftest.py before any test module.
The port is reserved now and the session fixture `hub_server` starts the server on it. Tests that
need a clean Hub take the function fixture `hub`; subprocesses inherit the environment.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also under --import-mode=importlib
from hub_server import HubServer  # noqa: E402

_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _assert_loopback(url: str) -> None:
    if urlsplit(url).hostname not in _LOOPBACK_HOSTS:
        raise RuntimeError(f"Tests must never talk to a real Hub, but HF_ENDPOINT is {url!r}")


if "huggingface_hub" in sys.modules:
    # Too late: it already read HF_ENDPOINT, and could talk to huggingface.co.
    raise RuntimeError("huggingface_hub was imported before tests/conftest.py could configure it")

HUB_PORT = _free_port()
HUB_URL = f"http://127.0.0.1:{HUB_PORT}"
HUB_TOKEN = "test-token"
_HF_HOME = tempfile.mkdtemp(prefix="test-hf-home-")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)

os.environ.update(
    {
        "HF_ENDPOINT": HUB_URL,
        "HF_TOKEN": HUB_TOKEN,
        "HF_HOME": _HF_HOME,
        "HF_HUB_CACHE": os.path.join(_HF_HOME, "hub"),
        "HF_HUB_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",  # the fake Hub only speaks git-lfs, not Xet storage
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "DISABLE_SAFETENSORS_CONVERSION": "true",  # transformers would call a real Space otherwise
    }
)
for _var in ("HF_HUB_ENABLE_HF_TRANSFER", "HF_HUB_CACHE_DIR", "HUGGINGFACE_HUB_CACHE", "HF_STAGING"):
    os.environ.pop(_var, None)
_assert_loopback(os.environ["HF_ENDPOINT"])


@pytest.fixture(scope="session")
def hub_server():
    """The session-wide fake Hub, listening on HF_ENDPOINT."""
    from huggingface_hub import constants

    _assert_loopback(constants.ENDPOINT)
    assert constants.ENDPOINT == HUB_URL, f"huggingface_hub uses {constants.ENDPOINT}, not the test Hub"
    with HubServer(port=HUB_PORT) as server:
        yield server


@pytest.fixture
def hub(hub_server):
    """The fake Hub, emptied (repos, request log, failure knobs) before each test."""
    hub_server.reset()
    yield hub_server
    hub_server.reset()


@pytest.fixture
def hub_repo_id() -> str:
    """A repo id that no other test uses."""
    return f"test-user/repo-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session", autouse=True)
def single_thread():
    """Tiny models run fastest on one thread, and OpenMP threads stall when test processes share the CPUs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """The Pegasus tokenizer trained on the package's corpus, shared by every test."""
    from tiny import tiny_tokenizer

    return tiny_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tokenizer_size(tokenizer_dir) -> int:
    """The number of ids of `tokenizer_dir`: the vocab_size of a tiny model that uses it."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(tokenizer_dir))


@pytest.fixture(scope="session")
def reference_tokenizer_dir(tmp_path_factory):
    """A tokenizer that fits the vocabulary (320 ids) of the TensorFlow reference checkpoint."""
    from tiny import word_level_tokenizer

    return word_level_tokenizer(tmp_path_factory.mktemp("reference-tokenizer"), 320)


@pytest.fixture(scope="session")
def train_step_tokenizer_dir(tmp_path_factory):
    """A tokenizer that fits the vocabulary (64 ids) of the TensorFlow training-step checkpoint."""
    from tiny import word_level_tokenizer

    return word_level_tokenizer(tmp_path_factory.mktemp("train-step-tokenizer"), 64)
