"""Attach's planning: check that a source's MTP block fits a base and decide every tensor, key and output shard (headers only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import ggml_types, naming
from ..arch import (
    NEXTN_REQUIRED,
    ArchRule,
    head_globals,
    layer_kind,
    require_mtp_arch,
    same_kind_layers,
)
from ..errors import GraftError, Setting, UsageError
from ..ggml_types import mtp_target
from ..gguf_io import KV, MAX_LAYERS, GGUFModel, GGUFValueType, OutTensor, TensorRef, shown
from ..inspection import (
    Blocks,
    Structure,
    analyse,
    blk_names,
    dominant_type,
    file_type_of,
    layer_of,
    reconcile,
    vocab_fingerprint,
)
from ..llama_quantize import QuantizeTools, resolve_quantize_tools
from ..outputs import check_outputs
from ..runtimes import IK, MAINLINE
from .keys import (
    extend_layer_arrays,
    graft_provenance,
    provenance,
    set_kv,
    source_label,
    source_order,
)
from .types import GraftPlan, KeyChange, ShardSpec, TensorAction

ATTACH_POLICIES = ("keep", "q8_0", "match")


@dataclass(frozen=True)
class _Placement:
    """Where the source's MTP block goes in the base."""

    trunk: int  # the base's trunk length: the MTP block starts at blk.{trunk}
    src_layers: list[int]  # the source's MTP layer indices
    renum: dict[int, int]  # source layer -> output layer
    src_refs: list[TensorRef]  # the source's MTP tensors, in source order


@dataclass(frozen=True)
class _Policy:
    word: str | None  # None (default), "keep", "match" or a tensor type name
    explicit: str | None  # the tensor type for every quantizable MTP weight, if one
    name: str  # what the plan and the provenance key say
    dominant: int | None  # the base trunk's dominant tensor type id


@dataclass(frozen=True)
class GraftedBlock:
    """What attach decides before it knows where the output goes (the sidecar takes the same):
    per base shard its keys and tensors, the MTP block placed, converted and renumbered."""

    base: GGUFModel
    src: GGUFModel
    trunk: int
    mtp_layers: list[int]  # the MTP block's output layer indices
    type_policy: str
    actions: list[TensorAction]
    shard_kvs: tuple[tuple[KV, ...], ...]
    shard_tensors: tuple[tuple[OutTensor, ...], ...]
    key_changes: list[KeyChange]
    warnings: list[str]
    source_refs: tuple[TensorRef, ...]

    def shards(self, outputs: list[Path]) -> tuple[ShardSpec, ...]:
        return tuple(ShardSpec(o, k, t) for o, k, t in zip(outputs, self.shard_kvs, self.shard_tensors, strict=True))


def attach_word(mtp_type: str | None) -> str | None:
    """The MTP type setting, checked: None (the default policy), keep, q8_0, match or a type name."""
    return mtp_target(mtp_type, policies=ATTACH_POLICIES) if mtp_type else None


def quantize_tool(actions: list[TensorAction], tools: QuantizeTools | None, llama_cpp: str | os.PathLike[str] | None,
                  runtime: str = MAINLINE) -> dict[str, Any]:
    """llama-quantize, resolved once after every check and only when an MTP tensor needs it:
    `runtime`'s, or ik_llama.cpp's when a type only ik makes (`match` on an IQ4_KS base). The
    GraftPlan fields llama_quantize and quantize_runtime."""
    made = {a.to_type for a in actions if a.method == "llama-quantize"}
    if not made:
        return {}
    q_runtime = runtime if made <= ggml_types.quantize_makes(runtime) else IK
    if tools is None or tools.runtime != q_runtime:
        tools = resolve_quantize_tools(llama_cpp if q_runtime == runtime else None, runtime=q_runtime)
    return {"llama_quantize": tools.llama_quantize, "quantize_runtime": q_runtime}


