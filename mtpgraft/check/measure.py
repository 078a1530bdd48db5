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
from ..runtimes import IK
from .plan import REASONING, CheckPlan, Condition, Keyed, ModelSpec, ServerConfig
from .prompts import Prompt, builtin_context, context_kind

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

    @property
    def rate(self) -> float | None:
        return self.draft_n_accepted / self.draft_n if self.draft_n else None

    @property
    def decode_tps(self) -> float | None:
        return 1000.0 * self.predicted_n / self.predicted_ms if self.predicted_ms > 0 else None

    def row(self) -> dict[str, Any]:
        """The per-prompt row of report.json (what people post: pred= draft= acc= rate= tok/s=)."""
        return {"id": self.prompt_id, "category": self.category, "config": self.config.label,
                "n_max": self.n_max, "p_min": self.p_min, "temperature": self.temperature,
                "reasoning": self.reasoning, "depth": self.depth, "rep": self.rep, "seed": self.seed,
                "prompt_n": self.prompt_n, "predicted": self.predicted_n, "drafted": self.draft_n,
                "accepted": self.draft_n_accepted, "rate": _r(self.rate),
                "tok_s": _r(self.decode_tps, 2), "wall_s": _r(self.wall_ms / 1000.0)}


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
    p_min: float | None = None

    @property
    def config(self) -> ServerConfig:
        return ServerConfig(self.n_max, self.p_min)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config.label, "n_max": self.n_max, "p_min": self.p_min,
                "cmd": list(self.cmd), "start_s": _r(self.start_s), "stop_s": _r(self.stop_s),
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


Progress = Callable[[str, int], None]  # (what is running now, measured requests just finished)
Events = Callable[[str], None]  # a line worth showing (the time estimate)
ServerFactory = Callable[..., Any]


def _default_server_factory(**kwargs: Any) -> Any:
    from .ik import IkLlamaServer
    from .server import LlamaServer

    return (IkLlamaServer if kwargs.get("runtime") == IK else LlamaServer)(**kwargs)


def _int(t: dict[str, Any], key: str) -> int:
    v = t.get(key)
    return int(v) if isinstance(v, (int, float)) else 0


def _float(t: dict[str, Any], key: str) -> float:
    v = t.get(key)
    return float(v) if isinstance(v, (int, float)) else 0.0


