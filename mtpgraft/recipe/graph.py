"""The pipeline as a table: each kind of step, its Step class and what it needs; which steps a run
selects, and which of them can start as others finish.

    graft -> imatrix -> quantize:TYPE -> check (every type, one plan, one report) -> quality -> push

A new step is one entry in RULES (its Step class and its needs) and its kind in schema.STEP_KINDS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import RecipeError, Setting
from ..ggml_types import FILE_TYPE_ALIASES as ALIASES
from .schema import STEP_KINDS, Recipe
from .step import Step, StepResult
from .steps import CheckStep, GraftStep, ImatrixStep, PushStep, QualityStep, QuantizeStep


@dataclass(frozen=True)
class StepKind:
    step: type[Step]
    needs: tuple[str, ...]  # "graft": that step; "quantize:{type}": the same type's; "quantize:*": every one

    @property
    def name(self) -> str:
        return self.step.kind


RULES = {k.name: k for k in (
    StepKind(GraftStep, ()),
    StepKind(ImatrixStep, ("graft",)),
    StepKind(QuantizeStep, ("graft", "imatrix")),
    # One check over every checked type: one plan, servers one after another (parallel checks
    # would measure each other's load), one report with the quant x task matrix.
    StepKind(CheckStep, ("quantize:*",)),
    # After the check: its quality.json goes beside the check report (the card reads both) and the
    # reference is checked with the same settings for acceptance retention.
    StepKind(QualityStep, ("graft", "quantize:*", "check")),
    StepKind(PushStep, ("quantize:*", "check", "quality")),
)}
PIPELINE: tuple[StepKind, ...] = tuple(RULES[name] for name in STEP_KINDS)  # schema's order
KINDS = {k.name: k for k in PIPELINE}


def build_steps(recipe: Recipe) -> dict[str, Step]:
    """Every step of the recipe by id, in pipeline order (Recipe.steps: which ones it has)."""
    out: dict[str, Step] = {}
    for sid in recipe.steps():
        kind, _, quant_type = sid.partition(":")
        out[sid] = KINDS[kind].step(recipe, quant_type or None)
    return out


def step_ids(recipe: Recipe) -> tuple[str, ...]:
    return recipe.steps()


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
        return ALIASES.get(t.upper(), t.upper())

    if word.lower() in KINDS:
        return [s for s in ids if s.partition(":")[0] == word.lower()]
    if ":" in word:
        kind, _, t = word.partition(":")
        return [s for s in ids if s == f"{kind.lower()}:{canon(t)}"]
    return [s for s in ids if s.endswith(":" + canon(word))]


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
