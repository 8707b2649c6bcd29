"""A minimal, in-memory Hugging Face Hub server for the test-suite (stdlib only).

It speaks the subset of the Hub HTTP protocol that the real ``huggingface_hub`` client (0.36 and 2.x)
uses to create repos and branches, commit files (preupload + git-lfs "basic" transfer + ndjson
commit, pull requests included), inspect repos and download files. Every repo keeps a real commit
history, so a download at an old commit sha returns the old bytes.

Usage::

    with HubServer() as hub:          # binds 127.0.0.1 on a free port (or ``port=``)
        os.environ["HF_ENDPOINT"] = hub.url   # must happen before huggingface_hub is imported
        ...
        hub.lfs_uploads()             # oids whose bytes were PUT, from the request log

or from a shell, to try `bigbird-pegasus push` without an account (README.md, "Trying push locally")::

    python tests/hub_server.py --port 8765 &      # serves until stopped; repos live in memory
    python tests/hub_server.py --port 8765 --wait # returns once the server answers

Knobs for failure tests: ``refuse_uploads`` (True -> 403, or an HTTP status code; note that the
client retries 429/5xx with backoff for several seconds) makes the stages named in
``refuse_stages`` (preupload, lfs, commit) answer a JSON error; ``lfs_threshold`` and
``lfs_patterns`` decide which files the preupload answer sends to LFS. Errors carry the Hub's
``X-Error-Code`` header (RepoNotFound, RevisionNotFound, EntryNotFound) so that the client raises
its typed exceptions. Any bearer token is accepted; writes and private repos need one.

Not supported: Xet storage (clients must run with HF_HUB_DISABLE_XET=1), multipart LFS uploads,
the discussions/pull-request API (PRs are only opened by ``create_pr=1`` on a commit), pagination
(every listing fits in one page), gated repos, Spaces runtime and any search/listing of repos.
"""

from __future__ import annotations

import argparse
import base64
import fnmatch
import hashlib
import json
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

USER = "test-user"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
UPLOAD_STAGES = ("preupload", "lfs", "commit")

# Same spirit as the Hub: its default .gitattributes routes these to LFS, and so does a size > 10 MiB.
DEFAULT_LFS_THRESHOLD = 10 * 1024 * 1024
DEFAULT_LFS_PATTERNS = (
    "*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack", "*.model",
    "*.npy", "*.npz", "*.pkl", "*.gguf", "*.zip", "*.gz", "*.tar", "*.arrow", "*.parquet",
)
INITIAL_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in DEFAULT_LFS_PATTERNS
).encode()


# ----------------------------------------------------------------------------- data model


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Blob:
    """One file of a commit tree; its bytes live in ``HubServer._contents`` under ``sha256``."""

    size: int
    sha256: str
    git_oid: str  # git blob sha1 of the content, or of the LFS pointer for LFS files
    lfs: bool
    pointer_size: int = 0

    @classmethod
    def make(cls, data: bytes, lfs: bool) -> "Blob":
        sha256 = hashlib.sha256(data).hexdigest()
        if not lfs:
            return cls(len(data), sha256, _git_blob_oid(data), False)
        pointer = _lfs_pointer(sha256, len(data))
        return cls(len(data), sha256, _git_blob_oid(pointer), True, len(pointer))

    @property
    def preupload_oid(self) -> str:
        # What the client compares against its local file to skip unchanged files:
        # sha256 for LFS files, git blob sha1 for regular files.
        return self.sha256 if self.lfs else self.git_oid


@dataclass(frozen=True)
class Commit:
    sha: str
    parent: str | None
    title: str
    message: str
    date: str
    tree: dict[str, Blob]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str = field(default_factory=_now)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)  # number -> head sha
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_oids: set[str] = field(default_factory=set)  # LFS objects uploaded to this repo

    @property
    def web_path(self) -> str:
        return URL_PREFIXES[self.repo_type] + self.repo_id


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str  # raw (still URL-quoted) path, without the query string
    query: str
    status: int
    body_size: int