def context_text(server: Any, kind: str, depth: int) -> tuple[str, int]:
    """The built-in `kind` context (code or prose), repeated and trimmed to `depth` tokens as this
    server's tokenizer counts them; returns the text and its token count."""
    base = builtin_context(kind)
    per_copy = max(1, len(server.tokenize(base)))
    text = "\n\n".join([base] * (depth // per_copy + 2))
    ids = server.tokenize(text)[:depth]
    trimmed = server.detokenize(ids)
    return trimmed, len(server.tokenize(trimmed))


def _duration(s: float) -> str:
    return f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


class _ModelRunner:
    """Runs every server configuration of one model and keeps what they measured."""

    def __init__(self, plan: CheckPlan, spec: ModelSpec, factory: ServerFactory,
                 log_dir: Path | None, progress: Progress | None, events: Events | None = None) -> None:
        self.plan, self.spec, self.factory = plan, spec, factory
        self.log_dir, self.progress, self.events = log_dir, progress, events
        self.mode = plan.mode_for(spec)
        self.cells: list[Cell] = []
        self.servers: list[ServerRun] = []
        self.build_info = ""
        self.warmup_s = 0.0
        self.contexts: dict[tuple[str, int], str] = {}
        self.context_tokens: dict[str, int] = {}  # "code@4096" -> tokens counted by /tokenize
        self.template: tuple[TemplateCheck, ...] = ()
        self._start_s = 0.0
        self.estimate = False  # set by run_check on the plan's first model

    def _server_kwargs(self, cfg: ServerConfig) -> dict[str, Any]:
        plan = self.plan
        extra = list(SERVER_BASE_ARGS)
        if self.mode == "chat" and plan.server.has("--jinja"):
            extra.append("--jinja")
        if cfg.p_min is not None:
            extra += ["--spec-draft-p-min", f"{cfg.p_min:g}"]
        kw: dict[str, Any] = {
            "model": self.spec.path, "llama_cpp": plan.server.llama_cpp_dir,
            "ctx_size": plan.server_ctx, "extra_args": tuple(extra) + plan.server_args,
            "metrics": True, "runtime": plan.server.runtime,
        }
        if cfg.mtp:
            kw.update(spec_type=plan.spec_type, draft_model=plan.draft, draft_n_max=cfg.n_max)
        if self.log_dir is not None:
            kw["log_path"] = self.log_dir / f"{self.spec.path.stem}.{cfg.tag}.log"
        return kw

    def run(self) -> None:
        for cfg in self.plan.configs:
            # Stop at the first failure: without a baseline there is nothing to compare against,
            # and a file whose MTP server fails at one n fails the same way at every n.
            if not self._run_server(cfg):
                break

    def _run_server(self, cfg: ServerConfig) -> bool:
        blocker = _mtp_blocker(self.spec.path, self.plan.draft, self.plan.server) if cfg.mtp else None
        if blocker:  # known before a server starts (and one that aborts prints a backtrace)
            self.servers.append(ServerRun(cfg.n_max, (), 0.0, 0.0, blocker, "", p_min=cfg.p_min))
            return False
        server = self.factory(**self._server_kwargs(cfg))
        t0 = time.perf_counter()
        try:
            server.start()
        except ServerError as e:
            self.servers.append(ServerRun(cfg.n_max, tuple(getattr(server, "cmd", ()) or ()),
                                          time.perf_counter() - t0, 0.0, str(e), e.log_tail,
                                          p_min=cfg.p_min))
            with contextlib.suppress(Exception):
                server.stop()
            return False
        self._start_s = start_s = time.perf_counter() - t0
        cmd = tuple(str(c) for c in (getattr(server, "cmd", ()) or ()))
        error: str | None = None
        log_tail = ""
        spec_types = ""
        final = SpecCounters()
        try:
            self._prepare(server)
            if self.plan.warmup:
                tw = time.perf_counter()
                self._request(server, self.plan.prompts[0], Condition(), 0, 4)
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
                                      spec_types, final, cfg.p_min))
        return error is None

    def _prepare(self, server: Any) -> None:
        """On the model's first server: its build, the contexts at each depth, the template check."""
        if self.build_info:
            return
        with contextlib.suppress(MtpgraftError):
            self.build_info = str(server.props().get("build_info", "")) or "?"
        kinds = {context_kind(c) for c in self.plan.categories}
        for depth in self.plan.context_depth:
            for kind in sorted(kinds) if depth else ():
                text, n = context_text(server, kind, depth)
                self.contexts[(kind, depth)] = text
                self.context_tokens[f"{kind}@{depth}"] = n
        if self.mode == "chat":
            with contextlib.suppress(MtpgraftError):  # a check of the template, not of the model
                self.template = self._check_template(server)

    def _check_template(self, server: Any) -> tuple[TemplateCheck, ...]:
        messages = [{"role": "user", "content": self.plan.prompts[0].message}]
        rendered = {r: server.apply_template(messages, chat_template_kwargs={"enable_thinking": v})
                    for r, v in REASONING.items()}
        honoured = rendered["on"] != rendered["off"]
        return tuple(TemplateCheck(r, {"enable_thinking": REASONING[r]}, rendered[r][-60:], honoured)
                     for r in (self.plan.reasoning or tuple(REASONING)))

    def _request(self, server: Any, p: Prompt, cond: Condition, seed: int,
                 n_predict: int) -> tuple[dict[str, Any], str, float]:
        """One request as this model's mode sends it: (timings-bearing answer, its text, wall ms)."""
        context = self.contexts.get((context_kind(p.category), cond.depth), "")
        t0 = time.perf_counter()
        if self.mode == "raw":
            res = server.completion(context + "\n\n" + p.text if context else p.text,
                                    n_predict=n_predict, temperature=cond.temperature, seed=seed,
                                    cache_prompt=False)
            text = str(res.get("content", ""))
        else:
            extra = ({"chat_template_kwargs": {"enable_thinking": REASONING[cond.reasoning]}}
                     if cond.reasoning else {})
            content = context + "\n\n" + p.message if context else p.message
            res = server.chat([{"role": "user", "content": content}], n_predict=n_predict,
                              temperature=cond.temperature, seed=seed, cache_prompt=False, **extra)
            msg = ((res.get("choices") or [{}])[0].get("message") or {})
            text = str(msg.get("reasoning_content") or "") + str(msg.get("content") or "")
        return res, text, 1000.0 * (time.perf_counter() - t0)

    def _record(self, p: Prompt, cfg: ServerConfig, cond: Condition, rep: int, seed: int,
                res: dict[str, Any], text: str, wall_ms: float) -> RequestRecord:
        t = res.get("timings") or {}
        return RequestRecord(
            p.id, p.category, cfg.n_max, cond.temperature, rep, seed, _int(t, "prompt_n"),
            _float(t, "prompt_ms"), _int(t, "predicted_n"), _float(t, "predicted_ms"),
            _int(t, "cache_n"), _int(t, "draft_n"), _int(t, "draft_n_accepted"), text,
            cfg.p_min, cond.reasoning, cond.depth, wall_ms)

    def _measure(self, server: Any, cfg: ServerConfig) -> str:
        plan = self.plan
        spec_types = ""
        before = SpecCounters.from_metrics(server.metrics())
        for cond in plan.conditions:
            for rep, seed in enumerate(plan.seeds()):
                for cat in plan.categories:
                    if self.progress:
                        self.progress(f"{self.spec.name} {cfg.label} {cond.label} rep {rep + 1}/"
                                      f"{plan.reps} {cat}", 0)
                    records = []
                    for p in (q for q in plan.prompts if q.category == cat):
                        res, text, wall_ms = self._request(server, p, cond, seed, plan.n_predict)
                        gs = res.get("generation_settings") or {}
                        spec_types = str(gs.get("speculative.types", spec_types))
                        records.append(self._record(p, cfg, cond, rep, seed, res, text, wall_ms))
                        self._estimate(records[-1])
                        if self.progress:
                            self.progress("", 1)
                    after = SpecCounters.from_metrics(server.metrics())
                    self.cells.append(Cell(cfg.n_max, cond.temperature, cat, rep, after - before,
                                           tuple(records), cfg.p_min, cond.reasoning, cond.depth))
                    before = after
        return spec_types

    def _estimate(self, first: RequestRecord) -> None:
        """After the plan's first measured request: the whole plan's time at that server's speed."""
        if not self.estimate or self.events is None:
            return
        self.estimate = False
        prefill = 1000.0 * first.prompt_n / first.prompt_ms if first.prompt_ms > 0 else 0.0
        decode = first.decode_tps or 0.0
        if prefill <= 0 or decode <= 0:
            return
        total = self.plan.estimate_s(self._start_s, prefill, decode)
        self.events(f"estimated time: ~{_duration(total)} (first server: start {self._start_s:.1f} s, "
                    f"prefill {prefill:.0f} tok/s, decode {decode:.1f} tok/s)")


def _mtp_blocker(model: Path, draft: Path | None, server: Any) -> str | None:
    """preflight.mtp_blocker, or None when the headers cannot be read (the server will say why)."""
    from ..preflight import mtp_blocker

    try:
        return mtp_blocker(model, draft, server.runtime, server.mtp_archs)
    except MtpgraftError:
        return None
