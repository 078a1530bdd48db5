"""The MTP-only sidecar for a base: what `llama-server -md` (and `-hf` next to trunk-only quants) takes.

    plan = plan_sidecar(base, source, out=None)    # checked like graft.plan_attach
    execute_graft(plan)                            # written like any graft

The layout is convert_hf_to_gguf.py's `--mtp` file: the base's metadata as an attach would leave it
(block_count, nextn_predict_layers, per-layer arrays extended), the tensors the draft shares with
the trunk (the architecture's shared tensors: token_embd, output_norm, output) taken from the base,
and the MTP block taken from the source and renumbered / converted exactly as attach does it. Root
tensors that are the head's own (arch.py's head_globals: deepseek4's output_hc_*, which the
converter's --mtp file takes from the MTP layer) come from the source too, as they are, where it
holds them.
Nothing of the trunk's layers is written, so the file is the head's size plus the shared tensors.
Named `mtp-NAME-TYPE.gguf`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from . import naming
from .arch import head_globals, shared_tensors
from .errors import GraftError, Setting, UsageError
from .gguf_io import GGUFModel, OutTensor
from .graft import (
    GraftPlan,
    KeyChange,
    ShardSpec,
    TensorAction,
    attach_word,
    graft_block,
    graft_provenance,
    provenance,
    quantize_tool,
    source_label,
)
from .llama_quantize import QuantizeTools
from .outputs import check_outputs
from .preflight import assistant_blocker
from .runtimes import MAINLINE


def sidecar_type(actions: Sequence[TensorAction]) -> str:
    """The MTP block's dominant type (most bytes among its 2-D weights), e.g. Q8_0 or F16."""
    c: Counter[str] = Counter()
    for a in actions:
        if len(a.shape) >= 2:
            c[a.to_type] += a.bytes_out
    return (c.most_common(1)[0][0] if c else "F32").upper()


def default_sidecar_path(base: str | os.PathLike[str], actions: Sequence[TensorAction]) -> Path:
    """`Model-Q4_K_M.gguf` -> `mtp-Model-Q8_0.gguf` beside it (NAME without the base's quant tag)."""
    p = Path(base)
    return p.with_name(naming.sidecar_name(naming.untagged_stem(p.name), sidecar_type(actions)))


def plan_sidecar(base_path: str | os.PathLike[str], source_path: str | os.PathLike[str],
                 out: str | os.PathLike[str] | None = None, *, mtp_type: str | None = None,
                 out_dir: str | os.PathLike[str] | None = None, force: bool = False,
                 llama_cpp: str | os.PathLike[str] | None = None, tools: QuantizeTools | None = None,
                 runtime: str = MAINLINE, heads: int | None = None) -> GraftPlan:
    """SOURCE's MTP block checked against BASE as attach checks it (a block of the base's own is
    replaced), planned as BASE's sidecar: `out`, else `mtp-NAME-TYPE.gguf` in `out_dir` or beside
    BASE. llama-quantize is looked up after every check, only when a type needs it. `heads`: only
    the source's first that many MTP blocks (None: all of them)."""
    word = attach_word(mtp_type)
    base, src = GGUFModel(base_path), GGUFModel(source_path)
    g = graft_block(base, src, word, replace=True, heads=heads)
    target = Path(out) if out is not None else _default_target(base.path, g.actions, out_dir)
    check_outputs([target], [*base.paths, *src.paths], force=force)
    head = g.shard_kvs[0]
    kvs = tuple(kv for kv in head if not kv.key.startswith("split."))
    dropped = [KeyChange(kv.key, None, None) for kv in head if kv.key.startswith("split.")]
    mtp, shared = {a.name for a in g.actions}, shared_tensors(base.arch)
    warnings = list(g.warnings)
    own = _head_own(base, src, warnings)
    tensors = tuple(own.get(t.name, t) for ts in g.shard_tensors for t in ts if t.name in shared or t.name in mtp)
    if "token_embd.weight" not in {t.name for t in tensors}:
        warnings.append("the base has no token_embd.weight: the sidecar cannot embed draft tokens")
    return GraftPlan(
        operation="sidecar", base=str(base.path), source=str(src.path), outputs=[str(target)],
        mtp_type=g.type_policy, arch=base.arch, trunk_layers=g.trunk, mtp_layers=g.mtp_layers, tensors=g.actions,
        key_changes=g.key_changes + dropped, warnings=warnings, output_bytes=sum(t.nbytes for t in tensors),
        force=force, shards=(ShardSpec(target, kvs, tensors),),
        source_refs=g.source_refs + tuple(src.by_name[n] for n in own),  # the digest covers every byte taken
        **quantize_tool(g.actions, tools, llama_cpp, runtime),
    )


