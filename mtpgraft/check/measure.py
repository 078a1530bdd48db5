"""Measuring on llama-server: the runner that starts each server of a model and records its requests.

Per model one baseline server (no MTP) and one MTP server per draft depth n, since draft
parameters cannot change per request. Every prompt runs on every server with the prompt cache off
(cache_prompt=false, --cache-ram 0), so no run reuses another's prefill. Acceptance comes from
llama-server's own /metrics counters (deltas around each category's requests); speeds come from
the per-response `timings`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import MtpgraftError, ServerError
from ..preflight import mtp_blocker
from ..runtimes import IK
from .counters import DRAFTER_LOG_LEVEL, DrafterCounters, SpecCounters, drafter_delta, drafter_stats
from .ik import IkLlamaServer
from .plan import REASONING, CheckPlan, Condition, ModelSpec, ServerConfig
from .probe import PROBE_TOKENS, first_to_start, per_request_fields, probe_per_request
from .prompts import Prompt, builtin_context, context_kind
from .records import Cell, RequestRecord, ServerRun, TemplateCheck, timing_float, timing_int
from .server import LlamaServer

# Always passed to llama-server (LlamaServer already gives -np 1): no host-memory prompt cache, so
# with cache_prompt=false every request pays its full prefill and no run reuses another's KV state.
SERVER_BASE_ARGS = ("--cache-ram", "0")


Progress = Callable[[str, int], None]  # (what is running now, measured requests just finished)
Events = Callable[[str], None]  # a line worth showing (the time estimate)
ServerFactory = Callable[..., Any]


def _default_server_factory(**kwargs: Any) -> Any:
    return (IkLlamaServer if kwargs.get("runtime") == IK else LlamaServer)(**kwargs)



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
            cfg = first_to_start(pending) if probing else pending[0]
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
            p.id, p.category, cfg.n_max, cond.temperature, rep, seed, timing_int(t, "prompt_n"),
            timing_float(t, "prompt_ms"), timing_int(t, "predicted_n"), timing_float(t, "predicted_ms"),
            timing_int(t, "cache_n"), timing_int(t, "draft_n"), timing_int(t, "draft_n_accepted"), text,
            cfg.p_min, cond.reasoning, cond.depth, wall_ms, cfg.spec_types)

    def _measure(self, server: Any, cfg: ServerConfig, *, per_request: bool = False) -> str:
        plan = self.plan
        spec_types = ""
        fields = per_request_fields(cfg) if per_request else None
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



def _mtp_blocker(model: Path, draft: Path | None, server: Any) -> str | None:
    """preflight.mtp_blocker, or None when the headers cannot be read (the server will say why)."""
    try:
        return mtp_blocker(model, draft, server.runtime, server.mtp_archs)
    except MtpgraftError:
        return None
