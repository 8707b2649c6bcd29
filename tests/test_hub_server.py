"""The fake Hub (tests/hub_server.py) against the real huggingface_hub client installed in this venv."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

README = b"---\nlicense: apache-2.0\ntags:\n- summarization\n---\n# Test model\n"
TEN_MB = 10 * 1024 * 1024


@pytest.fixture
def api() -> HfApi:
    return HfApi()


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def small_files() -> dict[str, bytes]:
    return {
        "README.md": README,
        "config.json": b'{"d_model": 16}\n',
        "nested/notes.txt": b"hello hub\n",
        "model.safetensors": os.urandom(300_000),  # LFS by file pattern
    }


@pytest.fixture
def big_files(small_files) -> dict[str, bytes]:
    # A text file above the Hub's 10 MiB limit: LFS by size alone (no pattern, no NUL byte).
    return {**small_files, "big.txt": b"0123456789abcdef\n" * (TEN_MB // 17 + 1000)}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _http(method: str, url: str, body: bytes | None = None, headers: dict | None = None):
    """Raw request with urllib (same on both client versions); returns (status, headers, body)."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def _ndjson_commit(summary: str, *operations: dict) -> bytes:
    lines = [{"key": "header", "value": {"summary": summary, "description": ""}}, *operations]
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


# ----------------------------------------------------------------------------- wiring


def test_client_is_wired_to_the_local_hub(hub):
    assert hub.requests == []  # the `hub` fixture hands out a fresh server state
    assert constants.ENDPOINT == os.environ["HF_ENDPOINT"] == hub.url
    assert hub.url.startswith("http://127.0.0.1:")
    assert constants.HF_HUB_DISABLE_XET and not constants.HF_HUB_OFFLINE
    assert os.environ["HF_TOKEN"] and Path(constants.HF_HUB_CACHE).is_relative_to(os.environ["HF_HOME"])


