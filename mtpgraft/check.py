"""The llama-server acceptance and speed check: plan, run, measure, judge.

`plan_check` turns the user's choices into a frozen CheckPlan (models x server configurations x
prompts). `run_check` executes it against the real llama-server: per model one baseline server
(no MTP) and one MTP server per draft depth n, since draft parameters cannot change per request.
Every prompt runs on every server with the prompt cache off (cache_prompt=false, --cache-ram 0),
so no run reuses another's prefill. Acceptance comes from llama-server's own /metrics counters
(deltas around each category's requests); speeds come from the per-response `timings`.

Verdict: fail when MTP is not active, when the pooled acceptance is below min_acceptance, and,
only when min_speedup is set, when the code category's speedup is below it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import __version__
from .errors import MtpgraftError, ServerError, UsageError
from .prompts import Prompt, builtin_prompts, load_prompts, select_prompts

log = logging.getLogger("mtpgraft")

DEFAULT_N_MAX = (1, 2, 3, 4)
DEFAULT_TEMPERATURES = (0.0,)
DEFAULT_MIN_ACCEPTANCE = 0.3
# The recommendation matrix: a category "speeds up" at >= 1.10x, "slows down" below 1.00x.
SPEEDUP_GREEN = 1.10
SPEEDUP_RED = 1.00
GATE_CATEGORY = "code"

# Always passed to llama-server (LlamaServer already gives -np 1): no host-memory prompt cache, so
# with cache_prompt=false every request pays its full prefill and no run reuses another's KV state.
SERVER_BASE_ARGS = ("--cache-ram", "0")

M_DRAFT = "llamacpp:spec_decode_num_draft_tokens_total"
M_ACCEPTED = "llamacpp:spec_decode_num_accepted_tokens_total"
M_DRAFTS = "llamacpp:spec_decode_num_drafts_total"
M_PER_POS = "llamacpp:spec_decode_num_accepted_tokens_per_pos_total"
_PER_POS_RE = re.compile(re.escape(M_PER_POS) + r'\{position="(\d+)"\}$')


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ModelSpec:
    """A model to check. `path` is what llama-server gets (a split set's first shard)."""

    path: Path
    files: tuple[Path, ...]
    arch: str = ""
    nextn_predict_layers: int = 0

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class ServerConfig:
    """One llama-server process per model: the baseline (n_max None) or MTP with draft depth n_max."""

    n_max: int | None = None

    @property
    def mtp(self) -> bool:
        return self.n_max is not None

    @property
    def label(self) -> str:
        return f"MTP n={self.n_max}" if self.mtp else "baseline"


@dataclass(frozen=True)
class CheckPlan:
    models: tuple[ModelSpec, ...]
    prompts: tuple[Prompt, ...]
    llama_server: Path
    spec_type: str  # the MTP spelling this llama-server accepts (draft-mtp, or mtp on forks)
    llama_cpp_dir: str | None = None
    llama_cpp_version: str = ""
    draft: Path | None = None
    n_max: tuple[int, ...] = DEFAULT_N_MAX
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    reps: int = 3
    seed: int = 0
    n_predict: int = 128
    ctx_size: int = 4096
    server_args: tuple[str, ...] = ()
    min_acceptance: float = DEFAULT_MIN_ACCEPTANCE
    min_speedup: float | None = None
    prompt_source: str = "built-in"
    warmup: bool = True

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.category for p in self.prompts))

    @property
    def configs(self) -> tuple[ServerConfig, ...]:
        return (ServerConfig(None),) + tuple(ServerConfig(n) for n in self.n_max)

    @property
    def n_servers(self) -> int:
        return len(self.models) * len(self.configs)

    @property
    def n_requests(self) -> int:
        """Measured requests (warm-up requests not counted)."""
        return self.n_servers * len(self.temperatures) * self.reps * len(self.prompts)

    def seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + r for r in range(self.reps))

    def settings_dict(self) -> dict[str, Any]:
        return {
            "n_max": list(self.n_max), "temperature": list(self.temperatures), "reps": self.reps,
            "n_predict": self.n_predict, "seed": self.seed, "seeds": list(self.seeds()),
            "ctx_size": self.ctx_size, "categories": list(self.categories),
            "prompts": self.prompt_source, "n_prompts": len(self.prompts),
            "draft": str(self.draft) if self.draft else None, "spec_type": self.spec_type,
            "server_args": list(self.server_args), "llama_server": str(self.llama_server),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [{"path": str(m.path), "files": [str(f) for f in m.files], "arch": m.arch,
                        "nextn_predict_layers": m.nextn_predict_layers} for m in self.models],
            "servers": [f"{m.name}: {c.label}" for m in self.models for c in self.configs],
            "n_requests": self.n_requests,
            "settings": self.settings_dict(),
            "thresholds": {"min_acceptance": self.min_acceptance, "min_speedup": self.min_speedup},
        }


