"""ik_llama.cpp's llama-server in a check: where its draft counters come from, and where it runs.

ik_llama.cpp 0.1.5 has no speculative counters in /metrics (examples/server/server.cpp lists prompt and
generation totals only), its /completion `timings` carry no draft_n and its /props no build_info
(its --version names the build). What it does report, per
request, is in its log (examples/server/server-context.cpp print_timing, common/speculative.cpp):

    draft acceptance rate = 1.00000 (   35 accepted /    35 generated)     (this request; absent at 0)
    statistics mtp: #calls(b,g,a) = 2 24 24, #gen drafts = 24, #acc drafts = 24, #gen tokens = ...

The second line ends every request of a server with MTP on, and its counts add up over the server's
life. IkLlamaServer puts the first line's counts into each answer's `timings` (draft_n,
draft_n_accepted) and serves /metrics with mainline's llama-server counters added (draft tokens and
accepted summed from the first lines, verification steps from the last "#gen drafts"), so the check's
measuring, verdicts and tables read an ik server as they read a mainline one.

ik's llama-server also writes llama.log into its working directory: it runs in a temporary one.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ServerError
from ..tools import tool_version
from .server import M_ACCEPTED, M_DRAFT, M_DRAFTS, LlamaServer

ACCEPTANCE_RE = re.compile(r"draft acceptance rate = [\d.naif]+ \(\s*(\d+) accepted /\s*(\d+) generated\)")
STATISTICS_RE = re.compile(r"statistics mtp: .*?#gen drafts = (\d+), #acc drafts = (\d+), "
                           r"#gen tokens = (\d+), #acc tokens = (\d+)")
_LINE_WAIT_S = 10.0  # the log lines follow the HTTP answer by a moment


@dataclass(frozen=True)
class IkLogCounters:
    """What an ik llama-server's log says about drafting, up to some point of it."""

    requests: int = 0  # "statistics mtp" lines: requests served with MTP on
    draft_tokens: int = 0  # summed "generated" of the acceptance lines
    accepted: int = 0  # summed "accepted"
    drafts: int = 0  # the last "#gen drafts": verification steps

    def as_metrics(self) -> dict[str, float]:
        """The counters under mainline's /metrics names (check.counters reads those)."""
        return {M_DRAFT: float(self.draft_tokens), M_ACCEPTED: float(self.accepted), M_DRAFTS: float(self.drafts)}


def read_log_counters(text: str) -> IkLogCounters:
    """The counters of every request the log has finished (text up to the last "statistics mtp" line)."""
    stats = list(STATISTICS_RE.finditer(text))
    if not stats:
        return IkLogCounters()
    done = text[:stats[-1].end()]
    pairs = [(int(m.group(1)), int(m.group(2))) for m in ACCEPTANCE_RE.finditer(done)]
    return IkLogCounters(len(stats), sum(g for _, g in pairs), sum(a for a, _ in pairs), int(stats[-1].group(1)))


class IkLlamaServer(LlamaServer):
    """LlamaServer for ik_llama.cpp: run in a temporary directory, counters read from its log."""

    def __init__(self, model: Any, **kwargs: Any) -> None:
        # It runs elsewhere: the files it is given are named from here.
        if kwargs.get("draft_model") is not None:
            kwargs["draft_model"] = Path(kwargs["draft_model"]).absolute()
        super().__init__(Path(model).absolute(), **kwargs)
        self.cwd = tempfile.mkdtemp(prefix="mtpgraft-ik-server-")
        weakref.finalize(self, shutil.rmtree, self.cwd, True)
        self._seen = IkLogCounters()

    @property
    def mtp_on(self) -> bool:
        return self.spec_type is not None

    def completion(self, prompt: str, **kwargs: Any) -> dict:
        return self._counted(super().completion(prompt, **kwargs))

    def chat(self, messages: Any, **kwargs: Any) -> dict:
        return self._counted(super().chat(messages, **kwargs))

    def metrics(self, *, timeout: float = 60.0) -> dict[str, float]:
        return {**super().metrics(timeout=timeout), **self._seen.as_metrics()}

    def props(self, *, timeout: float = 60.0) -> dict:
        """/props, with the build its --version names where /props has no build_info (ik 0.1.5)."""
        props = super().props(timeout=timeout)
        return props if props.get("build_info") else {**props, "build_info": tool_version(str(self.binary))}

    def _counted(self, res: dict) -> dict:
        """`res` with this request's draft counts in its timings, read from the log once it has them."""
        if not self.mtp_on:
            return res
        now = self._wait_for_request(self._seen.requests + 1)
        drafted, accepted = now.draft_tokens - self._seen.draft_tokens, now.accepted - self._seen.accepted
        self._seen = now
        timings = dict(res.get("timings") or {})
        if drafted:
            timings.update(draft_n=drafted, draft_n_accepted=accepted)
        return {**res, "timings": timings}

    def _wait_for_request(self, n: int) -> IkLogCounters:
        deadline = time.monotonic() + _LINE_WAIT_S
        while True:
            now = read_log_counters(self.log_text())
            if now.requests >= n:
                return now
            if time.monotonic() > deadline or not self.running:
                raise ServerError(f"ik_llama.cpp's llama-server logged no 'statistics mtp' line for request {n} "
                                  f"within {_LINE_WAIT_S:g}s (log: {self.log_path})")
            time.sleep(0.05)
