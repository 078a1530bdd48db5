"""Detach's and extract's planning: the trunk alone, or the MTP block alone as a `-md` sidecar (headers only)."""

from __future__ import annotations

import os
from pathlib import Path

from .. import naming
from ..arch import NEXTN_REQUIRED, require_mtp_arch, rule_for, shared_tensors
from ..errors import GraftError
from ..gguf_io import GGUFModel, GGUFValueType, OutTensor
from ..inspection import Structure, blk_names, layer_of
from ..outputs import check_outputs
from .keys import PROV, del_kv, extend_layer_arrays, set_kv
from .plan import blocks_of, first_heads, loadable
from .types import GraftPlan, KeyChange, ShardSpec, TensorAction


def _mtp_layers_of(model: GGUFModel, what: str) -> tuple[Structure, list[int], int]:
    st = loadable(model)
    rule = rule_for(model.arch)
    if rule is not None and not rule.in_file:
        require_mtp_arch(model.arch)  # a drafter pair: raises why nothing is grafted into either file
    if st.block_count is None:
        raise GraftError(f"{model.path.name} has no {st.arch}.block_count key; llama.cpp cannot load it")
    blocks = blocks_of(model, st)
    if not blocks.mtp:
        if what == "detach" and st.nextn:
            # trunk only but the key kept (glm4moe & co. abort with draft-mtp), or a stray key over
            # trunk layers: drop the key, keep every layer
            return st, [], blocks.trunk
        raise GraftError(f"{model.path.name} has no MTP block to {what}"
                         + (f" ({blocks.key_mismatch})" if blocks.stray_key else ""))
    if not any(i < blocks.mtp[0] for i in st.layers) and what in ("detach", "prune"):
        raise GraftError(f"{model.path.name} is an MTP-only file; there is no trunk to keep")
    # the tensors, not the keys: a broken file's keys may be off by one
    return st, list(blocks.mtp), blocks.trunk


def plan_detach(model_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                force: bool = False, heads: int | None = None) -> GraftPlan:
    """A trunk-only copy: MTP tensors dropped, block_count = trunk, no nextn key, arrays truncated.
    With `heads`, the model's first that many MTP blocks stay (what a pruned publication keeps):
    block_count = trunk + heads, nextn_predict_layers = heads, arrays cut to match."""
    model = GGUFModel(model_path)
    out = Path(out_path)
    check_outputs([out], model.paths, force=force)
    arch = model.arch
    rule = rule_for(arch)
    st, layers, trunk = _mtp_layers_of(model, "detach" if heads is None else "prune")
    kept = first_heads(layers, heads, model.path.name) if heads is not None else []
    kvs = [kv for kv in model.kv.values() if not kv.key.startswith("split.")]
    changes: list[KeyChange] = [KeyChange(k, model.get(k), None) for k in model.kv if k.startswith("split.")]
    set_kv(kvs, f"{arch}.block_count", GGUFValueType.UINT32, trunk + len(kept), changes)
    if kept:
        set_kv(kvs, f"{arch}.nextn_predict_layers", GGUFValueType.UINT32, len(kept), changes)
    else:
        del_kv(kvs, f"{arch}.nextn_predict_layers", changes)
    if rule is not None:
        extend_layer_arrays(kvs, rule, arch, trunk, len(kept), model, kept, changes, [])
    for k in [kv.key for kv in kvs if kv.key.startswith(PROV + "mtp.") and not kept]:
        del_kv(kvs, k, changes)  # kept heads keep their provenance: the source they came from
    dropped = [r for r in model.refs if (lo := layer_of(r.name)) and lo[0] >= trunk + len(kept)]
    keep = [r for r in model.refs if r not in dropped]
    tensors = [OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset) for r in keep]
    actions = [TensorAction(r.name, "", r.info.shape, r.info.type_name, "", "drop", r.info.nbytes, 0)
               for r in dropped]
    return GraftPlan(
        operation="detach", base=str(model.path), source=None, outputs=[str(out)], mtp_type="",
        arch=arch, trunk_layers=trunk, mtp_layers=kept or layers, tensors=actions, key_changes=changes,
        warnings=[], output_bytes=sum(t.nbytes for t in tensors), force=force,
        shards=(ShardSpec(out, tuple(kvs), tuple(tensors)),),
    )