class HttpError(Exception):
    """Raised by route handlers; becomes an error response with Hub-style headers."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload, status: int = 200, content_type: str = "application/json") -> "Response":
        return cls(status, json.dumps(payload).encode(), {"Content-Type": content_type})


# ----------------------------------------------------------------------------- routing

_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_API_REPO = r"^/api/(?P<type>models|datasets|spaces)/" + _REPO
_WEB_PREFIX = r"^/(?:(?P<prefix>datasets|spaces)/)?"
_ROUTES = [
    ("POST", r"^/api/repos/create$", "create_repo"),
    ("DELETE", r"^/api/repos/delete$", "delete_repo"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),
    ("GET", r"^/api/whoami-v2$", "whoami"),
    ("GET", r"^/api/agent-harnesses$", "agent_harnesses"),
    ("GET", _API_REPO + r"(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
    ("POST", _API_REPO + r"/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", _API_REPO + r"/commit/(?P<rev>[^/]+)$", "commit"),
    ("POST", _API_REPO + r"/branch/(?P<branch>[^/]+)$", "create_branch"),
    ("DELETE", _API_REPO + r"/branch/(?P<branch>[^/]+)$", "delete_branch"),
    ("POST", _API_REPO + r"/tag/(?P<rev>[^/]+)$", "create_tag"),
    ("GET", _API_REPO + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),
    ("POST", _API_REPO + r"/paths-info/(?P<rev>[^/]+)$", "paths_info"),
    ("GET", _API_REPO + r"/refs$", "refs"),
    ("GET", _API_REPO + r"/commits/(?P<rev>[^/]+)$", "commits"),
    ("POST", _WEB_PREFIX + r"(?P<ns>[^/]+)/(?P<name>[^/]+?)\.git/info/lfs/objects/batch$", "lfs_batch"),
    ("PUT", r"^/lfs-upload/(?P<type>model|dataset|space)/" + _REPO + r"/(?P<oid>[0-9a-f]{64})$", "lfs_put"),
    ("GET", _WEB_PREFIX + _REPO + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
]
_COMPILED_ROUTES = [(method, re.compile(pattern), name) for method, pattern, name in _ROUTES]


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    params: dict[str, str]  # URL-unquoted route groups

    def json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as e:
            raise HttpError(400, f"Invalid JSON body: {e}") from e

    def flag(self, name: str) -> bool:
        return self.query.get(name, [""])[-1].lower() in ("1", "true")

    @property
    def authenticated(self) -> bool:
        # Any bearer token is accepted: the tests check wiring, not permissions.
        return self.headers.get("authorization", "").startswith("Bearer ")


# ----------------------------------------------------------------------------- server


class HubServer:
    """In-memory Hub; thread-safe (one lock around all state), served from a background thread."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._address = (host, port)
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self.reset()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "HubServer":
        httpd = ThreadingHTTPServer(self._address, _Handler)
        httpd.daemon_threads = True
        httpd.hub = self  # type: ignore[attr-defined]
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("HubServer is not started")
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Forget every repo, the request log, and restore the default knobs."""
        with self._lock:
            self._repos: dict[tuple[str, str], Repo] = {}
            self._contents: dict[str, bytes] = {}  # sha256 -> bytes, shared by all repos
            self._log: list[LoggedRequest] = []
            self.yaml_validations: list[str] = []
            self.refuse_uploads: bool | int = False
            self.refuse_stages: tuple[str, ...] = UPLOAD_STAGES
            self.lfs_threshold = DEFAULT_LFS_THRESHOLD
            self.lfs_patterns: tuple[str, ...] = DEFAULT_LFS_PATTERNS

    # -- test helpers -------------------------------------------------------------------------

    @property
    def requests(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    def lfs_uploads(self) -> list[str]:
        """sha256 oids whose bytes were PUT successfully (from the request log)."""
        return [r.path.rsplit("/", 1)[-1] for r in self.requests if r.method == "PUT" and r.status == 200]

    def head(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            return self._resolve(self._get_repo(repo_type, repo_id), revision).sha

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Every file of the repo at ``revision``, as bytes."""
        with self._lock:
            commit = self._resolve(self._get_repo(repo_type, repo_id), revision)
            return {path: self._contents[blob.sha256] for path, blob in commit.tree.items()}

    # -- request entry point (called by the handler threads) ------------------------------------

    def handle(self, method: str, raw_path: str, query: str, headers: dict[str, str], body: bytes) -> Response:
        lookup = "GET" if method == "HEAD" else method
        try:
            for route_method, pattern, name in _COMPILED_ROUTES:
                match = pattern.match(raw_path)
                if route_method == lookup and match:
                    params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    request = Request(method, raw_path, parse_qs(query), headers, body, params)
                    with self._lock:
                        response = getattr(self, f"_route_{name}")(request)
                    break
            else:
                raise HttpError(404, f"No route for {method} {raw_path}")
        except (KeyError, ValueError, TypeError) as e:  # a payload this server cannot read
            response = Response.json({"error": f"Malformed request: {e!r}"}, status=400)
        except HttpError as e:
            response = Response.json({"error": e.message, **e.extra}, status=e.status)
            response.headers["X-Error-Message"] = e.message
            if e.code:
                response.headers["X-Error-Code"] = e.code
        with self._lock:
            self._log.append(LoggedRequest(method, raw_path, query, response.status, len(body)))
        return response

    # -- state helpers (lock held) ----------------------------------------------------------------

    def _get_repo(self, repo_type: str, repo_id: str, request: Request | None = None) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and request is not None and not request.authenticated):
            raise HttpError(404, f"Repository not found: {repo_id}", code="RepoNotFound")
        return repo

    def _repo_from(self, request: Request) -> Repo:
        params = request.params
        if "type" in params:
            repo_type = REPO_TYPES.get(params["type"], params["type"])
        else:
            repo_type = {"datasets": "dataset", "spaces": "space"}.get(params.get("prefix", ""), "model")
        return self._get_repo(repo_type, f"{params['ns']}/{params['name']}", request)

    def _resolve(self, repo: Repo, rev: str) -> Commit:
        """Branch, tag, refs/heads/*, refs/tags/*, refs/pr/N or full commit sha -> commit."""
        sha = repo.branches.get(rev) or repo.tags.get(rev)
        if sha is None and rev.startswith("refs/heads/"):
            sha = repo.branches.get(rev[len("refs/heads/") :])
        if sha is None and rev.startswith("refs/tags/"):
            sha = repo.tags.get(rev[len("refs/tags/") :])
        if sha is None and (m := re.fullmatch(r"refs/pr/(\d+)", rev)):
            sha = repo.pull_requests.get(int(m.group(1)))
        if sha is None and rev in repo.commits:
            sha = rev
        if sha is None:
            raise HttpError(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        return repo.commits[sha]

    def _new_commit(self, parent: Commit | None, tree: dict[str, Blob], title: str, message: str) -> Commit:
        # Unique, not content-addressed: two identical commits still get two shas, like git.
        seed = f"{parent.sha if parent else ''}|{title}|{time.time_ns()}|{uuid.uuid4()}"
        sha = hashlib.sha1(seed.encode()).hexdigest()
        return Commit(sha, parent.sha if parent else None, title, message, _now(), dict(tree))

    def _store(self, data: bytes, lfs: bool) -> Blob:
        blob = Blob.make(data, lfs)
        self._contents[blob.sha256] = data
        return blob

    def _check_write(self, request: Request, stage: str | None = None) -> None:
        if not request.authenticated:
            raise HttpError(401, "Invalid credentials in Authorization header")
        self._refuse(stage)

    def _refuse(self, stage: str | None) -> None:
        if stage in self.refuse_stages and self.refuse_uploads:
            status = 403 if self.refuse_uploads is True else int(self.refuse_uploads)
            raise HttpError(status, f"Uploads are refused by this test server ({stage}).")

    def _web_url(self, repo: Repo, *suffix: str) -> str:
        return "/".join([self.url, repo.web_path, *suffix])

    # -- repos ------------------------------------------------------------------------------------

    def _route_whoami(self, request: Request) -> Response:
        if not request.authenticated:
            raise HttpError(401, "Invalid credentials in Authorization header")
        return Response.json(
            {
                "type": "user",
                "id": "0" * 24,
                "name": USER,
                "fullname": "Test User",
                "email": f"{USER}@example.com",
                "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}},
            }
        )

    def _route_agent_harnesses(self, request: Request) -> Response:
        # huggingface_hub 2.x fetches this registry for its user-agent; an empty one disables detection.
        return Response.json({"standardEnvVars": [], "harnesses": {}})

    def _route_create_repo(self, request: Request) -> Response:
        self._check_write(request)
        payload = request.json()
        name, repo_type = payload.get("name"), payload.get("type") or "model"
        if not name or repo_type not in URL_PREFIXES:
            raise HttpError(400, "Invalid repo name or type")
        repo_id = f"{payload.get('organization') or USER}/{name}"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        existing = self._repos.get((repo_type, repo_id))
        if existing is not None:
            # The client reads `url` from the 409 body when exist_ok=True.
            raise HttpError(409, "You already created this repo", extra={"url": self._web_url(existing)})
        repo = Repo(repo_type, repo_id, private)
        # Like the Hub: a new repo starts with one commit holding a default .gitattributes.
        gitattributes = {".gitattributes": self._store(INITIAL_GITATTRIBUTES, lfs=False)}
        initial = self._new_commit(None, gitattributes, "initial commit", "")
        repo.commits[initial.sha] = initial
        repo.branches["main"] = initial.sha
        self._repos[(repo_type, repo_id)] = repo
        return Response.json({"url": self._web_url(repo), "name": repo_id, "id": repo_id})

    def _route_delete_repo(self, request: Request) -> Response:
        self._check_write(request)
        payload = request.json()
        repo_id = f"{payload.get('organization') or USER}/{payload.get('name')}"
        repo = self._get_repo(payload.get("type") or "model", repo_id)
        del self._repos[(repo.repo_type, repo.repo_id)]
        return Response.json({})

    def _route_repo_info(self, request: Request) -> Response:
        repo = self._repo_from(request)
        commit = self._resolve(repo, request.params.get("rev", "main"))
        siblings = []
        for path, blob in sorted(commit.tree.items()):
            sibling = {"rfilename": path, "size": blob.size, "blobId": blob.git_oid}
            if blob.lfs:
                sibling["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": blob.pointer_size}
            siblings.append(sibling)
        return Response.json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.sha,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
            }
        )

    def _route_validate_yaml(self, request: Request) -> Response:
        content = request.json().get("content", "")
        self.yaml_validations.append(content)
        # stdlib has no YAML parser: only check that a front matter block is closed.
        if content.startswith("---") and content.count("\n---") < 1:
            return Response.json({"errors": [{"message": "Unclosed YAML front matter"}], "warnings": []}, 400)
        return Response.json({"errors": [], "warnings": []})

    # -- refs ----------------------------------------------------------------------------------------

    def _route_create_branch(self, request: Request) -> Response:
        self._check_write(request)
        repo, branch = self._repo_from(request), request.params["branch"]
        if branch in repo.branches:
            raise HttpError(409, f"Reference already exists: refs/heads/{branch}")
        start = request.json().get("startingPoint") or "main"
        repo.branches[branch] = self._resolve(repo, start).sha
        return Response.json({})

    def _route_delete_branch(self, request: Request) -> Response:
        self._check_write(request)
        repo, branch = self._repo_from(request), request.params["branch"]
        if branch not in repo.branches or branch == "main":
            raise HttpError(404 if branch != "main" else 403, f"Cannot delete branch {branch}", code="RevisionNotFound")
        del repo.branches[branch]
        return Response.json({})

    def _route_create_tag(self, request: Request) -> Response:
        self._check_write(request)
        repo = self._repo_from(request)
        tag = request.json().get("tag")
        if not tag or tag in repo.tags:
            raise HttpError(409, f"Tag already exists: {tag}")
        repo.tags[tag] = self._resolve(repo, request.params["rev"]).sha
        return Response.json({})

    def _route_refs(self, request: Request) -> Response:
        repo = self._repo_from(request)

        def ref(name: str, full: str, sha: str) -> dict:
            return {"name": name, "ref": full, "targetCommit": sha}

        prs = [ref(f"refs/pr/{n}", f"refs/pr/{n}", sha) for n, sha in sorted(repo.pull_requests.items())]
        return Response.json(
            {
                "branches": [ref(b, f"refs/heads/{b}", sha) for b, sha in sorted(repo.branches.items())],
                "converts": [],
                "tags": [ref(t, f"refs/tags/{t}", sha) for t, sha in sorted(repo.tags.items())],
                "pullRequests": prs,
            }
        )

    def _route_commits(self, request: Request) -> Response:
        repo = self._repo_from(request)
        commit: Commit | None = self._resolve(repo, request.params["rev"])
        history = []
        while commit is not None:
            history.append(
                {
                    "id": commit.sha,
                    "title": commit.title,
                    "message": commit.message,
                    "authors": [{"user": USER, "avatar": ""}],
                    "date": commit.date,
                }
            )
            commit = repo.commits.get(commit.parent) if commit.parent else None
        return Response.json(history)

    # -- trees ----------------------------------------------------------------------------------------

    @staticmethod
    def _file_entry(path: str, blob: Blob) -> dict:
        entry = {"type": "file", "oid": blob.git_oid, "size": blob.size, "path": path}
        if blob.lfs:
            entry["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
        return entry

    @staticmethod
    def _dir_entry(path: str, tree: dict[str, Blob]) -> dict:
        inside = sorted((p, b.git_oid) for p, b in tree.items() if p.startswith(path + "/"))
        return {"type": "directory", "oid": hashlib.sha1(repr(inside).encode()).hexdigest(), "size": 0, "path": path}

    @staticmethod
    def _folders(tree: dict[str, Blob]) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in tree for i in range(1, p.count("/") + 1)}

    def _route_tree(self, request: Request) -> Response:
        tree = self._resolve(self._repo_from(request), request.params["rev"]).tree
        base = request.params.get("path", "").strip("/")
        folders = self._folders(tree)
        if base and base not in folders:
            raise HttpError(404, f"Folder not found: {base}", code="EntryNotFound")
        prefix = base + "/" if base else ""

        def listed(path: str) -> bool:
            rest = path[len(prefix) :]
            return path.startswith(prefix) and bool(rest) and (request.flag("recursive") or "/" not in rest)

        entries = [self._dir_entry(d, tree) for d in sorted(folders) if listed(d)]
        entries += [self._file_entry(p, b) for p, b in sorted(tree.items()) if listed(p)]
        return Response.json(entries)

    def _route_paths_info(self, request: Request) -> Response:
        tree = self._resolve(self._repo_from(request), request.params["rev"]).tree
        form = parse_qs(request.body.decode())
        folders = self._folders(tree)
        entries = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in tree:
                entries.append(self._file_entry(path, tree[path]))
            elif path in folders:
                entries.append(self._dir_entry(path, tree))
        return Response.json(entries)

    # -- uploads ----------------------------------------------------------------------------------------

    def _is_lfs(self, path: str, size: int, sample: bytes) -> bool:
        name = path.rsplit("/", 1)[-1]
        return (
            size >= self.lfs_threshold
            or any(fnmatch.fnmatch(name, pattern) for pattern in self.lfs_patterns)
            or b"\0" in sample  # binary content never goes into a regular git blob
        )

    @staticmethod
    def _is_ignored(path: str, gitignore: str) -> bool:
        """Tiny .gitignore subset: globs on the full path or on any path component, no negation."""
        parts = path.split("/")
        for line in gitignore.splitlines():
            pattern = line.strip()
            if not pattern or pattern.startswith(("#", "!")):
                continue
            pattern = pattern.lstrip("/").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*"):
                return True
            if "/" not in pattern and any(fnmatch.fnmatch(part, pattern) for part in parts):
                return True
        return False

    def _route_preupload(self, request: Request) -> Response:
        self._check_write(request, "preupload")
        head = self._resolve(self._repo_from(request), request.params["rev"])
        tree, payload = head.tree, request.json()
        gitignore = payload.get("gitIgnore")
        if gitignore is None and ".gitignore" in tree:
            gitignore = self._contents[tree[".gitignore"].sha256].decode(errors="replace")
        files = []
        for item in payload.get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            sample = base64.b64decode(item.get("sample", ""))
            existing = tree.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if self._is_lfs(path, size, sample) else "regular",
                    "shouldIgnore": bool(gitignore) and self._is_ignored(path, gitignore),
                    "oid": existing.preupload_oid if existing else None,
                }
            )
        return Response.json({"files": files, "commitOid": head.sha})

    def _route_lfs_batch(self, request: Request) -> Response:
        self._check_write(request, "lfs")
        repo = self._repo_from(request)
        payload = request.json()
        if payload.get("operation") != "upload":
            raise HttpError(400, "Only the 'upload' operation of the LFS batch API is supported")
        if "basic" not in payload.get("transfers", ["basic"]):
            raise HttpError(400, "Only the 'basic' LFS transfer is supported")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            answer = {"oid": oid, "size": size, "authenticated": True}
            if oid not in repo.lfs_oids:  # no "actions" tells the client the object is already stored
                href = f"{self.url}/lfs-upload/{repo.repo_type}/{repo.repo_id}/{oid}"
                answer["actions"] = {"upload": {"href": href, "expires_in": 3600}}
            objects.append(answer)
        return Response.json(
            {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
            content_type="application/vnd.git-lfs+json",
        )

    def _route_lfs_put(self, request: Request) -> Response:
        self._refuse("lfs")  # no auth check: like a presigned URL, the client sends no token here
        params = request.params
        repo = self._get_repo(params["type"], f"{params['ns']}/{params['name']}")
        oid = request.params["oid"]
        if hashlib.sha256(request.body).hexdigest() != oid:
            raise HttpError(400, f"sha256 of the uploaded bytes does not match {oid}")
        self._contents[oid] = request.body
        repo.lfs_oids.add(oid)
        return Response()

    def _route_commit(self, request: Request) -> Response:
        self._check_write(request, "commit")
        repo = self._repo_from(request)
        rev, create_pr = request.params["rev"], request.flag("create_pr")
        base = self._resolve(repo, rev)
        lines = [json.loads(line) for line in request.body.decode().splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line.get("key") == "header"), None)
        if header is None or not header.get("summary"):
            raise HttpError(400, "The commit payload needs a header line with a summary")
        if not create_pr:
            self._check_branch_head(repo, rev, base, header.get("parentCommit"))
        tree = self._apply_operations(repo, dict(base.tree), lines)
        commit = self._new_commit(base, tree, header["summary"], header.get("description", ""))
        repo.commits[commit.sha] = commit

        pr_url = None
        if create_pr:
            number = max(repo.pull_requests, default=0) + 1
            repo.pull_requests[number] = commit.sha
            pr_url = self._web_url(repo, "discussions", str(number))
        elif rev in repo.branches or rev.startswith("refs/heads/"):
            repo.branches[rev.removeprefix("refs/heads/")] = commit.sha
        else:
            repo.pull_requests[int(rev.rsplit("/", 1)[-1])] = commit.sha
        return Response.json(
            {
                "success": True,
                "commitOid": commit.sha,
                "commitUrl": self._web_url(repo, "commit", commit.sha),
                "pullRequestUrl": pr_url,
                "hookOutput": "",
            }
        )

    @staticmethod
    def _check_branch_head(repo: Repo, rev: str, head: Commit, parent_commit: str | None) -> None:
        is_branch = rev in repo.branches or rev.removeprefix("refs/heads/") in repo.branches
        if not is_branch and not re.fullmatch(r"refs/pr/\d+", rev):
            raise HttpError(400, f"Can only commit to a branch or a pull request ref, not {rev}")
        if parent_commit and not head.sha.startswith(parent_commit):
            raise HttpError(412, "A commit has happened since. Please refresh and try again.")

    def _apply_operations(self, repo: Repo, tree: dict[str, Blob], lines: list[dict]) -> dict[str, Blob]:
        for line in lines:
            key, value = line.get("key"), line.get("value", {})
            if key == "header":
                continue
            path = str(value.get("path", "")).lstrip("/")
            if key == "file":
                content = value["content"]
                data = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                tree[path] = self._store(data, lfs=False)
            elif key == "lfsFile":
                oid = value["oid"]
                if oid not in repo.lfs_oids:
                    raise HttpError(422, f"LFS object {oid} for {path} was never uploaded to this repo")
                tree[path] = Blob.make(self._contents[oid], lfs=True)
            elif key == "deletedFile":
                if tree.pop(path, None) is None:
                    raise HttpError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
            elif key == "deletedFolder":
                inside = [p for p in tree if p.startswith(path.rstrip("/") + "/")]
                if not inside:
                    raise HttpError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
                for p in inside:
                    del tree[p]
            else:
                raise HttpError(400, f"Unknown commit operation: {key}")
        return tree

    # -- downloads ----------------------------------------------------------------------------------------

    def _route_resolve(self, request: Request) -> Response:
        repo = self._repo_from(request)
        commit = self._resolve(repo, request.params["rev"])
        path = request.params["path"]
        blob = commit.tree.get(path)
        if blob is None:
            raise HttpError(404, f"Entry not found: {path}", code="EntryNotFound")
        data = self._contents[blob.sha256]
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{blob.sha256 if blob.lfs else blob.git_oid}"',
        }
        if blob.lfs:
            # On the Hub these come with a redirect to the CDN; serving the bytes directly is enough.
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(blob.size)
        start, end = self._byte_range(request.headers.get("range"), len(data))
        if start is None:
            return Response(200, data, headers)
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(206, data[start : end + 1], headers)

    @staticmethod
    def _byte_range(header: str | None, total: int) -> tuple[int | None, int | None]:
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header or "")
        if not match or (not match.group(1) and not match.group(2)):
            return None, None
        if not match.group(1):  # suffix range: the last N bytes
            return max(total - int(match.group(2)), 0), total - 1
        start = int(match.group(1))
        end = min(int(match.group(2)), total - 1) if match.group(2) else total - 1
        if start >= total:
            raise HttpError(416, "Requested range not satisfiable")
        return start, end


