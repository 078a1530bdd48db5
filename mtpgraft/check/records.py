"""What a check measured, as frozen records: one request, the requests of one cell, one server's
run, one template check; and the numbers read from a response's `timings`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .counters import DrafterCounters, SpecCounters, rounded
from .plan import Keyed, ServerConfig


@dataclass(frozen=True)
class RequestRecord(Keyed):
    """One measured request and what its `timings` said."""

    prompt_id: str
    category: str
    n_max: int | None
    temperature: float
    rep: int
    seed: int
    prompt_n: int
    prompt_ms: float
    predicted_n: int
    predicted_ms: float
    cache_n: int
    draft_n: int
    draft_n_accepted: int
    content: str
    p_min: float | None = None
    reasoning: str | None = None
    depth: int = 0
    wall_ms: float = 0.0  # the HTTP request as the harness saw it
    spec_types: str | None = None

    @property
    def rate(self) -> float | None:
        return self.draft_n_accepted / self.draft_n if self.draft_n else None

    @property
    def decode_tps(self) -> float | None:
        return 1000.0 * self.predicted_n / self.predicted_ms if self.predicted_ms > 0 else None

    def row(self) -> dict[str, Any]:
        """The per-prompt row of report.json (what people post: pred= draft= acc= rate= tok/s=)."""
        return {"id": self.prompt_id, "category": self.category, "config": self.config.label,
                "n_max": self.n_max, "p_min": self.p_min, "spec_types": self.spec_types,
                "temperature": self.temperature, "reasoning": self.reasoning, "depth": self.depth,
                "rep": self.rep, "seed": self.seed,
                "prompt_n": self.prompt_n, "predicted": self.predicted_n, "drafted": self.draft_n,
                "accepted": self.draft_n_accepted, "rate": rounded(self.rate),
                "tok_s": rounded(self.decode_tps, 2), "wall_s": rounded(self.wall_ms / 1000.0)}


@dataclass(frozen=True)
class Cell(Keyed):
    """The requests of one category, one repetition, on one server under one condition."""

    n_max: int | None
    temperature: float
    category: str
    rep: int
    counters: SpecCounters  # /metrics delta over exactly these requests
    requests: tuple[RequestRecord, ...]
    p_min: float | None = None
    reasoning: str | None = None
    depth: int = 0
    spec_types: str | None = None
    drafters: tuple[DrafterCounters, ...] = ()  # llama.cpp's per-drafter deltas over these requests

    @property
    def decode_tps(self) -> float | None:
        ms = sum(r.predicted_ms for r in self.requests)
        return 1000.0 * sum(r.predicted_n for r in self.requests) / ms if ms > 0 else None

    @property
    def prefill_tps(self) -> float | None:
        ms = sum(r.prompt_ms for r in self.requests)
        return 1000.0 * sum(r.prompt_n for r in self.requests) / ms if ms > 0 else None


@dataclass(frozen=True)
class ServerRun:
    """What one llama-server process did: how long it took to start, its final counters."""

    n_max: int | None
    cmd: tuple[str, ...] = ()
    start_s: float = 0.0
    stop_s: float = 0.0
    error: str | None = None
    log_tail: str = ""
    speculative_types: str = ""
    counters_final: SpecCounters = SpecCounters()  # absolute /metrics values before stopping
    p_min: float | None = None
    spec_types: str | None = None
    drafters_final: tuple[DrafterCounters, ...] = ()  # llama.cpp's per-drafter totals before stopping
    measured: tuple[str, ...] = ()  # labels of the configurations measured on it (per-request fields)

    @property
    def config(self) -> ServerConfig:
        return ServerConfig(self.n_max, self.p_min, self.spec_types)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.label, "n_max": self.n_max, "p_min": self.p_min,
                "spec_types": self.spec_types, "measured": list(self.measured or (self.config.label,)),
                "drafters_final": [d.to_dict() for d in self.drafters_final],
                "cmd": list(self.cmd), "start_s": rounded(self.start_s), "stop_s": rounded(self.stop_s),
                "error": self.error, "speculative_types": self.speculative_types,
                "counters_final": self.counters_final.to_dict()}


@dataclass(frozen=True)
class TemplateCheck:
    """What a thinking setting sent and what the model's template made of it (/apply-template)."""

    reasoning: str
    kwargs: dict[str, Any]
    prompt_tail: str  # the end of the rendered prompt
    honoured: bool  # the prompt differs between thinking on and off

    def to_dict(self) -> dict[str, Any]:
        return {"reasoning": self.reasoning, "chat_template_kwargs": self.kwargs,
                "prompt_tail": self.prompt_tail, "honoured": self.honoured}


def timing_int(t: dict[str, Any], key: str) -> int:
    v = t.get(key)
    return int(v) if isinstance(v, (int, float)) else 0


def timing_float(t: dict[str, Any], key: str) -> float:
    v = t.get(key)
    return float(v) if isinstance(v, (int, float)) else 0.0
