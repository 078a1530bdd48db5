"""Byte ranges of files in a Hub repo, fetched once and kept.

    repo = open_repo(ref, endpoint=..., token=...)       # resolves the revision, lists the files
    path = repo.fetch(file, start, end)                   # a local file holding exactly those bytes

Ranges are fetched with the huggingface_hub client's own HTTP session and headers (its token rules:
--token, else HF_TOKEN, else the stored login) from the `resolve` URL at the RESOLVED commit, and
kept under the mtpgraft cache keyed by repo, commit, file and range: a rerun fetches nothing, and an
interrupted fetch resumes from the bytes already on disk (kept in a `.part` file). 5xx answers and
dropped connections are retried with backoff; after the last try one line says what to re-run.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from ..errors import HubError, Setting, Text, redact
from .spec import HubRef

if TYPE_CHECKING:
    from huggingface_hub import HfApi

RETRIES = 5
Progress = Callable[[int], None]


def backoff_delay(attempt: int) -> float:
    """Seconds to wait before retry `attempt` (1-based): 1, 2, 4, 8, then 16."""
    return float(min(16, 2 ** (attempt - 1)))


class _Retry(Exception):
    """A failure worth another try (5xx, 429, a dropped or refused connection)."""


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
    # path -> the CDN URL the Hub redirected its first range to: later ranges of the file go there
    # directly (one round trip instead of two; the token is never sent to it).
    _direct: dict[str, str] = field(default_factory=dict, repr=False)

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
        return self.cache / quote(path, safe="") / f"{start}-{end}"

    def cached(self, path: str, start: int, end: int) -> bool:
        return self.range_path(path, start, end).is_file()

    def fetch(self, path: str, start: int, end: int) -> Path:
        """A local file holding bytes [start, end) of `path` (fetched unless already cached). Two
        runs fetching the same range take turns (a lock file beside it)."""
        final = self.range_path(path, start, end)
        if final.is_file() and final.stat().st_size == end - start:
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.with_name(final.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if final.is_file() and final.stat().st_size == end - start:
                return final  # fetched by the run we waited for
            return self._fetch_locked(path, start, end, final)

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
                failures = 0 if got > 0 else failures + 1
                if failures >= self.retries:
                    kept = part.stat().st_size if part.exists() else 0
                    raise HubError(f"fetching {self.label(path)} failed {self.retries} times ({e}); run the "
                                   f"same command again: the {kept:,} bytes already fetched of this range "
                                   "are kept and not fetched again") from None
                if got == 0:
                    self.sleep(backoff_delay(failures))

    def read(self, path: str, start: int, end: int) -> bytes:
        return self.fetch(path, start, end).read_bytes()

    def _get(self, path: str, start: int, end: int, part: Path) -> None:
        from huggingface_hub import get_session
        from huggingface_hub.utils import build_hf_headers

        direct = self._direct.get(path)
        url = direct or f"{self.api.endpoint}/{self.repo_id}/resolve/{self.commit}/{quote(path)}"
        headers = build_hf_headers(token=False if direct else self.api.token)
        headers["Range"] = f"bytes={start}-{end - 1}"
        transport = _transport_errors()
        got = 0
        try:
            with get_session().stream("GET", url, headers=headers, follow_redirects=True, timeout=60) as r:
                if r.status_code >= 500 or r.status_code in (408, 429):
                    raise _Retry(f"HTTP {r.status_code}")
                whole = r.status_code == 200 and start == 0 and end == self.files.get(path)
                if direct and r.status_code != 206 and not whole:
                    del self._direct[path]  # an expired link: back to the Hub's resolve URL
                    raise _Retry(f"the CDN link answered HTTP {r.status_code}")
                if r.status_code != 206 and not whole:
                    raise HubError(_status_message(self, path, r.status_code, r.headers))
                if r.history and not direct:
                    self._direct[path] = str(r.url)
                with open(part, "ab") as fh:
                    for chunk in r.iter_bytes():  # as received: a drop loses nothing
                        chunk = chunk[:end - start - got]
                        fh.write(chunk)
                        got += len(chunk)
                        self.fetched += len(chunk)
                        self.progress(len(chunk))
        except transport as e:
            raise _Retry(_one_line(e)) from None
        if got < end - start:
            raise _Retry("the connection closed before the range was complete")


def _transport_errors() -> tuple[type[BaseException], ...]:
    try:
        import httpx2

        return (httpx2.TransportError, ConnectionError)
    except ImportError:  # pragma: no cover - the client's HTTP library
        return (ConnectionError,)


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
              retries: int = RETRIES, progress: Progress | None = None) -> HubRepo:
    """Resolve the revision to a commit and list the files, with one-line errors for every refusal."""
    commit = _resolve_commit(ref, api)
    files = _list_files(ref, api, commit)
    owner, name = ref.repo_id.split("/")
    cache = cache_root / f"{owner}--{name}" / commit
    return HubRepo(ref, commit, files, api, cache, sleep=sleep, retries=retries,
                   progress=progress or (lambda n: None))


def _resolve_commit(ref: HubRef, api: HfApi) -> str:
    with source_errors(ref, api):
        info = api.model_info(ref.repo_id, revision=ref.revision)
    if not info.sha:
        raise HubError(f"{ref.label()}: the Hub gave no commit for revision {ref.revision or 'main'!r}")
    return info.sha


def _list_files(ref: HubRef, api: HfApi, commit: str) -> dict[str, int]:
    from huggingface_hub.hf_api import RepoFile

    with source_errors(ref, api):
        entries = list(api.list_repo_tree(ref.repo_id, revision=commit, recursive=True))
    return {e.path: int(e.size) for e in entries if isinstance(e, RepoFile)}


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
    return None
