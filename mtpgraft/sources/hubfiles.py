"""Byte ranges of files in a Hub repo, fetched once and kept.

    repo = open_repo(ref, endpoint=..., token=...)       # resolves the revision, lists the files
    path = repo.fetch(file, start, end)                   # a local file holding exactly those bytes

Ranges are fetched with the huggingface_hub client's own HTTP session and headers (its token rules:
--token, else HF_TOKEN, else the stored login) from the `resolve` URL at the RESOLVED commit, and
kept under the mtpgraft cache keyed by repo, commit, file and range: a rerun fetches nothing, and an
interrupted fetch resumes from the bytes already on disk (kept in a `.part` file). 5xx answers and
dropped connections are retried with backoff; after the last try one line says what to re-run.

Nothing the Hub says is trusted (see hublimits): the commit and every listed name are checked before
they become cache paths, every cache path is checked to lie under the cache, a range is asked for
only within the size the listing gives, a 206 must carry exactly the range asked for, and every
request runs under hublimits' timeouts, minimum rate and deadline. An answer that makes less than
PROGRESS_MIN bytes of progress counts as a failed try, so a server that sends a few bytes per
answer gets RETRIES answers, not thousands. A source refused while it is read (`discard`) leaves
none of its ranges behind; a range whose fetch merely failed keeps its bytes for the next run.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..errors import HubError, Setting, Text, redact
from .hublimits import PROGRESS_MIN, RETRIES, HubLimits, bounded, check_commit, check_path
from .spec import HubRef

if TYPE_CHECKING:
    from huggingface_hub import HfApi

Progress = Callable[[int], None]


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1-based): 1, 2, 4, 8, then 16."""
    return float(min(16, 2 ** (attempt - 1)))


class _Retry(Exception):
    """A failure worth another try (5xx, 429, a dropped or refused connection)."""


class FetchFailed(HubError):
    """Every try failed (the Hub down, the network, too slow): what was fetched stays for a rerun."""


