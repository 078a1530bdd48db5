"""`mtpgraft check`: acceptance and speed of MTP on the real llama-server, with a verdict."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from typing import Any

import click

from ..errors import UsageError, VerdictFailedError
from ..runtimes import LABELS, MAINLINE
from .common import emit_dry_run, emit_json, error_boundary, info, progress_bar, show_progress, warn
from .options import standard_options


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


def _csv(name: str, values: str | None, kind: type) -> list[Any] | None:
    return None if values is None else _numbers(name, values, kind)


def _settings(preset: str, given: dict[str, Any]) -> dict[str, Any]:
    """The preset's values, overridden by every option the user gave."""
    from ..check.plan import PRESETS

    return {**PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}


@click.command("check")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--quick", "preset", flag_value="quick",
              help="Small plan: n=3, 1 rep, 1 prompt per category, 64 tokens.")
@click.option("--thorough", "preset", flag_value="thorough",
              help="Large plan: n=1..4, p-min 0 and 0.75, depth 0 and 4096, 3 reps, every prompt, "
                   "256 tokens.")
@click.option("--draft", type=click.Path(dir_okay=False), default=None,
              help="Separate MTP file passed with -md: an MTP-only sidecar or a gemma4 assistant.")
@click.option("--n-max", "n_max", default=None, metavar="N,...",
              help="Draft depths to try; one llama-server per value (default 1,2,3).")
@click.option("--p-min", "p_min", default=None, metavar="P,...",
              help="--spec-draft-p-min values to sweep like --n-max; one llama-server per "
                   "combination (default: 0 and 0.75 for a dense model, llama-server's own for MoE).")
@click.option("--spec-type", "spec_types", multiple=True, metavar="LIST",
              help="A --spec-type list to sweep like --n-max, e.g. draft-mtp,ngram-mod (repeatable; "
                   "each must include MTP and use types the server's --help offers; default: MTP "
                   "alone). Give draft-mtp too to compare against MTP alone.")
@click.option("--mode", type=click.Choice(["auto", "chat", "raw"]), default="auto", show_default=True,
              help="chat: messages through /v1/chat/completions and the model's own template "
                   "(--jinja); raw: text to /completion; auto: chat when the GGUF has a chat template.")
@click.option("--reasoning", default=None, metavar="on,off",
              help="Thinking settings to measure side by side (chat_template_kwargs.enable_thinking).")
@click.option("--context-depth", "context_depth", default=None, metavar="TOKENS,...",
              help="Prefix each prompt with this many tokens of built-in context (code for code, "
                   "prose for the rest), e.g. 0,4096,16384; ctx grows to fit.")
@click.option("--temperature", default="0", show_default=True, metavar="T,...",
              help="Sampling temperatures; at 0 the output with MTP must equal the baseline's.")
@click.option("--reps", default=None, type=int,
              help="Repetitions with distinct seeds (seed, seed+1, ...) for mean and sd (default 2).")
@click.option("--seed", default=0, show_default=True, type=int, help="First seed.")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="JSONL prompt file: one {\"category\": ..., \"prompt\": ...} per line "
                   "(default: the built-in suite).")
@click.option("--categories", multiple=True, metavar="CAT,...",
              help="Only these categories (code, factual, analysis, creative, edit, or the file's).")
@click.option("--per-category", type=int, default=None, metavar="N",
              help="At most N prompts per category (default 2).")
@click.option("--n-predict", default=None, type=int, help="Tokens per request (default 128).")
@click.option("--ctx", "ctx_size", default=4096, show_default=True, type=int,
              help="llama-server context size (raised to fit --context-depth).")
@click.option("--server-arg", "server_args", multiple=True, metavar="ARG",
              help="Extra llama-server arguments, e.g. --server-arg='-ngl 99' (repeatable).")
@click.option("--min-acceptance", default=0.3, show_default=True, type=float,
              help="Fail when the aggregate acceptance is below this.")
@click.option("--min-speedup", default=None, type=float,
              help="Also fail when the code category's speedup is below this (off by default: "
                   "speed depends on the hardware more than on the file).")
@click.option("--endpoint", default=None, metavar="URL",
              help="Hub endpoint for hf:// models (else $MODEL_ENDPOINT, $HF_ENDPOINT, huggingface.co).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Write report.json, report.md, the charts and server logs into DIR.")
@click.option("--per-prompt", is_flag=True,
              help="Also print one line per request: pred= draft= acc= rate= tok/s=.")
