"""One Step class per pipeline stage (graft, imatrix, quantize, check, quality, push): what it would
do, what its key hashes, what it asks a scheduler for, and its run, calling the stage's own plan and
run functions.

Steps read what earlier steps made from those steps' state records, never from memory, so a step
runs the same in this process, in another process on the same work dir, or as a cluster task."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..check import execute_check, plan_check, resolve_server
from ..check.report import write_report as write_check_report
from ..errors import HubError, RecipeError
from ..gguf_io import GGUFModel
from ..graft import execute_graft, plan_attach
from ..hub import check_gate, execute_push, make_api, plan_push
from ..hub.remote import verify_remote
from ..imatrix import execute_imatrix, plan_imatrix, read_imatrix
from ..inspection import inspect_model
from ..quality import acceptance_retention, execute_quality, plan_quality
from ..quality import write_report as write_quality_report
from ..quantize import execute_quantize, mtp_policy_for, output_names, plan_quantize
from ..reports import CHECK_REPORT, QUALITY_REPORT
from .schema import Resources
from .state import State
from .step import (
    BUILTIN,
    BUILTIN_CALIBRATION,
    Context,
    Event,
    Outcome,
    Step,
    StepFailed,
    resolve_builtin_model,
    resolve_calibration,
)

_GPU_FLAGS = ("-ngl", "--gpu-layers", "--n-gpu-layers")
# What the Step base module defines is importable from here, as before the split.
__all__ = [
    "BUILTIN", "BUILTIN_CALIBRATION", "CheckStep", "Context", "Event", "GraftStep", "ImatrixStep", "Outcome",
    "PushStep", "QualityStep", "QuantizeStep", "Step", "StepFailed", "resolve_builtin_model", "resolve_calibration",
]


def _server_resources(args: tuple[str, ...], threads: int | None) -> Resources:
    """llama-imatrix / llama-server: a GPU when their args offload layers (-ngl N, N != 0), else
    their threads in CPUs."""
    for i, a in enumerate(args):
        flag, _, val = a.partition("=")
        if flag in _GPU_FLAGS:
            if (val or (args[i + 1] if i + 1 < len(args) else "")).strip() not in ("0", ""):
                return Resources(cpus=1.0, gpus=1.0)
            break
    return Resources(cpus=float(threads or 1), gpus=0.0)


def _by_name(files: list[Path]) -> dict[str, Path]:
    return {p.name: p for p in files}


def _model_files(p: Path) -> list[Path]:
    return GGUFModel(p).paths


# --------------------------------------------------------------------------- the stages


class GraftStep(Step):
    kind = "graft"

    def _inputs(self, ctx: Context) -> tuple[Path, Path | None]:
        return ctx.input("model", "base"), ctx.input("model", "mtp_from") if self.s.mtp_from else None

    def describe(self) -> str:
        if not self.s.mtp_from:
            return f"use {self.s.base} as it is (it must hold an MTP block)"
        return (f"attach the MTP block of {self.s.mtp_from} to {self.s.base} -> {self.r.name}.gguf"
                f" (MTP type {self.s.graft_mtp_type or 'the base float type'})")

    def params(self) -> dict[str, Any]:
        return {"mtp_from": bool(self.s.mtp_from), "graft_mtp_type": self.s.graft_mtp_type,
                "replace": self.s.replace_mtp}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        base, src = self._inputs(ctx)
        return _by_name(_model_files(base) + (_model_files(src) if src else []))

    def run(self, ctx: Context) -> Outcome:
        base, src = self._inputs(ctx)
        if src is None:
            rep = inspect_model(base)
            if not rep.consistent:
                raise RecipeError(f"[model] base {base.name} is inconsistent: {'; '.join(rep.problems)}")
            if not rep.mtp_present:
                raise RecipeError(f"[model] base {base.name} has no MTP block: set mtp_from to a GGUF "
                                  "holding one (a full MTP model or an mtp-*.gguf sidecar)")
            ctx.emit(self.id, f"{base.name} already has its MTP block (nothing to graft)")
            return Outcome("base has MTP", (), {"model": ctx.state.rel(base), "grafted": False})
        plan = plan_attach(base, src, ctx.work / f"{self.r.name}.gguf", mtp_type=self.s.graft_mtp_type,
                           replace=self.s.replace_mtp, force=True, llama_cpp=ctx.llama_cpp,
                           runtime=ctx.recipe.runtime)
        _warn(ctx, self, plan.warnings)
        ctx.emit(self.id, f"attaching the MTP block of {src.name} to {base.name}")
        written = execute_graft(plan)
        rep = inspect_model(written[0])
        if not rep.consistent or not rep.mtp_present:
            raise StepFailed(f"the grafted model fails inspection: {'; '.join(rep.problems)}")
        return Outcome(f"grafted, MTP type {plan.mtp_type}", tuple(written),
                       {"model": ctx.state.rel(written[0]), "grafted": True, "mtp_type": plan.mtp_type})


class ImatrixStep(Step):
    """llama-imatrix over the calibration text, or the recipe's given imatrix file."""

    kind = "imatrix"

    def describe(self) -> str:
        if self.s.file:
            return f"use the given imatrix {self.s.file}"
        return (f"llama-imatrix on the grafted model with {self.s.calibration} (ctx {self.s.ctx or 'default'}, "
                f"chunks {self.s.chunks or 'all'}) -> {self.r.name}.imatrix.gguf")

    def default_resources(self) -> Resources:
        return _server_resources(self.s.extra_args, self.s.threads)

    def params(self) -> dict[str, Any]:
        s = self.s
        return {"file": True} if s.file else {"ctx": s.ctx, "chunks": s.chunks, "batch": s.batch,
                                              "extra": list(s.extra_args)}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        if self.s.file:
            return _by_name([ctx.input("imatrix", "file")])
        return {"model": ctx.model(), "calibration": ctx.input("imatrix", "calibration")}

    def run(self, ctx: Context) -> Outcome:
        s = self.s
        if s.file:
            given = ctx.input("imatrix", "file")
            return Outcome(f"given: {given.name} ({read_imatrix(given).entries} entries)", (given,),
                           {"imatrix": ctx.state.rel(given), "given": True})
        model, cal, out = ctx.model(), ctx.input("imatrix", "calibration"), ctx.work / f"{self.r.name}.imatrix.gguf"
        plan = plan_imatrix(model, cal, out, ctx=s.ctx, chunks=s.chunks, batch=s.batch, threads=s.threads,
                            extra_args=s.extra_args, force=True, llama_cpp=ctx.llama_cpp,
                            runtime=ctx.recipe.runtime)
        ctx.emit(self.id, f"llama-imatrix on {model.name} with {cal.name}")
        (ctx.work / "logs").mkdir(parents=True, exist_ok=True)
        info = execute_imatrix(plan, log_path=ctx.work / "logs" / "imatrix.log").info
        return Outcome(f"{info.entries} entries, {info.chunk_count} chunks", (out,),
                       {"imatrix": ctx.state.rel(out), "entries": info.entries, "chunks": info.chunk_count,
                        "calibration": cal.name, "calibration_sha256": plan.calibration_sha256})


