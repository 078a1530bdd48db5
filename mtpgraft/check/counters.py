"""llama-server's speculative-decoding counters: its /metrics totals (`SpecCounters`) and llama.cpp's
per-drafter `statistics` log lines (`DrafterCounters`), each readable as a difference of two readings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .server import M_ACCEPTED, M_DRAFT, M_DRAFTS, M_PER_POS

_PER_POS_RE = re.compile(re.escape(M_PER_POS) + r'\{position="(\d+)"\}$')


@dataclass(frozen=True)
class SpecCounters:
    """llama-server's speculative-decoding counters (/metrics), or a difference of two readings."""

    draft_tokens: int = 0
    accepted: int = 0
    drafts: int = 0  # verification steps
    accepted_per_pos: tuple[int, ...] = ()

    @classmethod
    def from_metrics(cls, m: dict[str, float]) -> SpecCounters:
        per_pos: dict[int, int] = {}
        for key, value in m.items():
            hit = _PER_POS_RE.match(key)
            if hit:
                per_pos[int(hit.group(1))] = int(value)
        pos = tuple(per_pos.get(i, 0) for i in range(max(per_pos) + 1)) if per_pos else ()
        return cls(int(m.get(M_DRAFT, 0)), int(m.get(M_ACCEPTED, 0)), int(m.get(M_DRAFTS, 0)), pos)

    def __add__(self, other: SpecCounters) -> SpecCounters:
        n = max(len(self.accepted_per_pos), len(other.accepted_per_pos))
        a = self.accepted_per_pos + (0,) * (n - len(self.accepted_per_pos))
        b = other.accepted_per_pos + (0,) * (n - len(other.accepted_per_pos))
        return SpecCounters(self.draft_tokens + other.draft_tokens, self.accepted + other.accepted,
                            self.drafts + other.drafts, tuple(x + y for x, y in zip(a, b, strict=True)))

    def __sub__(self, other: SpecCounters) -> SpecCounters:
        n = max(len(self.accepted_per_pos), len(other.accepted_per_pos))
        a = self.accepted_per_pos + (0,) * (n - len(self.accepted_per_pos))
        b = other.accepted_per_pos + (0,) * (n - len(other.accepted_per_pos))
        return SpecCounters(self.draft_tokens - other.draft_tokens, self.accepted - other.accepted,
                            self.drafts - other.drafts, tuple(x - y for x, y in zip(a, b, strict=True)))

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.draft_tokens if self.draft_tokens else None

    @property
    def mean_accept_len(self) -> float | None:
        """Tokens per verification step, counting the target's own token (vLLM's definition)."""
        return 1.0 + self.accepted / self.drafts if self.drafts else None

    @property
    def per_pos_rate(self) -> tuple[float, ...]:
        """Share of verification steps whose draft was accepted up to position i (i = 0, 1, ...)."""
        if not self.drafts:
            return ()
        return tuple(a / self.drafts for a in self.accepted_per_pos)

    def per_pos_upto(self, n: int | None) -> tuple[float, ...]:
        """per_pos_rate over the first n positions and any later one with an accepted token (an
        n-gram drafter beside MTP sizes llama-server's per-position counters at its own maximum)."""
        rates = self.per_pos_rate
        last = max((i + 1 for i, a in enumerate(self.accepted_per_pos) if a), default=0)
        return rates[:max(n or 0, last)]

    def to_dict(self) -> dict[str, Any]:
        return {"draft_tokens": self.draft_tokens, "accepted": self.accepted, "drafts": self.drafts,
                "accepted_per_pos": list(self.accepted_per_pos)}


# llama.cpp's own per-drafter counters (common/speculative.cpp, common_speculative_print_stats): one
# line per drafter of the --spec-type list after every request, cumulative over the server's life,
# at log verbosity 4 (trace).
_STATS_RE = re.compile(r"statistics\s+([\w-]+): #calls\(b,g,a\) =\s*(\d+)\s+(\d+)\s+(\d+), "
                       r"#gen drafts =\s*(\d+), #acc drafts =\s*(\d+), #gen tokens =\s*(\d+), "
                       r"#acc tokens =\s*(\d+)")
DRAFTER_LOG_LEVEL = "4"  # --verbosity that prints those lines (LOG_LEVEL_TRACE, common/log.h)


@dataclass(frozen=True)
class DrafterCounters:
    """What one drafter of a --spec-type list proposed and had accepted, as llama.cpp counts it
    (its `statistics` log line), or a difference of two readings."""

    type: str
    drafts: int = 0  # drafts it generated (#gen drafts)
    draft_tokens: int = 0  # tokens it drafted (#gen tokens)
    accepted: int = 0  # of those, accepted by the target (#acc tokens)
    accepted_drafts: int = 0  # drafts with at least one token accepted (#acc drafts)

    def _op(self, other: DrafterCounters, sign: int) -> DrafterCounters:
        return DrafterCounters(self.type, self.drafts + sign * other.drafts,
                               self.draft_tokens + sign * other.draft_tokens,
                               self.accepted + sign * other.accepted,
                               self.accepted_drafts + sign * other.accepted_drafts)

    def __add__(self, other: DrafterCounters) -> DrafterCounters:
        return self._op(other, 1)

    def __sub__(self, other: DrafterCounters) -> DrafterCounters:
        return self._op(other, -1)

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.draft_tokens if self.draft_tokens else None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "drafts": self.drafts, "draft_tokens": self.draft_tokens,
                "accepted": self.accepted, "accepted_drafts": self.accepted_drafts,
                "acceptance": rounded(self.acceptance)}


def drafter_stats(log_text: str) -> tuple[int, dict[str, DrafterCounters]]:
    """(requests the log has stats for, each drafter's latest cumulative counters) from a
    llama-server log at verbosity 4."""
    latest: dict[str, DrafterCounters] = {}
    seen: dict[str, int] = {}
    for m in _STATS_RE.finditer(log_text):
        t = m.group(1)
        latest[t] = DrafterCounters(t, int(m.group(5)), int(m.group(7)), int(m.group(8)),
                                    int(m.group(6)))
        seen[t] = seen.get(t, 0) + 1
    return (min(seen.values()) if seen else 0), latest


def drafter_delta(after: dict[str, DrafterCounters],
                  before: dict[str, DrafterCounters]) -> tuple[DrafterCounters, ...]:
    return tuple(c - before.get(t, DrafterCounters(t)) for t, c in after.items())


def pool_drafters(groups: Any) -> tuple[DrafterCounters, ...]:
    """Per-drafter counters summed over cells (each a tuple of DrafterCounters), by type."""
    out: dict[str, DrafterCounters] = {}
    for group in groups:
        for c in group:
            out[c.type] = out.get(c.type, DrafterCounters(c.type)) + c
    return tuple(out.values())


def rounded(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)
