"""`run`: a recipe's whole pipeline, resumable, in this process or on a Ray cluster."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError, VerdictFailedError
from .common import emit_dry_run, emit_json, error_boundary, info
from .options import dry_run_option, force_option, standard_options


@click.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--only", multiple=True, metavar="STEP|TYPE",
              help="Run only these steps (graft, imatrix, quantize, check, push, a type such as Q4_K_M, or "
                   "quantize:Q4_K_M) and what they need; comma-separated or repeated.")
@click.option("--resume", is_flag=True, help="Continue a previous run: skip steps recorded as finished "
                                             "whose inputs have not changed.")
@force_option("Start over: forget the recorded steps and redo them all, replacing their outputs.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Override the recipe's [run] work_dir.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where steps run: this process, or tasks on a Ray cluster (pip install 'mtpgraft[ray]').")
@click.option("--address", default=None, metavar="HOST:PORT",
              help="The Ray cluster to join (--executor ray; default: $RAY_ADDRESS, else a new local one).")
@dry_run_option("Print the plan (each step, what it needs, what it asks a cluster for) and write nothing.")
@click.option("--status", "show_status", is_flag=True, help="Print what the work dir records per step and stop.")
@standard_options(llama_cpp=True)
@error_boundary
def run_cmd(recipe: Path, only: tuple[str, ...], resume: bool, force: bool, work_dir: Path | None,
            executor: str, address: str | None, dry_run: bool, show_status: bool, llama_cpp: str | None,
            as_json: bool) -> None:
    """Run a recipe: graft -> imatrix -> quantize -> check -> push, resumable.

    Finished steps are recorded in the work dir with the sha256 of their inputs and outputs; --resume
    skips them, so an interrupted run continues where it stopped and separate processes can run
    separate types (`--only Q4_K_M`, `--only Q8_0`) on one work dir. With --executor ray the steps
    are Ray tasks over a work dir every node sees. Exit code 1 when a step failed."""
    from ..recipe import describe_state, load_recipe, plan_recipe, run_recipe

    if address is not None and executor != "ray":
        raise UsageError("--address is the Ray cluster to run on: it needs --executor ray")
    r = load_recipe(recipe, work_dir=work_dir)
    if show_status:
        _show_status(r, describe_state(r), as_json=as_json)
        return
    if dry_run:
        plan = plan_recipe(r, only=list(only) or None)
        emit_dry_run(plan, plan.describe(), as_json)
        return
    res = run_recipe(r, only=list(only) or None, resume=resume, force=force,
                     on_event=lambda s, m: info(f"[{s}] {m}"), llama_cpp=llama_cpp, executor=executor,
                     address=address)
    if as_json:
        emit_json(res.to_dict())
    else:
        _show_steps(r, res)
    if not res.ok:
        bad = res.failed
        raise VerdictFailedError(f"{len(bad)} step(s) did not finish: "
                          + "; ".join(f"{s.step}: {s.message.splitlines()[0] if s.message else s.status}"
                                      for s in bad))
    if not as_json:
        info(f"done in {res.wall_s:.1f}s")
    sys.stdout.flush()


def _show_status(r: Any, rows: list[tuple[str, str]], *, as_json: bool) -> None:
    """--status: what the work dir records for each step."""
    if as_json:
        emit_json({"work_dir": r.work_dir, "steps": dict(rows)})
        return
    click.echo(f"work dir: {r.work_dir}")
    for s, st in rows:
        click.echo(f"  {s:<20} {st}")


def _show_steps(r: Any, res: Any) -> None:
    """One line per step (status and message; a message's further lines indented below it)."""
    click.echo(f"{r.name}: {r.path} (work dir {r.work_dir})")
    for s in res.steps:
        lines = s.message.splitlines() or [""]
        click.echo(f"  {s.step:<20} {s.status:<16} {lines[0]}")
        for extra in lines[1:]:
            click.echo(f"  {'':<20} {'':<16} {extra}")