@dataclass
class HubRepo:
    """One repo at one resolved commit: its files (path -> size) and a range cache."""

    ref: HubRef
    commit: str
    files: dict[str, int]
    api: HfApi
    cache: Path
    sleep: Callable[[float], None] = time.sleep
    retries: int = RETRIES
    progress: Progress = field(default=lambda n: None)
    fetched: int = 0  # bytes received from the Hub by this object
    root: Path | None = None  # the cache root every cache path must lie under (default: cache)
    limits: HubLimits | None = None  # timeouts, minimum rate, deadline (default: hublimits')
    touched: set[Path] = field(default_factory=set, repr=False)  # ranges used, for discard
    # path -> the CDN URL the Hub redirected its first range to: later ranges of the file go there
    # directly (one round trip instead of two; the token is never sent to it).
    _direct: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.root is None:
            self.root = self.cache

    @property
    def repo_id(self) -> str:
        return self.ref.repo_id

    def label(self, path: str | None = None) -> str:
        return f"hf://{self.repo_id}/{path}@{self.commit[:12]}" if path else self.ref.label(self.commit)

    def require(self, path: str) -> int:
        """The size of `path`, or the one-line error that it is not in the repo."""
        if path not in self.files:
            raise HubError(f"{self.label(path)}: no such file in {self.repo_id} at {self.ref.revision or 'main'} "
                           f"({self.commit[:12]})")
        return self.files[path]

    def range_path(self, path: str, start: int, end: int) -> Path:
        """Where the range is cached; refused unless it lies under the cache root."""
        check_path(path, self.label())
        out = self.cache / quote(path, safe="") / f"{start}-{end}"
        assert self.root is not None
        root = self.root.resolve()
        if not out.resolve().is_relative_to(root) or out.resolve() == root:
            raise HubError(f"{self.label(path)}: its cache path {out} is outside the cache {root}; refusing")
        return out

    def cached(self, path: str, start: int, end: int) -> bool:
        return self.range_path(path, start, end).is_file()

    def fetch(self, path: str, start: int, end: int) -> Path:
        """A local file holding bytes [start, end) of `path` (fetched unless already cached). Two
        runs fetching ranges of one file take turns (a lock on its cache folder: no lock files)."""
        size = self.require(path)
        if not 0 <= start < end <= size:
            raise HubError(f"{self.label(path)}: bytes {start:,}-{end:,} asked for, but the Hub lists the file "
                           f"at {size:,} bytes; refusing the source")
        final = self.range_path(path, start, end)
        self.touched.add(final)
        if final.is_file() and final.stat().st_size == end - start:
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if final.is_file() and final.stat().st_size == end - start:
                return final  # fetched by the run we waited for
            with bounded(self.limits):
                return self._fetch_locked(path, start, end, final)
        finally:
            os.close(fd)

    def _fetch_locked(self, path: str, start: int, end: int, final: Path) -> Path:
        part = final.with_name(final.name + ".part")
        if final.is_file():  # a cached range of the wrong size: fetch what is missing
            os.replace(final, part)
        failures = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            if have > end - start:
                part.unlink()  # more than the range holds: not ours, start again
                continue
            if have == end - start:
                os.replace(part, final)
                return final
            try:
                self._get(path, start + have, end, part)
            except _Retry as e:
                got = (part.stat().st_size if part.exists() else 0) - have
                if got >= min(PROGRESS_MIN, end - start - have):
                    continue  # real progress: the next try resumes at once
                failures += 1
                if failures >= self.retries:
                    kept = part.stat().st_size if part.exists() else 0
                    raise FetchFailed(f"fetching {self.label(path)} failed {self.retries} times ({e}); run the "
                                      f"same command again: the {kept:,} bytes already fetched of this range "
                                      "are kept and not fetched again") from None
                self.sleep(backoff_delay(failures))
            except HubError:
                part.unlink(missing_ok=True)  # a refused answer: nothing of this range is kept
                raise

    def read(self, path: str, start: int, end: int) -> bytes:
        return self.fetch(path, start, end).read_bytes()

    def discard(self) -> None:
        """Remove every range this object used (a refused source leaves nothing in the cache)."""
        for p in self.touched:
            for q in (p, p.with_name(p.name + ".part")):
                q.unlink(missing_ok=True)
        for d in sorted({p.parent for p in self.touched} | {self.cache, self.cache.parent}, reverse=True):
            try:
                d.rmdir()  # only when empty
            except OSError:
                pass
        self.touched.clear()

    def _get(self, path: str, start: int, end: int, part: Path) -> None:
        from huggingface_hub import get_session
        from huggingface_hub.utils import build_hf_headers

        direct = self._direct.get(path)
        url = direct or f"{self.api.endpoint}/{self.repo_id}/resolve/{self.commit}/{quote(path)}"
        headers = build_hf_headers(token=False if direct else self.api.token)
        headers["Range"] = f"bytes={start}-{end - 1}"
        got = 0
        try:
            with get_session().stream("GET", url, headers=headers, follow_redirects=True) as r:
                if r.status_code >= 500 or r.status_code in (408, 429):
                    raise _Retry(f"HTTP {r.status_code}")
                whole = r.status_code == 200 and start == 0 and end == self.files.get(path)
                if direct and r.status_code != 206 and not whole:
                    del self._direct[path]  # an expired link: back to the Hub's resolve URL
                    raise _Retry(f"the CDN link answered HTTP {r.status_code}")
                if r.status_code != 206 and not whole:
                    raise HubError(_status_message(self, path, r.status_code, r.headers))
                self._check_answer(path, start, end, r.status_code, r.headers)
                if r.history and not direct:
                    self._direct[path] = str(r.url)
                with open(part, "ab") as fh:
                    for chunk in r.iter_bytes():  # as received: a drop loses nothing
                        if got + len(chunk) > end - start:
                            raise HubError(f"fetching {self.label(path)}: the Hub sent more than the "
                                           f"{end - start:,} bytes asked for; refusing the answer")
                        fh.write(chunk)
                        got += len(chunk)
                        self.fetched += len(chunk)
                        self.progress(len(chunk))
        except _transport_errors() as e:
            raise _Retry(_one_line(e)) from None
        if got < end - start:
            raise _Retry("the connection closed before the range was complete")

    def _check_answer(self, path: str, start: int, end: int, status: int, headers: object) -> None:
        """A 206 says it holds exactly the range asked for (of a file of the listed size), and a
        Content-Length, when given, is the range's length."""
        get = getattr(headers, "get", lambda k, d=None: d)
        said = get("Content-Range", "") or ""
        if status == 206:
            m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", said.strip())
            size = self.files[path]
            if not m or (int(m[1]), int(m[2]) + 1) != (start, end) or m[3] not in ("*", str(size)):
                raise HubError(f"fetching {self.label(path)}: asked for bytes {start}-{end - 1}/{size}, the Hub "
                               f"answered Content-Range {_shown(said)}; refusing the answer")
        length = get("Content-Length")
        if length is not None and get("Content-Encoding", "identity") == "identity" and length.strip() != str(end - start):
            raise HubError(f"fetching {self.label(path)}: asked for {end - start:,} bytes, the Hub announced "
                           f"{_shown(length)}; refusing the answer")


def _transport_errors() -> tuple[type[BaseException], ...]:
    try:
        import httpx2

        return (httpx2.TransportError, ConnectionError)
    except ImportError:  # pragma: no cover - the client's HTTP library
        return (ConnectionError,)


def _shown(text: str) -> str:
    return ascii(text[:100])


def _one_line(e: BaseException) -> str:
    text = redact(" ".join(str(e).split()))
    return text[:200] or type(e).__name__