def plan_attach(base_path: str | os.PathLike[str], source_path: str | os.PathLike[str],
                out_path: str | os.PathLike[str], *, mtp_type: str | None = None, replace: bool = False,
                force: bool = False, llama_cpp: str | os.PathLike[str] | None = None,
                tools: QuantizeTools | None = None, runtime: str = MAINLINE, heads: int | None = None,
                header_only: bool = False) -> GraftPlan:
    """Check that SOURCE's MTP block fits BASE and plan the output. Reads headers only; every check
    runs before llama-quantize is looked up (`tools` if given, else from `llama_cpp`, and only when
    a type needs it: `runtime`'s, or ik_llama.cpp's for a type only it makes). `heads`: only the
    source's first that many MTP blocks (None: all of them). `header_only`: SOURCE's tensor data is
    a hole (--dry-run's header-only twin of a Hub or safetensors source), so none of its bytes is
    compared with the base's."""
    word = attach_word(mtp_type)
    base, src = GGUFModel(base_path), GGUFModel(source_path)
    outputs = _resolve_outputs(Path(out_path), len(base.shards))
    check_outputs(outputs, base.paths + src.paths, force=force)
    g = graft_block(base, src, word, replace=replace, heads=heads)
    shards = g.shards(outputs)
    return GraftPlan(
        operation="attach", base=str(base.path), source=str(src.path), outputs=[str(o) for o in outputs],
        mtp_type=g.type_policy, arch=base.arch, trunk_layers=g.trunk, mtp_layers=g.mtp_layers, tensors=g.actions,
        key_changes=g.key_changes, warnings=g.warnings + ([] if header_only else _head_globals_dropped(base, src)),
        output_bytes=sum(t.nbytes for s in shards for t in s.tensors), force=force, shards=shards,
        source_refs=g.source_refs, **quantize_tool(g.actions, tools, llama_cpp, runtime),
    )


def _head_globals_dropped(base: GGUFModel, src: GGUFModel) -> list[str]:
    """One file holds one set of the head_globals and its in-file head runs the base's: the
    warning when the source's own differ (a sidecar keeps them), else nothing."""
    differ = [n for n in head_globals(base.arch)
              if n in base.by_name and n in src.by_name and not _same_bytes(base.by_name[n], src.by_name[n])]
    if not differ:
        return []
    return [f"the MTP head's own hc collapse ({', '.join(differ)}) differs from the base's and is dropped: in "
            f"one file llama.cpp's {base.arch} graph_mtp runs the trunk's; to keep the head's own, publish it "
            "as a sidecar (`mtpgraft sidecar`)"]


def _same_bytes(a: TensorRef, b: TensorRef) -> bool:
    """Same type, shape and bytes (small root tensors: read whole)."""
    if (a.info.ggml_type, tuple(a.info.ne)) != (b.info.ggml_type, tuple(b.info.ne)):
        return False
    with open(a.path, "rb") as fa, open(b.path, "rb") as fb:
        fa.seek(a.abs_offset)
        fb.seek(b.abs_offset)
        return fa.read(a.info.nbytes) == fb.read(b.info.nbytes)


def graft_block(base: GGUFModel, src: GGUFModel, word: str | None, *, replace: bool,
                heads: int | None = None) -> GraftedBlock:
    """Every check of SOURCE against BASE, and the keys and tensors of each output shard (of the
    source's first `heads` MTP blocks, or all)."""
    arch = base.arch
    rule = require_mtp_arch(arch)  # first: a gemma4 base gets the reason, not "architecture mismatch"
    if src.arch != arch:
        raise GraftError(f"architecture mismatch: base is {arch}, MTP source is {src.arch}")
    st_b, st_s = loadable(base), loadable(src)
    warnings = _check_same_model(base, src)
    place = _placement(base, st_b, src, st_s, rule, replace, warnings, heads)
    policy = _type_policy(base, place.trunk, word)
    actions, mtp_out = _mtp_tensors(base, st_b, place, policy, warnings, src, rule)
    kvs, tensors, changes = _attach_shards(base, src, rule, place, mtp_out, warnings)
    provenance(kvs[0], changes, graft_provenance(source_label(src), policy.name))
    return GraftedBlock(base, src, place.trunk, [place.renum[i] for i in place.src_layers], policy.name, actions,
                        tuple(tuple(k) for k in kvs), tuple(tuple(t) for t in tensors), changes, warnings,
                        tuple(place.src_refs))


def _resolve_outputs(out: Path, count: int) -> list[Path]:
    if count <= 1:
        return [out]
    return [out.with_name(n) for n in naming.shard_names(naming.strip_gguf(out.name), count)]


