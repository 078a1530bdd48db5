"""A loopback Hugging Face Hub for tests: the endpoints huggingface_hub 2.4.0 calls to publish.

Stdlib only. It runs on 127.0.0.1:0 in a thread and keeps repos in memory: commits with parents,
branches, pull-request refs, the parent_commit check, LFS storage (bytes are checked against their
sha256) and Xet write tokens (the Rust client writes into a `local://` CAS folder, so for Xet the
fake checks the flow: the sha256 of each committed Xet file must appear in a CAS shard).

Tests drive it with the real client: `HfApi(endpoint=hub.url, token=FakeHub.TOKEN)`.
- `hub.requests` logs every request (method, path, status, body size received, body bytes sent,
  Range header); `hub.writes()` lists the ones that could change state (everything but GET/HEAD
  and the read-only paths-info POST).
- `hub.fail(method, pattern, status, times)` injects errors; `hub.on_commit` may reject a commit.
- `hub.lfs_bytes_received` counts bytes PUT to LFS storage.

Downloads are served the way huggingface.co serves them, as read by huggingface_hub 2.4.0
(hf_hub_download, HfFileSystem) and by llama.cpp 0c1e570's `-hf` downloader (common/hf-cache.cpp,
common/download.cpp): `GET api/models/REPO/refs` (branches with 40-hex `targetCommit`),
`GET api/models/REPO/tree/REV?recursive=true` (`type`, `path`, `size`, `oid`, `lfs.oid`),
`HEAD`/`GET REPO/resolve/REV/PATH`. A regular file is answered directly (ETag = git blob oid); an
LFS file with a 302 to a CDN-like path (`hub.cdn_url` + `/_cdn/...`, a second loopback port, so a
different origin as on the real Hub) carrying X-Repo-Commit,
X-Linked-Etag (the sha256) and X-Linked-Size, as the Hub does. File bodies honour `Range`
(206 + Content-Range, 416 when unsatisfiable) and carry ETag, Content-Length and
Accept-Ranges. `hub.bytes_sent` counts file-body bytes sent (per request in `hub.requests`);
`hub.drop(pattern, after, times)` cuts a matching file body after `after` bytes.
`hub.hostile` (a Hostile) makes the Hub lie or stall: a forged commit id, an edited tree listing, no
answer, bodies dripped a byte at a time, a 206 with another Content-Range or other bytes.
`GET api/models?author=OWNER&filter=gguf` lists an account's repos, `hub.models_page` per page.
`hub.put_files(repo, {path: bytes})` lays out a repo directly (.gguf and .safetensors files as LFS
objects); `hub.repos[repo].gated = {users}` gates a repo (files need a user who accepted, as on the Hub).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = b"*.gguf filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
LFS_MIN_SIZE = 10 * 1024 * 1024


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    size: int
    oid: str  # git blob oid (of the pointer for LFS files)
    sha256: str | None = None  # LFS files only
    content: bytes | None = None  # regular files; LFS files when the bytes came through LFS

    @property
    def is_lfs(self) -> bool:
        return self.sha256 is not None


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, Entry]
    title: str
    description: str
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # "main" / "refs/pr/1" -> commit oid
    prs: int = 0
    gated: set[str] | None = None  # gated repo: the users who accepted its terms

    def resolve(self, rev: str) -> Commit | None:
        if rev in self.refs:
            return self.commits[self.refs[rev]]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            hits = [c for oid, c in self.commits.items() if oid.startswith(rev)]
            if len(hits) == 1:
                return hits[0]
        return None


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    times: int
    message: str


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    nbytes: int  # request body bytes received
    sent: int = 0  # file-body bytes sent (resolve / CDN answers)
    range: str | None = None  # the Range header, if any


@dataclass
class Drop:
    pattern: re.Pattern[str]
    after: int
    times: int


@dataclass
class Hostile:
    """What a hostile Hub does instead of the right answer (each None: answers as it should)."""

    sha: Any = None  # model_info's "sha" and the branches' targetCommit
    tree: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None  # edits the tree listing
    silent: str | None = None  # path pattern: such requests are read and never answered
    drip: tuple[str, float] | None = None  # (path pattern, seconds per byte): bodies sent a byte at a time
    content_range: Callable[[int, int, int], str] | None = None  # (start, end, size) -> a 206's Content-Range
    body: Callable[[bytes], bytes] | None = None  # what a 206's body becomes (Content-Length follows it)
    answer: Callable[[str, Any], Any] | None = None  # (path, JSON answer) -> what /api/ answers instead
    endless: bool = False  # every tree page links to a next page (itself)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


class FakeHub:
    TOKEN = "hf_test_write"
    READ_TOKEN = "hf_test_read"
    # llama.cpp sends a token only when it looks like a real one (hf_ + >= 34 alphanumerics).
    LLAMA_TOKEN = "hf_" + "mtpgraftloopbackreadtoken" + "0" * 9

    def __init__(self, cas_dir: Path) -> None:
        self.cas_dir = Path(cas_dir)
        self.cas_dir.mkdir(parents=True, exist_ok=True)
        self.users = {self.TOKEN: ("tester", "write"), self.READ_TOKEN: ("tester", "read"),
                      self.LLAMA_TOKEN: ("tester", "read")}
        self.orgs = {"tester": ["testorg"]}
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lfs_bytes_received = 0
        self.lfs_multipart_chunk: int | None = None  # set to use multipart uploads
        self.echo_auth = False  # set to put a refused request's Authorization header in the 401 body
        self._parts: dict[str, dict[int, bytes]] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.drops: list[Drop] = []
        self.bytes_sent = 0
        self.models_page = 2  # list_models answers this many repos per page
        self.hostile = Hostile()
        self.stopping = threading.Event()
        self.on_commit: Callable[[str, dict[str, Any]], HubError | None] | None = None
        self.lock = threading.RLock()
        self._seq = 0
        self._salt = os.urandom(8).hex()  # commits differ between hubs: no test sees another's cache
        hub = self

        class Handler(_Handler):
            fake = hub

        self.server = _Server(("127.0.0.1", 0), Handler)
        # The CDN is another origin (port), as on huggingface.co: clients stop following there and
        # read the file's metadata from the Hub's redirect answer.
        self.cdn = _Server(("127.0.0.1", 0), Handler)
        for srv in (self.server, self.cdn):
            srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"
        self._threads = [threading.Thread(target=srv.serve_forever, daemon=True) for srv in (self.server, self.cdn)]

    # ------------------------------------------------------------------ control
    def start(self) -> FakeHub:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # silent and dripping answers end
        for srv in (self.server, self.cdn):
            srv.shutdown()
            srv.server_close()

    def fail(self, method: str, pattern: str, status: int = 500, *, times: int = 1,
             message: str = "injected failure") -> None:
        with self.lock:
            self.faults.append(Fault(method.upper(), re.compile(pattern), status, times, message))

    def drop(self, pattern: str, after: int, *, times: int = 1) -> None:
        """Cut the connection after `after` body bytes of the next `times` file answers (resolve or
        CDN GET) whose path matches `pattern`; the headers promise the full length."""
        with self.lock:
            self.drops.append(Drop(re.compile(pattern), after, times))

    def downloads(self, pattern: str = "") -> list[Request]:
        """The file-body answers (GET resolve / CDN) whose path matches `pattern`."""
        rx = re.compile(pattern)
        return [r for r in self.requests if r.method == "GET" and r.sent and rx.search(r.path)]

    def writes(self) -> list[Request]:
        return [r for r in self.requests
                if r.method not in ("GET", "HEAD") and "/paths-info/" not in r.path]

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()

    def head(self, repo_id: str, rev: str = "main") -> Commit:
        repo = self.repos[repo_id]
        commit = repo.resolve(rev)
        assert commit is not None, rev
        return commit

    def create_repo(self, repo_id: str, *, private: bool = False) -> Repo:
        """Create a repo the way the Hub does: with an initial commit holding .gitattributes."""
        with self.lock:
            repo = Repo(repo_id, private)
            entry = Entry(len(GITATTRIBUTES), git_blob_oid(GITATTRIBUTES), content=GITATTRIBUTES)
            self._add_commit(repo, "main", None, {".gitattributes": entry}, "initial commit", "")
            self.repos[repo_id] = repo
            return repo

    def commit_files(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main",
                     title: str = "concurrent change") -> str:
        """Commit regular files directly (a change made by someone else)."""
        with self.lock:
            repo = self.repos[repo_id]
            head = repo.commits[repo.refs[branch]]
            new = dict(head.files)
            for path, data in files.items():
                new[path] = Entry(len(data), git_blob_oid(data), content=data)
            return self._add_commit(repo, branch, head.oid, new, title, "").oid

    def put_files(self, repo_id: str, files: dict[str, bytes], *, branch: str = "main",
                  title: str = "add files") -> str:
        """Commit files directly, creating the repo if needed: .gguf files (and files of at least
        LFS_MIN_SIZE bytes) become LFS objects as an upload would make them, the rest regular files."""
        with self.lock:
            if repo_id not in self.repos:
                self.create_repo(repo_id)
            repo = self.repos[repo_id]
            head = repo.commits[repo.refs[branch]]
            new = dict(head.files)
            for path, data in files.items():
                if path.endswith((".gguf", ".safetensors")) or len(data) >= LFS_MIN_SIZE:
                    sha = hashlib.sha256(data).hexdigest()
                    self.lfs_objects[sha] = data
                    new[path] = Entry(len(data), git_blob_oid(lfs_pointer(sha, len(data))), sha256=sha,
                                      content=data)
                else:
                    new[path] = Entry(len(data), git_blob_oid(data), content=data)
            return self._add_commit(repo, branch, head.oid, new, title, "").oid

    def _add_commit(self, repo: Repo, ref: str, parent: str | None, files: dict[str, Entry],
                    title: str, description: str) -> Commit:
        self._seq += 1
        oid = hashlib.sha1(f"{self._salt}\0{repo.repo_id}\0{self._seq}\0{parent}\0{title}".encode()).hexdigest()
        commit = Commit(oid, parent, files, title, description)
        repo.commits[oid] = commit
        repo.refs[ref] = oid
        return commit

    def xet_has_sha256(self, sha256: str) -> bool:
        """Whether a Xet shard in the CAS folder records a file with this sha256. Shards store a
        hash as four little-endian u64 words."""
        raw = bytes.fromhex(sha256)
        needle = b"".join(raw[i:i + 8][::-1] for i in range(0, 32, 8))
        return any(needle in p.read_bytes() for p in self.cas_dir.rglob("shards/*.mdb"))

    def cas_files(self) -> dict[str, int]:
        return {str(p.relative_to(self.cas_dir)): p.stat().st_size
                for p in self.cas_dir.rglob("*") if p.is_file()}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (it refused an answer, or timed out) is no error of the fake's."""
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as written, as from a real server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        edit = self.fake.hostile.answer
        if edit is not None and status < 300 and not isinstance(body, (bytes, bytearray)) \
                and urlsplit(self.path).path.startswith("/api/"):
            body = edit(urlsplit(self.path).path, body)
        if isinstance(body, (bytes, bytearray)):
            data, ctype = bytes(body), "application/octet-stream"
        elif body is None:
            data, ctype = b"", "application/json"
        else:
            data, ctype = json.dumps(body).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self._status = status
        if self.command != "HEAD":
            self._write(data)

    def _write(self, data: bytes) -> None:
        """A body as it is, or a byte at a time when `hostile.drip` matches the path."""
        drip = self.fake.hostile.drip
        if drip is None or not re.search(drip[0], urlsplit(self.path).path):
            self.wfile.write(data)
            return
        for i in range(len(data)):
            if self.fake.stopping.wait(drip[1]):
                return
            try:
                self.wfile.write(data[i:i + 1])
                self.wfile.flush()
            except OSError:  # the client gave up on us
                self.close_connection = True
                return

    def _handle(self) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        self._query = parse_qs(split.query)
        self._raw = self._body()
        self._status = 0
        self._sent = 0
        self._logged = False
        parts = [unquote(p) for p in split.path.split("/")[1:]]
        silent = fake.hostile.silent
        if silent is not None and re.search(silent, split.path):
            fake.stopping.wait(60)  # read, never answered
            self.close_connection = True
            return self._log()
        try:
            with fake.lock:
                for f in fake.faults:
                    if f.times > 0 and f.method in (self.command, "*") and f.pattern.search(split.path):
                        f.times -= 1
                        raise HubError(f.status, f.message)
            self._route(parts)
        except HubError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._send(e.status, e.body or {"error": e.message}, headers)
        except Exception as e:  # a bug in the fake: make it visible
            self._send(599, {"error": f"fake hub crashed: {e!r}"})
            raise
        finally:
            self._log()

    def _log(self) -> None:
        if self._logged:
            return
        self._logged = True
        with self.fake.lock:
            self.fake.requests.append(Request(self.command, urlsplit(self.path).path, self._status,
                                              len(self._raw), self._sent, self.headers.get("Range")))

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

    # ------------------------------------------------------------------ auth
    def _user(self, *, required: bool = False, write: bool = False) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth:
            if required:
                raise HubError(401, "Invalid username or password.")
            return None
        token = auth.removeprefix("Bearer ").strip()
        who = self.fake.users.get(token)
        if who is None:  # `echo_auth`: a server that echoes the header back (it must never be printed)
            raise HubError(401, f"invalid token {auth}" if self.fake.echo_auth else
                           "Invalid credentials in Authorization header")
        if write and who[1] != "write":
            raise HubError(403, "You don't have the rights to write with this token")
        return who[0]

    def _repo(self, repo_id: str, *, write: bool = False, pr: bool = False) -> Repo:
        """`pr`: a step of a pull request, which anyone with a write token may open on a public repo
        (uploads included); everything else that writes needs the owner or one of its orgs."""
        user = self._user(required=write, write=write)
        repo = self.fake.repos.get(repo_id)
        owner = repo_id.split("/")[0]
        mine = user is not None and (owner == user or owner in self.fake.orgs.get(user, []))
        if repo is None or (repo.private and not mine):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and not mine and not pr:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.resolve(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    # ------------------------------------------------------------------ routing
    def _route(self, p: list[str]) -> None:
        m = self.command
        if p[:2] == ["api", "whoami-v2"] and m == "GET":
            return self._whoami()
        if p[:3] == ["api", "repos", "create"] and m == "POST":
            return self._create_repo()
        if p[:2] == ["api", "validate-yaml"] and m == "POST":
            return self._validate_yaml()
        if p == ["api", "models"] and m == "GET":
            return self._list_models()
        if len(p) >= 4 and p[0] == "api" and p[1] == "models":
            repo_id, rest = f"{p[2]}/{p[3]}", p[4:]
            return self._api_repo(m, repo_id, rest)
        if len(p) >= 2 and p[0] == "_cdn" and m in ("GET", "HEAD"):
            return self._cdn(p[-1])
        if len(p) >= 3 and p[0] == "_lfs":
            return self._lfs_storage(m, p[1:])
        if len(p) >= 6 and p[1].endswith(".git") and p[2:6] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(f"{p[0]}/{p[1][:-4]}")
        if len(p) >= 5 and p[2] == "resolve":
            return self._resolve(f"{p[0]}/{p[1]}", p[3], "/".join(p[4:]))
        raise HubError(404, f"no route for {m} /{'/'.join(p)}")

    def _api_repo(self, m: str, repo_id: str, rest: list[str]) -> None:
        if not rest and m == "GET":
            return self._info(repo_id, "main")
        head = rest[0] if rest else ""
        if head == "revision" and m == "GET":
            return self._info(repo_id, rest[1])
        if head == "refs" and m == "GET":
            return self._refs(repo_id)
        if head == "tree" and m == "GET":
            return self._tree(repo_id, rest[1], "/".join(rest[2:]))
        if head == "paths-info" and m == "POST":
            return self._paths_info(repo_id, rest[1])
        if head == "branch" and m == "POST":
            return self._branch(repo_id, "/".join(rest[1:]))
        if head == "preupload" and m == "POST":
            return self._preupload(repo_id, rest[1])
        if head == "commit" and m == "POST":
            return self._do_commit(repo_id, rest[1])
        if head == "xet-write-token" and m == "GET":
            return self._xet_token(repo_id, rest[1] if len(rest) > 1 else "main")
        raise HubError(404, f"no route for {m} {repo_id} {rest}")

    # ------------------------------------------------------------------ endpoints
    def _whoami(self) -> None:
        user = self._user(required=True)
        if user is None:  # pragma: no cover - _user raised
            return
        role = self.fake.users[self.headers["Authorization"].removeprefix("Bearer ").strip()][1]
        self._send(200, {"type": "user", "name": user, "fullname": user.title(),
                         "orgs": [{"name": o} for o in self.fake.orgs.get(user, [])],
                         "auth": {"type": "access_token",
                                  "accessToken": {"displayName": "test", "role": role}}})

    def _create_repo(self) -> None:
        user = self._user(required=True, write=True)
        body = json.loads(self._raw or b"{}")
        owner = body.get("organization") or user
        repo_id = f"{owner}/{body['name']}"
        if body.get("type") not in (None, "model"):
            raise HubError(400, "only model repos in the fake hub")
        if owner != user and owner not in self.fake.orgs.get(user or "", []):
            raise HubError(403, f"You don't have the rights to create a model under the namespace \"{owner}\"")
        url = f"{self.fake.url}/{repo_id}"
        if repo_id in self.fake.repos:
            raise HubError(409, "You already created this model repo",
                           body={"error": "You already created this model repo", "url": url})
        private = body.get("visibility") == "private" or bool(body.get("private"))
        self.fake.create_repo(repo_id, private=private)
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def _validate_yaml(self) -> None:
        self._user(required=True)
        content = json.loads(self._raw).get("content", "")
        errors: list[dict[str, str]] = []
        m = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if m is None:
            return self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
        try:
            meta = yaml.safe_load(m.group(1))
            if not isinstance(meta, dict):
                errors.append({"message": "metadata is not a mapping"})
            elif "license" in meta and not isinstance(meta["license"], str):
                errors.append({"message": "\"license\" must be a string"})
        except yaml.YAMLError as e:
            errors.append({"message": f"yaml: {e}"})
        if errors:
            raise HubError(400, "Invalid metadata", body={"errors": errors, "warnings": []})
        self._send(200, {"errors": [], "warnings": []})

    def _info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id)
        commit = self._commit(repo, rev)
        sha = commit.oid if self.fake.hostile.sha is None else self.fake.hostile.sha
        self._send(200, {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private,
                         "gated": "manual" if repo.gated is not None else False,
                         "siblings": [{"rfilename": p} for p in sorted(commit.files)],
                         "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date))})

    def _list_models(self) -> None:
        """list_models(author=..., filter=...): the repos visible to the caller, `models_page` per page
        (a Link header to the next page, as the Hub pages); a repo's tags are `gguf` when its main
        holds a .gguf file, as the Hub tags them."""
        user = self._user()
        q = self._query
        author, tags_wanted = q.get("author", [None])[0], set(q.get("filter", []))
        start = int(q.get("cursor", ["0"])[0])
        rows = []
        for repo_id, repo in sorted(self.fake.repos.items()):
            owner = repo_id.split("/")[0]
            mine = user is not None and (owner == user or owner in self.fake.orgs.get(user, []))
            tags = ["gguf"] if any(f.endswith(".gguf") for f in repo.commits[repo.refs["main"]].files) else []
            if (author and owner != author) or (repo.private and not mine) or not tags_wanted <= set(tags):
                continue
            rows.append({"id": repo_id, "modelId": repo_id, "private": repo.private, "tags": tags,
                         "gated": "manual" if repo.gated is not None else False})
        page = rows[start:start + self.fake.models_page]
        more = None
        if start + self.fake.models_page < len(rows):
            nxt = self.path.split("?")[0] + "?" + "&".join(
                [f"{k}={v}" for k, vs in q.items() if k != "cursor" for v in vs]
                + [f"cursor={start + self.fake.models_page}"])
            more = {"Link": f'<{self.fake.url}{nxt}>; rel="next"'}
        self._send(200, page, more)

    def _refs(self, repo_id: str) -> None:
        repo = self._repo(repo_id)
        forged = self.fake.hostile.sha
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o if forged is None else forged}
                    for n, o in repo.refs.items() if not n.startswith("refs/")]
        prs = [{"name": n, "ref": n, "targetCommit": o} for n, o in repo.refs.items() if n.startswith("refs/pr/")]
        self._send(200, {"branches": branches, "converts": [], "tags": [], "pullRequests": prs})

    @staticmethod
    def _entry_json(path: str, e: Entry) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "file", "path": path, "size": e.size, "oid": e.oid}
        if e.sha256 is not None:
            d["lfs"] = {"oid": e.sha256, "size": e.size, "pointerSize": len(lfs_pointer(e.sha256, e.size))}
            if e.content is None:  # uploaded through Xet: the fake has no bytes to serve over HTTP
                d["xetHash"] = hashlib.sha256(b"xet" + bytes.fromhex(e.sha256)).hexdigest()
        return d

    def _tree(self, repo_id: str, rev: str, prefix: str) -> None:
        commit = self._commit(self._repo(repo_id), rev)
        recursive = self._query.get("recursive", ["false"])[0].lower() == "true"
        base = prefix.strip("/")
        out, folders = [], set()
        for path in sorted(commit.files):
            if base and not path.startswith(base + "/"):
                continue
            rel = path[len(base) + 1:] if base else path
            if "/" in rel:
                top = (base + "/" if base else "") + rel.split("/")[0]
                folders.add(top)
                if not recursive:
                    continue
                for i in range(1, rel.count("/")):
                    folders.add((base + "/" if base else "") + "/".join(rel.split("/")[: i + 1]))
            out.append(self._entry_json(path, commit.files[path]))
        out += [{"type": "directory", "path": f, "oid": hashlib.sha1(f.encode()).hexdigest()}
                for f in sorted(folders)]
        if base and not out:
            raise HubError(404, f"{base} not found", "EntryNotFound")
        edit = self.fake.hostile.tree
        more = {"Link": f'<{self.fake.url}{self.path}>; rel="next"'} if self.fake.hostile.endless else None
        self._send(200, edit(out) if edit is not None else out, more)

    def _paths_info(self, repo_id: str, rev: str) -> None:
        commit = self._commit(self._repo(repo_id), rev)
        form = parse_qs(self._raw.decode())
        out = []
        for path in form.get("paths", []):
            if path in commit.files:
                out.append(self._entry_json(path, commit.files[path]))
            elif any(f.startswith(path.rstrip("/") + "/") for f in commit.files):
                out.append({"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()})
        self._send(200, out)

    def _branch(self, repo_id: str, branch: str) -> None:
        repo = self._repo(repo_id, write=True)
        body = json.loads(self._raw or b"{}")
        if branch in repo.refs:
            raise HubError(409, "Reference already exists")
        start = self._commit(repo, body.get("startingPoint") or "main")
        repo.refs[branch] = start.oid
        self._send(200, {})

    def _preupload(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id, write=True, pr=True)
        commit = self._commit(repo, rev)
        files = []
        for f in json.loads(self._raw)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["path"].endswith((".gguf", ".png")) or f["size"] >= LFS_MIN_SIZE or b"\0" in sample
            entry = commit.files.get(f["path"])
            oid = None if entry is None else (entry.sha256 if entry.is_lfs else entry.oid)
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular",
                          "shouldIgnore": False, "oid": oid})
        self._send(200, {"files": files, "commitOid": commit.oid})

    def _xet_token(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id, write=True, pr=True)
        if rev != "None" and "create_pr" not in self._query:
            self._commit(repo, rev)
        exp = int(time.time()) + 3600
        cas = f"local://{self.fake.cas_dir}"
        self._send(200, {"accessToken": "xet-test-token", "exp": exp, "casUrl": cas},
                   {"X-Xet-Cas-Url": cas, "X-Xet-Access-Token": "xet-test-token",
                    "X-Xet-Token-Expiration": str(exp)})

    def _do_commit(self, repo_id: str, rev: str) -> None:
        fake = self.fake
        create_pr = self._query.get("create_pr", ["0"])[0] == "1"
        repo = self._repo(repo_id, write=True, pr=create_pr)
        lines = [json.loads(line) for line in self._raw.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit payload must start with a header")
        header = lines[0]["value"]
        create_pr = self._query.get("create_pr", ["0"])[0] == "1"
        base = self._commit(repo, rev)
        parent = header.get("parentCommit")
        if parent is not None:
            pc = repo.resolve(parent)
            if pc is None:
                raise HubError(404, f"parent commit {parent} not found", "RevisionNotFound")
            if not create_pr and pc.oid != base.oid:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            if create_pr:
                base = pc
        if fake.on_commit is not None:
            err = fake.on_commit(repo_id, header)
            if err is not None:
                raise err
        files = dict(base.files)
        for item in lines[1:]:
            key, v = item["key"], item["value"]
            if key == "file":
                data = base64.b64decode(v["content"])
                files[v["path"]] = Entry(len(data), git_blob_oid(data), content=data)
            elif key == "lfsFile":
                oid, size = v["oid"], v.get("size")
                data = fake.lfs_objects.get(oid)
                if data is None:
                    # Xet uploads: the CAS shards carry each file's sha256 metadata.
                    if not fake.xet_has_sha256(oid):
                        raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a "
                                            f"file that does not exist. ({v['path']}, {oid})")
                    if size is None:
                        raise HubError(422, f"no size for {v['path']}")
                else:
                    size = len(data)
                files[v["path"]] = Entry(size, git_blob_oid(lfs_pointer(oid, size)), sha256=oid, content=data)
            elif key == "deletedFile":
                if files.pop(v["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            else:
                raise HubError(400, f"unsupported commit operation {key}")
        with fake.lock:
            if create_pr:
                repo.prs += 1
                ref = f"refs/pr/{repo.prs}"
            else:
                ref = rev
            commit = fake._add_commit(repo, ref, base.oid, files, header["summary"], header.get("description", ""))
        out: dict[str, Any] = {"success": True, "commitOid": commit.oid,
                               "commitUrl": f"{fake.url}/{repo_id}/commit/{commit.oid}"}
        if create_pr:
            out["pullRequestUrl"] = f"{fake.url}/{repo_id}/discussions/{repo.prs}"
        self._send(200, out)

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        repo = self._repo(repo_id)
        if repo.gated is not None:  # as huggingface.co: metadata is public, files need access
            user = self._user()
            if user is None:
                raise HubError(401, f"Access to model {repo_id} is restricted. You must have access to it "
                                    "and be authenticated to access it. Please log in.", "GatedRepo")
            if user not in repo.gated:
                raise HubError(403, f"Access to model {repo_id} is restricted and you are not in the "
                                    "authorized list.", "GatedRepo")
        commit = self._commit(repo, rev)
        entry = commit.files.get(path)
        if entry is None or entry.content is None:
            raise HubError(404, "Entry not found", "EntryNotFound")
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{entry.sha256 or entry.oid}"'}
        if entry.sha256 is None:
            return self._send_file(entry.content, headers)
        # LFS: the Hub answers with a redirect to its CDN, and says what the target is.
        headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size),
                        "Location": f"{self.fake.cdn_url}/_cdn/repos/{repo_id}/{entry.sha256}"})
        self._send(302, f"Found. Redirecting to {headers['Location']}".encode(), headers)

    def _cdn(self, sha256: str) -> None:
        data = self.fake.lfs_objects.get(sha256)
        if data is None:
            raise HubError(404, "object not found")
        self._send_file(data, {"ETag": f'"{sha256}"'})

    def _send_file(self, data: bytes, headers: dict[str, str]) -> None:
        """A file body with Range support (RFC 9110: one range; 416 when unsatisfiable)."""
        size, status, start, end = len(data), 200, 0, len(data)
        want = self.headers.get("Range")
        headers = {**headers, "Accept-Ranges": "bytes"}
        if want:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", want.strip())
            if m is None or m.groups() == ("", ""):
                raise HubError(400, f"bad Range header {want!r}")
            a, b = m.groups()
            start, end = (size - int(b), size) if a == "" else (int(a), min(size, int(b) + 1) if b else size)
            start = max(start, 0)
            if start >= size or start >= end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._status = 416
                return
            status = 206
            lie = self.fake.hostile.content_range
            headers["Content-Range"] = lie(start, end, size) if lie else f"bytes {start}-{end - 1}/{size}"
        body = data[start:end]
        if status == 206 and self.fake.hostile.body is not None:
            body = self.fake.hostile.body(body)
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self._status = status
        if self.command == "HEAD":
            return
        cut = self._take_drop()
        if cut is not None and cut < len(body):
            body = body[:cut]
        self._sent = len(body)
        self._log()  # before the body goes out: a client that has read it may look at the log at once
        with self.fake.lock:
            self.fake.bytes_sent += len(body)
        self._write(body)
        if cut is not None:
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)  # SHUT_RDWR: the client sees a short body

    def _take_drop(self) -> int | None:
        with self.fake.lock:
            for d in self.fake.drops:
                if d.times > 0 and d.pattern.search(urlsplit(self.path).path):
                    d.times -= 1
                    return d.after
        return None

    # ------------------------------------------------------------------ LFS
    def _lfs_batch(self, repo_id: str) -> None:
        fake = self.fake
        self._repo(repo_id, write=True, pr=True)
        body = json.loads(self._raw)
        objects = []
        for o in body["objects"]:
            oid, size = o["oid"], o["size"]
            if oid in fake.lfs_objects:
                objects.append({"oid": oid, "size": size})
                continue
            verify = {"href": f"{fake.url}/_lfs/verify/{oid}", "header": {}}
            chunk = fake.lfs_multipart_chunk
            if chunk and size > chunk:
                n = -(-size // chunk)
                header = {"chunk_size": str(chunk)}
                header.update({f"{i:05d}": f"{fake.url}/_lfs/part/{oid}/{i}" for i in range(1, n + 1)})
                upload = {"href": f"{fake.url}/_lfs/complete/{oid}", "header": header}
            else:
                upload = {"href": f"{fake.url}/_lfs/upload/{oid}"}
            objects.append({"oid": oid, "size": size, "authenticated": True,
                            "actions": {"upload": upload, "verify": verify}})
        self._send(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_storage(self, m: str, p: list[str]) -> None:
        fake = self.fake
        kind, oid = p[0], p[1]
        if kind == "upload" and m == "PUT":
            with fake.lock:
                fake.lfs_bytes_received += len(self._raw)
            self._store(oid, self._raw)
            return self._send(200, {})
        if kind == "part" and m == "PUT":
            with fake.lock:
                fake.lfs_bytes_received += len(self._raw)
                fake._parts.setdefault(oid, {})[int(p[2])] = self._raw
            return self._send(200, {}, {"ETag": f'"{hashlib.md5(self._raw).hexdigest()}"'})
        if kind == "complete" and m == "POST":
            body = json.loads(self._raw)
            parts = fake._parts.pop(oid, {})
            numbers = [x["partNumber"] for x in body["parts"]]
            if numbers != sorted(parts):
                raise HubError(400, f"parts {numbers} do not match the uploaded parts {sorted(parts)}")
            self._store(oid, b"".join(parts[i] for i in numbers))
            return self._send(200, {})
        if kind == "verify" and m == "POST":
            self._user(required=True)
            body = json.loads(self._raw)
            data = fake.lfs_objects.get(oid)
            if data is None or len(data) != body["size"]:
                raise HubError(404, f"object {oid} not found or wrong size")
            return self._send(200, {})
        raise HubError(404, f"no LFS route {m} {p}")

    def _store(self, oid: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"uploaded bytes do not match sha256 {oid}")
        with self.fake.lock:
            self.fake.lfs_objects[oid] = data


def hermetic_hf_env(monkeypatch: Any, tmp_path: Path) -> Path:
    """The environment for a test that talks to a loopback Hub: no token, endpoint or cache of the
    machine; a private standard cache (returned), read by huggingface_hub and llama.cpp alike."""
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "MODEL_ENDPOINT", "LLAMA_CACHE",
                "HUGGINGFACE_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return cache
