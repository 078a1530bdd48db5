"""`mtpgraft inspect`: a GGUF's MTP structure, whether llama.cpp will load it, and its shared blocks."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import Setting, Text, UsageError
from ..runtimes import LABELS
from .common import emit_json, error_boundary
from .options import hub_options, standard_options

VALUE_CHARS = 240  # a metadata value shown by inspect: escaped, at most this long
MB = 1e6


@click.command("inspect")
@click.argument("targets", nargs=-1, required=True, metavar="FILE | hf://REF...")
@hub_options
@click.option("--only-mtp", is_flag=True, help="hf:// only: show only files and tags with an MTP head.")
@click.option("--jobs", type=click.IntRange(1, 32), default=4, show_default=True,
              help="hf:// only: repos (and headers) read at once.")
@standard_options(runtime=True)
@error_boundary
def inspect_cmd(targets: tuple[str, ...], token: str | None, endpoint: str | None, only_mtp: bool, jobs: int,
                runtime: str, as_json: bool) -> None:
    """Show a GGUF's MTP structure and whether llama.cpp will load it.

    The exit status is the verdict: 0 when llama.cpp would load the file, 1 when it would not (the
    report, or --json, is printed all the same), 3 when the file cannot be read at all. It says which
    runtimes load the file (a file with an ik_llama.cpp type is "ik_llama.cpp only"); --runtime's loader
    refusing one of its tensor types is a problem, with the line that loader would print.

    With hf:// references (hf://OWNER/REPO[@REV], hf://OWNER/REPO:TAG, hf://OWNER/REPO/PATH.gguf, or
    hf://OWNER for every GGUF repo of an account) it audits published repos from the GGUF headers alone
    (fetched by ranges and cached): per file the verdict, per :TAG what `llama-server -hf` loads and
    whether that head fits. Exits 1 when a file would not load or a tag would load a wrong sidecar
    (or none it could see), 6 when no repo could be read, else 0; a refused repo gets one line."""
    from ..errors import VerdictFailedError
    from ..gguf_io import shown
    from ..inspection import inspect_model

    if any(t.startswith("hf://") for t in targets):
        from .audit import run_audit

        return run_audit(targets, token=token, endpoint=endpoint, jobs=jobs, only_mtp=only_mtp, as_json=as_json)
    if len(targets) > 1 or only_mtp:
        raise UsageError(Text("several targets, and ", Setting("only_mtp"), ", are for hf:// references; "
                              "inspect local files one at a time"))
    file = Path(targets[0])

    rep = inspect_model(file, runtime=runtime)
    shared = _shared_extents(rep)
    if as_json:
        emit_json({**rep.to_dict(), "shared_bytes": shared[0] if shared else None})
    else:
        for line in (*_structure_lines(rep), *_metadata_lines(rep), *_verdict_lines(rep, shared)):
            click.echo(line)
    if not rep.consistent:
        more = f" (and {len(rep.problems) - 1} more)" if len(rep.problems) > 1 else ""
        raise VerdictFailedError(f"{shown(str(file), 200)}: {LABELS[runtime]} would not load it: "
                                 f"{shown(rep.problems[0], 300)}{more}")


def _structure_lines(rep) -> list[str]:  # noqa: ANN001 - inspection.ModelReport
    """The file, its layers and layout, the file type, the split, and the MTP block tensor by tensor."""
    from ..gguf_io import shown

    lines = [f"file:            {rep.path}",
             f"architecture:    {rep.architecture}",
             f"block_count:     {rep.block_count}  (trunk {rep.trunk_layers}, nextn_predict_layers "
             f"{rep.nextn_predict_layers})",
             f"layout:          {rep.layout}; {rep.tensor_count} tensors; n_embd {rep.n_embd}; vocab {rep.vocab_size}",
             f"file type:       {rep.file_type or '?'} (dominant tensor type {rep.dominant_type or '?'})",
             f"loads with:      {rep.loads_with}"]
    if rep.split:
        lines.append(f"split:           {rep.split['count']} shards, split.tensors.count {rep.split['tensors_count']}")
    lines.append(f"MTP present:     {'yes' if rep.mtp_present else 'no'}"
                 + (f" ({', '.join(f'blk.{i}' for i in rep.mtp_layers)}, {len(rep.mtp_tensors)} tensors, "
                    f"{rep.mtp_bytes / MB:.1f} MB)" if rep.mtp_present else ""))
    lines += [f"    {shown(t.name):<42} {t.type:<8} {str(t.shape):<16} {t.nbytes:>14,} B" for t in rep.mtp_tensors]
    return lines


def _metadata_lines(rep) -> list[str]:  # noqa: ANN001 - inspection.ModelReport
    """Per-layer arrays, imatrix and provenance keys, values as the file holds them: escaped, one line each."""
    from ..gguf_io import shown

    lines = []
    if rep.layer_arrays:
        lines += ["per-layer arrays:", *(f"    {shown(k)} [{n}]" for k, n in rep.layer_arrays.items())]
    for title, keys in (("imatrix", rep.imatrix), ("provenance", rep.provenance)):
        if keys:
            lines += [f"{title}:", *(f"    {shown(k)} = {shown(str(v), VALUE_CHARS)}" for k, v in keys.items())]
    return lines


def _verdict_lines(rep, shared: tuple[int, int] | None) -> list[str]:  # noqa: ANN001 - inspection.ModelReport
    """Shared blocks, notes, and whether llama.cpp's loader will take the file (with each problem)."""
    lines = []
    if shared is not None:
        lines.append(f"shared blocks:   {shared[0] / MB:.1f} of {shared[1] / MB:.1f} MB of tensor data in extents "
                     "the filesystem shares with other files (reflinks)")
    lines += [f"note: {n}" for n in rep.notes]
    if rep.consistent:
        return [*lines, "verdict:         consistent"]
    return [*lines, f"verdict:         INCONSISTENT ({len(rep.problems)} problem(s))",
            *(f"  - {p}" for p in rep.problems)]


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
