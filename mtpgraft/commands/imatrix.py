"""`mtpgraft imatrix`: an importance matrix from the real llama-imatrix, with calibration provenance."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit_dry_run, emit_json, error_boundary, info
from .options import standard_options


@click.command("imatrix")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-f", "--file", "calibration", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Calibration text file.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The imatrix GGUF to write (e.g. imatrix.gguf).")
@click.option("-c", "--ctx", type=int, default=None, help="Chunk size in tokens (llama-imatrix -c; default 512).")
@click.option("--chunks", type=int, default=None, help="At most N chunks (default: the whole file).")
@click.option("-b", "--batch", type=int, default=None, help="llama-imatrix -b.")
@click.option("-t", "--threads", type=int, default=None, help="llama-imatrix -t.")
@click.option("--ppl", is_flag=True, help="Also compute perplexity (llama-imatrix's default; off here: it only costs time).")
@click.option("--imatrix-arg", "extra", multiple=True, metavar="ARG",
              help="Extra llama-imatrix argument, e.g. --imatrix-arg=-ngl --imatrix-arg=99 (repeatable).")
@standard_options(force=True, dry_run="Print the command and stop.", runtime=True, llama_cpp=True)
@error_boundary
def imatrix_cmd(model: Path, calibration: Path, output: Path, ctx: int | None, chunks: int | None,
                batch: int | None, threads: int | None, ppl: bool, extra: tuple[str, ...], force: bool,
                dry_run: bool, runtime: str, llama_cpp: str | None, as_json: bool) -> None:
    """Compute an importance matrix for MODEL with the real llama-imatrix (with --runtime ik, ik_llama.cpp's,
    which writes the legacy .dat format: no mtpgraft keys in it).

    Records the calibration file's name and sha256 in the imatrix (mtpgraft.imatrix.*); `mtpgraft
    quantize` carries them into every quant. The imatrix never covers the MTP block (llama-imatrix does
    not run it): `mtpgraft quantize` gives that block explicit types."""
    from ..imatrix import execute_imatrix, plan_imatrix

    plan = plan_imatrix(model, calibration, output, ctx=ctx, chunks=chunks, batch=batch, threads=threads,
                        ppl=ppl, extra_args=list(extra), force=force, llama_cpp=llama_cpp,
                        runtime=runtime)
    if dry_run:
        emit_dry_run(plan, plan.shell(), as_json)
        return
    info(f"llama-imatrix on {model.name} with {calibration.name} (sha256 {plan.calibration_sha256[:12]})")
    res = execute_imatrix(plan)
    if as_json:
        emit_json({"dry_run": False, **res.to_dict()})
        return
    click.echo(res.info.path)
    size = f" of {res.info.chunk_size} tokens" if res.info.chunk_size is not None else ""  # .dat: not recorded
    info(f"{res.info.entries} entries over {res.info.chunk_count} chunks{size} in {res.seconds:.1f}s")
