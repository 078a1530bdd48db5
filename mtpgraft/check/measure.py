"""Measuring on llama-server: the counters, the request records, and the runner.

Per model one baseline server (no MTP) and one MTP server per draft depth n, since draft
parameters cannot change per request. Every prompt runs on every server with the prompt cache off
(cache_prompt=false, --cache-ram 0), so no run reuses another's prefill. Acceptance comes from
llama-server's own /metrics counters (deltas around each category's requests); speeds come from
the per-response `timings`.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MtpgraftError, ServerError
from .plan import CheckPlan, ModelSpec, ServerConfig

# Always passed to llama-server (LlamaServer already gives -np 1): no host-memory prompt cache, so
# with cache_prompt=false every request pays its full prefill and no run reuses another's KV state.
SERVER_BASE_ARGS = ("--cache-ram", "0")

M_DRAFT = "llamacpp:spec_decode_num_draft_tokens_total"
M_ACCEPTED = "llamacpp:spec_decode_num_accepted_tokens_total"
M_DRAFTS = "llamacpp:spec_decode_num_drafts_total"
M_PER_POS = "llamacpp:spec_decode_num_accepted_tokens_per_pos_total"
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

    def to_dict(self) -> dict[str, Any]:
        return {"draft_tokens": self.draft_tokens, "accepted": self.accepted, "drafts": self.drafts,
                "accepted_per_pos": list(self.accepted_per_pos)}


@dataclass(frozen=True)
class RequestRecord:
    """One /completion request and what its `timings` said."""

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


@dataclass(frozen=True)
class Cell:
    """The requests of one category, one repetition, on one server at one temperature."""

    n_max: int | None
    temperature: float
    category: str
    rep: int
    counters: SpecCounters  # /metrics delta over exactly these requests
    requests: tuple[RequestRecord, ...]

    @property
    def decode_tps(self) -> float | None:
        ms = sum(r.predicted_ms for r in self.requests)
        return 1000.0 * sum(r.predicted_n for r in self.requests) / ms if ms > 0 else None

    @property
    def prefill_tps(self) -> float | None:
        ms = sum(r.prompt_ms for r in self.requests)
        return 1000.0 * sum(r.prompt_n for r in self.requests) / ms if ms > 0 else None

def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


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

    def to_dict(self) -> dict[str, Any]:
        return {"config": ServerConfig(self.n_max).label, "n_max": self.n_max,
                "cmd": list(self.cmd), "start_s": _r(self.start_s), "stop_s": _r(self.stop_s),
                "error": self.error, "speculative_types": self.speculative_types,
                "counters_final": self.counters_final.to_dict()}


Progress = Callable[[str, int], None]  # (what is running now, measured requests just finished)
ServerFactory = Callable[..., Any]


def _default_server_factory(**kwargs: Any) -> Any:
    from .server import LlamaServer

    return LlamaServer(**kwargs)


def _int(t: dict[str, Any], key: str) -> int:
    v = t.get(key)
    return int(v) if isinstance(v, (int, float)) else 0


def _float(t: dict[str, Any], key: str) -> float:
    v = t.get(key)
    return float(v) if isinstance(v, (int, float)) else 0.0


class _ModelRunner:
    """Runs every server configuration of one model and keeps what they measured."""

    def __init__(self, plan: CheckPlan, spec: ModelSpec, factory: ServerFactory,
                 log_dir: Path | None, progress: Progress | None) -> None:
        self.plan, self.spec, self.factory = plan, spec, factory
        self.log_dir, self.progress = log_dir, progress
        self.cells: list[Cell] = []
        self.servers: list[ServerRun] = []
        self.build_info = ""
        self.warmup_s = 0.0

    def _server_kwargs(self, cfg: ServerConfig) -> dict[str, Any]:
        plan = self.plan
        kw: dict[str, Any] = {
            "model": self.spec.path, "llama_cpp": plan.server.llama_cpp_dir, "ctx_size": plan.ctx_size,
            "extra_args": SERVER_BASE_ARGS + plan.server_args, "metrics": True,
        }
        if cfg.mtp:
            kw.update(spec_type=plan.spec_type, draft_model=plan.draft, draft_n_max=cfg.n_max)
        if self.log_dir is not None:
            tag = "baseline" if not cfg.mtp else f"mtp-n{cfg.n_max}"
            kw["log_path"] = self.log_dir / f"{self.spec.path.stem}.{tag}.log"
        return kw

    def run(self) -> None:
        for cfg in self.plan.configs:
            # Stop at the first failure: without a baseline there is nothing to compare against,
            # and a file whose MTP server fails at one n fails the same way at every n.
            if not self._run_server(cfg):
                break

    def _run_server(self, cfg: ServerConfig) -> bool:
        plan = self.plan
        kwargs = self._server_kwargs(cfg)
        server = self.factory(**kwargs)
        t0 = time.perf_counter()
        try:
            server.start()
        except ServerError as e:
            self.servers.append(ServerRun(cfg.n_max, tuple(getattr(server, "cmd", ()) or ()),
                                          time.perf_counter() - t0, 0.0, str(e), e.log_tail))
            with contextlib.suppress(Exception):
                server.stop()
            return False
        start_s = time.perf_counter() - t0
        cmd = tuple(str(c) for c in (getattr(server, "cmd", ()) or ()))
        error: str | None = None
        log_tail = ""
        spec_types = ""
        final = SpecCounters()
        try:
            if not self.build_info:
                with contextlib.suppress(MtpgraftError):
                    self.build_info = str(server.props().get("build_info", ""))
            if plan.warmup:
                tw = time.perf_counter()
                server.completion(plan.prompts[0].text, n_predict=4, temperature=0.0, seed=0,
                                  cache_prompt=False)
                self.warmup_s += time.perf_counter() - tw
            spec_types = self._measure(server, cfg)
            final = SpecCounters.from_metrics(server.metrics())
        except ServerError as e:
            error, log_tail = str(e), e.log_tail
        finally:
            t1 = time.perf_counter()
            server.stop()
            stop_s = time.perf_counter() - t1
        self.servers.append(ServerRun(cfg.n_max, cmd, start_s, stop_s, error, log_tail,
                                      spec_types, final))
        return error is None

    def _measure(self, server: Any, cfg: ServerConfig) -> str:
        plan = self.plan
        spec_types = ""
        before = SpecCounters.from_metrics(server.metrics())
        for temp in plan.temperatures:
            for rep, seed in enumerate(plan.seeds()):
                for cat in plan.categories:
                    if self.progress:
                        self.progress(f"{self.spec.name} {cfg.label} T={temp:g} rep {rep + 1}/"
                                      f"{plan.reps} {cat}", 0)
                    records = []
                    for p in (q for q in plan.prompts if q.category == cat):
                        res = server.completion(p.text, n_predict=plan.n_predict, temperature=temp,
                                                seed=seed, cache_prompt=False)
                        t = res.get("timings") or {}
                        gs = res.get("generation_settings") or {}
                        spec_types = str(gs.get("speculative.types", spec_types))
                        records.append(RequestRecord(
                            p.id, cat, cfg.n_max, temp, rep, seed, _int(t, "prompt_n"),
                            _float(t, "prompt_ms"), _int(t, "predicted_n"), _float(t, "predicted_ms"),
                            _int(t, "cache_n"), _int(t, "draft_n"), _int(t, "draft_n_accepted"),
                            str(res.get("content", ""))))
                        if self.progress:
                            self.progress("", 1)
                    after = SpecCounters.from_metrics(server.metrics())
                    self.cells.append(Cell(cfg.n_max, temp, cat, rep, after - before, tuple(records)))
                    before = after
        return spec_types