@click.option("--bench-json", "bench_json", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Write {n_requests, total_predicted, total_draft, "
                                   "total_draft_accepted, aggregate_accept_rate, wall_s_total}.")
@standard_options(force=True, dry_run="Print the plan (servers, requests, tokens) and stop.", runtime=True,
                  llama_cpp=True)
@error_boundary
def check_cmd(models: tuple[str, ...], preset: str | None, draft: str | None, n_max: str | None,
              p_min: str | None, spec_types: tuple[str, ...], mode: str, reasoning: str | None,
              context_depth: str | None, temperature: str, reps: int | None, seed: int,
              prompts_file: str | None, categories: tuple[str, ...], per_category: int | None,
              n_predict: int | None, ctx_size: int, server_args: tuple[str, ...], min_acceptance: float,
              min_speedup: float | None, endpoint: str | None, report_dir: str | None, per_prompt: bool,
              bench_json: str | None, force: bool, dry_run: bool, runtime: str,
              llama_cpp: str | None, as_json: bool) -> None:
    """Measure MTP acceptance and speed of MODEL(s) on llama-server and give a verdict.

    MODEL is a GGUF with an MTP head (grafted or converted), or the first shard of a split set, or
    hf://OWNER/REPO:TAG: then the real `llama-server -hf OWNER/REPO:TAG --spec-type draft-mtp` downloads
    it (into the standard Hugging Face cache) as users load it, mtpgraft says which files llama.cpp
    resolved (model, shards, MTP sidecar), and those files are measured.
    Each model runs on one baseline llama-server and one MTP server per --spec-type list x --n-max
    x --p-min value (all of a list on one server where the server takes per-request speculative
    fields); exit code 1 when the verdict is fail. Several models (quants) give one report with the
    quant x category matrix, the quant x n acceptance table and the winning flags per task."""
    from ..check import plan_check, resolve_server
    from ..hub.remote import is_hf_ref
    from ..outputs import check_outputs

    settings = _validated_settings(preset, n_max=n_max, p_min=p_min, context_depth=context_depth,
                                   temperature=temperature, reasoning=reasoning, reps=reps, mode=mode,
                                   per_category=per_category, n_predict=n_predict, ctx_size=ctx_size,
                                   min_acceptance=min_acceptance, min_speedup=min_speedup, spec_types=spec_types)
    if bench_json:
        check_outputs([bench_json], [m for m in models if not is_hf_ref(m)], force=force)
    server = resolve_server(llama_cpp, _runtime_for(models, runtime))
    resolutions: list[Any] = []
    if any(is_hf_ref(m) for m in models) and not dry_run:
        models, draft, resolutions = _localize(models, draft=draft, server=server, endpoint=endpoint,
                                               report_dir=report_dir)
    plan = plan_check(models, draft=draft, seed=seed, prompts=prompts_file,
                      categories=_split(categories) or None,
                      server_args=[x for a in server_args for x in shlex.split(a)], server=server, **settings)
    _preflight_runtime(plan)
    if dry_run:
        emit_dry_run(plan, "\n".join([_plan_size(plan) + ":"] + [f"  {s}" for s in plan.to_dict()["servers"]]),
                     as_json)
        return
    how = (f"--spec-type {' / '.join(plan.settings_dict()['spec_types'])}" if plan.server.runtime == MAINLINE
           else plan.server.mtp_flag)
    info(f"{_plan_size(plan)}; MTP via {how}")
    result = _run(plan, report_dir, hash_files=bool(report_dir or as_json))
    _show(result, report_dir=report_dir, bench_json=bench_json, per_prompt=per_prompt,
          as_json=as_json, resolutions=resolutions)
    _fail_on_verdict(result)


def _validated_settings(preset: str | None, *, n_max: str | None, p_min: str | None,
                        context_depth: str | None, temperature: str, reasoning: str | None, reps: int | None,
                        per_category: int | None, n_predict: int | None, **fixed: Any) -> dict[str, Any]:
    """plan_check's settings: the preset overridden by every option given, and `fixed` (options with a
    default of their own), validated before any tool is looked up so a usage mistake is said first."""
    from ..check import validate_settings

    settings = _settings(preset or "default", {
        "n_max": _csv("--n-max", n_max, int), "reps": reps, "per_category": per_category,
        "n_predict": n_predict, "p_min": _csv("--p-min", p_min, float),
        "context_depth": _csv("--context-depth", context_depth, int)})
    settings.update(temperatures=_numbers("--temperature", temperature, float), **fixed,
                    reasoning=_split(reasoning))
    if p_min is not None:
        settings["dense_p_min"] = ()  # the p-min given is every model's
    validate_settings(**settings)
    return settings


def _fail_on_verdict(result: Any) -> None:
    """A failed verdict is VerdictFailedError (exit 1), its message the verdict line and the reasons."""
    if not result.passed:
        from ..check.report import format_verdict

        head = " ".join(format_verdict(result).splitlines()[0].split())
        raise VerdictFailedError(f"{head}: {'; '.join(result.reasons) or 'see the report'}")


def _preflight_runtime(plan: Any) -> None:
    """Before any server starts: a model whose architecture this fork's build runs no MTP for."""
    from ..gguf_io import GGUFModel
    from ..preflight import runtime_blocker

    for spec in plan.models:
        why = runtime_blocker(GGUFModel(spec.path), plan.server.runtime, plan.server.mtp_archs)
        if why is not None:
            raise UsageError(why)


def _runtime_for(models: Sequence[str], runtime: str) -> str:
    """`runtime`, which must be mainline for hf:// models (checked with `llama-server -hf`)."""
    from ..hub.remote import is_hf_ref

    if runtime != MAINLINE and any(is_hf_ref(m) for m in models):
        raise UsageError("hf:// models are loaded the way users load them, with mainline llama-server -hf; "
                         f"{LABELS[runtime]}'s has no -hf: download the files and check them by path")
    return runtime


def _localize(models: Sequence[str], *, draft: str | None, server: Any, endpoint: str | None,
              report_dir: str | None) -> tuple[Any, str | None, list[Any]]:
    """hf:// models downloaded by the real `llama-server -hf`; says which files llama.cpp resolved."""
    from ..hub.remote import localize_models

    models, draft, resolutions = localize_models(list(models), draft=draft, server=server,
                                                 endpoint=endpoint,
                                                 log_dir=f"{report_dir}/logs" if report_dir else None)
    for res in resolutions:
        for line in res.lines():
            (warn if line.startswith("mtpgraft predicted") else info)(line)
    return models, draft, resolutions


def _plan_size(plan: Any) -> str:
    cost = plan.cost()
    return (f"{cost['servers']} llama-server runs, {cost['requests']} requests, "
            f"{cost['generate_tokens']} tokens to generate, <= {cost['prefill_tokens']} to prefill "
            f"({len(plan.prompts)} prompts x {plan.reps} reps x {len(plan.conditions)} conditions "
            "per server)")


def _run(plan: Any, report_dir: str | None, *, hash_files: bool) -> Any:
    """execute_check with a progress bar (requests) and the time estimate as an info line."""
    from ..check import execute_check

    bar = progress_bar(plan.n_requests, unit="req") if show_progress() else None

    def progress(label: str, done: int) -> None:
        if bar is not None:
            if label:
                bar.set_description_str(label[-60:])
            bar.update(done)

    try:
        return execute_check(plan, log_dir=f"{report_dir}/logs" if report_dir else None,
                         progress=progress, events=info, hash_files=hash_files)
    finally:
        if bar is not None:
            bar.close()


def _show(result: Any, *, report_dir: str | None, bench_json: str | None, per_prompt: bool,
          as_json: bool, resolutions: Sequence[Any] = ()) -> None:
    """Write the report and bench files, print warnings and the result (JSON or tables)."""
    from ..check.report import (
        format_per_prompt,
        format_table,
        report_dict,
        write_bench_json,
        write_report,
    )

    charts: list[str] = []
    if report_dir:
        files = write_report(result, report_dir)
        charts = [c.name for c in files.charts]
        info(f"wrote {files.json}, {files.markdown}" + "".join(f", {c}" for c in files.charts))
        if files.chart_note and not files.chart:
            info(files.chart_note)
    if bench_json:
        info(f"wrote {write_bench_json(result, bench_json)}")
    for w in result.warnings:
        warn(w)
    for m in result.models:
        for run in m.servers:
            if run.error and run.log_tail:
                tail = "\n".join(f"  | {x}" for x in run.log_tail.splitlines()[-12:])
                info(f"{m.spec.name}: the end of the failed llama-server's log:\n{tail}")
    if as_json:
        emit_json({**report_dict(result, charts[0] if charts else None, charts),
                   **({"resolved": [r.to_dict() for r in resolutions]} if resolutions else {})})
    else:
        if per_prompt:
            click.echo(format_per_prompt(result))
        click.echo(format_table(result))
