"""The pipeline as a table of step kinds and what each needs, and the loop that runs it.

    graft -> imatrix -> quantize:TYPE -> check (every type, one plan, one report) -> push

A new step is one entry in PIPELINE (its Step class and its needs). Executors (this process, or a
Ray cluster) share `execute_step`: lock, key, skip if recorded as finished, run, record."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import MtpgraftError, RecipeError, Setting, spelled
from ..ggml_types import FILE_TYPE_ALIASES
from ..quantize import output_names
from .schema import STEP_KINDS, HubSection, Recipe
from .state import State, now_iso
from .steps import (
    CheckStep,
    Context,
    Event,
    GraftStep,
    ImatrixStep,
    PushStep,
    QualityStep,
    QuantizeStep,
    Step,
    StepFailed,
)


@dataclass(frozen=True)
class StepKind:
    step: type[Step]
    needs: tuple[str, ...]  # "graft": that step; "quantize:{type}": the same type's; "quantize:*": every one
    types: Callable[[Recipe], tuple[str, ...]] | None = None  # a step per type: which types
    present: Callable[[Recipe], bool] = lambda r: True

    @property
    def name(self) -> str:
        return self.step.kind


_RULES = {k.name: k for k in (
    StepKind(GraftStep, ()),
    StepKind(ImatrixStep, ("graft",), present=lambda r: r.imatrix is not None),
    StepKind(QuantizeStep, ("graft", "imatrix"), types=lambda r: r.quantize.types),
    # One check over every checked type: one plan, servers one after another (parallel checks
    # would measure each other's load), one report with the quant x task matrix.
    StepKind(CheckStep, ("quantize:*",), present=lambda r: bool(r.check_types())),
    # After the check: its quality.json goes beside the check report (the card reads both) and the
    # reference is checked with the same settings for acceptance retention.
    StepKind(QualityStep, ("graft", "quantize:*", "check"), present=lambda r: bool(r.quality_types())),
    StepKind(PushStep, ("quantize:*", "check", "quality"), present=lambda r: r.hub is not None),
)}
PIPELINE: tuple[StepKind, ...] = tuple(_RULES[name] for name in STEP_KINDS)  # schema's order
KINDS = {k.name: k for k in PIPELINE}


def build_steps(recipe: Recipe) -> dict[str, Step]:
    """Every step of the recipe by id, in pipeline order."""
    out: dict[str, Step] = {}
    for k in PIPELINE:
        if k.types is not None:
            out.update((s.id, s) for s in (k.step(recipe, t) for t in k.types(recipe)))
        elif k.present(recipe):
            s = k.step(recipe)
            out[s.id] = s
    return out


def step_ids(recipe: Recipe) -> tuple[str, ...]:
    return tuple(build_steps(recipe))


def needs(recipe: Recipe, step_id: str, all_ids: Sequence[str] | None = None) -> tuple[str, ...]:
    """The steps `step_id` directly needs (those the recipe has)."""
    ids = all_ids if all_ids is not None else step_ids(recipe)
    kind, _, t = step_id.partition(":")
    out: list[str] = []
    for n in KINDS[kind].needs:
        if n.endswith(":*"):
            out += [s for s in ids if s.startswith(n[:-1])]
        elif n.format(type=t) in ids:
            out.append(n.format(type=t))
    return tuple(out)


def select_steps(recipe: Recipe, only: Sequence[str] | None) -> tuple[str, ...]:
    """The steps `only` names, plus every step they depend on, in pipeline order."""
    ids = step_ids(recipe)
    if not only:
        return ids
    wanted: set[str] = set()
    for w in (w.strip() for o in only for w in o.split(",") if w.strip()):
        hits = _match(w, ids)
        if not hits:
            raise RecipeError(Setting("only"), f" {w}: not a step of this recipe (steps: {', '.join(ids)}; "
                              f"or a type: {', '.join(recipe.quantize.types)})")
        wanted.update(hits)
    todo = list(wanted)
    while todo:
        for n in needs(recipe, todo.pop(), ids):
            if n not in wanted:
                wanted.add(n)
                todo.append(n)
    return tuple(s for s in ids if s in wanted)


def _match(word: str, ids: Sequence[str]) -> list[str]:
    def canon(t: str) -> str:
        return FILE_TYPE_ALIASES.get(t.upper(), t.upper())

    if word.lower() in KINDS:
        return [s for s in ids if s.partition(":")[0] == word.lower()]
    if ":" in word:
        kind, _, t = word.partition(":")
        return [s for s in ids if s == f"{kind.lower()}:{canon(t)}"]
    return [s for s in ids if s.endswith(":" + canon(word))]


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlannedStep:
    step: str
    needs: tuple[str, ...]
    action: str
    cpus: float
    gpus: float
    recorded: str | None  # what the work dir records for it now, e.g. "done 2026-12-01T10:02:11+00:00"


@dataclass(frozen=True)
class RecipePlan:
    recipe: str
    name: str
    work_dir: str
    steps: tuple[PlannedStep, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        lines = [f"{self.name}: {self.recipe} (work dir {self.work_dir}) -- dry-run, nothing is written"]
        for s in self.steps:
            after = f" (after {', '.join(s.needs)})" if s.needs else ""
            rec = f" [recorded: {s.recorded}]" if s.recorded else ""
            lines.append(f"  {s.step:<20} {s.action}{after}{rec}")
        return "\n".join(lines)


def plan_recipe(recipe: Recipe, *, only: Sequence[str] | None = None) -> RecipePlan:
    """What `run` would do, step by step. Reads only the recipe and the state records."""
    steps = build_steps(recipe)
    selected = select_steps(recipe, only)
    st = State(Path(recipe.work_dir))
    planned = []
    for sid in selected:
        res, rec = steps[sid].resources(), st.get(sid)
        planned.append(PlannedStep(sid, needs(recipe, sid), steps[sid].describe(), res.cpus or 0.0,
                                   res.gpus or 0.0, f"{rec.status} {rec.finished}" if rec else None))
    return RecipePlan(recipe.path, recipe.name, recipe.work_dir, tuple(planned))


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StepResult:
    step: str
    status: str  # "done", "finished-before", "failed", "dry-run", "blocked"
    seconds: float = 0.0
    message: str = ""
    outputs: tuple[str, ...] = ()
    log_tail: str = ""
    where: str = ""  # the node that ran it (cluster runs)
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status in ("done", "finished-before", "dry-run")


@dataclass(frozen=True)
class RunResult:
    recipe: str
    work_dir: str
    steps: tuple[StepResult, ...]
    wall_s: float
    executor: str = "local"

    @property
    def failed(self) -> tuple[StepResult, ...]:
        return tuple(s for s in self.steps if not s.ok)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "work_dir": self.work_dir, "ok": self.ok, "executor": self.executor,
                "wall_s": round(self.wall_s, 3), "steps": [asdict(s) for s in self.steps],
                "mtpgraft_version": __version__}


# --------------------------------------------------------------------------- running


def execute_step(ctx: Context, step: Step) -> StepResult:
    """Run one step under its lock, unless its record says it is finished with the same key."""
    st, sid = ctx.state, step.id
    with st.lock(sid, lambda: ctx.emit(sid, "waiting: another process is running this step")):
        t0, started = time.perf_counter(), now_iso("microseconds")
        key = ""
        try:
            key = step.key(ctx)
            rec = st.finished(sid, key)
            if rec is not None:
                ctx.emit(sid, "finished before (recorded; inputs unchanged)")
                return StepResult(sid, "finished-before", 0.0, "recorded as finished", tuple(rec.outputs))
            out = step.run(ctx)
        except MtpgraftError as e:
            tail, msg = getattr(e, "log_tail", "") or getattr(e, "output_tail", ""), spelled(e, recipe_setting)
            if key:
                st.record(sid, key, started, time.perf_counter() - t0, [], {"error": msg, "log_tail": tail},
                          status="failed")
            ctx.emit(sid, f"FAILED: {msg}")
            return StepResult(sid, "failed", time.perf_counter() - t0, msg, log_tail=tail)
        if out.record:
            st.record(sid, key, started, time.perf_counter() - t0, out.outputs, out.detail)
        return StepResult(sid, "done" if out.record else "dry-run", time.perf_counter() - t0, out.message,
                          tuple(str(p) for p in out.outputs))


class Schedule:
    """Which selected steps can start: those whose needs all finished; a step whose need failed is
    blocked (and so, in turn, is what needs it)."""

    def __init__(self, recipe: Recipe, selected: Sequence[str]) -> None:
        self.steps = build_steps(recipe)
        self.needs = {s: needs(recipe, s) for s in selected}
        self.waiting = list(selected)
        self.results: dict[str, StepResult] = {}

    def ready(self) -> list[Step]:
        out = []
        for sid in list(self.waiting):
            bad = [n for n in self.needs[sid] if n in self.results and not self.results[n].ok]
            if bad:
                self.waiting.remove(sid)
                r = self.results[bad[0]]
                self.results[sid] = StepResult(sid, "blocked", 0.0, f"needs {bad[0]}, which "
                                               + ("failed" if r.status == "failed" else "is blocked")
                                               + (f": {r.message.splitlines()[0]}" if r.message else ""))
            elif all(n in self.results for n in self.needs[sid] if n in self.needs):
                out.append(self.steps[sid])
        return out

    def start(self, step: Step) -> None:
        self.waiting.remove(step.id)

    def finish(self, res: StepResult) -> None:
        self.results[res.step] = res

    def ordered(self) -> tuple[StepResult, ...]:
        """Every selected step's result, in pipeline order."""
        return tuple(self.results.get(s, StepResult(s, "blocked", 0.0, "not run")) for s in self.needs)