def test_subprocess_inherits_the_hub(hub, api, hub_repo_id):
    api.create_repo(hub_repo_id)
    api.upload_file(path_or_fileobj=b"from parent", path_in_repo="a.txt", repo_id=hub_repo_id)
    code = (
        "import sys; from huggingface_hub import hf_hub_download;"
        f"sys.stdout.write(open(hf_hub_download({hub_repo_id!r}, 'a.txt')).read())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from parent"


# ----------------------------------------------------------------------------- repos


def test_create_repo_conflict_and_exist_ok(hub, api, hub_repo_id):
    url = api.create_repo(hub_repo_id)
    assert url.repo_id == hub_repo_id and url.startswith(hub.url)

    with pytest.raises(HfHubHTTPError) as excinfo:
        api.create_repo(hub_repo_id)
    assert excinfo.value.response.status_code == 409
    assert api.create_repo(hub_repo_id, exist_ok=True).repo_id == hub_repo_id

    info = api.model_info(hub_repo_id)
    assert info.id == hub_repo_id and len(info.sha) == 40 and info.private is False
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # the Hub's initial commit

    api.create_repo(hub_repo_id + "-private", private=True)
    assert api.model_info(hub_repo_id + "-private").private is True
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(hub_repo_id + "-private", token=False)


def test_conflict_body_carries_the_repo_url(hub, api, hub_repo_id):
    api.create_repo(hub_repo_id)
    ns, name = hub_repo_id.split("/")
    status, _, body = _http(
        "POST",
        f"{hub.url}/api/repos/create",
        json.dumps({"name": name, "organization": ns, "type": "model"}).encode(),
        {"Authorization": "Bearer test-token", "Content-Type": "application/json"},
    )
    assert status == 409 and json.loads(body)["url"] == f"{hub.url}/{hub_repo_id}"


# ----------------------------------------------------------------------------- upload + download


def test_upload_folder_then_download_every_file(hub, api, hub_repo_id, big_files, tmp_path):
    api.create_repo(hub_repo_id)
    folder = _write_folder(tmp_path / "src", big_files)
    info = api.upload_folder(folder_path=folder, repo_id=hub_repo_id, commit_message="add model")

    assert info.oid == hub.head(hub_repo_id)
    stored = hub.files(hub_repo_id)
    assert {k: v for k, v in stored.items() if k != ".gitattributes"} == big_files
    # Only the LFS files travelled as raw bytes, each checked against its sha256 by the server.
    assert sorted(hub.lfs_uploads()) == sorted([_sha256(big_files["model.safetensors"]), _sha256(big_files["big.txt"])])
    assert README.decode() in hub.yaml_validations

    tree = {f.path: f for f in api.list_repo_tree(hub_repo_id, recursive=True) if hasattr(f, "size")}
    assert {path for path, f in tree.items() if f.lfs is not None} == {"model.safetensors", "big.txt"}
    assert tree["big.txt"].lfs.sha256 == _sha256(big_files["big.txt"])
    assert sorted(api.list_repo_files(hub_repo_id)) == sorted([".gitattributes", *big_files])

    for name, data in big_files.items():
        path = hf_hub_download(hub_repo_id, name, cache_dir=tmp_path / "cache-files")
        assert Path(path).read_bytes() == data, name

    snapshot = Path(snapshot_download(hub_repo_id, cache_dir=tmp_path / "cache-snapshot"))
    assert snapshot.name == info.oid
    for name, data in big_files.items():
        assert (snapshot / name).read_bytes() == data, name


def test_unchanged_upload_sends_no_lfs_bytes(hub, api, hub_repo_id, small_files, tmp_path):
    api.create_repo(hub_repo_id)
    folder = _write_folder(tmp_path / "src", small_files)
    first = api.upload_folder(folder_path=folder, repo_id=hub_repo_id)
    hub.clear_log()

    again = api.upload_folder(folder_path=folder, repo_id=hub_repo_id)
    assert hub.lfs_uploads() == []
    assert not [r for r in hub.requests if "/commit/" in r.path]  # the client skipped the no-op commit
    assert again.oid == first.oid == hub.head(hub_repo_id)

    # Change one LFS file: only its bytes are sent.
    new_weights = os.urandom(200_000)
    (folder / "model.safetensors").write_bytes(new_weights)
    third = api.upload_folder(folder_path=folder, repo_id=hub_repo_id)
    assert hub.lfs_uploads() == [_sha256(new_weights)]
    assert third.oid != first.oid and hub.files(hub_repo_id)["model.safetensors"] == new_weights


def test_old_commit_still_serves_old_contents(hub, api, hub_repo_id, tmp_path):
    api.create_repo(hub_repo_id)
    v1 = api.create_commit(
        hub_repo_id,
        [
            CommitOperationAdd("config.json", b'{"v": 1}'),
            CommitOperationAdd("model.safetensors", b"\0weights-v1" * 1000),
        ],
        commit_message="v1",
    )
    v2 = api.upload_file(path_or_fileobj=b'{"v": 2}', path_in_repo="config.json", repo_id=hub_repo_id)
    api.upload_file(path_or_fileobj=b"\0weights-v2" * 1000, path_in_repo="model.safetensors", repo_id=hub_repo_id)

    def config_at(revision: str | None) -> bytes:
        return Path(hf_hub_download(hub_repo_id, "config.json", revision=revision, cache_dir=tmp_path / "c")).read_bytes()

    assert config_at(None) == b'{"v": 2}'
    assert config_at(v1.oid) == b'{"v": 1}'
    old = Path(snapshot_download(hub_repo_id, revision=v1.oid, cache_dir=tmp_path / "snap"))
    assert (old / "model.safetensors").read_bytes() == b"\0weights-v1" * 1000

    history = [c.commit_id for c in api.list_repo_commits(hub_repo_id)]
    assert history[1:3] == [v2.oid, v1.oid] and len(history) == 4
    assert api.list_repo_commits(hub_repo_id)[-1].title == "initial commit"


def test_commit_without_changes_is_accepted(hub, api, hub_repo_id):
    api.create_repo(hub_repo_id)
    api.upload_file(path_or_fileobj=b"same", path_in_repo="a.txt", repo_id=hub_repo_id)
    before = hub.head(hub_repo_id)

    status, _, body = _http(
        "POST",
        f"{hub.url}/api/models/{hub_repo_id}/commit/main",
        _ndjson_commit("empty", {"key": "file", "value": {"path": "a.txt", "encoding": "base64",
                                                         "content": base64.b64encode(b"same").decode()}}),
        {"Authorization": "Bearer test-token", "Content-Type": "application/x-ndjson"},
    )
    reply = json.loads(body)
    assert status == 200 and reply["commitOid"] != before and reply["pullRequestUrl"] is None
    assert reply["commitUrl"] == f"{hub.url}/{hub_repo_id}/commit/{reply['commitOid']}"
    assert hub.files(hub_repo_id) == hub.files(hub_repo_id, revision=before)


def test_stale_parent_commit_is_rejected(hub, api, hub_repo_id):
    api.create_repo(hub_repo_id)
    parent = hub.head(hub_repo_id)
    api.upload_file(path_or_fileobj=b"1", path_in_repo="a.txt", repo_id=hub_repo_id)
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_file(path_or_fileobj=b"2", path_in_repo="a.txt", repo_id=hub_repo_id, parent_commit=parent)
    assert excinfo.value.response.status_code == 412


# ----------------------------------------------------------------------------- refs


def test_create_pr_opens_refs_pr_n(hub, api, hub_repo_id, small_files, tmp_path):
    api.create_repo(hub_repo_id)
    folder = _write_folder(tmp_path / "src", small_files)
    pr = api.upload_folder(folder_path=folder, repo_id=hub_repo_id, create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and pr.pr_num == 1
    assert pr.pr_url == f"{hub.url}/{hub_repo_id}/discussions/1"

    path = hf_hub_download(hub_repo_id, "model.safetensors", revision="refs/pr/1", cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == small_files["model.safetensors"]
    with pytest.raises(EntryNotFoundError):  # main is untouched
        hf_hub_download(hub_repo_id, "model.safetensors", cache_dir=tmp_path / "c")

    second = api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo_id, create_pr=True)
    assert second.pr_revision == "refs/pr/2"
    refs = api.list_repo_refs(hub_repo_id, include_pull_requests=True)
    assert sorted(r.ref for r in refs.pull_requests) == ["refs/pr/1", "refs/pr/2"]

    # Pushing more commits to an open PR moves its ref.
    follow_up = api.upload_file(path_or_fileobj=b"y", path_in_repo="y.txt", repo_id=hub_repo_id, revision="refs/pr/1")
    assert hub.head(hub_repo_id, "refs/pr/1") == follow_up.oid


def test_upload_to_a_branch(hub, api, hub_repo_id, tmp_path):
    api.create_repo(hub_repo_id)
    api.create_branch(hub_repo_id, branch="dev")
    api.create_branch(hub_repo_id, branch="dev", exist_ok=True)
    with pytest.raises(HfHubHTTPError):
        api.create_branch(hub_repo_id, branch="dev")

    info = api.upload_file(path_or_fileobj=b"dev only", path_in_repo="dev.txt", repo_id=hub_repo_id, revision="dev")
    assert hub.head(hub_repo_id, "dev") == info.oid != hub.head(hub_repo_id)
    path = hf_hub_download(hub_repo_id, "dev.txt", revision="dev", cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == b"dev only"
    assert "dev.txt" not in api.list_repo_files(hub_repo_id)
    assert {b.name for b in api.list_repo_refs(hub_repo_id).branches} == {"main", "dev"}


# ----------------------------------------------------------------------------- errors


def test_missing_file_repo_and_revision_raise_hub_errors(hub, api, hub_repo_id, tmp_path):
    api.create_repo(hub_repo_id)
    cache = tmp_path / "cache"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(hub_repo_id, "nope.bin", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("test-user/does-not-exist", "config.json", cache_dir=cache)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("test-user/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(hub_repo_id, ".gitattributes", revision="no-such-branch", cache_dir=cache)


def test_resolve_headers(hub, api, hub_repo_id):
    api.create_repo(hub_repo_id)
    weights = b"\0" + os.urandom(5000)
    api.upload_file(path_or_fileobj=weights, path_in_repo="w.bin", repo_id=hub_repo_id)
    head = hub.head(hub_repo_id)

    status, headers, body = _http("HEAD", f"{hub.url}/{hub_repo_id}/resolve/main/w.bin")
    assert status == 200 and body == b""
    assert headers["X-Repo-Commit"] == head
    assert headers["X-Linked-Etag"] == headers["ETag"] == f'"{_sha256(weights)}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(len(weights))

    status, headers, _ = _http("HEAD", f"{hub.url}/{hub_repo_id}/resolve/{head}/.gitattributes")
    assert status == 200 and "X-Linked-Etag" not in headers and len(headers["ETag"]) == 42

    status, headers, body = _http("GET", f"{hub.url}/{hub_repo_id}/resolve/main/w.bin", headers={"Range": "bytes=10-"})
    assert status == 206 and body == weights[10:]

    for url, code in [
        (f"{hub.url}/{hub_repo_id}/resolve/main/missing.txt", "EntryNotFound"),
        (f"{hub.url}/{hub_repo_id}/resolve/nope/w.bin", "RevisionNotFound"),
        (f"{hub.url}/test-user/missing/resolve/main/w.bin", "RepoNotFound"),
    ]:
        status, headers, _ = _http("HEAD", url)
        assert (status, headers["X-Error-Code"]) == (404, code)


def test_refused_uploads_raise_and_commit_nothing(hub, api, hub_repo_id, small_files, tmp_path):
    api.create_repo(hub_repo_id)
    head = hub.head(hub_repo_id)
    hub.refuse_uploads = True
    with pytest.raises(HfHubHTTPError) as excinfo:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo_id)
    assert excinfo.value.response.status_code == 403

    # Refuse only the final commit: the LFS bytes go up, yet the branch does not move.
    hub.refuse_stages = ("commit",)
    folder = _write_folder(tmp_path / "src", small_files)
    with pytest.raises(HfHubHTTPError):
        api.upload_folder(folder_path=folder, repo_id=hub_repo_id)
    assert hub.lfs_uploads() == [_sha256(small_files["model.safetensors"])]
    assert hub.head(hub_repo_id) == head