def resolve_model(path: str | os.PathLike[str]) -> ModelSpec:
    """Read a model's header; a split set is given by its first shard and lists every shard."""
    from .gguf_io import GGUFModel

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"model file not found: {p}")
    model = GGUFModel(p)
    arch = str(model.get("general.architecture", ""))
    nextn = model.get(f"{arch}.nextn_predict_layers", 0) if arch else 0
    return ModelSpec(path=model.path, files=tuple(model.paths), arch=arch,
                     nextn_predict_layers=int(nextn or 0))


def plan_check(models: Sequence[str | os.PathLike[str]], *, draft: str | os.PathLike[str] | None = None,
               n_max: Sequence[int] = DEFAULT_N_MAX,
               temperatures: Sequence[float] = DEFAULT_TEMPERATURES, reps: int = 3, seed: int = 0,
               prompts: str | os.PathLike[str] | Sequence[Prompt] | None = None,
               categories: Sequence[str] | None = None, per_category: int | None = None,
               n_predict: int = 128, ctx_size: int = 4096, server_args: Sequence[str] = (),
               min_acceptance: float = DEFAULT_MIN_ACCEPTANCE, min_speedup: float | None = None,
               llama_cpp: str | os.PathLike[str] | None = None, warmup: bool = True) -> CheckPlan:
    """Validate the inputs, find llama-server and its MTP spelling, and return the plan."""
    from .tools import find_tool, probe_mtp_spec_type, tool_version

    if not models:
        raise UsageError("give at least one model")
    n_max_t = tuple(dict.fromkeys(int(n) for n in n_max))
    if not n_max_t or any(n < 1 for n in n_max_t):
        raise UsageError(f"--n-max values must be >= 1, got {list(n_max)}")
    temps = tuple(dict.fromkeys(float(t) for t in temperatures))
    if not temps or any(t < 0 or not math.isfinite(t) for t in temps):
        raise UsageError(f"--temperature values must be >= 0, got {list(temperatures)}")
    if reps < 1:
        raise UsageError(f"--reps must be >= 1, got {reps}")
    if per_category is not None and per_category < 1:
        raise UsageError(f"--per-category must be >= 1, got {per_category}")
    if n_predict < 8:
        raise UsageError(f"--n-predict must be >= 8, got {n_predict}")
    if ctx_size < 256:
        raise UsageError(f"--ctx must be >= 256, got {ctx_size}")
    if not 0 <= min_acceptance <= 1:
        raise UsageError(f"--min-acceptance must be in [0, 1], got {min_acceptance}")
    if min_speedup is not None and min_speedup <= 0:
        raise UsageError(f"--min-speedup must be > 0, got {min_speedup}")
    specs = tuple(resolve_model(m) for m in models)
    draft_path = None
    if draft is not None:
        draft_path = Path(draft)
        if not draft_path.is_file():
            raise UsageError(f"draft file not found: {draft_path}")

    if prompts is None:
        pool, source = builtin_prompts(), "built-in"
    elif isinstance(prompts, (str, os.PathLike)):
        pool, source = load_prompts(prompts), str(prompts)
    else:
        pool, source = list(prompts), "given"
    chosen = select_prompts(pool, categories, per_category)

    server = find_tool("llama-server", llama_cpp)
    spec_type = probe_mtp_spec_type(server)
    if spec_type is None:
        raise UsageError(f"{server} has no MTP speculative type in its --help (expected "
                         "--spec-type draft-mtp); use a llama.cpp build with MTP support")
    return CheckPlan(models=specs, prompts=tuple(chosen), llama_server=server, spec_type=spec_type,
                     llama_cpp_dir=str(llama_cpp) if llama_cpp else None,
                     llama_cpp_version=tool_version(str(server)), draft=draft_path,
                     n_max=n_max_t, temperatures=temps, reps=reps, seed=seed, n_predict=n_predict,
                     ctx_size=ctx_size, server_args=tuple(server_args),
                     min_acceptance=min_acceptance, min_speedup=min_speedup,
                     prompt_source=source, warmup=warmup)


