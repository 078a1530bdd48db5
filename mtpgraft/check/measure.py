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
from ..preflight import mtp_blocker
from ..runtimes import IK
from .ik import IkLlamaServer
from .plan import REASONING, CheckPlan, Condition, Keyed, ModelSpec, ServerConfig
from .prompts import Prompt, builtin_context, context_kind
from .server import M_ACCEPTED, M_DRAFT, M_DRAFTS, M_PER_POS, LlamaServer

# Always passed to llama-server (LlamaServer already gives -np 1): no host-memory prompt cache, so
# with cache_prompt=false every request pays its full prefill and no run reuses another's KV state.
SERVER_BASE_ARGS = ("--cache-ram", "0")

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
                "acceptance": _r(self.acceptance)}


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
        self._requests = 0  # requests sent to the running server (warm-up and probes included)
        self.estimate = False  # set by execute_check on the plan's first model
        # (accepted, evidence) once a server was probed for per-request speculative fields; None: not
        # probed (execute_check hands it from model to model: it is the server build's, not the model's)
        self.per_request: tuple[bool, str] | None = None

    def _server_kwargs(self, cfg: ServerConfig) -> dict[str, Any]:
        plan = self.plan
        extra = list(SERVER_BASE_ARGS)
        if self.mode == "chat" and plan.server.has("--jinja"):
            extra.append("--jinja")
        if cfg.p_min is not None:
            extra += ["--spec-draft-p-min", f"{cfg.p_min:g}"]
        if cfg.mtp and plan.server.has("--verbosity"):
            extra += ["--verbosity", DRAFTER_LOG_LEVEL]  # the per-drafter `statistics` lines
        kw: dict[str, Any] = {
            "model": self.spec.path, "llama_cpp": plan.server.llama_cpp_dir,
            "ctx_size": plan.server_ctx, "extra_args": tuple(extra) + plan.server_args,
            "metrics": True, "runtime": plan.server.runtime,
        }
        if cfg.mtp:
            kw.update(spec_type=plan.spec_type_of(cfg), draft_model=plan.draft, draft_n_max=cfg.n_max)
        if self.log_dir is not None:
            kw["log_path"] = self.log_dir / f"{self.spec.path.stem}.{cfg.tag}.log"
        return kw

    def run(self) -> None:
        pending = list(self.plan.configs_for(self.spec))
        while pending:
            probing = self.plan.warmup and (self.per_request is None or self.per_request[0])
            cfg = _first_to_start(pending) if probing else pending[0]
            group = [c for c in pending if c.mtp and c.spec_types == cfg.spec_types] if cfg.mtp else [cfg]
            done = self._run_server(cfg, group)
            # Stop at the first failure: without a baseline there is nothing to compare against,
            # and a file whose MTP server fails at one n fails the same way at every n.
            if not done:
                break
            pending = [c for c in pending if c not in done]

    def _run_server(self, cfg: ServerConfig, group: list[ServerConfig]) -> list[ServerConfig]:
        """Start one server for `cfg` and measure it, and with per-request speculative fields every
        configuration of `group` on it too; the configurations measured ([] when it failed)."""
        blocker = _mtp_blocker(self.spec.path, self.plan.draft, self.plan.server) if cfg.mtp else None
        if blocker:  # known before a server starts (and one that aborts prints a backtrace)
            self.servers.append(ServerRun(cfg.n_max, (), 0.0, 0.0, blocker, "", p_min=cfg.p_min,
                                          spec_types=cfg.spec_types))
            return []
        server = self.factory(**self._server_kwargs(cfg))
        start_s = self._start(server, cfg)
        if start_s is None:
            return []
        cmd = tuple(str(c) for c in (getattr(server, "cmd", ()) or ()))
        error, log_tail, spec_types, measured = None, "", "", [cfg]
        final, drafters = SpecCounters(), ()
        try:
            self._prepare(server)
            if self.plan.warmup:
                tw = time.perf_counter()
                self._request(server, self.plan.prompts[0], Condition(), 0, 4)
                if len(group) > 1 and self.per_request is None:
                    self.per_request = self._probe(server, cfg)
                self.warmup_s += time.perf_counter() - tw
            if self.per_request is not None and self.per_request[0]:
                measured = [cfg] + [c for c in group if c != cfg]
            for c in measured:
                spec_types = self._measure(server, c, per_request=len(measured) > 1)
            final = SpecCounters.from_metrics(server.metrics())
            drafters = tuple(self._drafters(server).values())
        except ServerError as e:
            error, log_tail = str(e), e.log_tail
        finally:
            t1 = time.perf_counter()
            server.stop()
            stop_s = time.perf_counter() - t1
        self.servers.append(ServerRun(cfg.n_max, cmd, start_s, stop_s, error, log_tail, spec_types,
                                      final, cfg.p_min, cfg.spec_types, drafters,
                                      tuple(c.label for c in measured)))
        return measured if error is None else []

    def _start(self, server: Any, cfg: ServerConfig) -> float | None:
        """Start `server`: the seconds it took, or None when it failed (recorded as a ServerRun)."""
        t0 = time.perf_counter()
        try:
            server.start()
        except ServerError as e:
            self.servers.append(ServerRun(cfg.n_max, tuple(getattr(server, "cmd", ()) or ()),
                                          time.perf_counter() - t0, 0.0, str(e), e.log_tail,
                                          p_min=cfg.p_min, spec_types=cfg.spec_types))
            with contextlib.suppress(Exception):
                server.stop()
            return None
        self._start_s = time.perf_counter() - t0
        self._requests = 0
        return self._start_s

    def _probe(self, server: Any, cfg: ServerConfig) -> tuple[bool, str]:
        return probe_per_request(server, lambda fields: self._request(
            server, self.plan.prompts[0], Condition(), 0, PROBE_TOKENS, fields)[0], cfg.label)

    def _drafters(self, server: Any) -> dict[str, DrafterCounters]:
        """llama.cpp's per-drafter counters after every request so far (the log is written by a
        thread of its own: wait up to 2 s for the last request's lines)."""
        read = getattr(server, "log_text", None)
        if read is None or not self._requests or not self.plan.server.has("--verbosity"):
            return {}
        deadline = time.monotonic() + 2.0
        while True:
            n, latest = drafter_stats(read())
            if n >= self._requests or time.monotonic() > deadline:
                return latest

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

    def _request(self, server: Any, p: Prompt, cond: Condition, seed: int, n_predict: int,
                 fields: dict[str, Any] | None = None) -> tuple[dict[str, Any], str, float]:
        """One request as this model's mode sends it (with `fields` added to the body): (timings-
        bearing answer, its text, wall ms)."""
        context = self.contexts.get((context_kind(p.category), cond.depth), "")
        t0 = time.perf_counter()
        self._requests += 1
        if self.mode == "raw":
            res = server.completion(context + "\n\n" + p.text if context else p.text,
                                    n_predict=n_predict, temperature=cond.temperature, seed=seed,
                                    cache_prompt=False, **(fields or {}))
            text = str(res.get("content", ""))
        else:
            extra = ({"chat_template_kwargs": {"enable_thinking": REASONING[cond.reasoning]}}
                     if cond.reasoning else {})
            extra.update(fields or {})
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
            cfg.p_min, cond.reasoning, cond.depth, wall_ms, cfg.spec_types)

    def _measure(self, server: Any, cfg: ServerConfig, *, per_request: bool = False) -> str:
        plan = self.plan
        spec_types = ""
        fields = _per_request_fields(cfg) if per_request else None
        before = SpecCounters.from_metrics(server.metrics())
        drafted = self._drafters(server) if cfg.mtp else {}
        for cond in plan.conditions:
            for rep, seed in enumerate(plan.seeds()):
                for cat in plan.categories:
                    if self.progress:
                        self.progress(f"{self.spec.name} {cfg.label} {cond.label} rep {rep + 1}/"
                                      f"{plan.reps} {cat}", 0)
                    records = []
                    for p in (q for q in plan.prompts if q.category == cat):
                        res, text, wall_ms = self._request(server, p, cond, seed, plan.n_predict,
                                                           fields)
                        gs = res.get("generation_settings") or {}
                        spec_types = str(gs.get("speculative.types", spec_types))
                        records.append(self._record(p, cfg, cond, rep, seed, res, text, wall_ms))
                        self._estimate(records[-1])
                        if self.progress:
                            self.progress("", 1)
                    after = SpecCounters.from_metrics(server.metrics())
                    now = self._drafters(server) if cfg.mtp else {}
                    self.cells.append(Cell(cfg.n_max, cond.temperature, cat, rep, after - before,
                                           tuple(records), cfg.p_min, cond.reasoning, cond.depth,
                                           cfg.spec_types, drafter_delta(now, drafted)))
                    before, drafted = after, now
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
        return _int(res["timings"], "draft_n")
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


def _first_to_start(pending: list[ServerConfig]) -> ServerConfig:
    """The next server to start: the baseline first, then per --spec-type list the deepest n (a server
    that takes per-request fields can then run every shallower n of the list)."""
    head = pending[0]
    if not head.mtp:
        return head
    same = [c for c in pending if c.spec_types == head.spec_types]
    return max(same, key=lambda c: c.n_max or 0)


def _per_request_fields(cfg: ServerConfig) -> dict[str, Any]:
    fields: dict[str, Any] = {"speculative.n_max": cfg.n_max}
    if cfg.p_min is not None:
        fields["speculative.p_min"] = cfg.p_min
    return fields


def _mtp_blocker(model: Path, draft: Path | None, server: Any) -> str | None:
    """preflight.mtp_blocker, or None when the headers cannot be read (the server will say why)."""
    try:
        return mtp_blocker(model, draft, server.runtime, server.mtp_archs)
    except MtpgraftError:
        return None