def _twin(st: Structure, trunk: int, suffix: str, layers: list[int] | None = None) -> TensorRef | None:
    """The same-named tensor in the base's trunk, searching from the last trunk layer down (only
    `layers`, the trunk layers of the head's own kind, where given: arch.same_kind_layers)."""
    for i in range(trunk - 1, -1, -1) if layers is None else layers:
        for r in st.layers.get(i, []):
            if r.name == f"blk.{i}.{suffix}":
                return r
    return None


def _source_mtp_layers(src: GGUFModel, st: Structure) -> list[int]:
    if st.nextn and st.block_count is not None:
        layers = list(range(st.block_count - st.nextn, st.block_count))
        if all(st.layers.get(i) for i in layers) and all(i in st.eh_layers for i in layers):
            return layers
    if st.eh_layers and st.eh_layers != list(range(st.eh_layers[0], st.eh_layers[0] + len(st.eh_layers))):
        # head k drafts position k: renumbering the rest together would make a head draft another's
        raise GraftError(f"{src.path.name}: the MTP blocks {blk_names(st.eh_layers)} are not consecutive "
                         "(a chain of heads with a gap); take the heads from a complete source")
    if st.eh_layers:
        return list(st.eh_layers)
    raise GraftError(f"{src.path.name} has no MTP block (no blk.N.nextn.eh_proj.weight tensor"
                     + (f"; {st.arch}.nextn_predict_layers is {st.nextn} but its tensors are absent)" if st.nextn else ")"))


def first_heads(layers: list[int], heads: int | None, name: str) -> list[int]:
    """The first `heads` of a file's MTP blocks (all of them when None), as a pruned publication
    keeps them: head k drafts position k, so a chain keeps its front. A UsageError below 1, a
    GraftError beyond the blocks the file has."""
    if heads is None:
        return layers
    if heads < 1:
        raise UsageError("the number of MTP heads to keep (", Setting("heads"), f") must be at least 1, not {heads}")
    if not layers:
        raise GraftError(f"{name} has no MTP block to keep {heads} head(s) of")
    if heads > len(layers):
        raise GraftError(f"{name} has {len(layers)} MTP block(s) ({blk_names(layers)}), fewer than the {heads} "
                         "to keep; pass ", Setting("heads", len(layers)), " or fewer")
    return layers[:heads]


def loadable(model: GGUFModel) -> Structure:
    """The model's structure, or a GraftError when llama.cpp would refuse the file whatever its MTP
    block: no output is ever written from such a file."""
    st = analyse(model)
    if st.defects:
        more = f" (and {len(st.defects) - 1} more problem(s); see `mtpgraft inspect`)" if len(st.defects) > 1 else ""
        raise GraftError(f"{model.path.name}: llama.cpp would refuse this file: {st.defects[0]}{more}")
    return st


def blocks_of(model: GGUFModel, st: Structure) -> Blocks:
    """The file's trunk and MTP blocks as its tensors say; a GraftError when tensors contradict each
    other or the keys so that no reading keeps every layer (st.block_count is set)."""
    b = reconcile(st)
    if b.contradiction:
        raise GraftError(f"{model.path.name}: {b.contradiction}; no graft repairs this without guessing which "
                         "layers are real: convert or download the model again")
    return b
def _check_same_model(base: GGUFModel, src: GGUFModel) -> list[str]:
    """The source's head must have been trained for the base: same n_embd and tokenizer."""
    arch = base.arch
    b_embd, s_embd = base.get_int(f"{arch}.embedding_length"), src.get_int(f"{arch}.embedding_length")
    if b_embd is not None and s_embd is not None and b_embd != s_embd:
        raise GraftError(f"n_embd mismatch: base {b_embd}, MTP source {s_embd}: the source is another model")
    b_vocab, b_hash = vocab_fingerprint(base)
    s_vocab, s_hash = vocab_fingerprint(src)
    if b_vocab is not None and s_vocab is not None and b_vocab != s_vocab:
        raise GraftError(f"vocabulary size mismatch: base has {b_vocab} tokens, MTP source {s_vocab}")
    if b_hash and s_hash and b_hash != s_hash:
        raise GraftError("tokenizer tokens differ between base and MTP source (same size, other tokens): "
                         "the MTP head was trained for another tokenizer")
    return [] if s_hash is not None else ["the MTP source has no tokenizer; the vocabulary could not be compared"]


