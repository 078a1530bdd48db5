"""One object per pipeline stage. Each knows its key (settings + input hashes), what it would do
(`describe`, pure: for the plan), what it needs from a scheduler (`resources`) and how to `run`.

Steps read what earlier steps made from those steps' state records, never from memory, so a step
runs the same in this process, in another process on the same work dir, or as a cluster task."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import MtpgraftError, RecipeError
from .schema import HubSection, Recipe, Resources
from .state import State, content_key, hash_files

BUILTIN = "builtin:"
BUILTIN_CALIBRATION = {"calibration-tiny": "calibration-tiny.txt"}
_TINY_RE = re.compile(r"^tiny-(?P<arch>qwen35moe|qwen35)-(?P<variant>.+)$")
_GPU_FLAGS = ("-ngl", "--gpu-layers", "--n-gpu-layers")
Event = Callable[[str, str], None]  # (step id, message)


class StepFailed(MtpgraftError):
    """A step ran and did not produce a verified output (`log_tail`: the tool's last lines)."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


@dataclass
class Context:
    """What a step runs with: the recipe, its work dir's state, the tools, where events go."""

    recipe: Recipe
    llama_cpp: str | None = None
    emit: Event = field(default=lambda s, m: None)
    hub_api: Callable[[HubSection], Any] | None = None
    pin_threads: bool = False  # on a cluster: a quantize uses exactly the CPUs it reserved

    @property
    def state(self) -> State:
        return State(Path(self.recipe.work_dir))

    @property
    def work(self) -> Path:
        return Path(self.recipe.work_dir)

    def upstream(self, step: str, key: str) -> Path:
        """A path an earlier step recorded (the grafted model, the imatrix, a quant's first file)."""
        rec = self.state.get(step)
        if rec is None or rec.status != "done":
            raise RecipeError(f"{step} has not finished in {self.work}")
        return self.state.abs(rec.detail[key])

    def model(self) -> Path:
        return self.upstream("graft", "model")

    def imatrix(self) -> Path | None:
        return self.upstream("imatrix", "imatrix") if self.recipe.imatrix is not None else None


@dataclass(frozen=True)
class Outcome:
    message: str
    outputs: tuple[Path, ...] = ()  # hashed into the record
    detail: dict[str, Any] = field(default_factory=dict)
    record: bool = True  # a push dry run leaves no record: it has not published anything


class Step:
    kind = ""

    def __init__(self, recipe: Recipe, quant_type: str | None = None) -> None:
        self.r, self.type = recipe, quant_type
        self.id = f"{self.kind}:{quant_type}" if quant_type else self.kind

    def describe(self) -> str:
        raise NotImplementedError

    def key(self, ctx: Context) -> str:
        raise NotImplementedError

    def run(self, ctx: Context) -> Outcome:
        raise NotImplementedError

    def default_resources(self) -> Resources:
        return Resources(cpus=1.0, gpus=0.0)

    def resources(self) -> Resources:
        """What a cluster task for this step asks for: the recipe's [run] resources, else the default."""
        own, default = self.r.resources_for(self.kind), self.default_resources()
        return Resources(cpus=default.cpus if own.cpus is None else own.cpus,
                         gpus=default.gpus if own.gpus is None else own.gpus)


def _offloads(args: tuple[str, ...]) -> bool:
    """Whether llama.cpp args put layers on a GPU (-ngl N with N != 0)."""
    for i, a in enumerate(args):
        flag, _, val = a.partition("=")
        if flag in _GPU_FLAGS:
            val = val or (args[i + 1] if i + 1 < len(args) else "")
            return val.strip() not in ("0", "")
    return False


def _server_resources(args: tuple[str, ...], threads: int | None) -> Resources:
    """llama-imatrix / llama-server: a GPU when their args offload layers, else their threads in CPUs."""
    return Resources(cpus=1.0, gpus=1.0) if _offloads(args) else Resources(cpus=float(threads or 1), gpus=0.0)


# --------------------------------------------------------------------------- inputs


def resolve_builtin_model(spec: str, dest_dir: Path) -> Path:
    """`builtin:tiny-qwen35-base` (or -full, -full-mixed, ...): generate the tiny test model."""
    from ..testmodels import TEST_SET, build_tiny_model

    name = spec[len(BUILTIN):]
    m = _TINY_RE.match(name)
    variant = m["variant"] if m else ""
    variant = {"full": "full-aligned", "mtp-only": "mtp-only-aligned"}.get(variant, variant)
    if not m or variant not in TEST_SET:
        known = ", ".join(f"builtin:tiny-qwen35-{v}" for v in ("base", "full", *TEST_SET))
        raise RecipeError(f"unknown built-in model {spec!r} (known: {known}; qwen35moe likewise)")
    path = dest_dir / f"{name}.gguf"
    if not path.is_file():
        dest_dir.mkdir(parents=True, exist_ok=True)
        build_tiny_model(path, arch=m["arch"], dtype="f16", **TEST_SET[variant])  # type: ignore[arg-type]
    return path


def resolve_calibration(recipe: Recipe, spec: str) -> Path:
    if spec.startswith(BUILTIN):
        key = spec[len(BUILTIN):]
        if key not in BUILTIN_CALIBRATION:
            raise RecipeError(f"unknown built-in calibration {spec!r} (known: "
                              f"{', '.join(BUILTIN + k for k in BUILTIN_CALIBRATION)})")
        from importlib import resources

        p = Path(str(resources.files("mtpgraft") / "data" / BUILTIN_CALIBRATION[key]))
        if not p.is_file():
            raise RecipeError(f"{spec}: {p} is missing from the mtpgraft installation")
        return p
    p = recipe.input_path(spec)
    if not p.is_file():
        raise RecipeError(f"[imatrix] calibration: {p} not found")
    return p


def _model_files(p: Path) -> list[Path]:
    from ..gguf_io import GGUFModel

    return GGUFModel(p).paths


def _named_hashes(files: list[Path]) -> dict[str, str]:
    return {Path(k).name: v for k, v in hash_files(files).items()}


# --------------------------------------------------------------------------- the stages


class GraftStep(Step):
    kind = "graft"

    def _input(self, ctx: Context, spec: str, what: str) -> Path:
        if spec.startswith(BUILTIN):
            return resolve_builtin_model(spec, ctx.work / "sources")
        p = self.r.input_path(spec)
        if not p.is_file():
            raise RecipeError(f"[model] {what}: {p} not found")
        return p

    def _inputs(self, ctx: Context) -> tuple[Path, Path | None]:
        m = self.r.model
        return self._input(ctx, m.base, "base"), self._input(ctx, m.mtp_from, "mtp_from") if m.mtp_from else None

    def describe(self) -> str:
        m = self.r.model
        if not m.mtp_from:
            return f"use {m.base} as it is (it must hold an MTP block)"
        return (f"attach the MTP block of {m.mtp_from} to {m.base} -> {self.r.name}.gguf"
                f" (MTP type {m.graft_mtp_type or 'the base float type'})")

    def key(self, ctx: Context) -> str:
        base, src = self._inputs(ctx)
        m = self.r.model
        return content_key(self.id, {"mtp_from": bool(src), "graft_mtp_type": m.graft_mtp_type,
                                     "replace": m.replace_mtp},
                           _named_hashes(_model_files(base) + (_model_files(src) if src else [])))

    def run(self, ctx: Context) -> Outcome:
        from ..graft import apply_plan, plan_attach
        from ..inspection import inspect_model

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
        plan = plan_attach(base, src, ctx.work / f"{self.r.name}.gguf", mtp_type=self.r.model.graft_mtp_type,
                           replace=self.r.model.replace_mtp, force=True, llama_cpp=ctx.llama_cpp)
        for w in plan.warnings:
            ctx.emit(self.id, f"warning: {w}")
        ctx.emit(self.id, f"attaching the MTP block of {src.name} to {base.name}")
        written = apply_plan(plan)
        rep = inspect_model(written[0])
        if not rep.consistent or not rep.mtp_present:
            raise StepFailed(f"the grafted model fails inspection: {'; '.join(rep.problems)}")
        return Outcome(f"grafted, MTP type {plan.mtp_type}", tuple(written),
                       {"model": ctx.state.rel(written[0]), "grafted": True, "mtp_type": plan.mtp_type})


class ImatrixStep(Step):
    kind = "imatrix"

    def _out(self, ctx: Context) -> Path:
        return ctx.work / f"{self.r.name}.imatrix.gguf"

    def describe(self) -> str:
        s = self.r.imatrix
        assert s is not None
        if s.file:
            return f"use the given imatrix {s.file}"
        return (f"llama-imatrix on the grafted model with {s.calibration} (ctx {s.ctx or 'default'}, "
                f"chunks {s.chunks or 'all'}) -> {self.r.name}.imatrix.gguf")

    def default_resources(self) -> Resources:
        s = self.r.imatrix
        assert s is not None
        return _server_resources(s.extra_args, s.threads)

    def key(self, ctx: Context) -> str:
        s = self.r.imatrix
        assert s is not None
        if s.file:
            given = self._given()
            return content_key(self.id, {"file": True}, {given.name: hash_files([given])[str(given)]})
        assert s.calibration is not None
        model, cal = ctx.model(), resolve_calibration(self.r, s.calibration)
        h = hash_files([model, cal])
        return content_key(self.id, {"ctx": s.ctx, "chunks": s.chunks, "batch": s.batch,
                                     "extra": list(s.extra_args)},
                           {"model": h[str(model)], "calibration": h[str(cal)]})

    def _given(self) -> Path:
        assert self.r.imatrix is not None and self.r.imatrix.file
        given = self.r.input_path(self.r.imatrix.file)
        if not given.is_file():
            raise RecipeError(f"[imatrix] file: {given} not found")
        return given

    def run(self, ctx: Context) -> Outcome:
        from ..imatrix import plan_imatrix, read_imatrix, run_imatrix

        s = self.r.imatrix
        assert s is not None
        if s.file:
            given = self._given()
            info = read_imatrix(given)
            return Outcome(f"given: {given.name} ({info.entries} entries)", (given,),
                           {"imatrix": ctx.state.rel(given), "given": True})
        assert s.calibration is not None
        model, cal, out = ctx.model(), resolve_calibration(self.r, s.calibration), self._out(ctx)
        plan = plan_imatrix(model, cal, out, ctx=s.ctx, chunks=s.chunks, batch=s.batch, threads=s.threads,
                            extra_args=s.extra_args, force=True, llama_cpp=ctx.llama_cpp)
        ctx.emit(self.id, f"llama-imatrix on {model.name} with {cal.name}")
        logs = ctx.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        res = run_imatrix(plan, log_path=logs / "imatrix.log")
        return Outcome(f"{res.info.entries} entries, {res.info.chunk_count} chunks", (out,),
                       {"imatrix": ctx.state.rel(out), "entries": res.info.entries,
                        "chunks": res.info.chunk_count, "calibration": cal.name,
                        "calibration_sha256": plan.calibration_sha256})


class QuantizeStep(Step):
    kind = "quantize"

    def _policy(self) -> str:
        from ..quantize import mtp_policy_for

        return mtp_policy_for(self.r.quantize.mtp_policy(), self.type or "")

    def out_dir(self) -> Path:
        return State(Path(self.r.work_dir)).abs(self.r.quantize.out_dir)

    def describe(self) -> str:
        from ..quantize import output_names

        q = self.r.quantize
        single, _ = output_names(q.out_dir, self.r.name, self.type or "")
        return (f"llama-quantize {self.type}, MTP type {self._policy()} -> {single}"
                + (f" (split above {q.split_max_size})" if q.split_max_size else ""))

    def default_resources(self) -> Resources:
        return Resources(cpus=float(self.r.quantize.threads or 1), gpus=0.0)

    def key(self, ctx: Context) -> str:
        q = self.r.quantize
        model, imatrix = ctx.model(), ctx.imatrix()
        h = hash_files([model] + ([imatrix] if imatrix else []))
        inputs = {"model": h[str(model)]} | ({"imatrix": h[str(imatrix)]} if imatrix else {})
        return content_key(self.id, {"type": self.type, "mtp_type": self._policy(),
                                     "split_max_size": q.split_max_size, "name": self.r.name,
                                     "out_dir": q.out_dir, "allow_requantize": q.allow_requantize}, inputs)

    def run(self, ctx: Context) -> Outcome:
        from ..quantize import plan_quantize, run_quantize

        q = self.r.quantize
        threads = q.threads or (max(1, int(self.resources().cpus or 1)) if ctx.pin_threads else None)
        plan = plan_quantize(ctx.model(), [self.type or ""], out_dir=self.out_dir(), name=self.r.name,
                             imatrix=ctx.imatrix(), mtp_type=q.mtp_policy(), split_max_size=q.split_max_size,
                             allow_requantize=q.allow_requantize, jobs=q.jobs, threads=threads, force=True,
                             llama_cpp=ctx.llama_cpp)
        for w in plan.warnings:
            ctx.emit(self.id, f"warning: {w}")
        res = run_quantize(plan, on_event=lambda t, m: ctx.emit(self.id, m), log_dir=ctx.work / "logs")
        o = res.outputs[0]
        if not o.ok or o.path is None:
            raise StepFailed(o.reason, log_tail=_tail(o.log))
        return Outcome(f"{o.bytes / 1e6:.1f} MB", tuple(Path(f) for f in o.files),
                       {"path": ctx.state.rel(o.path), "bytes": o.bytes, "split": o.split,
                        "mtp_types": dict(o.mtp_types)})


class CheckStep(Step):
    """Every checked type in one `mtpgraft check` plan: one report across all quants."""

    kind = "check"

    def _report_dir(self) -> Path:
        return Path(self.r.work_dir) / "checks"

    def _prompts(self) -> Path | None:
        spec = self.r.check
        return self.r.input_path(spec.prompts) if spec is not None and spec.prompts else None

    def describe(self) -> str:
        spec = self.r.check
        assert spec is not None
        return (f"llama-server check of the {', '.join(self.r.check_types())} outputs with and "
                f"without MTP, one plan (n_max {list(spec.n_max)}, min acceptance "
                f"{spec.min_acceptance}) -> checks/report.json")

    def default_resources(self) -> Resources:
        assert self.r.check is not None
        return _server_resources(self.r.check.server_args, None)

    def _outputs(self, ctx: Context) -> list[Path]:
        return [ctx.upstream(f"quantize:{t}", "path") for t in self.r.check_types()]

    def key(self, ctx: Context) -> str:
        spec = self.r.check
        assert spec is not None
        prompts = self._prompts()
        files = [f for out in self._outputs(ctx) for f in _model_files(out)] + ([prompts] if prompts else [])
        params = {k: v for k, v in asdict(spec).items() if k not in ("enabled", "types")}
        return content_key(self.id, params, _named_hashes(files))

    def plan_for(self, ctx: Context, models: list[Path]) -> Any:
        """The recipe's check settings for these models (the quality step checks its reference alike)."""
        from ..check import plan_check, resolve_server

        spec = self.r.check
        assert spec is not None
        return plan_check(models, n_max=spec.n_max, temperatures=spec.temperatures,
                          reps=spec.reps, seed=spec.seed, prompts=self._prompts(),
                          categories=spec.categories, per_category=spec.per_category,
                          n_predict=spec.n_predict, ctx_size=spec.ctx, server_args=spec.server_args,
                          min_acceptance=spec.min_acceptance, min_speedup=spec.min_speedup,
                          mode=spec.mode, reasoning=spec.reasoning, context_depth=spec.context_depth,
                          p_min=spec.p_min or (None,), server=resolve_server(ctx.llama_cpp))

    def run(self, ctx: Context) -> Outcome:
        from ..check import run_check
        from ..check.report import write_report

        spec = self.r.check
        assert spec is not None
        report_dir = self._report_dir()
        plan = self.plan_for(ctx, self._outputs(ctx))
        ctx.emit(self.id, f"{plan.n_servers} llama-server runs, {plan.n_requests} requests")
        result = run_check(plan, log_dir=report_dir / "logs", events=lambda m: ctx.emit(self.id, m))
        files = write_report(result, report_dir)
        acc = result.acceptance
        summary = f"verdict {result.verdict}" + (f", acceptance {acc:.3f}" if acc is not None else "")
        if not result.passed:
            raise StepFailed(f"{summary}: {'; '.join(result.reasons)}")
        ctx.emit(self.id, f"done: {summary} ({ctx.state.rel(files.json)})")
        by_type = {t: {"verdict": m.verdict, "acceptance": m.acceptance}
                   for t, m in zip(self.r.check_types(), result.models, strict=True)}
        return Outcome(summary, (Path(files.json),), {"verdict": result.verdict, "acceptance": acc,
                                                      "report": ctx.state.rel(files.json),
                                                      "types": by_type})


class QualityStep(Step):
    """KL divergence per quant against the graft output (llama-perplexity), and, with a [check],
    acceptance retention: the reference is checked with the same settings as the quants."""

    kind = "quality"

    def out_dir(self) -> Path:
        # beside the check report, where the card finds quality.json; its own folder without a check
        return CheckStep(self.r)._report_dir() if self.r.check_types() else Path(self.r.work_dir) / "quality"

    def _text(self) -> Path | None:
        q = self.r.quality
        return self.r.input_path(q.text) if q is not None and q.text else None

    def describe(self) -> str:
        q = self.r.quality
        assert q is not None
        return (f"llama-perplexity KL divergence of {', '.join(self.r.quality_types())} against the graft "
                f"output (ctx {q.ctx}{f', {q.chunks} chunks' if q.chunks else ''})"
                + (", acceptance retention from a check of the reference" if self.r.check_types() else ""))

    def _outputs(self, ctx: Context) -> list[Path]:
        return [ctx.upstream(f"quantize:{t}", "path") for t in self.r.quality_types()]

    def key(self, ctx: Context) -> str:
        q = self.r.quality
        assert q is not None
        text = self._text()
        files = [ctx.model()] + [f for out in self._outputs(ctx) for f in _model_files(out)] + ([text] if text else [])
        params = asdict(q) | {"check": asdict(self.r.check) if self.r.check_types() else None}
        return content_key(self.id, params, _named_hashes(files))

    def run(self, ctx: Context) -> Outcome:
        from ..quality import acceptance_retention, plan_quality, run_quality, write_report

        q = self.r.quality
        assert q is not None
        ref, quants = ctx.model(), self._outputs(ctx)
        plan = plan_quality(ref, [str(p) for p in quants], text=self._text(), ctx_size=q.ctx, chunks=q.chunks,
                            extra_args=q.perplexity_args, llama_cpp=ctx.llama_cpp)
        out = self.out_dir()
        result = run_quality(plan, log_dir=out / "quality-logs", emit=lambda m: ctx.emit(self.id, m))
        if self.r.check_types():
            ref_report = self._check_reference(ctx, ref, out / "reference")
            result = replace(result, retention=acceptance_retention(
                [out / "report.json", ref_report], str(ref), [str(p) for p in quants]))
        js, _ = write_report(result, out, md_name="quality.md")
        worst = max(m.figures["kld"].value for m in result.models)
        return Outcome(f"max mean KLD {worst:g} over {len(result.models)} quant(s)", (js,),
                       {"report": ctx.state.rel(js), "logits": plan.logits,
                        "kld": {m.name: m.figures["kld"].text for m in result.models}})

    def _check_reference(self, ctx: Context, ref: Path, d: Path) -> Path:
        from ..check import run_check
        from ..check.report import write_report

        check = CheckStep(self.r)
        plan = check.plan_for(ctx, [ref])
        ctx.emit(self.id, f"checking the reference {ref.name} with the check step's settings")
        files = write_report(run_check(plan, log_dir=d / "logs", events=lambda m: ctx.emit(self.id, m)), d)
        return Path(files.json)


class PushStep(Step):
    kind = "push"

    def _reports(self) -> list[Path]:
        return [CheckStep(self.r)._report_dir()] if self.r.check_types() else []

    def _files(self) -> list[Path]:
        out_dir = QuantizeStep(self.r).out_dir()
        return [p for p in sorted(out_dir.rglob("*.gguf"))
                if not any(part.startswith(".") for part in p.relative_to(out_dir).parts)]

    def describe(self) -> str:
        hub = self.r.hub
        assert hub is not None
        return f"push {self.r.quantize.out_dir} to {hub.repo}" + (" ([hub] dry_run: plan only)" if hub.dry_run else "")

    def key(self, ctx: Context) -> str:
        assert self.r.hub is not None
        files = self._files() + [d / n for d in self._reports() for n in ("report.json", "quality.json")
                                 if (d / n).is_file() or n == "report.json"]
        return content_key(self.id, asdict(self.r.hub), {ctx.state.rel(k): v for k, v in hash_files(files).items()})

    def run(self, ctx: Context) -> Outcome:
        from ..errors import HubError
        from ..hub import execute_push, make_api, plan_push

        hub = self.r.hub
        assert hub is not None
        out_dir = QuantizeStep(self.r).out_dir()
        try:
            api = ctx.hub_api(hub) if ctx.hub_api is not None else make_api(endpoint=hub.endpoint)
            plan = plan_push([out_dir], repo_id=hub.repo, api=api, revision=hub.revision,
                             create_pr=hub.create_pr, private=hub.private, report_dirs=self._reports(),
                             verify=True, base_model=hub.base_model)
        except HubError as e:
            if not hub.dry_run:
                raise
            return self._offline(ctx, e)
        for w in plan.warnings:
            ctx.emit(self.id, f"warning: {w}")
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
        from ..check import resolve_server
        from ..hub.remote import verify_remote

        checks = verify_remote(plan.repo_id, plan.verify_tags(), server=resolve_server(ctx.llama_cpp),
                               endpoint=plan.endpoint)
        bad = [f"{c.tag}: {'; '.join(c.result.reasons) or c.result.verdict}" for c in checks if not c.passed]
        if bad:
            raise StepFailed("the published repo does not pass its check from the Hub: " + "; ".join(bad))
        return [f":{c.tag} ({c.resolution.mtp or 'in-file MTP'}, acceptance {c.result.acceptance:.2f})"
                for c in checks]

    def _offline(self, ctx: Context, why: Exception) -> Outcome:
        """A dry run where the Hub cannot be reached: apply the gate locally and say so."""
        from ..hub import check_gate

        assert self.r.hub is not None
        gate = check_gate([QuantizeStep(self.r).out_dir()], report_dirs=self._reports())
        if gate.refusals:
            raise StepFailed("refusing to push: " + "; ".join(map(str, gate.refusals)))
        msg = (f"would send {len(gate.files)} model file(s), {gate.bytes / 1e6:.1f} MB, and README.md "
               f"to {self.r.hub.repo}")
        ctx.emit(self.id, f"dry run without the Hub ({why}): {msg}")
        return Outcome(f"{msg} (Hub not consulted)", record=False)


def _tail(log: str | None, n: int = 12) -> str:
    if not log:
        return ""
    try:
        return "\n".join(Path(log).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