# --------------------------------------------------------------------------- measurements


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


@dataclass(frozen=True)
class MeanStd:
    mean: float | None
    std: float | None
    n: int = 0

    @classmethod
    def of(cls, values: Sequence[float | None]) -> MeanStd:
        vals = [v for v in values if v is not None]
        if not vals:
            return cls(None, None, 0)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))

    def to_dict(self) -> dict[str, Any]:
        return {"mean": _r(self.mean), "std": _r(self.std), "n": self.n}


@dataclass(frozen=True)
class ConfigStats:
    """One model x draft depth x temperature x category, over all reps."""

    n_max: int
    temperature: float
    category: str
    counters: SpecCounters  # pooled over reps: exactly llama-server's counter deltas
    acceptance_reps: MeanStd  # per-rep acceptance, for the spread
    decode_tps: MeanStd
    prefill_tps: MeanStd
    baseline_decode_tps: MeanStd
    baseline_prefill_tps: MeanStd
    speedup: MeanStd  # per rep: MTP decode tok/s / baseline decode tok/s, same seed
    timings_draft_n: int  # the same counts summed from the responses' timings (cross-check)
    timings_draft_n_accepted: int
    output_mismatches: tuple[str, ...] = ()  # prompt ids whose temp-0 output differs from baseline

    @property
    def acceptance(self) -> float | None:
        return self.counters.acceptance

    def to_dict(self) -> dict[str, Any]:
        c = self.counters
        return {
            "n_max": self.n_max, "temperature": self.temperature, "category": self.category,
            "acceptance": _r(c.acceptance), "acceptance_reps": self.acceptance_reps.to_dict(),
            "mean_accept_len": _r(c.mean_accept_len),
            "per_pos_acceptance": [_r(x) for x in c.per_pos_rate], "counters": c.to_dict(),
            "decode_tps": self.decode_tps.to_dict(), "prefill_tps": self.prefill_tps.to_dict(),
            "baseline_decode_tps": self.baseline_decode_tps.to_dict(),
            "baseline_prefill_tps": self.baseline_prefill_tps.to_dict(),
            "speedup": self.speedup.to_dict(),
            "output_mismatches": list(self.output_mismatches),
        }


@dataclass(frozen=True)
class CategorySummary:
    """A category at its best draft depth (highest mean speedup) at the first temperature."""

    category: str
    best_n: int | None = None
    temperature: float | None = None
    acceptance: float | None = None
    acceptance_std: float | None = None
    mean_accept_len: float | None = None
    per_pos_acceptance: tuple[float, ...] = ()
    speedup: float | None = None
    speedup_std: float | None = None
    decode_tps: float | None = None
    decode_tps_std: float | None = None
    baseline_decode_tps: float | None = None
    prefill_tps: float | None = None
    baseline_prefill_tps: float | None = None

    @property
    def status(self) -> str | None:
        return speed_status(self.speedup)

    def to_dict(self) -> dict[str, Any]:
        return {
            "acceptance": _r(self.acceptance), "speedup": _r(self.speedup),
            "decode_tps": _r(self.decode_tps), "baseline_decode_tps": _r(self.baseline_decode_tps),
            "prefill_tps": _r(self.prefill_tps), "best_n": self.best_n,
            "baseline_prefill_tps": _r(self.baseline_prefill_tps),
            "acceptance_std": _r(self.acceptance_std), "speedup_std": _r(self.speedup_std),
            "decode_tps_std": _r(self.decode_tps_std), "mean_accept_len": _r(self.mean_accept_len),
            "per_pos_acceptance": [_r(x) for x in self.per_pos_acceptance],
            "temperature": self.temperature, "status": self.status,
        }


def speed_status(speedup: float | None) -> str | None:
    """green: speeds up (>= 1.10x); yellow: marginal; red: slows down (< 1.00x)."""
    if speedup is None:
        return None
    if speedup >= SPEEDUP_GREEN:
        return "green"
    return "red" if speedup < SPEEDUP_RED else "yellow"


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