def _head_own(base: GGUFModel, src: GGUFModel, warnings: list[str]) -> dict[str, OutTensor]:
    """The source's head_globals as copies of its bytes: what its head ran with (a full source's own
    set; an MTP-only file's, the head's). A source without them (the MTP tensors alone, as a Hub
    donor is fetched) leaves the base's, with a warning: one set, never a mix."""
    names = [n for n in head_globals(base.arch) if n in base.by_name]
    if missing := [n for n in names if n not in src.by_name]:
        warnings.append(f"the MTP source has no {', '.join(missing)} (the head's own collapse of the hc streams: "
                        "it holds the MTP tensors alone): the sidecar carries the base's, the trunk's; to keep "
                        "the head's own, make it from a local copy of the whole source file")
        return {}
    own: dict[str, OutTensor] = {}
    for name in names:
        r, b = src.by_name[name], base.by_name[name]
        if tuple(r.info.ne) != tuple(b.info.ne):
            raise GraftError(f"{name} has shape {list(r.info.ne)} in the MTP source, {list(b.info.ne)} in "
                             "the base: the source is another model")
        own[name] = OutTensor(name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset)
    return own


def _default_target(base: Path, actions: Sequence[TensorAction], out_dir: str | os.PathLike[str] | None) -> Path:
    p = default_sidecar_path(base, actions)
    return Path(out_dir) / p.name if out_dir is not None else p


def plan_assistant_sidecar(target: str | os.PathLike[str], assistant: str | os.PathLike[str],
                           out: str | os.PathLike[str] | None = None, *, mtp_type: str | None = None,
                           force: bool = False, heads: int | None = None) -> GraftPlan:
    """Gemma 4's sidecar is its gemma4-assistant itself (nothing of the target goes into it): checked
    against the target (preflight.assistant_blocker) and copied byte for byte as `mtp-NAME-TYPE.gguf`."""
    if mtp_type not in (None, "keep"):
        raise UsageError("a gemma4-assistant is copied as it is (", Setting("mtp_type", "keep"), "); to change "
                         "its type, quantize it: `mtpgraft quantize ASSISTANT --types Q8_0 --name mtp-NAME`")
    if heads is not None:  # its blocks are one drafter's layers, not a chain of heads to cut
        raise UsageError("a gemma4-assistant is copied as it is: its blocks are the layers of one drafter, "
                         "not heads to keep some of; leave ", Setting("heads"), " out")
    t, a = GGUFModel(target), GGUFModel(assistant)
    why = assistant_blocker(t, a)
    if why:
        raise GraftError(why)
    actions = [TensorAction(r.name, r.name, r.info.shape, r.info.type_name, r.info.type_name, "copy",
                            r.info.nbytes, r.info.nbytes) for r in a.refs]
    tensors = tuple(OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset) for r in a.refs)
    dest = Path(out) if out is not None else default_sidecar_path(t.path, actions)
    check_outputs([dest], [*t.paths, *a.paths], force=force)
    n = int(a.get(f"{a.arch}.block_count") or 0)
    kvs = [kv for kv in a.kv.values() if not kv.key.startswith("split.")]
    changes: list[KeyChange] = []
    # the same provenance as any graft; execute_graft fills in the sha256 of the bytes it copies
    provenance(kvs, changes, graft_provenance(source_label(a), "keep"))
    return GraftPlan(operation="sidecar", base=str(t.path), source=str(a.path), outputs=[str(dest)],
                     mtp_type="keep", arch=a.arch, trunk_layers=0, mtp_layers=list(range(n)), tensors=actions,
                     key_changes=changes, warnings=[], output_bytes=sum(x.nbytes for x in tensors), force=force,
                     shards=(ShardSpec(dest, tuple(kvs), tensors),), source_refs=tuple(a.refs))
