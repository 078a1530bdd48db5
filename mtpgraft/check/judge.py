"""Judging what was measured: per-configuration stats, the best n per category, the verdict.

Verdict: fail when MTP is not active, when the pooled acceptance is below min_acceptance, and,
only when min_speedup is set, when the code category's speedup is below it.

Speed status: green when MTP speeds up (>= 1.10x), yellow when marginal, red when it slows down
(< 1.00x), and "inconclusive" when the spread over reps is too large to tell a speedup from a
slowdown (1.00x lies within one sd of the mean speedup). A speedup measured in one rep has no spread
over reps: it is "single" (a single run, no colour) unless its own noise estimate, the spread of its
requests' speedups (each prompt's MTP tok/s over its baseline tok/s), leaves 1.00x outside one sd.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .counters import DrafterCounters, SpecCounters, pool_drafters, rounded
from .plan import CheckPlan, Condition, Keyed, ModelSpec, ServerConfig
from .positions import DraftHeads, heads_for
from .records import Cell, ServerRun, TemplateCheck

# The recommendation matrix: a category "speeds up" at >= 1.10x, "slows down" below 1.00x.
SPEEDUP_GREEN = 1.10
SPEEDUP_RED = 1.00
GATE_CATEGORY = "code"


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
        return {"mean": rounded(self.mean), "std": rounded(self.std), "n": self.n}


@dataclass(frozen=True)
class ConfigStats(Keyed):
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
    p_min: float | None = None
    reasoning: str | None = None
    depth: int = 0
    spec_types: str | None = None
    drafters: tuple[DrafterCounters, ...] = ()  # llama.cpp's per-drafter counters, pooled
    request_speedup: MeanStd = MeanStd(None, None, 0)  # per request (prompt x rep): the noise estimate
    heads: DraftHeads | None = None  # which head drafts which position (None: not known)

    @property
    def acceptance(self) -> float | None:
        return self.counters.acceptance

    @property
    def n_effective(self) -> int | None:
        """The draft depth llama-server runs at this n_max (chained heads clamp it); None: not known."""
        return self.heads.n_effective(self.n_max) if self.heads is not None else None

    def positions(self) -> list[dict[str, Any]]:
        """Per drafted position: the blocks that draft it (None: not known; []: MTP drafts no token
        there, another drafter of the list may) and its acceptance (verification steps whose draft
        was accepted up to it)."""
        return [{"position": p, "head_blocks": None if self.heads is None
                 else list(self.heads.blocks_at(p, self.n_max)), "acceptance": rounded(x)}
                for p, x in enumerate(self.counters.per_pos_upto(self.n_max))]

    @property
    def prefill_ratio(self) -> float | None:
        """MTP prefill tok/s over baseline prefill tok/s (below 1: MTP slows the prefill)."""
        a, b = self.prefill_tps.mean, self.baseline_prefill_tps.mean
        return a / b if a and b else None

    @property
    def status(self) -> str | None:
        return speed_status(self.speedup.mean, self.speedup.std, self.speedup.n,
                            self.request_speedup.std, self.request_speedup.n)

    def to_dict(self) -> dict[str, Any]:
        c = self.counters
        return {
            "n_max": self.n_max, "p_min": self.p_min, "spec_types": self.spec_types,
            "drafters": [d.to_dict() for d in self.drafters], "temperature": self.temperature,
            "reasoning": self.reasoning, "depth": self.depth, "category": self.category,
            "prefill_ratio": rounded(self.prefill_ratio), "status": self.status,
            "acceptance": rounded(c.acceptance), "acceptance_reps": self.acceptance_reps.to_dict(),
            "mean_accept_len": rounded(c.mean_accept_len),
            "per_pos_acceptance": [rounded(x) for x in c.per_pos_upto(self.n_max)], "counters": c.to_dict(),
            "n_max_effective": self.n_effective, "positions": self.positions(),
            "decode_tps": self.decode_tps.to_dict(), "prefill_tps": self.prefill_tps.to_dict(),
            "baseline_decode_tps": self.baseline_decode_tps.to_dict(),
            "baseline_prefill_tps": self.baseline_prefill_tps.to_dict(),
            "speedup": self.speedup.to_dict(), "request_speedup": self.request_speedup.to_dict(),
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
    best_p_min: float | None = None
    reasoning: str | None = None
    depth: int = 0
    speedup_reps: int = 0  # how many reps the speedup's mean and sd come from
    request_speedup_std: float | None = None  # sd of its requests' speedups (one rep's noise estimate)
    speedup_requests: int = 0
    best_spec_type: str | None = None  # the exact --spec-type value of the best config
    runner_up: str | None = None  # the next best ("MTP off" counts as a candidate at 1.00x)
    margin: float | None = None  # winner's mean speedup - runner-up's
    margin_sd: float | None = None  # sd of that difference (None: one rep, not measured)
    mtp_off: bool = False  # no MTP configuration beat the server without MTP

    @property
    def margin_in_noise(self) -> bool | None:
        """Whether the margin over the runner-up is within one sd (None: one rep, not known)."""
        if self.margin is None or self.margin_sd is None:
            return None
        return abs(self.margin) <= self.margin_sd

    @property
    def status(self) -> str | None:
        return speed_status(self.speedup, self.speedup_std, self.speedup_reps, self.request_speedup_std,
                            self.speedup_requests)

    def condition_is(self, cond: Condition) -> bool:
        return (self.temperature, self.reasoning, self.depth) == (
            cond.temperature, cond.reasoning, cond.depth)

    @property
    def why(self) -> str:
        """Why the status is inconclusive ('' when it is not)."""
        return inconclusive_reason(self.speedup, self.speedup_std, self.speedup_reps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_p_min": self.best_p_min, "reasoning": self.reasoning, "depth": self.depth,
            "speedup_reps": self.speedup_reps, "why": self.why,
            "speedup_requests": self.speedup_requests, "request_speedup_std": rounded(self.request_speedup_std),
            "acceptance": rounded(self.acceptance), "speedup": rounded(self.speedup),
            "decode_tps": rounded(self.decode_tps), "baseline_decode_tps": rounded(self.baseline_decode_tps),
            "prefill_tps": rounded(self.prefill_tps), "best_n": self.best_n,
            "baseline_prefill_tps": rounded(self.baseline_prefill_tps),
            "acceptance_std": rounded(self.acceptance_std), "speedup_std": rounded(self.speedup_std),
            "decode_tps_std": rounded(self.decode_tps_std), "mean_accept_len": rounded(self.mean_accept_len),
            "per_pos_acceptance": [rounded(x) for x in self.per_pos_acceptance],
            "temperature": self.temperature, "status": self.status,
            "best_spec_type": self.best_spec_type, "runner_up": self.runner_up,
            "margin": rounded(self.margin), "margin_sd": rounded(self.margin_sd),
            "margin_in_noise": self.margin_in_noise, "mtp_off": self.mtp_off,
        }


def speed_status(speedup: float | None, std: float | None = None, n: int = 1,
                 request_std: float | None = None, requests: int = 0) -> str | None:
    """green: speeds up (>= 1.10x); yellow: marginal; red: slows down (< 1.00x); inconclusive when
    over n >= 2 reps 1.00x lies within one sd of the mean (speedup and slowdown both plausible);
    single: one rep whose `requests` (>= 2) speedups, sd `request_std`, do not leave 1.00x outside
    one sd (or fewer than 2 requests: no noise estimate at all)."""
    if speedup is None:
        return None
    if inconclusive_reason(speedup, std, n):
        return "inconclusive"
    if n < 2 and not (requests >= 2 and request_std is not None and abs(speedup - 1.0) >= request_std):
        return "single"
    if speedup >= SPEEDUP_GREEN:
        return "green"
    return "red" if speedup < SPEEDUP_RED else "yellow"


def inconclusive_reason(speedup: float | None, std: float | None, n: int) -> str:
    if speedup is None or not std or n < 2 or abs(speedup - 1.0) >= std:
        return ""
    return (f"sd/mean {std / speedup:.0%} over {n} reps: {speedup:.2f}x ± {std:.2f} "
            "includes 1.00x")


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
    summaries: tuple[CategorySummary, ...] = ()  # best config per category, every condition
    pooled: tuple[ConfigStats, ...] = ()  # category "*": every config x condition, all prompts
    mode: str = "raw"
    template: tuple[TemplateCheck, ...] = ()
    context_tokens: dict[str, int] = field(default_factory=dict)
    heads: DraftHeads | None = None  # which head drafts which position (None: not known)

    @property
    def acceptance(self) -> float | None:
        return self.counters.acceptance

    @property
    def notes(self) -> tuple[str, ...]:
        """Where the graph drafts fewer positions than an n asked for (not an error)."""
        if self.heads is None:
            return ()
        ns = dict.fromkeys(c.n_max for c in self.configs)
        return tuple(note for n in ns if (note := self.heads.clamp_note(n)))

    def per_prompt(self) -> list[dict[str, Any]]:
        return [r.row() for c in self.cells for r in c.requests]

    def to_dict(self) -> dict[str, Any]:
        files = [{"name": f.name, "sha256": self.hashes.get(str(f)), "size": f.stat().st_size}
                 for f in self.spec.files]
        # A hashed file that is not the model's is the draft it ran with (an MTP sidecar, -md).
        drafts = [{"name": Path(p).name, "sha256": h, "size": Path(p).stat().st_size}
                  for p, h in self.hashes.items() if Path(p) not in self.spec.files]
        return {
            "path": str(self.spec.path), "name": self.spec.name, "files": files,
            **({"draft": drafts[0]} if drafts else {}),
            "arch": self.spec.arch, "nextn_predict_layers": self.spec.nextn_predict_layers,
            "verdict": self.verdict, "reasons": list(self.reasons), "warnings": list(self.warnings),
            "acceptance": rounded(self.acceptance), "mean_accept_len": rounded(self.counters.mean_accept_len),
            "per_pos_acceptance": [rounded(x) for x in self.counters.per_pos_upto(
                max((c.n_max for c in self.configs), default=0))],
            "counters": self.counters.to_dict(), "mtp_active": self.mtp_active,
            "draft_heads": None if self.heads is None else self.heads.to_dict(), "notes": list(self.notes),
            "categories": {k: v.to_dict() for k, v in self.categories.items()},
            "runs": [c.to_dict() for c in self.configs],
            "servers": [s.to_dict() for s in self.servers],
            "quant": self.spec.quant, "mode": self.mode,
            "template": [t.to_dict() for t in self.template],
            "context_tokens": dict(self.context_tokens),
            "summaries": [s.to_dict() | {"category": s.category} for s in self.summaries],
            "by_config": [c.to_dict() for c in self.pooled],
            "per_prompt": self.per_prompt(),
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
    per_request: tuple[bool, str] | None = None  # per-request speculative fields: (taken, evidence)

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
            "warnings": list(self.warnings), "acceptance": rounded(self.acceptance),
            "mean_accept_len": rounded(self.counters.mean_accept_len),
            "llama_cpp_build": self.llama_cpp_build, "settings": self.plan.settings_dict(),
            "thresholds": {"min_acceptance": self.plan.min_acceptance,
                           "min_speedup": self.plan.min_speedup,
                           "speedup_green": SPEEDUP_GREEN, "speedup_red": SPEEDUP_RED},
            "models": [m.to_dict() for m in self.models],
            "categories": first,
            "timing": {"wall_s": rounded(self.wall_s), "server_start_s": rounded(self.server_start_s),
                       "server_stop_s": rounded(self.server_stop_s), "warmup_s": rounded(self.warmup_s),
                       "generation_s": rounded(self.generation_s), "overhead_s": rounded(self.overhead_s)},
            "chart": None,
            "per_request": (None if self.per_request is None else
                            {"accepted": self.per_request[0], "evidence": self.per_request[1]}),
        }



def _reps(cells: Sequence[Cell]) -> dict[int, list[Cell]]:
    out: dict[int, list[Cell]] = {}
    for c in cells:
        out.setdefault(c.rep, []).append(c)
    return dict(sorted(out.items()))


def _tps(cells: Sequence[Cell], n: str, ms: str) -> float | None:
    total_ms = sum(getattr(r, ms) for c in cells for r in c.requests)
    return 1000.0 * sum(getattr(r, n) for c in cells for r in c.requests) / total_ms \
        if total_ms > 0 else None


def _counters(cells: Sequence[Cell]) -> SpecCounters:
    return sum((c.counters for c in cells), SpecCounters())


def _mismatches(mtp: dict[int, list[Cell]], base: dict[int, list[Cell]]) -> list[str]:
    out: list[str] = []
    for rep, cells in mtp.items():
        ref = {r.prompt_id: r.content for b in base.get(rep, []) for r in b.requests}
        out += [r.prompt_id for c in cells for r in c.requests
                if r.prompt_id in ref and ref[r.prompt_id] != r.content]
    return out


def _config_stats(cells: Sequence[Cell], cfg: ServerConfig, cond: Condition,
                  cat: str, heads: DraftHeads | None = None) -> ConfigStats | None:
    """One config under one condition, for a category or (cat "*") all of them, over the reps."""
    def pick(c: Cell, config: ServerConfig) -> bool:
        return c.config == config and c.condition == cond and cat in ("*", c.category)

    mtp = _reps([c for c in cells if pick(c, cfg)])
    if not mtp:
        return None
    base = _reps([c for c in cells if pick(c, ServerConfig(None))])
    dec = {r: _tps(cs, "predicted_n", "predicted_ms") for r, cs in mtp.items()}
    base_dec = {r: _tps(cs, "predicted_n", "predicted_ms") for r, cs in base.items()}
    speedups = [dec[r] / base_dec[r] for r in mtp if dec[r] and base_dec.get(r)]
    per_request = {(rep, r.prompt_id): r.decode_tps for rep, cs in base.items() for c in cs for r in c.requests}
    every = [c for cs in mtp.values() for c in cs]
    return ConfigStats(
        n_max=cfg.n_max or 0, temperature=cond.temperature, category=cat,
        counters=_counters(every),
        acceptance_reps=MeanStd.of([_counters(cs).acceptance for cs in mtp.values()]),
        decode_tps=MeanStd.of(list(dec.values())),
        prefill_tps=MeanStd.of([_tps(cs, "prompt_n", "prompt_ms") for cs in mtp.values()]),
        baseline_decode_tps=MeanStd.of(list(base_dec.values())),
        baseline_prefill_tps=MeanStd.of([_tps(cs, "prompt_n", "prompt_ms") for cs in base.values()]),
        speedup=MeanStd.of(speedups),
        timings_draft_n=sum(r.draft_n for c in every for r in c.requests),
        timings_draft_n_accepted=sum(r.draft_n_accepted for c in every for r in c.requests),
        output_mismatches=tuple(dict.fromkeys(_mismatches(mtp, base) if cond.temperature == 0
                                              else [])),
        p_min=cfg.p_min, reasoning=cond.reasoning, depth=cond.depth, spec_types=cfg.spec_types,
        drafters=pool_drafters(c.drafters for c in every), heads=heads,
        request_speedup=MeanStd.of([r.decode_tps / b for rep, cs in mtp.items() for c in cs
                                    for r in c.requests
                                    if r.decode_tps and (b := per_request.get((rep, r.prompt_id)))]))


OFF = "MTP off"  # the recommendation where no MTP configuration beats the server without MTP


def _margin(best: ConfigStats | None, runner: ConfigStats | None) -> tuple[float | None, float | None]:
    """The winner's mean speedup over the runner-up's (a missing one: MTP off, 1.00x exactly), and
    the sd of that difference from the two spreads over reps (None with one rep)."""
    a = best.speedup if best is not None else MeanStd(1.0, 0.0, 2)
    b = runner.speedup if runner is not None else MeanStd(1.0, 0.0, 2)
    if a.mean is None or b.mean is None:
        return None, None
    sd = (a.std ** 2 + b.std ** 2) ** 0.5 if min(a.n, b.n) >= 2 and a.std is not None \
        and b.std is not None else None
    return a.mean - b.mean, sd


def _ranked(cands: Sequence[ConfigStats]) -> list[ConfigStats | None]:
    """The candidates best first by mean speedup (then acceptance); None is MTP off (1.00x)."""
    def key(c: ConfigStats | None) -> tuple[float, float]:
        if c is None:
            return (1.0, -1.0)
        return (c.speedup.mean if c.speedup.mean is not None else -1.0, c.acceptance or 0.0)

    return sorted([*cands, None], key=key, reverse=True)


def _summarize(configs: Sequence[ConfigStats], cells: Sequence[Cell], cond: Condition, cat: str,
               spec_type: str = "") -> CategorySummary:
    """A category under one condition at its best config (highest mean speedup), with the winner
    among the configs and MTP off, its runner-up and the margin between them."""
    base = [c for c in cells if c.n_max is None and c.condition == cond and c.category == cat]
    base_dec = MeanStd.of([c.decode_tps for c in base]).mean
    base_pre = MeanStd.of([c.prefill_tps for c in base]).mean
    common = {"temperature": cond.temperature, "reasoning": cond.reasoning, "depth": cond.depth,
              "baseline_decode_tps": base_dec, "baseline_prefill_tps": base_pre}
    cands = [c for c in configs if c.category == cat and c.condition == cond]
    if not cands:
        return CategorySummary(cat, **common)
    ranked = _ranked(cands)
    best = next(c for c in ranked if c is not None)
    winner, runner = ranked[0], ranked[1]
    margin, margin_sd = _margin(winner, runner)
    return CategorySummary(
        cat, best_n=best.n_max, acceptance=best.acceptance,
        acceptance_std=best.acceptance_reps.std, mean_accept_len=best.counters.mean_accept_len,
        per_pos_acceptance=best.counters.per_pos_upto(best.n_max), speedup=best.speedup.mean,
        speedup_std=best.speedup.std, decode_tps=best.decode_tps.mean,
        decode_tps_std=best.decode_tps.std, prefill_tps=best.prefill_tps.mean,
        best_p_min=best.p_min, speedup_reps=best.speedup.n,
        best_spec_type=best.spec_types or spec_type or None,
        runner_up=OFF if runner is None else runner.config.label, margin=margin,
        margin_sd=margin_sd, mtp_off=winner is None,
        request_speedup_std=best.request_speedup.std, speedup_requests=best.request_speedup.n, **common)


def _overall_speedup(summaries: Sequence[CategorySummary]) -> float | None:
    vals = [s.speedup for s in summaries if s.speedup is not None]
    return statistics.fmean(vals) if vals else None


def _server_reasons(cells: Sequence[Cell], servers: Sequence[ServerRun],
                    pooled: SpecCounters) -> list[str]:
    """Why the servers say MTP did not run (a failed server, nothing drafted)."""
    base_run = next((s for s in servers if s.n_max is None), None)
    mtp_runs = [s for s in servers if s.n_max is not None]
    mtp_failed = next((s for s in mtp_runs if s.error), None)
    if base_run is not None and base_run.error:
        return [f"baseline llama-server failed: {base_run.error}"]
    if mtp_failed is not None and not any(c.n_max is not None for c in cells):
        return [f"MTP not active: {mtp_failed.error}"]
    if mtp_failed is not None:
        return [f"llama-server with {mtp_failed.config.label} failed: {mtp_failed.error}"]
    if mtp_runs and pooled.draft_tokens == 0:
        types = next((s.speculative_types for s in mtp_runs if s.speculative_types), "?")
        return [f"MTP not active: llama-server drafted no tokens (speculative.types = {types})"]
    return []


def _threshold_reasons(plan: CheckPlan, pooled: SpecCounters,
                       categories: dict[str, CategorySummary]) -> list[str]:
    reasons = []
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
    return reasons


def _warnings(configs: Sequence[ConfigStats], cells: Sequence[Cell]) -> list[str]:
    warnings = []
    for s in configs:
        where = f"{s.config.label} {s.condition.label} {s.category}"
        if s.timings_draft_n != s.counters.draft_tokens or \
                s.timings_draft_n_accepted != s.counters.accepted:
            warnings.append(f"{where}: /metrics counted {s.counters.accepted}/"
                            f"{s.counters.draft_tokens}, the responses' timings "
                            f"{s.timings_draft_n_accepted}/{s.timings_draft_n}")
        if s.output_mismatches:
            warnings.append(f"{where}: output at temperature 0 differs from the baseline for "
                            f"{', '.join(s.output_mismatches)}")
    cached = sum(1 for c in cells for r in c.requests if r.cache_n > 0)
    if cached:
        warnings.append(f"{cached} requests reused cached prompt tokens; prefill numbers are low")
    drafted_base = sum(r.draft_n for c in cells if c.n_max is None for r in c.requests)
    if drafted_base:
        warnings.append(f"the baseline server drafted {drafted_base} tokens: speculative decoding "
                        "was on without MTP (LLAMA_ARG_SPEC_* in the environment?)")
    return warnings


def judge_model(plan: CheckPlan, spec: ModelSpec, cells: Sequence[Cell],
                servers: Sequence[ServerRun]) -> ModelResult:
    """Aggregate one model's cells into stats and decide its verdict."""
    mtp_configs = plan.configs_for(spec)[1:]
    heads = heads_for(plan, spec)
    configs = [s for cat in plan.categories for cond in plan.conditions for cfg in mtp_configs
               if (s := _config_stats(cells, cfg, cond, cat, heads)) is not None]
    by_config = [s for cond in plan.conditions for cfg in mtp_configs
                 if (s := _config_stats(cells, cfg, cond, "*", heads)) is not None]
    pooled = _counters([c for c in cells if c.n_max is not None])
    summaries = [_summarize(configs, cells, cond, cat, plan.spec_type) for cond in plan.conditions
                 for cat in plan.categories]
    categories = {s.category: s for s in summaries if s.condition_is(plan.conditions[0])}
    mtp_active = any(s.n_max is not None for s in servers) and pooled.draft_tokens > 0
    reasons = _server_reasons(cells, servers, pooled)
    if mtp_active:
        reasons += _threshold_reasons(plan, pooled, categories)
    return ModelResult(spec=spec, verdict="fail" if reasons else "pass", reasons=tuple(reasons),
                       warnings=tuple(_warnings(configs, cells)), mtp_active=mtp_active,
                       counters=pooled, categories=categories, configs=tuple(configs),
                       servers=tuple(servers), cells=tuple(cells), summaries=tuple(summaries),
                       pooled=tuple(by_config), mode=plan.mode_for(spec), heads=heads)