@dataclass(frozen=True)
class ModelResult:
    spec: ModelSpec
    verdict: str
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    mtp_active: bool
    counters: SpecCounters  # pooled over every MTP request of this model
    categories: dict[str, CategorySummary]
    configs: tuple[ConfigStats, ...]
    servers: tuple[ServerRun, ...]
    cells: tuple[Cell, ...] = field(default=(), repr=False)
    hashes: dict[str, str] = field(default_factory=dict)

    @property
    def acceptance(self) -> float | None:
        return self.counters.acceptance

    def to_dict(self) -> dict[str, Any]:
        files = [{"name": f.name, "sha256": self.hashes.get(str(f)), "size": f.stat().st_size}
                 for f in self.spec.files]
        return {
            "path": str(self.spec.path), "name": self.spec.name, "files": files,
            "arch": self.spec.arch, "nextn_predict_layers": self.spec.nextn_predict_layers,
            "verdict": self.verdict, "reasons": list(self.reasons), "warnings": list(self.warnings),
            "acceptance": _r(self.acceptance), "mean_accept_len": _r(self.counters.mean_accept_len),
            "per_pos_acceptance": [_r(x) for x in self.counters.per_pos_rate],
            "counters": self.counters.to_dict(), "mtp_active": self.mtp_active,
            "categories": {k: v.to_dict() for k, v in self.categories.items()},
            "runs": [c.to_dict() for c in self.configs],
            "servers": [s.to_dict() for s in self.servers],
        }


@dataclass(frozen=True)
class CheckResult:
    plan: CheckPlan
    models: tuple[ModelResult, ...]
    verdict: str
    reasons: tuple[str, ...]
    warnings: tuple[str, ...]
    counters: SpecCounters
    llama_cpp_build: str
    wall_s: float
    server_start_s: float  # summed over every server started
    server_stop_s: float
    generation_s: float  # llama-server's own prompt_ms + predicted_ms over measured requests
    warmup_s: float = 0.0

    @property
    def acceptance(self) -> float | None:
        return self.counters.acceptance

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def overhead_s(self) -> float:
        """Wall time not spent starting servers or inside llama-server's own timings."""
        return self.wall_s - self.server_start_s - self.generation_s

    def to_dict(self) -> dict[str, Any]:
        first = self.models[0].to_dict()["categories"] if self.models else {}
        return {
            "mtpgraft_version": __version__, "verdict": self.verdict, "reasons": list(self.reasons),
            "warnings": list(self.warnings), "acceptance": _r(self.acceptance),
            "mean_accept_len": _r(self.counters.mean_accept_len),
            "llama_cpp_build": self.llama_cpp_build, "settings": self.plan.settings_dict(),
            "thresholds": {"min_acceptance": self.plan.min_acceptance,
                           "min_speedup": self.plan.min_speedup,
                           "speedup_green": SPEEDUP_GREEN, "speedup_red": SPEEDUP_RED},
            "models": [m.to_dict() for m in self.models],
            "categories": first,
            "timing": {"wall_s": _r(self.wall_s), "server_start_s": _r(self.server_start_s),
                       "server_stop_s": _r(self.server_stop_s), "warmup_s": _r(self.warmup_s),
                       "generation_s": _r(self.generation_s), "overhead_s": _r(self.overhead_s)},
            "chart": None,
        }


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(float(x), nd)


# --------------------------------------------------------------------------- running

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
            "model": self.spec.path, "llama_cpp": plan.llama_cpp_dir, "ctx_size": plan.ctx_size,
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


def _config_stats(cells: Sequence[Cell], n: int, temp: float, cat: str) -> ConfigStats | None:
    mtp = sorted((c for c in cells if c.n_max == n and c.temperature == temp and c.category == cat),
                 key=lambda c: c.rep)
    if not mtp:
        return None
    base = {c.rep: c for c in cells
            if c.n_max is None and c.temperature == temp and c.category == cat}
    pooled = SpecCounters()
    for c in mtp:
        pooled = pooled + c.counters
    speedups = []
    for c in mtp:
        b = base.get(c.rep)
        if b and b.decode_tps and c.decode_tps:
            speedups.append(c.decode_tps / b.decode_tps)
    mismatches: list[str] = []
    if temp == 0.0:
        for c in mtp:
            b = base.get(c.rep)
            if not b:
                continue
            ref = {r.prompt_id: r.content for r in b.requests}
            mismatches += [r.prompt_id for r in c.requests
                           if r.prompt_id in ref and ref[r.prompt_id] != r.content]
    return ConfigStats(
        n_max=n, temperature=temp, category=cat, counters=pooled,
        acceptance_reps=MeanStd.of([c.counters.acceptance for c in mtp]),
        decode_tps=MeanStd.of([c.decode_tps for c in mtp]),
        prefill_tps=MeanStd.of([c.prefill_tps for c in mtp]),
        baseline_decode_tps=MeanStd.of([b.decode_tps for b in base.values()]),
        baseline_prefill_tps=MeanStd.of([b.prefill_tps for b in base.values()]),
        speedup=MeanStd.of(speedups),
        timings_draft_n=sum(r.draft_n for c in mtp for r in c.requests),
        timings_draft_n_accepted=sum(r.draft_n_accepted for c in mtp for r in c.requests),
        output_mismatches=tuple(dict.fromkeys(mismatches)),
    )