class QuantizeStep(Step):
    kind = "quantize"

    def _policy(self) -> str:
        return mtp_policy_for(self.s.mtp_policy(), self.type or "")

    def out_dir(self) -> Path:
        return State(Path(self.r.work_dir)).abs(self.s.out_dir)

    def describe(self) -> str:
        single, _ = output_names(self.s.out_dir, self.r.name, self.type or "")
        return (f"llama-quantize {self.type}, MTP type {self._policy()} -> {single}"
                + (f" (split above {self.s.split_max_size})" if self.s.split_max_size else ""))

    def default_resources(self) -> Resources:
        return Resources(cpus=float(self.s.threads or 1), gpus=0.0)

    def params(self) -> dict[str, Any]:
        q = self.s
        return {"type": self.type, "mtp_type": self._policy(), "split_max_size": q.split_max_size,
                "name": self.r.name, "out_dir": q.out_dir, "allow_requantize": q.allow_requantize}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        imatrix = ctx.imatrix()
        return {"model": ctx.model()} | ({"imatrix": imatrix} if imatrix else {})

    def run(self, ctx: Context) -> Outcome:
        q = self.s
        threads = q.threads or (max(1, int(self.resources().cpus or 1)) if ctx.pin_threads else None)
        plan = plan_quantize(ctx.model(), [self.type or ""], out_dir=self.out_dir(), name=self.r.name,
                             imatrix=ctx.imatrix(), mtp_type=q.mtp_policy(), split_max_size=q.split_max_size,
                             allow_requantize=q.allow_requantize, jobs=q.jobs, threads=threads, force=True,
                             llama_cpp=ctx.llama_cpp, runtime=ctx.recipe.runtime)
        _warn(ctx, self, plan.warnings)
        o = execute_quantize(plan, on_event=lambda t, m: ctx.emit(self.id, m), log_dir=ctx.work / "logs").outputs[0]
        if not o.ok or o.path is None:
            raise StepFailed(o.reason, log_tail=_tail(o.log))
        return Outcome(f"{o.bytes / 1e6:.1f} MB", tuple(Path(f) for f in o.files),
                       {"path": ctx.state.rel(o.path), "bytes": o.bytes, "split": o.split,
                        "mtp_types": dict(o.mtp_types)})