def _placement(base: GGUFModel, st_b: Structure, src: GGUFModel, st_s: Structure, rule: ArchRule,
               replace: bool, warnings: list[str], heads: int | None) -> _Placement:
    arch = base.arch
    src_layers = first_heads(_source_mtp_layers(src, st_s), heads, src.path.name)
    if rule.max_nextn is not None and len(src_layers) > rule.max_nextn:
        raise GraftError(f"{arch} runs at most {rule.max_nextn} MTP block(s); the source has {len(src_layers)}")
    trunk = _base_trunk(base, st_b, replace)
    if trunk + len(src_layers) > MAX_LAYERS:
        raise GraftError(f"the output would have {trunk + len(src_layers)} blocks; llama.cpp loads at most {MAX_LAYERS}")
    if src_layers[0] != trunk:
        warnings.append(f"MTP block renumbered: source blk.{src_layers[0]} -> blk.{trunk} "
                        f"(source trunk has {src_layers[0]} layers, base {trunk})")
    for i in src_layers:
        names = {r.name for r in st_s.layers[i]}
        missing = [s for s in NEXTN_REQUIRED if f"blk.{i}.{s}" not in names]
        if missing:
            raise GraftError(f"the source's MTP block blk.{i} lacks {', '.join(missing)}")
    renum = {s: trunk + k for k, s in enumerate(src_layers)}
    return _Placement(trunk, src_layers, renum, [r for i in src_layers for r in st_s.layers[i]])


def _base_trunk(base: GGUFModel, st_b: Structure, replace: bool) -> int:
    """Where the MTP block goes: right after the base's trunk as its tensors say, even when the keys
    are wrong (a broken graft whose block_count was not bumped: --replace repairs it). A block
    without nextn tensors is a trunk layer and is never replaced; keys that contradict the tensors
    are refused (GraftError)."""
    name = base.path.name
    if st_b.block_count is None:
        raise GraftError(f"{name} has no {base.arch}.block_count key")
    blocks = blocks_of(base, st_b)
    if blocks.stray_key:
        raise GraftError(f"{name}: {blocks.key_mismatch}; `mtpgraft detach` writes the model without it, then "
                         "graft onto that")
    if st_b.mtp_only_layout or not any(i < blocks.trunk for i in st_b.layers):
        raise GraftError(f"{name} is an MTP-only file, not a base model" if blocks.mtp
                         else f"{name} has no trunk layers to graft onto")
    if blocks.mtp and not replace:
        wrong = f" and keys that do not describe it ({blocks.key_mismatch})" if blocks.key_mismatch else ""
        raise GraftError(f"{name} already has an MTP block ({blk_names(blocks.mtp)}){wrong}; pass ",
                         Setting("replace", True), " to swap it")
    return blocks.trunk


def check_base(base_path: str | os.PathLike[str], *, replace: bool = False) -> None:
    """Every refusal attach gives from the base alone (a file llama.cpp refuses, keys that contradict
    the tensors, an MTP block without `replace`), before any MTP source is fetched."""
    base = GGUFModel(base_path)
    require_mtp_arch(base.arch)
    _base_trunk(base, loadable(base), replace)


def _type_policy(base: GGUFModel, trunk: int, word: str | None) -> _Policy:
    trunk_refs = [r for r in base.refs if not ((lo := layer_of(r.name)) and lo[0] >= trunk)]
    dom = dominant_type(trunk_refs)
    if word is not None:
        explicit = None if word in ("keep", "match") else word.upper()
        return _Policy(word, explicit, word.lower(), dom)
    base_ft = file_type_of(base)
    dom_name = ggml_types.type_name(dom) if dom is not None else None
    if base_ft in ggml_types.FLOAT_FILE_TYPES or (not base_ft and dom_name in ggml_types.FLOAT_TYPES):
        float_t = base_ft if base_ft in ggml_types.FLOAT_FILE_TYPES else dom_name
        return _Policy(None, float_t, f"default ({float_t}: the base is unquantized)", dom)
    return _Policy(None, "Q8_0", "default (q8_0: the base is quantized)", dom)