def _summarize(plan: CheckPlan, configs: Sequence[ConfigStats], cells: Sequence[Cell],
               cat: str) -> CategorySummary:
    temp = plan.temperatures[0]
    base = [c for c in cells if c.n_max is None and c.temperature == temp and c.category == cat]
    base_dec = MeanStd.of([c.decode_tps for c in base]).mean
    base_pre = MeanStd.of([c.prefill_tps for c in base]).mean
    cands = [c for c in configs if c.category == cat and c.temperature == temp]
    if not cands:
        return CategorySummary(cat, temperature=temp, baseline_decode_tps=base_dec,
                               baseline_prefill_tps=base_pre)

    def key(c: ConfigStats) -> tuple[float, float]:
        return (c.speedup.mean if c.speedup.mean is not None else -1.0, c.acceptance or 0.0)

    best = max(cands, key=key)
    return CategorySummary(
        cat, best_n=best.n_max, temperature=temp, acceptance=best.acceptance,
        acceptance_std=best.acceptance_reps.std, mean_accept_len=best.counters.mean_accept_len,
        per_pos_acceptance=best.counters.per_pos_rate, speedup=best.speedup.mean,
        speedup_std=best.speedup.std, decode_tps=best.decode_tps.mean,
        decode_tps_std=best.decode_tps.std, baseline_decode_tps=base_dec,
        prefill_tps=best.prefill_tps.mean, baseline_prefill_tps=base_pre)


def _overall_speedup(summaries: Sequence[CategorySummary]) -> float | None:
    vals = [s.speedup for s in summaries if s.speedup is not None]
    return statistics.fmean(vals) if vals else None