def run_local(ctx: Context, selected: Sequence[str]) -> tuple[StepResult, ...]:
    """In this process: one step at a time in pipeline order, or up to [quantize] jobs quantize
    steps at once (every other step runs alone)."""
    sched = Schedule(ctx.recipe, selected)
    jobs = ctx.recipe.quantize.jobs
    if jobs <= 1:
        while ready := sched.ready():
            sched.start(ready[0])
            sched.finish(execute_step(ctx, ready[0]))
        return sched.ordered()
    running: dict[Future[StepResult], Step] = {}
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="recipe") as pool:
        while True:
            for step in sched.ready():
                alone = step.kind != "quantize"
                if len(running) >= jobs or (running and (alone or any(
                        s.kind != "quantize" for s in running.values()))):
                    break
                sched.start(step)
                running[pool.submit(execute_step, ctx, step)] = step
            if not running:
                return sched.ordered()
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in done:
                running.pop(f)
                sched.finish(f.result())


RUN_FLAGS = ("force", "resume", "only", "executor")  # what `mtpgraft run` sets; the rest is recipe keys


def recipe_setting(s: Setting) -> str:
    """A stage's setting as a recipe user sets it: `run`'s flag (--force), else the key (jobs = 2)."""
    if s.name in RUN_FLAGS:
        return f"--{s.name}" + ("" if s.value in (None, True) else f" {s.value}")
    return s.name if s.value is None else f"{s.name} = {json.dumps(s.value)}"


