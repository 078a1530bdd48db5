"""`attach`, `detach`, `extract`: the graft commands (one plan renderer for the three)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from .common import FetchBar, emit_dry_run, emit_json, error_boundary, info, progress_bar, warn
from .options import layout_from, mtp_from_option, mtp_type_option, output_option, standard_options

FETCHING_DRY_RUN = "Print the plan and write nothing (fetches headers only)."


def heads_option(help: str):  # noqa: A002, ANN201 - a click decorator
    """--heads K: keep the first K MTP heads (a chain's front: head k drafts position k)."""
    return click.option("--heads", type=click.IntRange(min=1), default=None, metavar="K", help=help)


SOURCE_HEADS_HELP = ("Take only the source's first K MTP heads (all by default); the keys and per-layer "
                     "arrays say K heads, as the converter writes a K-head model. From the Hub only those "
                     "K heads are fetched.")


def _run_plan(plan, dry_run: bool, as_json: bool, layout: str = "reflink", no_reflink: bool = False) -> None:
    from ..graft import block_sharing, describe_plan, execute_graft

    for w in plan.warnings:
        warn(w)
    if dry_run:
        emit_dry_run(plan, describe_plan(plan), as_json)
        return
    with progress_bar(plan.output_bytes, desc=plan.operation) as bar:
        outputs = execute_graft(plan, progress=bar.update, layout=layout_from(layout, no_reflink))
    sharing = block_sharing(plan)
    if as_json:
        emit_json({"dry_run": False, "plan": plan.to_dict(), "written": [str(p) for p in outputs],
                   "layout": layout, "body_bytes": sharing.body_bytes, "body_shared_bytes": sharing.shared_bytes,
                   "mtp_copied_bytes": sharing.mtp_bytes, "mtp_shared_bytes": sharing.mtp_shared_bytes})
    else:
        for p in outputs:
            click.echo(str(p))
        info(f"{plan.operation}: wrote {len(outputs)} file(s), {plan.output_bytes / 1e6:.1f} MB of tensors")
        info(_sharing_line(sharing))


def _sharing_line(s) -> str:
    mb = 1e6
    if s.shared_bytes is None:
        return "blocks: the filesystem does not report extents (no FIEMAP); the body was copied"
    if not s.body_bytes:
        line = "blocks: nothing copied from the base"
    elif s.shared_bytes == 0:
        line = f"blocks: the {s.body_bytes / mb:.1f} MB body was copied (no blocks shared with the base)"
    else:
        line = (f"blocks: {s.shared_bytes / mb:.1f} of {s.body_bytes / mb:.1f} MB of the body share the base's "
                f"blocks ({s.shared_fraction:.1%}, reflinked: no new disk space)")
    if s.mtp_shared_bytes:  # a kept MTP block that landed congruent with its source (the larger run)
        line += (f"; {s.mtp_shared_bytes / mb:.1f} of {s.mtp_bytes / mb:.1f} MB copied from the MTP source "
                 "share its blocks")
    return line


@click.command("attach")
@click.argument("base", metavar="BASE")
@mtp_from_option("Where the MTP block comes from: a GGUF (a full MTP model, an MTP-only file, or just the "
                 "MTP tensors), a safetensors snapshot folder or file (converted like convert_hf_to_gguf.py), "
                 "or the Hub: hf://OWNER/REPO/FILE.gguf, hf://OWNER/REPO:QUANT, hf://OWNER/REPO (safetensors), "
                 "each with an optional @REVISION. From the Hub only headers and MTP tensors are fetched.")
@output_option(required=True)
@mtp_type_option("MTP tensor type: keep (bytes unchanged), q8_0, match (the body's type per tensor), or a "
                 "ggml type (f16, bf16, q4_0, q6_k, ...). Default: q8_0 for a quantized base, the base's "
                 "float type for an unquantized one.")
@click.option("--replace", is_flag=True, help="Replace the base's own MTP block.")
@heads_option(SOURCE_HEADS_HELP)
@standard_options(force=True, dry_run=FETCHING_DRY_RUN, layout=True, hub=True, runtime=True, llama_cpp=True)
@error_boundary
def attach_cmd(base: str, source: str, out: Path, mtp_type: str | None, replace: bool, heads: int | None,
               force: bool, dry_run: bool, layout: str, no_reflink: bool, token: str | None, endpoint: str | None,
               runtime: str, llama_cpp: str | None,
               as_json: bool) -> None:
    """Transplant the MTP block from SOURCE into BASE and fix the metadata so llama.cpp loads it.

    BASE is a GGUF, or hf://OWNER/REPO/FILE.gguf or hf://OWNER/REPO:QUANT (downloaded whole into the
    Hugging Face cache, where llama-server -hf finds it too)."""
    with _planned_attach(base, source, out, mtp_type=mtp_type, replace=replace, heads=heads, force=force,
                         llama_cpp=llama_cpp, runtime=runtime, token=token, endpoint=endpoint,
                         dry_run=dry_run) as plan:
        _run_plan(plan, dry_run, as_json, layout, no_reflink)


@contextmanager
def _planned_attach(base: str, source: str, out: Path | None, *, dry_run: bool, **kw: Any) -> Iterator[Any]:
    """plan_attach_from with a fetch bar, a line on what came from the Hub, and the fetched source
    file (a temporary one) removed when the caller is done with the plan."""
    from ..sources import plan_attach_from

    bar = FetchBar("MTP source")
    try:
        plan, src = plan_attach_from(base, source, out, progress=bar, plan_only=dry_run, **kw)
    finally:
        bar.close()
    try:
        if src.kind.startswith("hub"):
            info(f"MTP source {src.label}: fetched {src.fetched_bytes:,} bytes "
                 f"({src.header_bytes:,} of headers, {src.mtp_bytes:,} of MTP tensors"
                 + (", from the cache" if src.cached else "") + ")")
        yield plan
    finally:
        if src.temporary:
            src.path.unlink(missing_ok=True)


@click.command("detach")
@click.argument("model", type=click.Path(path_type=Path))
@output_option(required=True)
@heads_option("Keep MODEL's first K MTP heads and drop the rest (what a pruned publication ships: less "
              "memory); the keys and per-layer arrays say K heads. Default: drop every head.")
@standard_options(force=True, dry_run=True, layout=True)
@error_boundary
def detach_cmd(model: Path, out: Path, heads: int | None, force: bool, dry_run: bool, layout: str,
               no_reflink: bool, as_json: bool) -> None:
    """Write MODEL without its MTP block (trunk only, consistent metadata). With --heads K, keep its
    first K heads (a pruned chain: keys and per-layer arrays say K heads)."""
    from ..graft import plan_detach

    _run_plan(plan_detach(model, out, force=force, heads=heads), dry_run, as_json, layout, no_reflink)


@click.command("extract")
@click.argument("model", type=click.Path(path_type=Path))
@output_option(help="Output file (default: mtp-<name>.gguf beside MODEL).")
@heads_option("Take only MODEL's first K MTP heads (all by default); the keys and per-layer arrays say K heads.")
@standard_options(force=True, dry_run=True, layout=True)
@error_boundary
def extract_cmd(model: Path, out: Path | None, heads: int | None, force: bool, dry_run: bool, layout: str,
                no_reflink: bool, as_json: bool) -> None:
    """Write MODEL's MTP block as an MTP-only sidecar (llama-server -md), like convert_hf_to_gguf.py --mtp."""
    from ..graft import plan_extract

    _run_plan(plan_extract(model, out, force=force, heads=heads), dry_run, as_json, layout, no_reflink)


def _is_assistant(source: str) -> bool:
    from ..arch import is_drafter
    from ..errors import GGUFFormatError
    from ..gguf_io import GGUFModel

    if not (source.endswith(".gguf") and Path(source).is_file()):
        return False
    try:
        return is_drafter(GGUFModel(source).arch)
    except GGUFFormatError:
        return False


@click.command("sidecar")
@click.argument("base", metavar="BASE")
@mtp_from_option("Where the MTP block comes from (any source attach takes: a GGUF, safetensors, hf://...).")
@output_option(help="Output file (default: mtp-NAME-TYPE.gguf beside BASE, NAME without its quant tag).")
@mtp_type_option("MTP tensor type, as for attach (default: q8_0 for a quantized base, else its float type).")
@heads_option(SOURCE_HEADS_HELP)
@standard_options(force=True, dry_run=FETCHING_DRY_RUN, layout=True, hub=True, runtime=True, llama_cpp=True)
@error_boundary
def sidecar_cmd(base: str, source: str, out: Path | None, mtp_type: str | None, heads: int | None, force: bool,
                dry_run: bool, layout: str, no_reflink: bool, token: str | None, endpoint: str | None,
                runtime: str, llama_cpp: str | None, as_json: bool) -> None:
    """Write the MTP-only sidecar for BASE (what `llama-server -md`, and `-hf` next to trunk-only quants,
    take): BASE's metadata and shared tensors (token_embd, output_norm, output) plus SOURCE's MTP block,
    renumbered and converted as attach does, in convert_hf_to_gguf.py's --mtp layout."""
    from ..sidecar import plan_assistant_sidecar, plan_sidecar

    if _is_assistant(source):  # gemma4: the assistant itself is the sidecar
        _run_plan(plan_assistant_sidecar(base, source, out, mtp_type=mtp_type, force=force, heads=heads), dry_run,
                  as_json, layout, no_reflink)
        return
    # a base from the Hub: the sidecar goes to the current folder, not beside a file in the HF cache
    out_dir = Path(".") if out is None and str(base).startswith("hf://") else None
    with _planned_attach(base, source, out, planner=plan_sidecar, mtp_type=mtp_type, heads=heads, out_dir=out_dir,
                         force=force, llama_cpp=llama_cpp, runtime=runtime, token=token, endpoint=endpoint,
                         dry_run=dry_run) as plan:
        _run_plan(plan, dry_run, as_json, layout, no_reflink)