def judge_model(plan: CheckPlan, spec: ModelSpec, cells: Sequence[Cell],
                servers: Sequence[ServerRun]) -> ModelResult:
    """Aggregate one model's cells into stats and decide its verdict."""
    reasons: list[str] = []
    warnings: list[str] = []
    configs = [s for cat in plan.categories for t in plan.temperatures for n in plan.n_max
               if (s := _config_stats(cells, n, t, cat)) is not None]
    pooled = SpecCounters()
    for c in cells:
        if c.n_max is not None:
            pooled = pooled + c.counters
    categories = {cat: _summarize(plan, configs, cells, cat) for cat in plan.categories}

    base_run = next((s for s in servers if s.n_max is None), None)
    mtp_runs = [s for s in servers if s.n_max is not None]
    mtp_failed = next((s for s in mtp_runs if s.error), None)
    if base_run is not None and base_run.error:
        reasons.append(f"baseline llama-server failed: {base_run.error}")
    elif mtp_failed is not None and not any(c.n_max is not None for c in cells):
        reasons.append(f"MTP not active: {mtp_failed.error}")
    elif mtp_failed is not None:
        reasons.append(f"llama-server with {ServerConfig(mtp_failed.n_max).label} failed: "
                       f"{mtp_failed.error}")
    mtp_active = bool(mtp_runs) and pooled.draft_tokens > 0
    if mtp_runs and not mtp_failed and pooled.draft_tokens == 0:
        types = next((s.speculative_types for s in mtp_runs if s.speculative_types), "?")
        reasons.append(f"MTP not active: llama-server drafted no tokens "
                       f"(speculative.types = {types})")
    if mtp_active:
        acc = pooled.acceptance or 0.0
        if acc < plan.min_acceptance:
            reasons.append(f"acceptance {acc:.2f} < {plan.min_acceptance:.2f}")
        if plan.min_speedup is not None:
            gate = categories.get(GATE_CATEGORY)
            if gate is not None:
                sp, what = gate.speedup, f"{GATE_CATEGORY} speedup"
            else:
                sp, what = _overall_speedup(list(categories.values())), "mean speedup"
            if sp is None:
                reasons.append(f"{what} not measured (needed for --min-speedup)")
            elif sp < plan.min_speedup:
                reasons.append(f"{what} {sp:.2f} < {plan.min_speedup:.2f}")
    for s in configs:
        if s.timings_draft_n != s.counters.draft_tokens or \
                s.timings_draft_n_accepted != s.counters.accepted:
            warnings.append(f"n={s.n_max} {s.category}: /metrics counted {s.counters.accepted}/"
                            f"{s.counters.draft_tokens}, the responses' timings "
                            f"{s.timings_draft_n_accepted}/{s.timings_draft_n}")
        if s.output_mismatches:
            warnings.append(f"n={s.n_max} {s.category}: output at temperature 0 differs from the "
                            f"baseline for {', '.join(s.output_mismatches)}")
    cached = sum(1 for c in cells for r in c.requests if r.cache_n > 0)
    if cached:
        warnings.append(f"{cached} requests reused cached prompt tokens; prefill numbers are low")
    drafted_base = sum(r.draft_n for c in cells if c.n_max is None for r in c.requests)
    if drafted_base:
        warnings.append(f"the baseline server drafted {drafted_base} tokens: speculative decoding "
                        "was on without MTP (LLAMA_ARG_SPEC_* in the environment?)")
    return ModelResult(spec=spec, verdict="fail" if reasons else "pass", reasons=tuple(reasons),
                       warnings=tuple(warnings), mtp_active=mtp_active, counters=pooled,
                       categories=categories, configs=tuple(configs), servers=tuple(servers),
                       cells=tuple(cells))


def _build_string(plan: CheckPlan, build_info: str) -> str:
    if build_info:
        return build_info
    # `llama-server --version` says "7000 (0c1e570)" or "0.5.0-dev (build 0, commit 0c1e570)".
    v = plan.llama_cpp_version
    m = re.search(r"build (\d+), commit ([0-9a-f]+)", v) or re.match(r"(\d+)\s*\(([0-9a-f]+)\)", v)
    return f"b{m.group(1)}-{m.group(2)}" if m else v


def run_check(plan: CheckPlan, *, log_dir: str | os.PathLike[str] | None = None,
              progress: Progress | None = None, server_factory: ServerFactory | None = None,
              hash_files: bool = True) -> CheckResult:
    """Run the plan against llama-server and judge it. Server failures become verdict reasons."""
    factory = server_factory or _default_server_factory
    logs = Path(log_dir) if log_dir is not None else None
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: list[ModelResult] = []
    build_info = ""
    warmup_s = 0.0
    for spec in plan.models:
        runner = _ModelRunner(plan, spec, factory, logs, progress)
        runner.run()
        build_info = build_info or runner.build_info
        warmup_s += runner.warmup_s
        results.append(judge_model(plan, spec, runner.cells, runner.servers))
    wall_s = time.perf_counter() - t0

    if hash_files:
        from .hashing import sha256_file

        results = [replace(m, hashes={str(f): sha256_file(f) for f in m.spec.files})
                   for m in results]
    reasons: list[str] = []
    warnings: list[str] = []
    for m in results:
        prefix = f"{m.spec.name}: " if len(results) > 1 else ""
        reasons += [prefix + r for r in m.reasons]
        warnings += [prefix + w for w in m.warnings]
    pooled = SpecCounters()
    for m in results:
        pooled = pooled + m.counters
    servers = [s for m in results for s in m.servers]
    gen_s = sum(r.prompt_ms + r.predicted_ms for m in results for c in m.cells
                for r in c.requests) / 1000.0
    return CheckResult(plan=plan, models=tuple(results), verdict="fail" if reasons else "pass",
                       reasons=tuple(reasons), warnings=tuple(warnings), counters=pooled,
                       llama_cpp_build=_build_string(plan, build_info), wall_s=wall_s,
                       server_start_s=sum(s.start_s for s in servers),
                       server_stop_s=sum(s.stop_s for s in servers), generation_s=gen_s,
                       warmup_s=warmup_s)
