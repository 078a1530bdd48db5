"""`execute_check`: measure every model of a plan on llama-server, judge each, and pool the verdict."""

from __future__ import annotations

import os
import re
import time
from dataclasses import replace
from pathlib import Path

from ..hashing import sha256_file
from .counters import SpecCounters
from .judge import CheckResult, ModelResult, judge_model
from .measure import (
    Events,
    Progress,
    ServerFactory,
    _default_server_factory,
    _ModelRunner,
)
from .plan import CheckPlan


def _build_string(plan: CheckPlan, build_info: str) -> str:
    if build_info:
        return build_info
    # `llama-server --version` says "7000 (0c1e570)" or "0.5.0-dev (build 0, commit 0c1e570)".
    v = plan.server.version
    m = re.search(r"build (\d+), commit ([0-9a-f]+)", v) or re.match(r"(\d+)\s*\(([0-9a-f]+)\)", v)
    return f"b{m.group(1)}-{m.group(2)}" if m else v


def execute_check(plan: CheckPlan, *, log_dir: str | os.PathLike[str] | None = None,
              progress: Progress | None = None, server_factory: ServerFactory | None = None,
              hash_files: bool = True, events: Events | None = None) -> CheckResult:
    """Run the plan against llama-server and judge it. Server failures become verdict reasons.
    `events` gets the time estimate once the plan's first request has been measured."""
    logs = Path(log_dir) if log_dir is not None else None
    if logs is not None:
        logs.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results, build_info, warmup_s, per_request = _measure_models(
        plan, server_factory or _default_server_factory, logs, progress, events)
    wall_s = time.perf_counter() - t0
    if hash_files:
        results = _with_hashes(plan, results)
    return replace(_pooled(plan, results, build_info=build_info, wall_s=wall_s, warmup_s=warmup_s),
                   per_request=per_request)


def _measure_models(plan: CheckPlan, factory: ServerFactory, logs: Path | None, progress: Progress | None,
                    events: Events | None) -> tuple[list[ModelResult], str, float, tuple[bool, str] | None]:
    """Each model measured on its servers and judged; the first llama-server build seen; the warm-up
    time; whether the server takes per-request speculative fields (None: not probed)."""
    results: list[ModelResult] = []
    build_info = ""
    warmup_s = 0.0
    per_request: tuple[bool, str] | None = None
    for spec in plan.models:
        runner = _ModelRunner(plan, spec, factory, logs, progress, events)
        runner.estimate = not results
        runner.per_request = per_request  # the build's, probed once
        runner.run()
        per_request = runner.per_request
        build_info = build_info or runner.build_info
        warmup_s += runner.warmup_s
        judged = judge_model(plan, spec, runner.cells, runner.servers)
        results.append(replace(judged, template=runner.template,
                               context_tokens=runner.context_tokens))
    return results, build_info, warmup_s, per_request


def _with_hashes(plan: CheckPlan, results: list[ModelResult]) -> list[ModelResult]:
    """Each model's files with their sha256. The draft (an MTP sidecar) is listed with each model: a push
    gate can then find its check."""
    drafts = (plan.draft,) if plan.draft is not None else ()
    return [replace(m, hashes={str(f): sha256_file(f) for f in (*m.spec.files, *drafts)}) for m in results]


def _pooled(plan: CheckPlan, results: list[ModelResult], *, build_info: str, wall_s: float,
            warmup_s: float) -> CheckResult:
    """One result for the plan: every model's reasons and warnings (named when there are several),
    pooled counters and the time spent."""
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