# ----------------------------------------------------------------------------- HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: both requests and httpx pool connections
    server_version = "TestHub/1.0"

    def _serve(self) -> None:
        split = urlsplit(self.path)
        body = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        try:
            response = hub.handle(self.command, split.path, split.query, headers, body)
        except Exception as e:  # a server bug must surface as a 500, not a hung client
            response = Response.json({"error": f"test hub crashed: {e!r}"}, status=500)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - silence stderr noise
        pass



# ----------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tests/hub_server.py",
        description="Serve an in-memory Hub on 127.0.0.1 until stopped (Ctrl-C), to try uploads and downloads "
                    "without an account. Clients need HF_ENDPOINT=http://127.0.0.1:PORT, any HF_TOKEN, and "
                    "HF_HUB_DISABLE_XET=1.",
    )
    parser.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765)")
    parser.add_argument("--wait", action="store_true",
                        help="do not serve: wait until a server answers on --port (at most 60 s), then exit")
    args = parser.parse_args(argv)
    if args.wait:
        return 0 if _wait_for_port(args.port, timeout=60.0) else 1
    server = HubServer(port=args.port).start()
    print(f"Test Hub on {server.url} (in memory; Ctrl-C stops it). Clients:\n"
          f"  export HF_ENDPOINT={server.url} HF_TOKEN=anything HF_HUB_DISABLE_XET=1", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def _wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.1)
    print(f"No test Hub answers on 127.0.0.1:{port}.", file=sys.stderr)
    return False


if __name__ == "__main__":
    sys.exit(main())