class CheckStep(Step):
    """Every checked type in one `mtpgraft check` plan: one report across all quants."""

    kind = "check"

    def report_dir(self) -> Path:
        return Path(self.r.work_dir) / "checks"

    def _prompts(self) -> Path | None:
        return self.r.input_path(self.s.prompts) if self.s.prompts else None

    def describe(self) -> str:
        return (f"llama-server check of the {', '.join(self.r.check_types())} outputs with and "
                f"without MTP, one plan (n_max {list(self.s.n_max)}, min acceptance "
                f"{self.s.min_acceptance}) -> checks/report.json")

    def default_resources(self) -> Resources:
        return _server_resources(self.s.server_args, None)

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self.s).items() if k not in ("enabled", "types")}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        prompts = self._prompts()
        return _by_name([f for q in ctx.quants(self.r.check_types()) for f in _model_files(q)]
                        + ([prompts] if prompts else []))

    def check(self, ctx: Context, models: list[Path], report_dir: Path, step_id: str) -> tuple[Any, Path]:
        """These models checked with the recipe's [check] settings, and the report.json written
        (the quality step checks its reference alike)."""
        s = self.s
        plan = plan_check(models, **s.settings(), seed=s.seed, prompts=self._prompts(), categories=s.categories,
                          server_args=s.server_args,
                          server=resolve_server(ctx.llama_cpp, ctx.recipe.runtime))
        ctx.emit(step_id, f"{plan.n_servers} llama-server runs, {plan.n_requests} requests" if step_id == self.id
                 else f"checking the reference {models[0].name} with the check step's settings")
        result = execute_check(plan, log_dir=report_dir / "logs", events=lambda m: ctx.emit(step_id, m))
        return result, Path(write_check_report(result, report_dir).json)

    def run(self, ctx: Context) -> Outcome:
        result, report = self.check(ctx, ctx.quants(self.r.check_types()), self.report_dir(), self.id)
        acc = result.acceptance
        summary = f"verdict {result.verdict}" + (f", acceptance {acc:.3f}" if acc is not None else "")
        if not result.passed:
            raise StepFailed(f"{summary}: {'; '.join(result.reasons)}")
        ctx.emit(self.id, f"done: {summary} ({ctx.state.rel(report)})")
        by_type = {t: {"verdict": m.verdict, "acceptance": m.acceptance}
                   for t, m in zip(self.r.check_types(), result.models, strict=True)}
        return Outcome(summary, (report,), {"verdict": result.verdict, "acceptance": acc,
                                            "report": ctx.state.rel(report), "types": by_type})


class QualityStep(Step):
    """KL divergence per quant against the graft output (llama-perplexity), and, with a [check],
    acceptance retention: the reference is checked with the same settings as the quants."""

    kind = "quality"

    def out_dir(self) -> Path:
        # beside the check report, where the card finds quality.json; its own folder without a check
        return CheckStep(self.r).report_dir() if self.r.check_types() else Path(self.r.work_dir) / "quality"

    def _text(self) -> Path | None:
        return self.r.input_path(self.s.text) if self.s.text else None

    def describe(self) -> str:
        q = self.s
        return (f"llama-perplexity KL divergence of {', '.join(self.r.quality_types())} against the graft "
                f"output (ctx {q.ctx}{f', {q.chunks} chunks' if q.chunks else ''})"
                + (", acceptance retention from a check of the reference" if self.r.check_types() else ""))

    def params(self) -> dict[str, Any]:
        return asdict(self.s) | {"check": asdict(self.r.check) if self.r.check_types() else None}

    def inputs(self, ctx: Context) -> dict[str, Path]:
        text = self._text()
        return _by_name([ctx.model()] + [f for q in ctx.quants(self.r.quality_types()) for f in _model_files(q)]
                        + ([text] if text else []))

    def run(self, ctx: Context) -> Outcome:
        ref, quants, out = ctx.model(), ctx.quants(self.r.quality_types()), self.out_dir()
        plan = plan_quality(ref, [str(p) for p in quants], text=self._text(), ctx_size=self.s.ctx,
                            chunks=self.s.chunks, extra_args=self.s.perplexity_args, llama_cpp=ctx.llama_cpp,
                            runtime=ctx.recipe.runtime)
        result = execute_quality(plan, log_dir=out / "quality-logs", emit=lambda m: ctx.emit(self.id, m))
        if self.r.check_types():
            _, ref_report = CheckStep(self.r).check(ctx, [ref], out / "reference", self.id)
            result = replace(result, retention=acceptance_retention(
                [out / CHECK_REPORT, ref_report], str(ref), [str(p) for p in quants]))
        js, _ = write_quality_report(result, out, md_name="quality.md")
        worst = max(m.figures["kld"].value for m in result.models)
        return Outcome(f"max mean KLD {worst:g} over {len(result.models)} quant(s)", (js,),
                       {"report": ctx.state.rel(js), "logits": plan.logits,
                        "kld": {m.name: m.figures["kld"].text for m in result.models}})