def _status_message(repo: HubRepo, path: str, status: int, headers: object) -> str:
    code = getattr(headers, "get", lambda k, d=None: d)("X-Error-Code", "")
    if code == "GatedRepo" or status in (401, 403):
        return gated_message(repo.repo_id, has_token=bool(repo.api.token))
    if code == "EntryNotFound" or status == 404:
        return f"{repo.label(path)}: no such file in {repo.repo_id}"
    return f"fetching {repo.label(path)}: the Hub answered HTTP {status}"


def gated_message(repo_id: str, *, has_token: bool) -> str:
    if not has_token:
        return Text(f"{repo_id} is gated or private and no Hugging Face token was given: pass ", Setting("token"),
                    ", set HF_TOKEN, or run `hf auth login`")
    return (f"{repo_id} is gated and this token has no access: accept its terms on the Hub (or use a "
            "token of an account that did), then run the same command again")


# --------------------------------------------------------------------------- opening a repo


def open_repo(ref: HubRef, *, api: HfApi, cache_root: Path, sleep: Callable[[float], None] = time.sleep,
              retries: int = RETRIES, progress: Progress | None = None,
              limits: HubLimits | None = None) -> HubRepo:
    """Resolve the revision to a commit and list the files, with one-line errors for every refusal."""
    lim = limits or HubLimits.from_env()
    with bounded(lim):
        commit = _resolve_commit(ref, api)
        files = _list_files(ref, api, commit)
    owner, name = ref.repo_id.split("/")
    cache = cache_root / f"{owner}--{name}" / commit
    return HubRepo(ref, commit, files, api, cache, sleep=sleep, retries=retries,
                   progress=progress or (lambda n: None), root=cache_root, limits=lim)


def _resolve_commit(ref: HubRef, api: HfApi) -> str:
    with source_errors(ref, api):
        info = api.model_info(ref.repo_id, revision=ref.revision)
    if not info.sha:
        raise HubError(f"{ref.label()}: the Hub gave no commit for revision {ref.revision or 'main'!r}")
    return check_commit(info.sha, ref.label())


def _list_files(ref: HubRef, api: HfApi, commit: str) -> dict[str, int]:
    """path -> size; a name that cannot be a relative path, or a size that is no size, refuses the
    listing (the Hub itself allows neither)."""
    from huggingface_hub.hf_api import RepoFile

    with source_errors(ref, api):
        entries = list(api.list_repo_tree(ref.repo_id, revision=commit, recursive=True))
    files = {}
    for e in entries:
        if isinstance(e, RepoFile):
            size = e.size
            if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 53:
                raise HubError(f"{ref.label(commit)}: the Hub lists {_shown(str(e.path))} at {_shown(str(size))} "
                               "bytes, not a size; refusing the listing")
            files[check_path(e.path, ref.label(commit))] = size
    return files


class source_errors:  # noqa: N801 - used as a context manager
    """Map the client's errors while opening a repo to one line each."""

    def __init__(self, ref: HubRef, api: HfApi) -> None:
        self.ref, self.api = ref, api

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: object) -> bool:
        if e is None or isinstance(e, HubError):
            return False
        msg = describe(e, self.ref, self.api)
        if msg is None:
            return False
        raise HubError(msg) from e


def describe(e: BaseException, ref: HubRef, api: HfApi) -> str | None:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        return gated_message(ref.repo_id, has_token=bool(api.token))
    if isinstance(e, RevisionNotFoundError):
        return f"{ref.label()}: revision {ref.revision!r} not found in {ref.repo_id}"
    if isinstance(e, RepositoryNotFoundError):
        status = e.response.status_code if e.response is not None else None
        if status == 401 and not api.token:
            return gated_message(ref.repo_id, has_token=False)
        return (f"{ref.label()}: repository {ref.repo_id} not found on {api.endpoint} (or not visible with "
                "this token)")
    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            return gated_message(ref.repo_id, has_token=bool(api.token))
        return f"{ref.label()}: the Hub answered HTTP {status} ({_one_line(e)})"
    if isinstance(e, _transport_errors()):
        return f"cannot reach {api.endpoint} ({_one_line(e)}): check the endpoint and the network, then run the same command again"
    if isinstance(e, HFValidationError):  # the client refused a name before asking (e.g. `..` in it)
        return f"{ref.label()}: huggingface_hub refused it ({_one_line(e)})"
    if isinstance(e, (KeyError, TypeError, ValueError, AttributeError, RecursionError)):  # no answer at all
        return f"{ref.label()}: the Hub's answer cannot be read ({type(e).__name__}: {_one_line(e)}); refusing it"
    return None


class RepoFiles:
    """A HubRepo as donor.read_header's Files (sizes from the listing, bytes by range)."""

    def __init__(self, repo: HubRepo) -> None:
        self.repo = repo

    def size(self, path: str) -> int:
        return self.repo.require(path)

    def read(self, path: str, start: int, end: int) -> bytes:
        return self.repo.read(path, start, end)

    def label(self, path: str) -> str:
        return self.repo.label(path)
