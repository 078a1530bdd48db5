"""`mtpgraft quantize`: every type of a batch from the real llama-quantize, the MTP block kept intact."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import VerdictFailedError
from .common import cli_text, emit_dry_run, emit_json, error_boundary, info, warn
from .options import hub_options, standard_options


def _types_option(fn):  # noqa: ANN001, ANN202
    return click.option("--types", required=True, metavar="T1,T2,...",
                        help="llama-quantize types, e.g. Q4_K_M,Q5_K_M,Q6_K,Q8_0,IQ4_XS,IQ2_XXS; with --runtime ik "
                          "also ik_llama.cpp's, e.g. IQ4_KS,IQ4_KT,IQ2_KS,IQ5_K.")(fn)


@click.command("quantize")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_types_option
@click.option("--imatrix", default=None, metavar="FILE|hf://OWNER/REPO/PATH",
              help="Importance matrix (from `mtpgraft imatrix` or llama-imatrix), or one published on the "
                   "Hub (fetched whole into the cache, checked against MODEL's tensors).")
@hub_options
@click.option("--mtp-type", default=None, metavar="q8_0|match|TYPE",
              help="Type of the MTP block's weights: q8_0 (default), match (llama.cpp's mixture for each "
                   "type; refused for types that need an imatrix), or a ggml type such as q6_k.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the outputs go (default: beside MODEL).")
@click.option("--name", default=None, help="Output name stem: NAME-Q4_K_M.gguf (default: MODEL's name "
                                           "without .gguf and a trailing -F16/-BF16).")
@click.option("--split-max-size", default=None, metavar="N(M|G)",
              help="Split outputs larger than this with llama-gguf-split, into a TYPE/ folder, e.g. 50G.")
@click.option("--allow-requantize", is_flag=True,
              help="Let llama-quantize requantize already-quantized tensors (llama.cpp warns: this can "
                   "severely reduce quality compared to quantizing from 16bit or 32bit).")
@click.option("-j", "--jobs", default=1, show_default=True, type=int, help="Types quantized at once.")
@click.option("-t", "--threads", default=None, type=int,
              help="Threads per llama-quantize (default: llama-quantize's own; CPUs / jobs with --jobs).")
@standard_options(force="Redo and replace outputs that exist (default: skip those that verify, refuse "
                        "those that do not).", dry_run="Print the exact commands and stop.", runtime=True,
                  llama_cpp=True)
@error_boundary
def quantize_cmd(model: Path, types: str, imatrix: str | None, token: str | None, endpoint: str | None,
                 mtp_type: str | None, out_dir: Path | None,
                 name: str | None, split_max_size: str | None, allow_requantize: bool, jobs: int,
                 threads: int | None, force: bool, dry_run: bool, runtime: str, llama_cpp: str | None,
                 as_json: bool) -> None:
    """Quantize MODEL to every type in --types with the real llama-quantize, keeping its MTP block.

    Each command gives the MTP block an explicit type (--tensor-type; ik_llama.cpp's --custom-q), so the
    very-low-bit types do not abort on the imatrix entries llama-imatrix never makes for it. Every output is verified
    (header, tensor count, MTP block present and consistent, types as planned) before it is renamed
    into place; a bad one is removed and reported. Outputs that exist and verify are skipped.
    Exit code 1 when any type failed."""
    from ..quantize import execute_quantize, plan_quantize
    from ..sources.hubimatrix import fetch_imatrix

    imx = fetch_imatrix(imatrix, token=token, endpoint=endpoint) if imatrix and imatrix.startswith("hf://") else imatrix
    plan = plan_quantize(model, types, out_dir=out_dir, name=name, imatrix=imx, mtp_type=mtp_type,
                         split_max_size=split_max_size, allow_requantize=allow_requantize, jobs=jobs,
                         threads=threads, force=force, llama_cpp=llama_cpp, runtime=runtime)
    for w in plan.warnings:
        warn(w)
    if dry_run:
        emit_dry_run(plan, plan.describe(), as_json)
        return
    n = len(plan.jobs)
    order = {t: i + 1 for i, t in enumerate(plan.types)}
    res = execute_quantize(plan, on_event=lambda t, m: info(f"[{order[t]}/{n}] {t}: {cli_text(m)}"))
    if as_json:
        emit_json({"dry_run": False, **res.to_dict()})
    else:
        for o in res.outputs:
            if o.ok:
                mtp = ", ".join(sorted({ty for _, ty in o.mtp_types if ty != "F32"}))
                click.echo(f"{o.quant_type:<8} {o.status:<8} {o.path}  {o.bytes / 1e6:.1f} MB"
                           + (f"  (MTP {mtp})" if mtp else ""))
            else:
                click.echo(f"{o.quant_type:<8} FAILED   {cli_text(o.reason)}")
    if not res.ok:
        bad = res.failed
        raise VerdictFailedError(f"{len(bad)} of {n} type(s) failed: "
                            + "; ".join(f"{o.quant_type}: {cli_text(o.reason)}" for o in bad))