class PushStep(Step):
    kind = "push"

    def _reports(self) -> list[Path]:
        return [CheckStep(self.r).report_dir()] if self.r.check_types() else []

    def describe(self) -> str:
        return f"push {self.r.quantize.out_dir} to {self.s.repo}" + (
            " ([hub] dry_run: plan only)" if self.s.dry_run else "")

    def inputs(self, ctx: Context) -> dict[str, Path]:
        out_dir = QuantizeStep(self.r).out_dir()
        files = [p for p in sorted(out_dir.rglob("*.gguf"))
                 if not any(part.startswith(".") for part in p.relative_to(out_dir).parts)]
        files += [d / n for d in self._reports() for n in (CHECK_REPORT, QUALITY_REPORT)
                  if (d / n).is_file() or n == CHECK_REPORT]
        return {ctx.state.rel(p): p for p in files}

    def run(self, ctx: Context) -> Outcome:
        hub = self.s
        try:
            api = ctx.hub_api(hub) if ctx.hub_api is not None else make_api(endpoint=hub.endpoint)
            plan = plan_push([QuantizeStep(self.r).out_dir()], repo_id=hub.repo, api=api,
                             revision=hub.revision, create_pr=hub.create_pr, private=hub.private,
                             report_dirs=self._reports(), verify=True, base_model=hub.base_model)
        except HubError as e:
            if not hub.dry_run:
                raise
            return self._offline(ctx, e)
        _warn(ctx, self, plan.warnings)
        if plan.refused:
            raise StepFailed(plan.refusal_message())
        if hub.dry_run:
            ctx.emit(self.id, f"dry run: would send {', '.join(f.path_in_repo for f in plan.to_send) or 'nothing'}")
            return Outcome(f"would send {len(plan.to_send)} file(s), {plan.bytes_to_send / 1e6:.1f} MB",
                           record=False)
        ctx.emit(self.id, f"pushing {len(plan.to_send)} file(s) to {hub.repo}")
        res = execute_push(plan, api=api)
        verified = self._verify_remote(ctx, plan) if hub.verify_remote else []
        return Outcome(f"commit {res.commit_oid or '(nothing new)'}" + (
            f"; llama-server -hf drafts with {', '.join(verified)}" if verified else ""), (),
                       {"commit": res.commit_oid, "url": res.commit_url or res.pr_url, "sent": list(res.sent),
                        **({"verify_remote": verified} if hub.verify_remote else {})})

    def _verify_remote(self, ctx: Context, plan: Any) -> list[str]:
        """Load every changed :TAG from the Hub with the real llama-server -hf and check it."""
        checks = verify_remote(plan.repo_id, plan.verify_tags(), server=resolve_server(ctx.llama_cpp),
                               endpoint=plan.endpoint)
        bad = [f"{c.tag}: {'; '.join(c.result.reasons) or c.result.verdict}" for c in checks if not c.passed]
        if bad:
            raise StepFailed("the published repo does not pass its check from the Hub: " + "; ".join(bad))
        return [f":{c.tag} ({c.resolution.mtp or 'in-file MTP'}, acceptance {c.result.acceptance:.2f})"
                for c in checks]

    def _offline(self, ctx: Context, why: Exception) -> Outcome:
        """A dry run where the Hub cannot be reached: apply the gate locally and say so."""
        gate = check_gate([QuantizeStep(self.r).out_dir()], report_dirs=self._reports())
        if gate.refusals:
            raise StepFailed("refusing to push: " + "; ".join(map(str, gate.refusals)))
        msg = f"would send {len(gate.files)} model file(s), {gate.bytes / 1e6:.1f} MB, and README.md to {self.s.repo}"
        ctx.emit(self.id, f"dry run without the Hub ({why}): {msg}")
        return Outcome(f"{msg} (Hub not consulted)", record=False)


def _warn(ctx: Context, step: Step, warnings: Any) -> None:
    for w in warnings:
        ctx.emit(step.id, f"warning: {w}")


def _tail(log: str | None, n: int = 12) -> str:
    try:
        return "\n".join(Path(log).read_text(errors="replace").splitlines()[-n:]) if log else ""
    except OSError:
        return ""
