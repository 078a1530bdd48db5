"""`mtpgraft inspect`: a GGUF's MTP structure, whether llama.cpp will load it, and its shared blocks."""

from __future__ import annotations

from pathlib import Path

import click

from .common import emit_json, error_boundary, json_option

VALUE_CHARS = 240  # a metadata value shown by inspect: escaped, at most this long


@click.command("inspect")
@click.argument("file", type=click.Path(path_type=Path))
@json_option
@error_boundary
def inspect_cmd(file: Path, as_json: bool) -> None:
    """Show a GGUF's MTP structure and whether llama.cpp will load it.

    Exits 0 for any readable file (even an inconsistent one), non-zero only if it cannot be read."""
    from ..gguf_io import shown
    from ..inspection import inspect_model

    rep = inspect_model(file)
    shared = _shared_extents(rep)
    if as_json:
        emit_json({**rep.to_dict(), "shared_bytes": shared[0] if shared else None})
        return
    mb = 1e6
    click.echo(f"file:            {rep.path}")
    click.echo(f"architecture:    {rep.architecture}")
    click.echo(f"block_count:     {rep.block_count}  (trunk {rep.trunk_layers}, nextn_predict_layers "
               f"{rep.nextn_predict_layers})")
    click.echo(f"layout:          {rep.layout}; {rep.tensor_count} tensors; n_embd {rep.n_embd}; vocab {rep.vocab_size}")
    click.echo(f"file type:       {rep.file_type or '?'} (dominant tensor type {rep.dominant_type or '?'})")
    if rep.split:
        click.echo(f"split:           {rep.split['count']} shards, split.tensors.count {rep.split['tensors_count']}")
    click.echo(f"MTP present:     {'yes' if rep.mtp_present else 'no'}"
               + (f" ({', '.join(f'blk.{i}' for i in rep.mtp_layers)}, {len(rep.mtp_tensors)} tensors, "
                  f"{rep.mtp_bytes / mb:.1f} MB)" if rep.mtp_present else ""))
    for t in rep.mtp_tensors:
        click.echo(f"    {shown(t.name):<42} {t.type:<8} {str(t.shape):<16} {t.nbytes:>14,} B")
    if rep.layer_arrays:
        click.echo("per-layer arrays:")
        for k, n in rep.layer_arrays.items():
            click.echo(f"    {shown(k)} [{n}]")
    if rep.imatrix:
        click.echo("imatrix:")
        for k, v in rep.imatrix.items():
            click.echo(f"    {shown(k)} = {shown(str(v), VALUE_CHARS)}")
    if rep.provenance:
        click.echo("provenance:")
        for k, v in rep.provenance.items():  # values as a file holds them: escaped, one line each
            click.echo(f"    {shown(k)} = {shown(str(v), VALUE_CHARS)}")
    if shared is not None:
        click.echo(f"shared blocks:   {shared[0] / mb:.1f} of {shared[1] / mb:.1f} MB of tensor data in extents "
                   "the filesystem shares with other files (reflinks)")
    for n in rep.notes:
        click.echo(f"note: {n}")
    if rep.consistent:
        click.echo("verdict:         consistent")
    else:
        click.echo(f"verdict:         INCONSISTENT ({len(rep.problems)} problem(s))")
        for p in rep.problems:
            click.echo(f"  - {p}")


def _shared_extents(rep) -> tuple[int, int] | None:
    """(shared, total) tensor-data bytes over every shard, or None without FIEMAP."""
    from ..blocks import flagged_shared_bytes
    from ..gguf_io import GGUFModel

    shared = total = 0
    for shard in GGUFModel(rep.path).shards:
        n = shard.file_size - shard.data_offset
        with open(shard.path, "rb") as f:
            got = flagged_shared_bytes(f.fileno(), shard.data_offset, n)
        if got is None:
            return None
        shared, total = shared + got, total + n
    return shared, total
