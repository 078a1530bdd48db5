"""How long and how slowly the Hub may answer, and what it may name: the bounds on hostile answers.

Every request made while reading a Hub source (huggingface_hub's model_info and tree listing, and
mtpgraft's own range GETs, all through the client's one HTTP session) runs under:

    connect timeout   CONNECT_TIMEOUT s to open the connection
    read timeout      READ_TIMEOUT s of silence ends the request
    minimum rate      once a request has run READ_TIMEOUT s, it must average MIN_RATE bytes/s
    deadline          no request runs longer than DEADLINE s (a range that needs longer resumes)
    answer cap        an /api/ answer (model_info, the tree listing) past ANSWER_CAP bytes is refused,
                      and so is a listing of more than API_ANSWERS pages (a `next` link forever)

Each is overridable by an environment variable (MTPGRAFT_HUB_CONNECT_TIMEOUT, _READ_TIMEOUT,
_MIN_RATE, _DEADLINE, _ANSWER_CAP, _API_ANSWERS), read when a Hub source is opened. A request cut by them fails like a dropped
connection: the range reader's retry rule applies, then one line says what to re-run.

Names the Hub gives are checked before they touch the disk: a commit is 40 hex digits, a file name
relative, without `..`, control characters or a leading `/`, and no longer than a filesystem takes.
"""

from __future__ import annotations

import contextvars
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..errors import HubError

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0
MIN_RATE = 16 * 1024  # bytes/s, averaged over a request once it has run READ_TIMEOUT s
DEADLINE = 1800.0  # s per request
ANSWER_CAP = 64 * 1024 * 1024  # bytes of one /api/ answer (a tree of 100k files takes ~20 MB)
API_ANSWERS = 1000  # /api/ answers in one bounded block (the Hub pages a tree by 1,000 entries)

RETRIES = 5  # failed tries of one range (or one download) before one line says what to re-run
PROGRESS_MIN = 64 * 1024  # bytes an answer must bring (or the rest of its range) to count as progress
HEADER_CAP = 256 * 1024 * 1024  # a GGUF header (tokenizer included) larger than this is refused unread
NAME_MAX = 255  # bytes per path component (ext4, XFS, btrfs)
PATH_MAX = 4096  # bytes per path (Linux)

