"""`mtpgraft check`: acceptance and speed of MTP on the real llama-server, with a verdict."""

from __future__ import annotations

import shlex
import sys
from typing import Any

import click

from ..cli import (
    cli,
    emit_json,
    error_boundary,
    info,
    json_option,
    llama_cpp_option,
    progress_bar,
    show_progress,
    warn,
)
from ..errors import UsageError


def _split(values: tuple[str, ...] | str | None) -> list[str]:
    if not values:
        return []
    items = [values] if isinstance(values, str) else list(values)
    return [x.strip() for v in items for x in v.split(",") if x.strip()]


def _numbers(name: str, values: str, kind: type) -> list[Any]:
    try:
        return [kind(x) for x in _split(values)]
    except ValueError as e:
        raise UsageError(f"{name} takes comma-separated numbers, got {values!r}") from e


@cli.command("check")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--draft", type=click.Path(dir_okay=False), default=None,
              help="Separate MTP file passed with -md: an MTP-only sidecar or a gemma4 assistant.")
@click.option("--n-max", "n_max", default="1,2,3,4", show_default=True, metavar="N,...",
              help="Draft depths to try; one llama-server per value.")
@click.option("--temperature", default="0", show_default=True, metavar="T,...",
              help="Sampling temperatures; at 0 the output with MTP must equal the baseline's.")
@click.option("--reps", default=3, show_default=True, type=int,
              help="Repetitions with distinct seeds (seed, seed+1, ...) for mean and sd.")
@click.option("--seed", default=0, show_default=True, type=int, help="First seed.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="JSONL prompt file: one {\"category\": ..., \"prompt\": ...} per line "
                   "(default: the built-in suite).")
@click.option("--categories", multiple=True, metavar="CAT,...",
              help="Only these categories (code, factual, analysis, creative, or the file's).")
@click.option("--per-category", type=int, default=None, metavar="N",
              help="At most N prompts per category.")
@click.option("--n-predict", default=128, show_default=True, type=int, help="Tokens per request.")
@click.option("--ctx", "ctx_size", default=4096, show_default=True, type=int,
              help="llama-server context size.")
@click.option("--server-arg", "server_args", multiple=True, metavar="ARG",
              help="Extra llama-server arguments, e.g. --server-arg='-ngl 99' (repeatable).")
@click.option("--min-acceptance", default=0.3, show_default=True, type=float,
              help="Fail when the aggregate acceptance is below this.")
@click.option("--min-speedup", default=None, type=float,
              help="Also fail when the code category's speedup is below this (off by default: "
                   "speed depends on the hardware more than on the file).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write report.json, report.md, speedup.png and server logs into DIR.")
@click.option("--dry-run", is_flag=True, help="Print the plan (servers, requests) and stop.")
@llama_cpp_option
@json_option
@error_boundary
def check_cmd(models: tuple[str, ...], draft: str | None, n_max: str, temperature: str, reps: int,
              seed: int, prompts_file: str | None, categories: tuple[str, ...],
              per_category: int | None, n_predict: int, ctx_size: int,
              server_args: tuple[str, ...], min_acceptance: float, min_speedup: float | None,
              report_dir: str | None, dry_run: bool, llama_cpp: str | None, as_json: bool) -> None:
    """Measure MTP acceptance and speed of MODEL(s) on llama-server and give a verdict.

    MODEL is a GGUF with an MTP head (grafted or converted), or the first shard of a split set.
    Each model runs on one baseline llama-server and one MTP server per --n-max value; exit code
    1 when the verdict is fail. Several models give the quant-by-task matrix.
    """
    from ..check import plan_check, resolve_server, run_check
    from ..check.report import format_table, format_verdict, report_dict, write_report

    extra: list[str] = []
    for a in server_args:
        extra += shlex.split(a)
    plan = plan_check(
        models, draft=draft, n_max=_numbers("--n-max", n_max, int),
        temperatures=_numbers("--temperature", temperature, float), reps=reps, seed=seed,
        prompts=prompts_file, categories=_split(categories) or None, per_category=per_category,
        n_predict=n_predict, ctx_size=ctx_size, server_args=extra,
        min_acceptance=min_acceptance, min_speedup=min_speedup, server=resolve_server(llama_cpp))
    if dry_run:
        if as_json:
            emit_json(plan.to_dict())
        else:
            d = plan.to_dict()
            click.echo(f"{len(d['servers'])} llama-server runs, {d['n_requests']} requests "
                       f"({len(plan.prompts)} prompts x {reps} reps x "
                       f"{len(plan.temperatures)} temperatures per server):")
            for s in d["servers"]:
                click.echo(f"  {s}")
        return

    info(f"{plan.n_servers} llama-server runs, {plan.n_requests} requests "
         f"(MTP via --spec-type {plan.spec_type})")
    bar = progress_bar(plan.n_requests, unit="req") if show_progress() else None

    def progress(label: str, done: int) -> None:
        if bar is not None:
            if label:
                bar.set_description_str(label[-60:])
            bar.update(done)

    log_dir = f"{report_dir}/logs" if report_dir else None
    try:
        result = run_check(plan, log_dir=log_dir, progress=progress,
                           hash_files=bool(report_dir or as_json))
    finally:
        if bar is not None:
            bar.close()

    chart_name = None
    if report_dir:
        files = write_report(result, report_dir)
        chart_name = files.chart.name if files.chart else None
        info(f"wrote {files.json}, {files.markdown}" + (f", {files.chart}" if files.chart else ""))
        if files.chart_note and not files.chart:
            info(files.chart_note)
    for w in result.warnings:
        warn(w)
    for m in result.models:
        for run in m.servers:
            if run.error and run.log_tail:
                tail = "\n".join(f"  | {x}" for x in run.log_tail.splitlines()[-12:])
                info(f"{m.spec.name}: the end of the failed llama-server's log:\n{tail}")
    if as_json:
        emit_json(report_dict(result, chart_name))
        if not result.passed:
            click.echo(format_verdict(result), err=True)
    else:
        click.echo(format_table(result))
    if not result.passed:
        sys.exit(1)