def _mtp_tensors(base: GGUFModel, st_b: Structure, place: _Placement, policy: _Policy,
                 warnings: list[str], src: GGUFModel, rule: ArchRule) -> tuple[list[TensorAction], list[OutTensor]]:
    """Each MTP tensor's output name, type and method. Copied tensors point at the source's bytes;
    converted and quantized ones are filled in by execute_graft from the actions."""
    n_embd = base.get_int(f"{base.arch}.embedding_length")
    vocab = vocab_fingerprint(base)[0]
    actions: list[TensorAction] = []
    out: list[OutTensor] = []
    for r in place.src_refs:
        i, suffix = layer_of(r.name)  # type: ignore[misc]
        new_name = f"blk.{place.renum[i]}.{suffix}"
        kind = layer_kind(rule, base.arch, src.get, i, place.renum[i])  # the head's own index decides
        twin = _check_shape(r, suffix, st_b, place.trunk, n_embd, vocab,
                            same_kind_layers(rule, base.arch, base.get, place.trunk, kind) if kind else None)
        src_t = ggml_types.BY_ID[r.info.ggml_type]
        target = _target_type(r, new_name, src_t, twin, st_b, place.trunk, policy, warnings)
        method = ("copy" if target is src_t else "convert" if target.name in ggml_types.NUMPY_MAKES
                  else "llama-quantize")
        nbytes = target.nbytes(r.info.ne)
        actions.append(TensorAction(r.name, new_name, list(r.info.ne), src_t.name, target.name, method,
                                    r.info.nbytes, nbytes))
        if method == "copy":
            out.append(OutTensor(new_name, r.info.ne, target.id, nbytes, r.path, r.abs_offset))
        else:
            out.append(OutTensor(new_name, r.info.ne, target.id, nbytes))  # filled in by execute_graft
    return actions, out


def _check_shape(r: TensorRef, suffix: str, st_b: Structure, trunk: int, n_embd: int | None,
                 vocab: int | None, layers: list[int] | None = None) -> TensorRef | None:
    """Shapes must fit the base's hyperparameters. Returns the base twin of a transformer tensor."""
    ne = tuple(r.info.ne)
    if not suffix.startswith("nextn."):
        twin = _twin(st_b, trunk, suffix, layers)
        if twin is not None and tuple(twin.info.ne) != ne:
            raise GraftError(f"MTP tensor {shown(r.name)} has shape {list(ne)} but the base's {shown(twin.name)} "
                             f"is {list(twin.info.ne)}: the source was made for another model size")
        return twin
    if n_embd is not None:
        want = {"nextn.eh_proj.weight": (2 * n_embd, n_embd), "nextn.enorm.weight": (n_embd,),
                "nextn.hnorm.weight": (n_embd,), "nextn.shared_head_norm.weight": (n_embd,)}.get(suffix)
        if suffix in ("nextn.embed_tokens.weight", "nextn.shared_head_head.weight") and vocab:
            want = (n_embd, vocab)
        if want is not None and ne != want:
            raise GraftError(f"MTP tensor {shown(r.name)} has shape {list(ne)} but the base needs {list(want)}")
    return None