def prepare_work_dir(recipe: Recipe, *, resume: bool, force: bool) -> None:
    """A work dir holding a previous run needs resume or force; a first run never overwrites quants
    it did not make."""
    st = State(Path(recipe.work_dir))
    previous = st.records()
    if previous and not (resume or force):
        raise RecipeError(f"{recipe.work_dir} holds a previous run of this pipeline ({len(previous)} "
                          "recorded step(s)); pass ", Setting("resume", True), " to continue it or ",
                          Setting("force", True), " to start over")
    if force:
        st.clear()
    Path(recipe.work_dir).mkdir(parents=True, exist_ok=True)
    if not previous and not force:
        out_dir = QuantizeStep(recipe).out_dir()
        for t in recipe.quantize.types:
            clash = [p for p in output_names(out_dir, recipe.name, t) if p.exists()]
            if clash:
                raise RecipeError(f"{clash[0]} exists and no run of this recipe is recorded in "
                                  f"{recipe.work_dir}; pass ", Setting("force", True), " to overwrite it")


def run_recipe(recipe: Recipe, *, only: Sequence[str] | None = None, resume: bool = False,
               force: bool = False, on_event: Event | None = None, llama_cpp: str | None = None,
               hub_api: Callable[[HubSection], Any] | None = None, executor: str = "local",
               address: str | None = None) -> RunResult:
    """Run the recipe's pipeline (or the steps `only` names, with what they depend on).

    A work dir with recorded steps needs `resume` (skip what is finished and still valid) or `force`
    (start over, overwriting outputs). Failed steps do not stop independent ones (other types); the
    result lists every step's outcome and `ok` is False when any failed or was blocked.
    `executor="ray"` runs the steps as tasks on a Ray cluster (`address`; default: a local one).
    `hub_api(hub_section)` builds the Hub client for the push (default: hub.make_api)."""
    t0 = time.perf_counter()
    if executor not in ("local", "ray"):
        raise RecipeError(f"unknown executor {executor!r} (local or ray)")
    selected = select_steps(recipe, only)
    if executor == "ray":
        from .ray_executor import require_ray, run_on_ray

        require_ray()  # before anything is written
    prepare_work_dir(recipe, resume=resume, force=force)
    ctx = Context(recipe, llama_cpp=llama_cpp or recipe.llama_cpp, emit=on_event or (lambda s, m: None),
                  hub_api=hub_api)
    steps = run_on_ray(ctx, selected, address=address) if executor == "ray" else run_local(ctx, selected)
    return RunResult(recipe=recipe.path, work_dir=recipe.work_dir, steps=steps,
                     wall_s=time.perf_counter() - t0, executor=executor)


def describe_state(recipe: Recipe) -> list[tuple[str, str]]:
    """(step, what the state records for it) for every step of the recipe."""
    return [(s.step, s.recorded or "not run") for s in plan_recipe(recipe).steps]


__all__ = ["PIPELINE", "StepFailed", "execute_step", "plan_recipe", "run_recipe", "select_steps"]
