"""A recipe's run: what it would do step by step (`plan_recipe`, for --dry-run), and running the
selected steps in this process or on a Ray cluster, after checking its work dir (`run_recipe`).

The table of steps and what each needs is recipe/graph.py; how one step runs (lock, key, skip if
recorded as finished, run, record) is recipe/step.py's `execute_step`, shared by both executors."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import RecipeError, Setting
from ..quantize import output_names
from .graph import (
    KINDS,
    PIPELINE,
    RULES,
    Schedule,
    StepKind,
    build_steps,
    needs,
    select_steps,
    step_ids,
)
from .ray_executor import require_ray, run_on_ray
from .schema import HubSection, Recipe
from .state import State
from .step import (
    RUN_FLAGS,
    Context,
    Event,
    Step,
    StepFailed,
    StepResult,
    execute_step,
    recipe_setting,
)
from .steps import QuantizeStep

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


# What recipe/graph.py and recipe/step.py define is importable from here, as before the split.
__all__ = [
    "KINDS", "PIPELINE", "RULES", "RUN_FLAGS", "Context", "Event", "RecipePlan", "RunResult", "Schedule", "Step",
    "StepFailed", "StepKind", "StepResult", "build_steps", "describe_state", "execute_step", "needs", "plan_recipe",
    "prepare_work_dir", "recipe_setting", "run_local", "run_recipe", "select_steps", "step_ids",
]
