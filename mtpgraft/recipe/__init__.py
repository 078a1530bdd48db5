"""Recipes: a quantizer's whole job for one model in a TOML file, run as a resumable pipeline.

    recipe = load_recipe("recipes/qwen3.6-27b.toml")
    print(plan_recipe(recipe).describe())          # what would run (--dry-run)
    result = run_recipe(recipe, resume=True, on_event=print_step)

The package reads as the pipeline: `schema` parses the file (and says which steps it has), `state`
records what finished (keyed by the sha256 of settings and inputs), `step` is what a step is and how
one runs (lock, key, skip, run, record), `steps` holds one Step class per stage, `graph` the table of
what needs what, `pipeline` the plan and the run; `ray_executor` runs the same steps on a Ray cluster.

The file format, every key with an example: recipes/README.md.
"""

from .pipeline import (
    PIPELINE,
    RecipePlan,
    RunResult,
    StepResult,
    describe_state,
    plan_recipe,
    run_recipe,
    select_steps,
)
from .schema import Recipe, load_recipe, parse_recipe
from .state import State, StepRecord
from .steps import resolve_builtin_model, resolve_calibration

__all__ = ["PIPELINE", "Recipe", "RecipePlan", "RunResult", "State", "StepRecord", "StepResult",
           "describe_state", "load_recipe", "parse_recipe", "plan_recipe", "resolve_builtin_model",
           "resolve_calibration", "run_recipe", "select_steps"]
