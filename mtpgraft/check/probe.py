"""Whether a running server takes per-request speculative fields (`probe_per_request`), the tokens
one request drafted, and the server order and request fields that let one server measure every draft
length of a --spec-type list."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from ..errors import ServerError
from .plan import ServerConfig
from .records import timing_int
from .server import M_DRAFT

PROBE_TOKENS = 16  # tokens of each per-request probe request (uncounted, like the warm-up)


# The per-request line both llama-server (slot print_timing) and ik_llama.cpp's print when a request
# drafted: "draft acceptance = 0.8 (52 accepted / 63 generated)" / "draft acceptance rate = ...".
_LOG_DRAFTED = re.compile(r"draft acceptance(?: rate)? = [\d.]+ \(\s*\d+ accepted /\s*(\d+) generated\)")


def _drafted(server: Any, send: Callable[[dict[str, Any]], dict[str, Any]],
             fields: dict[str, Any]) -> int:
    """Tokens drafted by one request: llama-server's /metrics delta, else the response's
    timings.draft_n, else (ik_llama.cpp's MTP path counts neither) its log line for the request."""
    read = getattr(server, "log_text", lambda: "")
    before, logged = server.metrics(), len(_LOG_DRAFTED.findall(read()))
    res = send(fields)
    after = server.metrics()
    if M_DRAFT in after:
        return int(after[M_DRAFT] - before.get(M_DRAFT, 0))
    if "draft_n" in (res.get("timings") or {}):
        return timing_int(res["timings"], "draft_n")
    deadline = time.monotonic() + 1.0  # the log is written by a thread of its own
    while time.monotonic() < deadline:
        lines = _LOG_DRAFTED.findall(read())
        if len(lines) > logged:
            return sum(int(x) for x in lines[logged:])
        time.sleep(0.05)
    return 0  # no line: nothing drafted


def probe_per_request(server: Any, send: Callable[[dict[str, Any]], dict[str, Any]],
                      what: str = "") -> tuple[bool, str]:
    """Whether a running speculative server takes per-request speculative fields: the same short
    request (`send(fields)` sends it) plain and with `speculative.n_max` 0; taken when the first
    drafts and the second does not. (taken, the evidence in words)."""
    drafted = []
    for fields in ({}, {"speculative.n_max": 0}):
        try:
            drafted.append(_drafted(server, send, fields))
        except ServerError as e:
            return False, f"a request with speculative.n_max was refused: {e}"
    plain, probed = drafted
    if plain == 0:
        return False, "undecided: the plain probe request drafted nothing" + (f" ({what})" if what else "")
    ok = probed == 0
    return ok, (f"one request drafted {plain} tokens plain and {probed} with speculative.n_max=0: the "
                f"server {'applies' if ok else 'ignores'} per-request speculative fields")


def first_to_start(pending: list[ServerConfig]) -> ServerConfig:
    """The next server to start: the baseline first, then per --spec-type list the deepest n (a server
    that takes per-request fields can then run every shallower n of the list)."""
    head = pending[0]
    if not head.mtp:
        return head
    same = [c for c in pending if c.spec_types == head.spec_types]
    return max(same, key=lambda c: c.n_max or 0)


def per_request_fields(cfg: ServerConfig) -> dict[str, Any]:
    fields: dict[str, Any] = {"speculative.n_max": cfg.n_max}
    if cfg.p_min is not None:
        fields["speculative.p_min"] = cfg.p_min
    return fields
