"""`mtpgraft quality`: KL divergence and perplexity against the reference (llama-perplexity), and
MTP acceptance retention from check reports."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit_dry_run, emit_json, error_boundary, info
from .options import standard_options


@click.command("quality")
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("quants", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-f", "--file", "text", type=click.Path(path_type=Path), default=None,
              help="Text to evaluate on (default: a small built-in text; use your own for real models).")
@click.option("--chunks", type=int, default=None, help="Evaluate only the first N chunks of the text.")
@click.option("-c", "--ctx-size", type=int, default=512, show_default=True, help="Context per chunk.")
@click.option("--perplexity-arg", "extra", multiple=True, metavar="ARG",
              help="Extra llama-perplexity argument, repeatable (e.g. --perplexity-arg=-t --perplexity-arg=4).")
@click.option("--check-report", "reports", multiple=True, type=click.Path(path_type=Path), metavar="JSON",
              help="check report.json holding REFERENCE and the QUANTS (repeatable): adds acceptance retention.")
@click.option("-o", "--report-dir", type=click.Path(path_type=Path), default=None,
              help="Write quality.json and report.md here.")
@standard_options(dry_run="Print the plan (where the logits go, how large) and run nothing.", runtime=True,
                  llama_cpp=True)
@error_boundary
def quality_cmd(reference: Path, quants: tuple[Path, ...], text: Path | None, chunks: int | None, ctx_size: int,
                extra: tuple[str, ...], reports: tuple[Path, ...], report_dir: Path | None, dry_run: bool,
                runtime: str, llama_cpp: str | None, as_json: bool) -> None:
    """KL divergence, perplexity and same-top-token rate of each QUANT against REFERENCE, made by
    llama-perplexity: the reference's logits once (cached by content hash), then one run per quant.
    Mainline's llama-perplexity only: --runtime ik is refused (its output is not read yet)."""
    import tempfile
    from dataclasses import replace

    from ..quality import (
        acceptance_retention,
        execute_quality,
        format_table,
        plan_quality,
        write_report,
    )

    plan = plan_quality(reference, [str(q) for q in quants], text=text, ctx_size=ctx_size, chunks=chunks,
                        extra_args=extra, llama_cpp=llama_cpp, runtime=runtime)
    if dry_run:
        emit_dry_run(plan, f"quality: {plan.reference} vs {', '.join(plan.models)}\n  logits: {plan.logits} "
                     f"({'cached' if plan.logits_cached else f'at most {plan.logits_bytes_max / 1e6:.1f} MB, to be written'})",
                     as_json)
        return
    logs = (report_dir / "logs") if report_dir else Path(tempfile.mkdtemp(prefix="mtpgraft-quality-"))
    result = execute_quality(plan, log_dir=logs, emit=info)
    if reports:
        result = replace(result, retention=acceptance_retention(reports, str(reference), [str(q) for q in quants]))
    if report_dir:
        js, md = write_report(result, report_dir)
        info(f"wrote {js} and {md}")
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(format_table(result))
