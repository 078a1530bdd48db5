"""Executing a graft plan: the MTP block's new types (numpy or llama-quantize), the outputs streamed beside their targets, checked, then installed."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

from .. import ggml_types
from ..errors import InternalError, MtpgraftError
from ..gguf_io import (
    KV,
    REFLINK,
    GGUFModel,
    GGUFValueType,
    Layout,
    OutTensor,
    TensorRef,
    encode_kv,
    read_tensor_rows,
    tensor_nbytes,
    write_gguf,
)
from ..llama_quantize import quantize_argv
from ..outputs import PendingOutput, check_outputs, ensure_space, writing
from ..runtimes import IK
from ..tools import run_tool
from .digest import Digest
from .invariant import check_written
from .keys import PROV
from .sharing import shareable_bytes
from .types import GraftPlan, ShardSpec

F32 = ggml_types.BY_NAME["F32"].id
CONVERT_CHUNK_BYTES = 4 << 20  # f32 per conversion chunk; requant.workers() of them at once
DIGEST_KEY = f"{PROV}mtp.source_sha256"
_NO_DIGEST = "0" * 64  # a sha256's length: the header keeps its size when the digest replaces it


def execute_graft(plan: GraftPlan, *, progress: Callable[[int], None] | None = None,
                  layout: Layout = REFLINK) -> list[Path]:
    """Write the planned output(s): temporary files beside the targets, renamed only on success.
    `layout` says where the tensor data goes (by default so that copy-on-write filesystems share
    the body's blocks with the base; see gguf_io.Layout)."""
    progress = progress or (lambda n: None)
    outputs = [s.path for s in plan.shards]
    check_outputs(outputs, force=plan.force)  # they may have appeared since planning
    ensure_space(outputs[0], plan.output_bytes - shareable_bytes(plan.shards, layout))  # all shards go to one folder
    digest: Digest | None = None
    with contextlib.ExitStack() as stack:
        shards = plan.shards
        if plan.operation in ("attach", "sidecar"):  # both carry a grafted MTP block
            digest = stack.enter_context(Digest(plan.source_refs))
            located: dict[str, tuple[Path, int]] = {}
            if any(a.method == "llama-quantize" for a in plan.tensors):
                workdir = stack.enter_context(PendingOutput(outputs[0], folder=True))
                located = _quantize_mtp(plan, workdir.path)
            shards = _bound(plan, located)
        pending = [stack.enter_context(PendingOutput(s.path)) for s in shards]
        written = []
        for p, s in zip(pending, shards, strict=True):
            with writing(s.path), open(p.path, "wb") as fh:
                written.append(write_gguf(fh, list(s.kvs), list(s.tensors), alignment=plan.alignment,
                                          progress=progress, layout=layout))
        sha = digest.result() if digest is not None else None
        if sha is not None:
            _patch_kv(pending[0].path, written[0].kv_offsets[DIGEST_KEY], encode_kv(DIGEST_KEY, GGUFValueType.STRING, sha))
        check_written(plan, shards, [p.path for p in pending], sha, DIGEST_KEY)  # a failure removes them
        for p in pending:
            p.install(force=plan.force)
    return outputs


def _bound(plan: GraftPlan, located: dict[str, tuple[Path, int]]) -> tuple[ShardSpec, ...]:
    """The shards as written: the digest key a placeholder of its final size (filled in once the
    file is written), each MTP tensor pointed at its bytes: the source (a plain copy already is),
    a numpy conversion of it, or llama-quantize's output (`located`)."""
    refs = {r.name: r for r in plan.source_refs}
    acts = {a.name: a for a in plan.tensors}

    def bound(t: OutTensor) -> OutTensor:
        a = acts.get(t.name)
        if a is None or a.method == "copy":
            return t  # a plain copy already points at the source's bytes
        if a.method == "llama-quantize":
            path, off = located[t.name]
            return OutTensor(t.name, t.ne, t.ggml_type, t.nbytes, path, off)
        return OutTensor(t.name, t.ne, t.ggml_type, t.nbytes, produce=convert_chunks(refs[a.source_name], a.to_type))

    head = plan.shards[0]
    kvs = tuple(encode_kv(DIGEST_KEY, GGUFValueType.STRING, _NO_DIGEST) if kv.key == DIGEST_KEY else kv
                for kv in head.kvs)
    if not any(kv.key == DIGEST_KEY for kv in kvs):  # a bug, never an input
        raise InternalError(f"internal error (a bug in mtpgraft, please report it): the plan has no {DIGEST_KEY}")
    return tuple(replace(s, kvs=kvs if i == 0 else s.kvs, tensors=tuple(bound(t) for t in s.tensors))
                 for i, s in enumerate(plan.shards))


def _patch_kv(path: Path, offset: int, kv: KV) -> None:
    """Overwrite one key-value entry of a written header in place (same key, same encoded length)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(len(kv.raw))
        if old[:len(kv.raw) - 64] != kv.raw[:-64]:  # a bug, never an input
            raise InternalError(f"internal error (a bug in mtpgraft, please report it): {path}: {kv.key} is not "
                                "where it was written")
        f.seek(offset)
        f.write(kv.raw)


def convert_chunks(ref: TensorRef, target: str) -> Callable[[], Iterator[bytes]]:
    """Dequantize a tensor and requantize it in numpy (mtpgraft.requant: gguf-py's bytes), a
    bounded number of rows at a time on a few threads (plan time has refused every type outside
    ggml_types.NUMPY_READS / NUMPY_MAKES)."""
    # numpy and gguf-py load only when a tensor is converted: a plain graft never pays for them
    from gguf import GGMLQuantizationType as Q

    from .. import requant

    src_t = Q(ref.info.ggml_type)
    to = Q[target]
    ne0 = ref.info.ne[0]
    rows = max(1, CONVERT_CHUNK_BYTES // max(1, ne0 * 4))

    def gen() -> Iterator[bytes]:
        yield from requant.ordered_map(lambda raw: requant.convert(raw, src_t, to, ne0),
                                       read_tensor_rows(ref, rows), requant.workers())

    return gen


def _quantize_mtp(plan: GraftPlan, workdir: Path) -> dict[str, tuple[Path, int]]:
    """Give MTP tensors K-quant / IQ types with the real llama-quantize, on a file holding the
    output's metadata and only the MTP tensors (in F32). Returns name -> (file, absolute offset)."""
    targets = {a.name: a.to_type for a in plan.tensors if a.method == "llama-quantize"}
    # ik_llama.cpp's llama-quantize asserts an attn_v.weight per layer (src/llama-quantize.cpp), which
    # a file of the MTP block alone lacks: for it the tensors go under names that say nothing.
    ik = plan.quantize_runtime == IK
    alias = {a.name: f"mtpgraft.{j}.weight" if ik else a.name for j, a in enumerate(plan.tensors)}
    f32_path = workdir / "mtp-f32.gguf"
    with writing(f32_path), open(f32_path, "wb") as fh:
        write_gguf(fh, [kv for kv in plan.shards[0].kvs if not kv.key.startswith("split.")], _mtp_in_f32(plan, alias),
                   alignment=plan.alignment)
    q_path = workdir / "mtp-quant.gguf"
    if plan.llama_quantize is None:  # a bug, never an input: planning resolves it when a tensor needs it
        raise InternalError("internal error (a bug in mtpgraft, please report it): the plan has no llama-quantize")
    run_tool(quantize_argv(plan.llama_quantize, str(f32_path), str(q_path), next(iter(targets.values())),
                           runtime=plan.quantize_runtime, allow_requantize=True, pure=True, threads=1,
                           rules=[(f"^{re.escape(alias[name])}$", t) for name, t in targets.items()]),
             timeout=3600)
    qm = GGUFModel(q_path)
    out: dict[str, tuple[Path, int]] = {}
    for name, tname in targets.items():
        r = qm.by_name.get(alias[name])
        if r is None or r.info.type_name != tname:
            got = r.info.type_name if r else "missing"
            raise MtpgraftError(f"llama-quantize did not give {name} type {tname} (got {got})")
        out[name] = (q_path, r.abs_offset)
    return out


def _mtp_in_f32(plan: GraftPlan, alias: dict[str, str]) -> list[OutTensor]:
    """The plan's MTP tensors in F32 under their `alias` names, copied from the source or converted to it."""
    src_by_out = {a.name: a.source_name for a in plan.tensors}
    refs = {r.name: r for r in plan.source_refs}
    tensors: list[OutTensor] = []
    for t in (t for s in plan.shards for t in s.tensors if t.name in src_by_out):
        r = refs[src_by_out[t.name]]
        n = tensor_nbytes(F32, t.ne)
        if r.info.ggml_type == F32:
            tensors.append(OutTensor(alias[t.name], t.ne, F32, n, r.path, r.abs_offset))
        else:
            tensors.append(OutTensor(alias[t.name], t.ne, F32, n, produce=convert_chunks(r, "F32")))
    return tensors