def default_extract_name(model_path: str | os.PathLike[str]) -> Path:
    p = Path(model_path)
    return p.with_name(f"{naming.SIDECAR_PREFIX}{naming.strip_gguf(p.name)}.gguf")


def _require_sidecar_fits(model: GGUFModel, st: Structure, layers: list[int], block_count: int) -> None:
    """An extracted sidecar keeps the metadata: it loads only if the MTP block is complete and every
    per-layer array covers its block_count. A broken file is repaired with attach --replace first."""
    for i in layers:
        names = {r.name for r in st.layers.get(i, [])}
        missing = [s for s in NEXTN_REQUIRED if f"blk.{i}.{s}" not in names]
        if missing:
            raise GraftError(f"{model.path.name}: the MTP block blk.{i} lacks {', '.join(missing)}; "
                             "an MTP-only file made from it would not load")
    rule = rule_for(st.arch)
    for k in rule.layer_arrays if rule is not None else ():
        kv = model.kv.get(f"{st.arch}.{k}")
        if kv is not None and kv.is_array and kv.count != block_count:
            raise GraftError(f"{model.path.name}: key {st.arch}.{k} has {kv.count} entries but the MTP-only "
                             f"file needs {block_count}; repair the model with `mtpgraft attach --replace` first")


def plan_extract(model_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None, *,
                 force: bool = False, heads: int | None = None) -> GraftPlan:
    """An MTP-only sidecar in convert_hf_to_gguf.py's `--mtp` layout (token_embd, output_norm,
    output + blk.N.*, full metadata), which llama-server takes with `-md`. `heads`: only the model's
    first that many MTP blocks, the keys and arrays cut to match (None: all of them)."""
    model = GGUFModel(model_path)
    out = Path(out_path) if out_path else default_extract_name(model.path)
    check_outputs([out], model.paths, force=force)
    arch = model.arch
    st, layers, trunk = _mtp_layers_of(model, "extract")
    rule = rule_for(arch)
    kept = first_heads(layers, heads, model.path.name)
    if rule is not None and rule.max_nextn is not None and len(kept) > rule.max_nextn:
        raise GraftError(f"{model.path.name} has {len(kept)} MTP blocks ({blk_names(kept)}); {arch} runs at "
                         f"most {rule.max_nextn}: an MTP-only file made from it would not load")
    _require_sidecar_fits(model, st, layers, trunk + len(layers))
    layers = kept
    kvs = [kv for kv in model.kv.values() if not kv.key.startswith("split.")]
    changes: list[KeyChange] = [KeyChange(k, model.get(k), None) for k in model.kv if k.startswith("split.")]
    bc_key, nextn_key = f"{arch}.block_count", f"{arch}.nextn_predict_layers"
    set_kv(kvs, bc_key, GGUFValueType.UINT32, trunk + len(layers), changes)
    set_kv(kvs, nextn_key, GGUFValueType.UINT32, len(layers), changes, after=bc_key)
    if rule is not None and heads is not None:  # the arrays cover every block the model has: cut them
        extend_layer_arrays(kvs, rule, arch, trunk, len(layers), model, layers, changes, [])
    # the head_globals too are the file's own (deepseek4's output_hc_*): what its in-file head ran with
    shared = shared_tensors(arch)
    keep = [r for r in model.refs if r.name in shared or ((lo := layer_of(r.name)) and lo[0] in layers)]
    tensors = [OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset) for r in keep]
    actions = [TensorAction(r.name, r.name, r.info.shape, r.info.type_name, r.info.type_name, "copy",
                            r.info.nbytes, r.info.nbytes) for r in keep]
    return GraftPlan(
        operation="extract", base=str(model.path), source=None, outputs=[str(out)], mtp_type="keep",
        arch=arch, trunk_layers=trunk, mtp_layers=layers, tensors=actions, key_changes=changes,
        warnings=[], output_bytes=sum(t.nbytes for t in tensors), force=force,
        shards=(ShardSpec(out, tuple(kvs), tuple(tensors)),),
    )
