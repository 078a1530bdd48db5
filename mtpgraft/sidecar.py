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

from . import naming
from .graft import GraftPlan, KeyChange, _ShardSpec
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
