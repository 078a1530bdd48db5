"""The MTP-only sidecar for a base: what `llama-server -md` (and `-hf` next to trunk-only quants) takes.

    plan = plan_sidecar(attach_plan, out=None)    # from graft.plan_attach(base, source, ...)
    apply_plan(plan)                               # graft.apply_plan writes it like any graft

The layout is convert_hf_to_gguf.py's `--mtp` file: the base's metadata as an attach would leave it
(block_count, nextn_predict_layers, per-layer arrays extended), the tensors the draft shares with
the trunk (token_embd, output_norm, output) taken from the base, and the MTP block taken from the
source and renumbered / converted exactly as attach does it. Nothing of the trunk's layers is
written, so the file is the head's size plus the shared tensors. Named `mtp-NAME-TYPE.gguf`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import replace
from pathlib import Path

from . import __version__, naming
from .graft import PROV, GraftPlan, KeyChange, _provenance, _ShardSpec, source_label
from .outputs import check_outputs

# What a draft shares with its target and llama.cpp reads from the sidecar itself (qwen35/qwen35moe,
# glm4moe: nextn.embed_tokens / shared_head_head fall back to these).
SHARED_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")


def sidecar_type(plan: GraftPlan) -> str:
    """The MTP block's dominant type (most bytes among its 2-D weights), e.g. Q8_0 or F16."""
    c: Counter[str] = Counter()
    for a in plan.tensors:
        if len(a.shape) >= 2:
            c[a.to_type] += a.bytes_out
    return (c.most_common(1)[0][0] if c else "F32").upper()


def default_sidecar_path(base: str | os.PathLike[str], plan: GraftPlan) -> Path:
    """`Model-Q4_K_M.gguf` -> `mtp-Model-Q8_0.gguf` beside it (NAME without the base's quant tag)."""
    from .hub.sidecars import model_stem

    p = Path(base)
    return p.with_name(naming.sidecar_name(model_stem(p.name), sidecar_type(plan)))


def plan_sidecar(attach: GraftPlan, out: str | os.PathLike[str] | None = None, *,
                 force: bool = False) -> GraftPlan:
    """Turn an attach plan (base + MTP source, checked against each other) into the sidecar's plan."""
    target = Path(out) if out is not None else default_sidecar_path(attach.base, attach)
    check_outputs([target], [attach.base, *([attach.source] if attach.source else [])], force=force)
    head = attach._shards[0]
    kvs = [kv for kv in head.kvs if not kv.key.startswith("split.")]
    dropped = [KeyChange(kv.key, None, None) for kv in head.kvs if kv.key.startswith("split.")]
    mtp = {a.name for a in attach.tensors}
    tensors = [t for s in attach._shards for t in s.tensors if t.name in SHARED_TENSORS or t.name in mtp]
    shared = [t.name for t in tensors if t.name in SHARED_TENSORS]
    warnings = list(attach.warnings)
    if "token_embd.weight" not in shared:
        warnings.append("the base has no token_embd.weight: the sidecar cannot embed draft tokens")
    return replace(attach, operation="sidecar", outputs=[str(target)], key_changes=attach.key_changes + dropped,
                   warnings=warnings, output_bytes=sum(t.nbytes for t in tensors), force=force,
                   _shards=[_ShardSpec(target, kvs, tensors)])


def plan_assistant_sidecar(target: str | os.PathLike[str], assistant: str | os.PathLike[str],
                           out: str | os.PathLike[str] | None = None, *, mtp_type: str | None = None,
                           force: bool = False) -> GraftPlan:
    """Gemma 4's sidecar is its gemma4-assistant itself (nothing of the target goes into it): checked
    against the target (preflight.assistant_blocker) and copied byte for byte as `mtp-NAME-TYPE.gguf`."""
    from .errors import GraftError, Setting, UsageError
    from .gguf_io import GGUFModel, OutTensor
    from .graft import TensorAction
    from .preflight import assistant_blocker

    if mtp_type not in (None, "keep"):
        raise UsageError("a gemma4-assistant is copied as it is (", Setting("mtp_type", "keep"), "); to change "
                         "its type, quantize it: `mtpgraft quantize ASSISTANT --types Q8_0 --name mtp-NAME`")
    t, a = GGUFModel(target), GGUFModel(assistant)
    why = assistant_blocker(t, a)
    if why:
        raise GraftError(why)
    actions = [TensorAction(r.name, r.name, r.info.shape, r.info.type_name, r.info.type_name, "copy",
                            r.info.nbytes, r.info.nbytes) for r in a.refs]
    tensors = [OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset) for r in a.refs]
    c: Counter[str] = Counter()
    for x in actions:
        if len(x.shape) >= 2:
            c[x.to_type] += x.bytes_out
    from .hub.sidecars import model_stem

    dest = Path(out) if out is not None else t.path.with_name(
        naming.sidecar_name(model_stem(t.path.name), (c.most_common(1)[0][0] if c else "F32").upper()))
    check_outputs([dest], [*t.paths, *a.paths], force=force)
    n = int(a.get(f"{a.arch}.block_count") or 0)
    kvs = [kv for kv in a.kv.values() if not kv.key.startswith("split.")]
    changes: list[KeyChange] = []
    # the same provenance as any graft; apply_plan fills in the sha256 of the bytes it copies
    _provenance(kvs, changes, {f"{PROV}version": __version__, f"{PROV}mtp.source": source_label(a),
                               f"{PROV}mtp.source_sha256": "", f"{PROV}mtp.type_policy": "keep"})
    return GraftPlan(operation="sidecar", base=str(t.path), source=str(a.path), outputs=[str(dest)],
                     mtp_type="keep", arch=a.arch, trunk_layers=0, mtp_layers=list(range(n)), tensors=actions,
                     key_changes=changes, warnings=[], output_bytes=sum(x.nbytes for x in tensors), force=force,
                     _shards=[_ShardSpec(dest, kvs, tensors)], _source_refs=list(a.refs))