def _target_type(r: TensorRef, new_name: str, src_t: ggml_types.TensorType, twin: TensorRef | None,
                 st_b: Structure, trunk: int, policy: _Policy, warnings: list[str]) -> ggml_types.TensorType:
    ne = r.info.ne
    if policy.word == "keep":
        target = src_t
    elif len(ne) < 2:
        target = ggml_types.BY_NAME["F32"]  # norms and biases stay F32, as the converter writes them
    elif not ggml_types.llama_quantizes(new_name, ne, st_b.arch):
        target = src_t  # routers, conv kernels...: llama-quantize leaves them as converted
    elif policy.word == "match":
        ref = twin or _twin(st_b, trunk, "attn_output.weight")
        tid = ref.info.ggml_type if ref is not None else (policy.dominant if policy.dominant is not None else 8)
        target = ggml_types.BY_ID[tid]
    else:
        assert policy.explicit is not None
        target = ggml_types.BY_NAME[policy.explicit]
    if target is src_t:
        return target
    if target.name in ggml_types.TENSOR_NEEDS_IMATRIX | ggml_types.IK_TENSOR_NEEDS_IMATRIX:
        raise GraftError(f"{target.name} needs an importance matrix and llama-imatrix never covers the "
                         f"MTP block; give the MTP block a type such as q8_0, Q6_K or Q4_K")
    if target.name not in ggml_types.NUMPY_MAKES | ggml_types.quantize_makes(MAINLINE) | ggml_types.quantize_makes(IK):
        raise GraftError(f"{new_name} would get type {target.name}, which neither numpy nor llama-quantize "
                         "can make; pass ", Setting("mtp_type", "q8_0"), " or keep")
    if not target.row_fits(ne[0]):
        fallback = ggml_types.BY_NAME["F16"] if src_t.name not in ggml_types.FLOAT_TYPES else src_t
        warnings.append(f"{new_name}: row length {ne[0]} does not fit {target.name}; using {fallback.name}")
        target = fallback
    if target is not src_t and src_t.name not in ggml_types.NUMPY_READS:
        raise GraftError(f"MTP tensor {shown(r.name)} is {src_t.name}, which mtpgraft cannot convert to "
                         f"{target.name} (it reads {', '.join(sorted(ggml_types.NUMPY_READS))}); "
                         "pass ", Setting("mtp_type", "keep"), " to copy it as it is")
    return target


def _attach_shards(base: GGUFModel, src: GGUFModel, rule: ArchRule, place: _Placement, mtp_out: list[OutTensor],
                   warnings: list[str]) -> tuple[list[list[KV]], list[list[OutTensor]], list[KeyChange]]:
    """Every output shard's metadata and tensor list, the MTP block placed where the converter puts it."""
    arch, trunk, n_mtp = base.arch, place.trunk, len(place.src_layers)
    bc_key, nextn_key = f"{arch}.block_count", f"{arch}.nextn_predict_layers"
    dropped = {r.name for r in base.refs if (lo := layer_of(r.name)) and lo[0] >= trunk}
    total_tensors = len(base.refs) - len(dropped) + len(mtp_out)
    all_kvs: list[list[KV]] = []
    all_tensors: list[list[OutTensor]] = []
    changes: list[KeyChange] = []
    for si, shard in enumerate(base.shards):
        kvs = list(shard.kv.values())
        ch: list[KeyChange] = []
        if si == 0:
            set_kv(kvs, bc_key, GGUFValueType.UINT32, trunk + n_mtp, ch)
            src_keys = list(src.kv)
            after = bc_key
            if nextn_key in src.kv:
                pos = src_keys.index(nextn_key)
                after = next((k for k in reversed(src_keys[:pos]) if k in shard.kv), None) or bc_key
            set_kv(kvs, nextn_key, GGUFValueType.UINT32, n_mtp, ch, after=after)
            extend_layer_arrays(kvs, rule, arch, trunk, n_mtp, src, place.src_layers, ch, warnings)
        if "split.tensors.count" in shard.kv:
            set_kv(kvs, "split.tensors.count", GGUFValueType.INT32, total_tensors, ch)
        changes.extend(ch if si == 0 else [KeyChange(f"{shard.path.name}: {c.key}", c.old, c.new) for c in ch])
        all_kvs.append(kvs)
        all_tensors.append([OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset)
                            for r in base.refs if r.shard == si and r.name not in dropped])
    last = all_tensors[-1]
    pos = len(last) if base.is_split else _mtp_position(src, last, place)
    last[pos:pos] = mtp_out
    return all_kvs, all_tensors, changes


def _mtp_position(src: GGUFModel, last: list[OutTensor], place: _Placement) -> int:
    """After the base tensor that precedes the MTP block in the source (the converter's order)."""
    src_order = source_order(src)
    first = src_order.index(place.src_refs[0].name)
    names = {t.name: i for i, t in enumerate(last)}
    for prev in reversed(src_order[:first]):
        lo = layer_of(prev)
        key = f"blk.{place.renum[lo[0]]}.{lo[1]}" if lo and lo[0] in place.renum else prev
        if key in names:
            return names[key] + 1
    return 0 if first == 0 else len(last)