_COMMIT = re.compile(r"[0-9a-f]{40}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class HubLimits:
    connect: float = CONNECT_TIMEOUT
    read: float = READ_TIMEOUT
    min_rate: float = MIN_RATE
    deadline: float | None = DEADLINE
    answer_cap: float = ANSWER_CAP
    api_answers: float = API_ANSWERS

    @classmethod
    def from_env(cls) -> HubLimits:
        def get(name: str, default: float) -> float:
            raw = os.environ.get(f"MTPGRAFT_HUB_{name}", "")
            try:
                value = float(raw) if raw else default
            except ValueError:
                value = default
            return value if value > 0 else default

        return cls(get("CONNECT_TIMEOUT", CONNECT_TIMEOUT), get("READ_TIMEOUT", READ_TIMEOUT),
                   get("MIN_RATE", MIN_RATE), get("DEADLINE", DEADLINE), get("ANSWER_CAP", ANSWER_CAP),
                   get("API_ANSWERS", API_ANSWERS))


# --------------------------------------------------------------------------- names


def check_commit(sha: object, where: str) -> str:
    """A commit id the Hub gave: 40 lowercase hex digits, nothing else (it becomes a cache folder)."""
    if not isinstance(sha, str) or not _COMMIT.fullmatch(sha):
        raise HubError(f"{where}: the Hub gave {_shown(sha)} as the commit, not a 40-hex-digit commit id; "
                       "refusing to use it")
    return sha


def path_problem(path: object) -> str | None:
    """Why a repo file name cannot be used as one (None when it can)."""
    if not isinstance(path, str) or not path:
        return "not a name"
    if _CONTROL.search(path):
        return "a control character"
    if path.startswith("/") or "\\" in path:
        return "an absolute path" if path.startswith("/") else "a backslash"
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "an empty, '.' or '..' component"
    if len(path.encode("utf-8", "surrogatepass")) > PATH_MAX:
        return f"longer than {PATH_MAX} bytes"
    if any(len(p.encode("utf-8", "surrogatepass")) > NAME_MAX for p in parts):
        return f"a component longer than {NAME_MAX} bytes"
    return None


def check_path(path: object, where: str) -> str:
    problem = path_problem(path)
    if problem is not None:
        raise HubError(f"{where}: the Hub lists a file named {_shown(path)} ({problem}); refusing to use it")
    assert isinstance(path, str)
    return path


def _shown(value: object) -> str:
    """A name from the Hub as one short, printable line."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------- the session's bounds

@dataclass
class _Scope:
    limits: HubLimits
    short: dict[str, int] | None  # per URL path: answers cut before PROGRESS_MIN bytes (None: not counted)
    api_answers: int = 0


_ACTIVE: contextvars.ContextVar[_Scope | None] = contextvars.ContextVar("mtpgraft_hub_limits", default=None)


@contextmanager
def bounded(limits: HubLimits | None = None, *, count_short: bool = False) -> Iterator[HubLimits]:
    """Run the block's Hub requests under `limits` (default: the constants and their variables).
    count_short: for a client that retries on its own and forgives any progress (huggingface_hub's
    whole-file download): the RETRIES-th answer of one URL cut before PROGRESS_MIN bytes ends it."""
    lim = limits or HubLimits.from_env()
    _install()
    token = _ACTIVE.set(_Scope(lim, {} if count_short else None))
    try:
        yield lim
    finally:
        _ACTIVE.reset(token)


def _install() -> None:
    """Give the client's shared HTTP session two hooks (unless it has them). They do nothing outside
    `bounded`, so pushes and everything else keep the client's own behaviour."""
    from huggingface_hub import get_session, set_client_factory

    if _on_request in get_session().event_hooks.get("request", []):
        return

    try:
        from huggingface_hub.utils._http import default_client_factory
    except ImportError:  # pragma: no cover - another client version
        import httpx2

        def default_client_factory() -> Any:
            return httpx2.Client(follow_redirects=True, timeout=None)

    def factory() -> Any:
        client = default_client_factory()
        hooks = client.event_hooks
        client.event_hooks = {"request": [*hooks.get("request", []), _on_request],
                              "response": [*hooks.get("response", []), _on_response]}
        return client

    set_client_factory(factory)


def _on_request(request: Any) -> None:
    scope = _ACTIVE.get()
    if scope is None:
        return
    lim = scope.limits
    given = dict(request.extensions.get("timeout") or {})
    want = {"connect": lim.connect, "read": lim.read, "write": lim.read, "pool": lim.connect}
    # the tighter of the caller's timeout and ours (huggingface_hub often passes none at all)
    request.extensions["timeout"] = {k: v if given.get(k) is None else min(given[k], v) for k, v in want.items()}
    request.extensions["mtpgraft_started"] = time.monotonic()


def _on_response(response: Any) -> None:
    scope = _ACTIVE.get()
    if scope is None:
        return
    lim = scope.limits
    started = response.request.extensions.get("mtpgraft_started", time.monotonic())
    path = response.request.url.path
    cap = lim.answer_cap if path.startswith("/api/") else None
    if cap is not None:
        scope.api_answers += 1
        if scope.api_answers > lim.api_answers:
            raise HubError(f"the Hub gave more than {lim.api_answers:,.0f} answers to /api/ requests (the last to "
                           f"{_shown(path)}); refusing to ask for more")
    said = response.headers.get("Content-Length", "")
    if cap is not None and said.isdigit() and int(said) > cap:
        raise _too_large(path, cap)
    response.stream = _paced(response.stream, scope, started, path, cap)


def _too_large(path: str, cap: float) -> HubError:
    return HubError(f"the Hub's answer to {_shown(path)} is larger than {cap:,.0f} bytes; refusing it")


def _paced(inner: Any, scope: _Scope, started: float, path: str, cap: float | None) -> Any:
    import httpx2

    class Paced(httpx2.SyncByteStream):
        """A response body that ends with a timeout when it comes too slowly or too late."""

        def __iter__(self) -> Iterator[bytes]:
            got = 0
            try:
                for chunk in inner:
                    got += len(chunk)
                    if cap is not None and got > cap:
                        raise _too_large(path, cap)
                    _pace(scope.limits, started, got)
                    yield chunk
            except httpx2.TransportError as e:
                _count_short(scope, path, got, e)
                raise

        def close(self) -> None:
            inner.close()

    return Paced()


def _count_short(scope: _Scope, path: str, got: int, e: BaseException) -> None:
    if scope.short is None or got >= PROGRESS_MIN:
        return
    n = scope.short[path] = scope.short.get(path, 0) + 1
    if n >= RETRIES:
        raise HubError(f"downloading {_shown(path)} failed {n} times, each answer cut before {PROGRESS_MIN:,} bytes "
                       f"({' '.join(str(e).split())[:120] or type(e).__name__}); run the same command again: "
                       "what was fetched is kept") from None


def _pace(lim: HubLimits, started: float, got: int) -> None:
    import httpx2

    took = time.monotonic() - started
    if lim.deadline is not None and took > lim.deadline:
        raise httpx2.ReadTimeout(f"no answer within the {lim.deadline:g} s deadline")
    if took > lim.read and got / took < lim.min_rate:
        raise httpx2.ReadTimeout(f"the answer came at {got / took:,.0f} bytes/s, under the minimum of "
                                 f"{lim.min_rate:,.0f}")
