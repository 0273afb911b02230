"""A loopback HTTP server that emulates the parts of the Hugging Face Hub used by ``huggingface_hub``.

The real ``huggingface_hub`` client (2.4.x) can download from and upload to a :class:`LoopbackHub`:

* ``HEAD``/``GET /{repo_id}/resolve/{revision}/{path}`` (with ``Range`` support), used by ``hf_hub_download``;
* ``GET /api/models/{repo_id}[/revision/{revision}]`` and
  ``GET /api/models/{repo_id}/tree/{revision}[/{path}]``, used by ``HfApi.model_info`` / ``repo_info`` /
  ``list_repo_tree`` and ``snapshot_download``;
* ``POST /api/repos/create``, ``POST /api/models/{repo_id}/preupload/{revision}``,
  ``POST /api/models/{repo_id}/commit/{revision}`` and ``POST /api/validate-yaml``, used by
  ``HfApi.create_repo``, ``upload_file``, ``upload_folder`` and ``create_commit``. Every file is answered
  ``uploadMode: "regular"`` so the client sends its bytes inline (base64) in the commit call: no LFS or Xet
  transfer is ever needed.

Only model repos with ids of the form ``"namespace/name"`` are supported. The server binds ``127.0.0.1`` only,
uses nothing but the standard library and keeps all state in memory.

Tests can inject faults through :attr:`LoopbackHub.faults` (see :class:`Faults`) and inspect the requests it
has seen through :attr:`LoopbackHub.requests` / :attr:`LoopbackHub.log`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

#: Suffixes of files served as Git LFS files (``X-Linked-Etag``/``X-Linked-Size`` headers, ``lfs`` metadata).
DEFAULT_LFS_SUFFIXES: tuple[str, ...] = (
    ".bin",
    ".ckpt",
    ".gguf",
    ".h5",
    ".msgpack",
    ".npy",
    ".npz",
    ".onnx",
    ".pt",
    ".pth",
    ".safetensors",
)
#: Upper bound for :meth:`Faults.hang`, so that a test can never stall for long.
MAX_HANG_SECONDS = 30.0
DEFAULT_BRANCH = "main"
#: How often the serving loop checks for ``stop()``; bounds how long ``stop()`` takes.
_POLL_INTERVAL = 0.05

_SEGMENT = r"[^/]+"
_REPO = rf"(?P<repo>{_SEGMENT}/{_SEGMENT})"
_REV = rf"(?P<rev>{_SEGMENT})"
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def git_blob_sha(data: bytes) -> str:
    """Return the git object id of ``data`` stored as a blob (what ``git hash-object`` prints)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """Return the Git LFS pointer file that stands for ``data`` in a git tree."""
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256_hex(data)}\nsize {len(data)}\n"
    return pointer.encode()


