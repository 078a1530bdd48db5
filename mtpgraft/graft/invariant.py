"""The graft's invariant, checked on the written files before they are installed.

execute_graft calls `check_written` once every output file is complete. It re-reads the outputs'
headers and holds them to the plan: every tensor the plan keeps is there with its type, shape and
size and nothing else is; the bytes of each copied tensor (the base's, and a kept MTP block's)
begin and end as its input's do (a window at either end, which finds a tensor dropped, moved, cut
short or copied from the wrong place without reading the body a second time); every key is the
one the plan wrote, the provenance digest the one the writer computed; the keys describe the
tensors: trunk layers + MTP blocks = block_count, nextn_predict_layers = the MTP blocks present,
per-layer arrays cover block_count; and, read from the base again, every base tensor outside an
MTP block is planned as a copy of its own bytes. A failure is a bug in mtpgraft, never the user's
input: InternalError, and execute_graft removes the output.

Re-hashing a kept MTP block against the digest would prove its every byte, at ~0.45 s per 340 MB
(measured on a 2.7 GB attach whose whole check otherwise takes ~30 ms): more than a reflinked
attach takes in all, so the windows stand in for it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..arch import head_globals, is_drafter, rule_for, shared_tensors
from ..blocks import block_size, common_bytes
from ..errors import InternalError, MtpgraftError
from ..gguf_io import PAD_KEY, GGUFFile, GGUFModel, OutTensor, TensorRef
from ..inspection import Structure, layer_of, reconcile
from .types import GraftPlan, ShardSpec

WINDOW = 4096  # bytes compared at each end of every copied tensor


def check_written(plan: GraftPlan, shards: Sequence[ShardSpec], paths: list[Path], digest: str | None,
                  digest_key: str) -> None:
    """Raise InternalError unless the files at `paths` (the shards' temporary outputs) are what the
    plan says. `digest`: the sha256 written into `digest_key` (grafts that carry an MTP block)."""
    try:
        files = [GGUFFile(p) for p in paths]
    except MtpgraftError as e:
        raise _bug(plan, f"the output cannot be read back ({e})") from e
    for spec, f in zip(shards, files, strict=True):
        if f.defects:
            raise _bug(plan, f"{spec.path.name}: {f.defects[0]}")
        _same_keys(plan, spec, f, digest, digest_key)
        _same_tensors(plan, spec, f)
    _counts_add_up(plan, files)
    _base_kept(plan, shards)


def _bug(plan: GraftPlan, what: str) -> InternalError:
    return InternalError(f"internal error (a bug in mtpgraft, please report it): the {plan.operation} output "
                         f"{plan.outputs[0]} failed its check: {what}; it was removed")


def _same_keys(plan: GraftPlan, spec: ShardSpec, f: GGUFFile, digest: str | None, digest_key: str) -> None:
    want = {kv.key: kv for kv in spec.kvs if kv.key != PAD_KEY}
    extra = [k for k in f.kv if k not in want and k != PAD_KEY]
    if extra or len(f.kv) - (PAD_KEY in f.kv) != len(want):
        raise _bug(plan, f"{spec.path.name}: keys {extra or sorted(set(want) - set(f.kv))} differ from the plan")
    for key, kv in want.items():
        got = f.kv[key]
        same = got.value == digest if key == digest_key and digest is not None else got.raw == kv.raw
        if not same:
            raise _bug(plan, f"{spec.path.name}: key {key} is not the value planned")


def _same_tensors(plan: GraftPlan, spec: ShardSpec, f: GGUFFile) -> None:
    """Names, types, shapes and sizes as planned; the copied tensors' ends as their input's."""
    got = {t.name: t for t in f.tensors}
    if sorted(got) != sorted(t.name for t in spec.tensors):
        lost = sorted({t.name for t in spec.tensors} - set(got)) or sorted(set(got) - {t.name for t in spec.tensors})
        raise _bug(plan, f"{spec.path.name}: tensors {lost[:4]} are not as planned")
    for t in spec.tensors:
        info = got[t.name]
        if (tuple(info.ne), info.ggml_type, info.nbytes) != (tuple(t.ne), t.ggml_type, t.nbytes):
            raise _bug(plan, f"tensor {t.name} has type {info.type_name} shape {list(info.ne)}, "
                             f"not the planned {list(t.ne)}")
    copied = sorted(((f.data_offset + got[t.name].offset, t) for t in spec.tensors if t.src_path is not None),
                    key=lambda x: x[0])
    fds: dict[Path, int] = {}
    out = os.open(f.path, os.O_RDONLY)
    try:
        for run in _runs(copied):
            src = fds.get(run[0][1].src_path)  # type: ignore[arg-type]
            if src is None:
                src = fds[run[0][1].src_path] = os.open(run[0][1].src_path, os.O_RDONLY)  # type: ignore[index]
            for pos, t in _to_read(run, src, out):
                if not _ends_match(src, t, out, pos):
                    raise _bug(plan, f"tensor {t.name}'s bytes differ from its input's")
    finally:
        os.close(out)
        for fd in fds.values():
            os.close(fd)


def _runs(copied: list[tuple[int, OutTensor]]) -> list[list[tuple[int, OutTensor]]]:
    """Copied tensors in output order, cut into runs: one input, at one distance (a range the
    writer copied in one piece)."""
    runs: list[list[tuple[int, OutTensor]]] = []
    for pos, t in copied:
        last = runs[-1][-1] if runs else None
        if last is not None and last[1].src_path == t.src_path and last[0] - last[1].src_offset == pos - t.src_offset:
            runs[-1].append((pos, t))
        else:
            runs.append([(pos, t)])
    return runs


def _to_read(run: list[tuple[int, OutTensor]], src: int, out: int) -> list[tuple[int, OutTensor]]:
    """The tensors of a run whose ends are compared: every one, unless the filesystem shows the run
    stored in the very blocks of its input (a reflink: the same bytes by construction; reading them
    would cost a disk read per window); then the two at its ends, whose partial blocks were copied."""
    start, end = run[0][0], run[-1][0] + run[-1][1].nbytes
    if len(run) > 2:
        shared = common_bytes(out, start, src, run[0][1].src_offset, end - start)
        if shared is not None and shared >= end - start - 2 * block_size(out):
            return [run[0], run[-1]]
    return run


def _ends_match(src: int, t: OutTensor, out: int, pos: int) -> bool:
    n = min(WINDOW, t.nbytes)
    for off in {0, t.nbytes - n}:
        a = os.pread(src, n, t.src_offset + off)
        if len(a) != n or a != os.pread(out, n, pos + off):
            return False
    return True


def _counts_add_up(plan: GraftPlan, files: list[GGUFFile]) -> None:
    """block_count = trunk + MTP blocks, nextn_predict_layers = the MTP blocks, arrays cover block_count."""
    first = files[0]
    arch = plan.arch
    if is_drafter(arch):
        return  # every block an MTP layer, no nextn.eh_proj: the assistant's own rules (inspect)
    layers: dict[int, list[TensorRef]] = {}
    for si, f in enumerate(files):
        for t in f.tensors:
            if (lo := layer_of(t.name)) is not None:
                layers.setdefault(lo[0], []).append(TensorRef(t, si, f.path, f.data_offset + t.offset))
    eh = sorted(i for i, refs in layers.items() if any(r.name.endswith(".nextn.eh_proj.weight") for r in refs))
    bc = first.get_int(f"{arch}.block_count")
    nextn = first.get_int(f"{arch}.nextn_predict_layers") or 0
    if bc is None:
        raise _bug(plan, f"key {arch}.block_count is missing")
    st = Structure(arch, bc, nextn, bc - min(nextn, bc), layers, eh, False)
    b = reconcile(st)
    if b.contradiction or b.key_mismatch:
        raise _bug(plan, b.contradiction or b.key_mismatch or "")
    want_trunk = plan.trunk_layers if plan.operation in ("attach", "detach") else 0
    got_trunk = sum(1 for i in layers if i < b.trunk)
    dropped = {lo[0] for a in plan.tensors if a.method == "drop" and (lo := layer_of(a.source_name))}
    want_mtp = [i for i in plan.mtp_layers if i not in dropped]  # detach drops all, or keeps the first heads
    if (got_trunk, b.mtp) != (want_trunk, want_mtp) or (b.mtp and b.trunk != plan.trunk_layers):
        raise _bug(plan, f"it holds {got_trunk} trunk layers and MTP blocks {b.mtp}, the plan "
                         f"{want_trunk} and {plan.mtp_layers}")
    if b.mtp and nextn != len(b.mtp) or b.mtp and bc != b.trunk + len(b.mtp):
        raise _bug(plan, f"block_count {bc} and nextn_predict_layers {nextn} do not count MTP blocks {b.mtp}")
    rule = rule_for(arch)
    for k in rule.layer_arrays if rule is not None else ():
        kv = first.kv.get(f"{arch}.{k}")
        if kv is not None and kv.is_array and not rule.array_length_ok(k, kv.count, bc):
            raise _bug(plan, f"key {arch}.{k} has {kv.count} entries, block_count is {bc}")


def _base_kept(plan: GraftPlan, shards: Sequence[ShardSpec]) -> None:
    """Read from the base again, not from the plan: every base tensor outside a block holding nextn
    tensors (attach, detach), or every shared tensor (extract, sidecar), is planned as a copy of
    the base's own bytes, unchanged (whose output _same_tensors has held to the plan); a sidecar's
    head_globals, read from the source again, as copies of the source's where it holds them all."""
    if is_drafter(plan.arch):
        return  # its sidecar is the assistant itself: nothing of the target goes into it
    base = GGUFModel(plan.base)
    own = [n for n in head_globals(plan.arch) if n in base.by_name] if plan.operation == "sidecar" else []
    src = GGUFModel(plan.source) if own else None
    if src is not None and all(n in src.by_name for n in own):  # the head's own collapse: the source's
        _copies_of(plan, shards, [src.by_name[n] for n in own], "MTP source")
    else:
        own = []  # a source of the MTP tensors alone: the base's (plan_sidecar warns)
    shared = set(shared_tensors(plan.arch)) - set(own)
    mtp_blocks = {lo[0] for r in base.refs if (lo := layer_of(r.name)) and lo[1].startswith("nextn.")}
    if plan.operation in ("attach", "detach"):
        kept = [r for r in base.refs if not ((lo := layer_of(r.name)) and lo[0] in mtp_blocks)]
    else:
        kept = [r for r in base.refs if r.name in shared]
    _copies_of(plan, shards, kept, "base")


def _copies_of(plan: GraftPlan, shards: Sequence[ShardSpec], refs: Sequence[TensorRef], whose: str) -> None:
    """Each of `refs` is planned as a copy of its bytes."""
    planned = {t.name: t for s in shards for t in s.tensors}
    for r in refs:
        t = planned.get(r.name)
        if (t is None or (t.src_path, t.src_offset, tuple(t.ne), t.ggml_type) != (
                r.path, r.abs_offset, tuple(r.info.ne), r.info.ggml_type)):
            raise _bug(plan, f"the {whose}'s tensor {r.name} is not in it as it is in the {whose}")