def sha256_hex(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def _object_id(name: str) -> str:
    """A stable 24-hex id standing for the Hub's database ids."""
    return hashlib.sha1(name.encode()).hexdigest()[:24]


def _now_iso() -> str:
    """Current UTC time in the Hub's date format (``2024-01-31T12:00:00.000Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ------------------------------------------------------------------------------------------------------------
# Repository state
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot of a repo: ``files`` maps each path (``/``-separated) to its full content."""

    sha: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    created_at: str


@dataclass
class Repo:
    """A model repo: its commits (oldest first) and its branches (name -> commit sha)."""

    repo_id: str
    commits: list[Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=_now_iso)

    def commit(self, sha: str) -> Commit | None:
        """Return the commit with this full sha, or ``None``."""
        return next((commit for commit in self.commits if commit.sha == sha), None)


# ------------------------------------------------------------------------------------------------------------
# Fault injection
# ------------------------------------------------------------------------------------------------------------

FaultKind = Literal["fail", "hang", "truncate", "swap"]


@dataclass
class Fault:
    """One armed fault. ``remaining`` counts the requests it still applies to (``None`` means until cleared).

    A request matches when its method equals ``method`` (if set) and ``match`` (if set) is a substring of its
    path (the raw, still URL-quoted path, without the query string).
    """

    kind: FaultKind
    remaining: int | None
    match: str | None = None
    method: str | None = None
    status: int = 500
    error_code: str | None = None
    seconds: float = 0.0
    keep_bytes: int | None = None
    data: bytes = b""
    keep_etag: bool = True

    def applies_to(self, kind: FaultKind, method: str, path: str) -> bool:
        """Whether this fault is of ``kind``, not used up, and matches the request."""
        return (
            self.kind == kind
            and (self.remaining is None or self.remaining > 0)
            and (self.method is None or self.method == method)
            and (self.match is None or self.match in path)
        )


class Faults:
    """Faults to inject into upcoming requests. Each request consumes at most one fault of each kind.

    * :meth:`fail`: answer an HTTP error status instead of the real response;
    * :meth:`hang`: wait before answering (to trigger client timeouts);
    * :meth:`truncate`: announce the full ``Content-Length`` but close the connection after part of the body;
    * :meth:`swap_content`: serve other bytes for a file under the same revision (the repo is unchanged).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def fail(
        self,
        status: int,
        *,
        times: int | None = 1,
        match: str | None = None,
        method: str | None = None,
        error_code: str | None = None,
    ) -> Fault:
        """Answer the next ``times`` matching requests with ``status`` (and ``X-Error-Code`` if given)."""
        return self._arm(Fault("fail", times, match, method, status=status, error_code=error_code))

    def hang(
        self, seconds: float, *, times: int | None = 1, match: str | None = None, method: str | None = None
    ) -> Fault:
        """Wait ``seconds`` before answering the next ``times`` matching requests (cut short by stop())."""
        if not 0 <= seconds <= MAX_HANG_SECONDS:
            raise ValueError(f"hang seconds must be within [0, {MAX_HANG_SECONDS}], got {seconds}")
        return self._arm(Fault("hang", times, match, method, seconds=seconds))

    def truncate(
        self,
        *,
        times: int | None = 1,
        match: str | None = None,
        keep_bytes: int | None = None,
    ) -> Fault:
        """Cut the body of the next ``times`` matching ``GET`` responses after ``keep_bytes`` bytes.

        The headers still announce the full ``Content-Length``; the connection is closed right after the kept
        bytes. ``keep_bytes=None`` keeps the first half of the body.
        """
        return self._arm(Fault("truncate", times, match, "GET", keep_bytes=keep_bytes))

    def swap_content(
        self,
        data: bytes,
        *,
        match: str,
        keep_etag: bool = True,
        times: int | None = None,
    ) -> Fault:
        """Serve ``data`` for files whose ``resolve`` path contains ``match``, without creating a commit.

        ``keep_etag=True``: ``ETag``, ``X-Linked-Etag`` and ``X-Linked-Size`` still describe the original
        file, so the client believes it gets the file it knows (only ``Content-Length`` follows the served
        bytes, as HTTP framing requires). ``keep_etag=False``: all headers describe ``data``, as if the file
        had been rewritten in place under the same commit. Applies to ``HEAD`` and ``GET``; by default until
        :meth:`clear`.
        """
        return self._arm(Fault("swap", times, match, data=data, keep_etag=keep_etag))

    def clear(self) -> None:
        """Disarm all faults."""
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> list[Fault]:
        """Faults that can still fire."""
        with self._lock:
            return [fault for fault in self._faults if fault.remaining is None or fault.remaining > 0]

    def take(self, kind: FaultKind, method: str, path: str) -> Fault | None:
        """Consume and return the first armed fault of ``kind`` matching the request, if any."""
        with self._lock:
            for fault in self._faults:
                if fault.applies_to(kind, method, path):
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    return fault
        return None

    def _arm(self, fault: Fault) -> Fault:
        if fault.remaining is not None and fault.remaining < 1:
            raise ValueError(f"times must be >= 1 or None, got {fault.remaining}")
        with self._lock:
            self._faults.append(fault)
        return fault


# ------------------------------------------------------------------------------------------------------------
# HTTP plumbing
# ------------------------------------------------------------------------------------------------------------


class SeenRequest(NamedTuple):
    """A request received by the hub. ``path`` is the raw path without the query string."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


@dataclass
class Request:
    """A parsed request handed to an endpoint. ``params`` holds the unquoted path parameters of the route."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str]

    @property
    def bearer_token(self) -> str | None:
        """The token of an ``Authorization: Bearer <token>`` header, if any."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None

    def flag(self, name: str) -> bool:
        """Whether the query parameter ``name`` is set to a truthy value (``1``/``true``)."""
        return self.query.get(name, [""])[-1].lower() in ("1", "true")

    def json(self) -> Any:
        """The body decoded as JSON (:class:`HubError` 400 if it is not)."""
        try:
            return json.loads(self.body or b"null")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err


@dataclass
class Response:
    """What an endpoint answers. For ``HEAD`` the body is only used for ``Content-Length``."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """A JSON response."""
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        return cls(status, json.dumps(payload).encode(), all_headers)


class HubError(Exception):
    """An error answered as the Hub does: status, ``X-Error-Code``/``X-Error-Message`` and a JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = headers or {}

    def to_response(self) -> Response:
        """The HTTP response for this error."""
        headers = {"X-Error-Message": self.message, **self.headers}
        if self.code is not None:
            headers["X-Error-Code"] = self.code
        return Response.json({"error": self.message}, self.status, headers)


Endpoint = Callable[[Request], Response]


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that remembers its open connections so that ``stop()`` can cut them."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], hub: LoopbackHub):
        self.hub = hub
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Ignore clients that hang up early (e.g. after a client-side timeout); report other errors."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Shut down every open client connection (keep-alive ones included)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    """Thin transport layer: parses requests, applies faults, and writes :class:`Response` objects."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests inspect ``LoopbackHub.log`` instead."""

    def _serve(self) -> None:
        hub = self.server.hub
        split = urlsplit(self.path)
        headers = {key.lower(): value for key, value in self.headers.items()}
        query = parse_qs(split.query)
        hub.record(SeenRequest(self.command, split.path, query, headers))

        hang = hub.faults.take("hang", self.command, split.path)
        if hang is not None and hub.wait_unless_stopped(hang.seconds):
            self.close_connection = True  # the hub is stopping: drop the request unanswered
            return
        body = self.rfile.read(int(headers.get("content-length") or 0))

        failure = hub.faults.take("fail", self.command, split.path)
        if failure is not None:
            message = f"Injected fault: HTTP {failure.status}"
            response = HubError(failure.status, message, failure.error_code).to_response()
        else:
            response = hub.dispatch(Request(self.command, split.path, query, headers, body, {}))
        truncation = hub.faults.take("truncate", self.command, split.path) if response.body else None
        self._write(response, truncation)

    def _write(self, response: Response, truncation: Fault | None) -> None:
        self.send_response(response.status)
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if truncation is None:
            self.wfile.write(response.body)
            return
        keep = len(response.body) // 2 if truncation.keep_bytes is None else truncation.keep_bytes
        self.wfile.write(response.body[: min(keep, len(response.body) - 1)])
        self.close_connection = True


# ------------------------------------------------------------------------------------------------------------
# The hub
# ------------------------------------------------------------------------------------------------------------


class LoopbackHub:
    """An in-memory Hugging Face Hub served on ``127.0.0.1`` (random free port), for tests.

    Use it as a context manager, or call :meth:`start` / :meth:`stop`. Populate repos with :meth:`add_files`
    / :meth:`add_folder` (each call is one commit on ``main``), arm faults with :attr:`faults`, and inspect
    the traffic with :attr:`requests` (``(method, path)`` pairs) or :attr:`log` (:class:`SeenRequest`).

    Write endpoints require an ``Authorization: Bearer <token>`` header (any non-empty token) and answer 401
    otherwise. Repos created through the API get an initial commit with no files, as on the Hub a new repo is
    never empty of commits.
    """

    def __init__(
        self,
        *,
        lfs_suffixes: tuple[str, ...] = DEFAULT_LFS_SUFFIXES,
        username: str = "loopback-user",
    ):
        """``lfs_suffixes``: files served as LFS; ``username``: namespace for ``create_repo`` without one."""
        self.faults = Faults()
        self.lfs_suffixes = lfs_suffixes
        self.username = username
        self._repos: dict[str, Repo] = {}
        self._log: list[SeenRequest] = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._routes: list[tuple[str, re.Pattern[str], Endpoint]] = [
            ("HEAD", re.compile(rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)"), self._resolve),
            ("GET", re.compile(rf"/{_REPO}/resolve/{_REV}/(?P<path>.+)"), self._resolve),
            ("GET", re.compile(rf"/api/models/{_REPO}"), self._model_info),
            ("GET", re.compile(rf"/api/models/{_REPO}/revision/{_REV}"), self._model_info),
            ("GET", re.compile(rf"/api/models/{_REPO}/tree/{_REV}(?:/(?P<path>.*))?"), self._tree),
            ("POST", re.compile(r"/api/repos/create"), self._create_repo),
            ("POST", re.compile(rf"/api/models/{_REPO}/preupload/{_REV}"), self._preupload),
            ("POST", re.compile(rf"/api/models/{_REPO}/commit/{_REV}"), self._commit),
            ("POST", re.compile(r"/api/validate-yaml"), self._validate_yaml),
        ]

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> LoopbackHub:
        """Start serving in a background thread. A restarted hub reuses its previous port."""
        if self._server is not None:
            raise RuntimeError("LoopbackHub is already running")
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), self)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(_POLL_INTERVAL,), name="loopback-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving: close the listening socket and every open connection. Idempotent.

        Requests held by :meth:`Faults.hang` are released and dropped unanswered. Afterwards, connecting to
        :attr:`endpoint` is refused.
        """
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """Base URL to use as ``HF_ENDPOINT``, e.g. ``http://127.0.0.1:54321``."""
        if not self._port:
            raise RuntimeError("LoopbackHub has never been started")
        return f"http://127.0.0.1:{self._port}"

    def wait_unless_stopped(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return ``True`` early if the hub is being stopped."""
        return self._stopping.wait(seconds)

    # ---- traffic log ---------------------------------------------------------------------------------------

    def record(self, request: SeenRequest) -> None:
        """Append a request to :attr:`log`."""
        with self._lock:
            self._log.append(request)

    @property
    def log(self) -> list[SeenRequest]:
        """Every request seen so far, in order."""
        with self._lock:
            return list(self._log)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every request seen so far (raw path, without the query string)."""
        return [(seen.method, seen.path) for seen in self.log]

    # ---- repo content --------------------------------------------------------------------------------------

    def add_files(self, repo_id: str, files: dict[str, bytes], message: str = "Add files") -> str:
        """Commit ``files`` (path -> content) on ``main`` of ``repo_id`` (created if needed); return the sha.

        Files of the previous commit that are not in ``files`` are kept, as in a git commit adding files.
        """
        with self._lock:
            repo = self._repos.get(repo_id) or self._create(repo_id)
            return self._commit_on_branch(repo, DEFAULT_BRANCH, message, lambda tree: tree.update(files))

    def add_folder(self, repo_id: str, folder: Path, message: str = "Add folder") -> str:
        """Commit all files under ``folder`` (recursively, relative paths) on ``main``; return the sha."""
        files = {
            path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(Path(folder).rglob("*"))
            if path.is_file()
        }
        return self.add_files(repo_id, files, message)

    def files_at(self, repo_id: str, revision: str = DEFAULT_BRANCH) -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (branch or full commit sha)."""
        with self._lock:
            return dict(self._lookup(repo_id, revision).files)

    def head(self, repo_id: str, branch: str = DEFAULT_BRANCH) -> str:
        """The commit sha ``branch`` of ``repo_id`` points at."""
        return self._lookup(repo_id, branch).sha

    def is_lfs(self, path: str) -> bool:
        """Whether ``path`` is served as an LFS file."""
        return path.endswith(self.lfs_suffixes)

    def _create(self, repo_id: str) -> Repo:
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}")
        repo = self._repos[repo_id] = Repo(repo_id)
        return repo

    def _commit_on_branch(
        self, repo: Repo, branch: str, message: str, change: Callable[[dict[str, bytes]], None]
    ) -> str:
        """Create a commit on ``branch`` whose tree is the parent's tree modified in place by ``change``."""
        parent_sha = repo.branches.get(branch)
        parent = repo.commit(parent_sha) if parent_sha else None
        tree = dict(parent.files) if parent else {}
        change(tree)
        digest = hashlib.sha1(f"{repo.repo_id}\n{parent_sha}\n{message}\n".encode())
        for path in sorted(tree):
            digest.update(f"{path}\0{git_blob_sha(tree[path])}\n".encode())
        commit = Commit(digest.hexdigest(), parent_sha, message, tree, _now_iso())
        repo.commits.append(commit)
        repo.branches[branch] = commit.sha
        return commit.sha

    def _repo(self, repo_id: str) -> Repo:
        repo = self._repos.get(repo_id)
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _lookup(self, repo_id: str, revision: str) -> Commit:
        """Resolve a branch name or full commit sha to a commit, raising the Hub's 404 errors."""
        with self._lock:
            repo = self._repo(repo_id)
            sha = revision if _COMMIT_SHA.fullmatch(revision) else repo.branches.get(revision)
            commit = repo.commit(sha) if sha else None
            if commit is None:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            return commit

    # ---- routing -------------------------------------------------------------------------------------------

    def dispatch(self, request: Request) -> Response:
        """Route ``request`` to its endpoint and turn :class:`HubError` into error responses."""
        for method, pattern, endpoint in self._routes:
            match = pattern.fullmatch(request.path)
            if method == request.method and match:
                request.params = {key: unquote(value) for key, value in match.groupdict().items() if value}
                try:
                    return endpoint(request)
                except HubError as err:
                    return err.to_response()
                except (KeyError, TypeError, ValueError) as err:  # malformed JSON payload or NDJSON line
                    return HubError(400, f"Malformed request: {err!r}").to_response()
        return HubError(404, f"No route for {request.method} {request.path}").to_response()

    def _require_token(self, request: Request) -> None:
        if request.bearer_token is None:
            raise HubError(401, "Invalid username or password.")

    # ---- download endpoints --------------------------------------------------------------------------------

    def _resolve(self, request: Request) -> Response:
        """``/{repo_id}/resolve/{revision}/{path}``: the file, with the Hub's metadata headers."""
        commit = self._lookup(request.params["repo"], request.params["rev"])
        path = request.params["path"]
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        described = served = commit.files[path]
        swap = self.faults.take("swap", request.method, request.path)
        if swap is not None:
            served = swap.data
            described = described if swap.keep_etag else swap.data
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "X-Repo-Commit": commit.sha,
            "ETag": f'"{git_blob_sha(described)}"',
        }
        if self.is_lfs(path):
            headers["ETag"] = headers["X-Linked-Etag"] = f'"{sha256_hex(described)}"'
            headers["X-Linked-Size"] = str(len(described))
        return self._ranged(served, request.headers.get("range"), headers)

    @staticmethod
    def _ranged(data: bytes, range_header: str | None, headers: dict[str, str]) -> Response:
        """A 200 response for ``data``, or 206/416 if a single ``bytes=`` range was requested."""
        match = _RANGE.fullmatch(range_header.strip()) if range_header else None
        if match is None or match.groups() == ("", ""):
            return Response(200, data, headers)
        first, last = match.groups()
        if first:
            start, end = int(first), min(int(last), len(data) - 1) if last else len(data) - 1
        else:
            start, end = max(len(data) - int(last), 0), len(data) - 1
        if start >= len(data) or start > end:
            return Response(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
        content_range = f"bytes {start}-{end}/{len(data)}"
        return Response(206, data[start : end + 1], {**headers, "Content-Range": content_range})

    def _model_info(self, request: Request) -> Response:
        """``/api/models/{repo_id}[/revision/{revision}]``: model info with siblings."""
        repo_id = request.params["repo"]
        commit = self._lookup(repo_id, request.params.get("rev", DEFAULT_BRANCH))
        with_blobs = request.flag("blobs")
        siblings = [self._sibling(path, data, with_blobs) for path, data in sorted(commit.files.items())]
        with self._lock:
            created_at = self._repo(repo_id).created_at
        return Response.json(
            {
                "_id": _object_id(repo_id),
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.sha,
                "lastModified": commit.created_at,
                "createdAt": created_at,
                "private": False,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": siblings,
                "usedStorage": sum(len(data) for data in commit.files.values()),
            }
        )

    def _sibling(self, path: str, data: bytes, with_blobs: bool) -> dict[str, Any]:
        sibling: dict[str, Any] = {"rfilename": path}
        if with_blobs:
            sibling.update(size=len(data), blobId=self._blob_oid(path, data))
            if self.is_lfs(path):
                sibling["lfs"] = {
                    "size": len(data),
                    "sha256": sha256_hex(data),
                    "pointerSize": len(lfs_pointer(data)),
                }
        return sibling

    def _blob_oid(self, path: str, data: bytes) -> str:
        """The git oid of ``path`` in a tree: of the LFS pointer for LFS files, of the content otherwise."""
        return git_blob_sha(lfs_pointer(data) if self.is_lfs(path) else data)

    def _tree(self, request: Request) -> Response:
        """``/api/models/{repo_id}/tree/{revision}[/{path}]``: files and folders, in a single page."""
        commit = self._lookup(request.params["repo"], request.params["rev"])
        folder = request.params.get("path", "").strip("/")
        entries = list(self._tree_entries(commit, folder, request.flag("recursive")))
        if request.params.get("path") and not entries:
            raise HubError(404, f"Entry not found: {request.params['path']}", "EntryNotFound")
        return Response.json(entries)

    def _tree_entries(self, commit: Commit, folder: str, recursive: bool) -> Iterator[dict[str, Any]]:
        prefix = f"{folder}/" if folder else ""
        folders: set[str] = set()
        for path, data in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                folders.add(prefix + "/".join(parts[:depth]))
            if recursive or len(parts) == 1:
                yield self._file_entry(path, data)
        for path in sorted(folders):
            yield {
                "type": "directory",
                "path": path,
                "oid": hashlib.sha1(f"{commit.sha}:{path}".encode()).hexdigest(),
            }

    def _file_entry(self, path: str, data: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "path": path,
            "size": len(data),
            "oid": self._blob_oid(path, data),
        }
        if self.is_lfs(path):
            entry["lfs"] = {"oid": sha256_hex(data), "size": len(data), "pointerSize": len(lfs_pointer(data))}
        return entry

    # ---- upload endpoints ----------------------------------------------------------------------------------

    def _create_repo(self, request: Request) -> Response:
        """``POST /api/repos/create``: 200 with the repo url, 409 (with the url too) if it already exists."""
        self._require_token(request)
        payload = request.json()
        if payload.get("type") not in (None, "model"):
            raise HubError(400, "LoopbackHub only supports model repos")
        repo_id = f"{payload.get('organization') or self.username}/{payload['name']}"
        url = f"{self.endpoint}/{repo_id}"
        with self._lock:
            if repo_id in self._repos:
                return Response.json({"error": "You already created this model repo", "url": url}, 409)
            self._commit_on_branch(self._create(repo_id), DEFAULT_BRANCH, "initial commit", lambda tree: None)
        return Response.json({"url": url, "name": repo_id, "id": _object_id(repo_id)})

    def _preupload(self, request: Request) -> Response:
        """``POST /api/models/{repo_id}/preupload/{revision}``: every file is to be sent inline (regular)."""
        self._require_token(request)
        commit = self._lookup(request.params["repo"], request.params["rev"])
        files = [
            {
                "path": item["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_sha(commit.files[item["path"]]) if item["path"] in commit.files else None,
            }
            for item in request.json()["files"]
        ]
        return Response.json({"files": files, "commitOid": commit.sha})

    def _commit(self, request: Request) -> Response:
        """``POST /api/models/{repo_id}/commit/{revision}``: apply an NDJSON commit to a branch."""
        self._require_token(request)
        if request.flag("create_pr"):
            raise HubError(400, "LoopbackHub does not support pull requests")
        repo_id, branch = request.params["repo"], request.params["rev"]
        lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first NDJSON line must be the commit header")
        header = lines[0]["value"]
        with self._lock:
            repo = self._repo(repo_id)
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent = header.get("parentCommit")
            if parent and not repo.branches[branch].startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            sha = self._commit_on_branch(
                repo, branch, header["summary"], lambda tree: self._apply_operations(tree, lines[1:])
            )
        return Response.json(
            {"success": True, "commitOid": sha, "commitUrl": f"{self.endpoint}/{repo_id}/commit/{sha}"}
        )

    @staticmethod
    def _apply_operations(tree: dict[str, bytes], operations: list[dict[str, Any]]) -> None:
        """Apply ``file`` / ``deletedFile`` / ``deletedFolder`` NDJSON operations to ``tree`` in place."""
        for operation in operations:
            key, value = operation["key"], operation["value"]
            if key == "file" and value.get("encoding") == "base64":
                tree[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if tree.pop(value["path"], None) is None:
                    message = f"A file with this name doesn't exist: {value['path']}"
                    raise HubError(404, message, "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [path for path in tree if path.startswith(prefix)]:
                    del tree[path]
            else:
                raise HubError(400, f"Unsupported commit operation: {key}")

    def _validate_yaml(self, request: Request) -> Response:
        """``POST /api/validate-yaml`` (sent when a README.md is committed): everything is valid."""
        return Response.json({"errors": [], "warnings": []})
