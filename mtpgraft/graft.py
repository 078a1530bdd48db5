"""The graft: attach an MTP block to a base GGUF, detach it, or extract it as a sidecar.

Each operation is two steps: `plan_*` reads headers only, runs every check and returns a frozen
GraftPlan (what `--dry-run` prints); `apply_plan` streams the output tensor by tensor into temporary
files beside the target and renames them only when everything was written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__, ggml_types, naming
from .arch import (
    NEXTN_REQUIRED,
    ArchRule,
    require_mtp_arch,
    rule_for,
)
from .errors import GraftError, InternalError, MtpgraftError, Setting
from .ggml_types import mtp_target
from .gguf_io import (
    KV,
    MAX_LAYERS,
    REFLINK,
    GGUFModel,
    GGUFValueType,
    Layout,
    OutTensor,
    TensorRef,
    encode_kv,
    main_input,
    read_tensor_rows,
    shown,
    tensor_nbytes,
    write_gguf,
)
from .inspection import (
    LAYER_ARRAY_ITEMS,
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
from .invariant import check_written
from .outputs import PendingOutput, check_outputs, ensure_space, writing
from .runtimes import IK, MAINLINE

F32 = ggml_types.BY_NAME["F32"].id
ATTACH_POLICIES = ("keep", "q8_0", "match")
PROV = "mtpgraft."
CHUNK_BYTES = 16 << 20
CONVERT_CHUNK_BYTES = 4 << 20  # f32 per conversion chunk; requant.workers() of them at once
_NO_DIGEST = "0" * 64  # a sha256's length: the header keeps its size when the digest replaces it


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class TensorAction:
    """One MTP tensor in the output: where it comes from and what happens to it."""

    source_name: str
    name: str
    shape: list[int]
    from_type: str
    to_type: str
    method: str  # "copy" | "convert" | "llama-quantize"
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class KeyChange:
    key: str
    old: Any
    new: Any


@dataclass(frozen=True)
class _ShardSpec:
    path: Path
    kvs: list[KV]
    tensors: list[OutTensor]


@dataclass(frozen=True)
class GraftPlan:
    operation: str  # "attach" | "detach" | "extract"
    base: str
    source: str | None
    outputs: list[str]
    mtp_type: str
    arch: str
    trunk_layers: int
    mtp_layers: list[int]
    tensors: list[TensorAction]
    key_changes: list[KeyChange]
    warnings: list[str]
    output_bytes: int
    force: bool
    _shards: list[_ShardSpec] = field(default_factory=list, repr=False, compare=False)
    _source_refs: list[TensorRef] = field(default_factory=list, repr=False, compare=False)
    _quantize_with: str | None = field(default=None, repr=False, compare=False)
    _quantize_runtime: str = field(default=MAINLINE, repr=False, compare=False)  # whose llama-quantize that is

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("_shards", "_source_refs", "_quantize_with", "_quantize_runtime"):
            d.pop(k, None)
        return d


# --------------------------------------------------------------------------- helpers


def _resolve_outputs(out: Path, count: int) -> list[Path]:
    if count <= 1:
        return [out]
    return [out.with_name(n) for n in naming.shard_names(naming.strip_gguf(out.name), count)]


def _kv_like(old: KV, value: Any) -> KV:
    """Re-encode `value` with the same key and types as `old`."""
    return encode_kv(old.key, old.vtype, value, old.item_type)


def _set_kv(kvs: list[KV], key: str, vtype: GGUFValueType, value: Any, changes: list[KeyChange],
            *, after: str | None = None, item_type: GGUFValueType | None = None) -> None:
    for i, kv in enumerate(kvs):
        if kv.key == key:
            new = encode_kv(key, kv.vtype if kv.vtype != GGUFValueType.ARRAY else vtype, value,
                            kv.item_type if kv.vtype == GGUFValueType.ARRAY else item_type)
            if kv.raw != new.raw:
                changes.append(KeyChange(key, _short(kv.value), _short(value)))
            kvs[i] = new
            return
    new = encode_kv(key, vtype, value, item_type)
    pos = len(kvs)
    if after is not None:
        for i, kv in enumerate(kvs):
            if kv.key == after:
                pos = i + 1
                break
    kvs.insert(pos, new)
    changes.append(KeyChange(key, None, _short(value)))


def _del_kv(kvs: list[KV], key: str, changes: list[KeyChange]) -> None:
    for i, kv in enumerate(kvs):
        if kv.key == key:
            changes.append(KeyChange(key, _short(kv.value), None))
            del kvs[i]
            return


def _short(v: Any) -> Any:
    if isinstance(v, list) and len(v) > 12:
        return v[:4] + ["..."] + v[-4:] + [f"({len(v)} entries)"]
    return v


def _twin(st: Structure, trunk: int, suffix: str) -> TensorRef | None:
    """The same-named tensor in the base's trunk, searching from the last trunk layer down."""
    for i in range(trunk - 1, -1, -1):
        for r in st.layers.get(i, []):
            if r.name == f"blk.{i}.{suffix}":
                return r
    return None


def _source_mtp_layers(src: GGUFModel, st: Structure) -> list[int]:
    if st.nextn and st.block_count is not None:
        layers = list(range(st.block_count - st.nextn, st.block_count))
        if all(st.layers.get(i) for i in layers) and all(i in st.eh_layers for i in layers):
            return layers
    if st.eh_layers:
        return list(st.eh_layers)
    raise GraftError(f"{src.path.name} has no MTP block (no blk.N.nextn.eh_proj.weight tensor"
                     + (f"; {st.arch}.nextn_predict_layers is {st.nextn} but its tensors are absent)" if st.nextn else ")"))


def _extend_layer_arrays(kvs: list[KV], rule: ArchRule, arch: str, trunk: int, n_mtp: int,
                         src: GGUFModel | None, src_layers: list[int], changes: list[KeyChange],
                         warnings: list[str]) -> None:
    """Per-layer arrays cut to the trunk, then given the MTP block's entries (from the source's
    array, its scalar, the architecture's default, or the last trunk layer's value)."""
    for suffix in rule.layer_arrays:
        key = f"{arch}.{suffix}"
        idx = next((i for i, kv in enumerate(kvs) if kv.key == key), None)
        if idx is None or not kvs[idx].is_array:
            continue
        old = kvs[idx]
        if old.count < trunk:
            raise GraftError(f"key {key} has {old.count} entries but the trunk has {trunk} layers; "
                             "the file is broken beyond what a graft repairs")
        base_vals = list(old.value)[:trunk]
        mtp_vals = _mtp_array_values(key, suffix, rule, base_vals, n_mtp, src, src_layers, warnings)
        new_vals = base_vals + mtp_vals
        if new_vals != list(old.value):
            kvs[idx] = _kv_like(old, new_vals)
            changes.append(KeyChange(key, _short(list(old.value)), _short(new_vals)))


def _mtp_array_values(key: str, suffix: str, rule: ArchRule, base_vals: list[Any], n_mtp: int,
                      src: GGUFModel | None, src_layers: list[int], warnings: list[str]) -> list[Any]:
    if not n_mtp:
        return []
    skv = src.kv.get(key) if src is not None else None
    if skv is not None and skv.is_array and skv.item_type in LAYER_ARRAY_ITEMS and all(i < skv.count for i in src_layers):
        sv = skv.value
        return [sv[i] for i in src_layers]
    if skv is not None and not skv.is_array:
        return [skv.value] * n_mtp
    if suffix in rule.mtp_array_defaults:
        return [rule.mtp_array_defaults[suffix]] * n_mtp
    if not base_vals:
        raise GraftError(f"key {key} is empty and the source gives no value for the MTP block")
    warnings.append(f"{key}: the source gives no value for the MTP block; repeating the "
                    f"last trunk layer's {base_vals[-1]!r}")
    return [base_vals[-1]] * n_mtp


def _provenance(kvs: list[KV], changes: list[KeyChange], values: dict[str, str]) -> None:
    """mtpgraft's own keys, always strings: an old one of another type is replaced, not re-encoded."""
    for kv in [kv for kv in kvs if kv.key.startswith(PROV)]:
        if kv.key not in values or kv.vtype != GGUFValueType.STRING:
            _del_kv(kvs, kv.key, changes)
    for k, v in values.items():
        _set_kv(kvs, k, GGUFValueType.STRING, v, changes)


# A tensors-only source made by mtpgraft.sources (a Hub donor's MTP block, a converted safetensors
# head) says what it was made from and which donor tensor the MTP block followed.
CACHE_ORIGIN, CACHE_AFTER = "mtpgraft.cache.origin", "mtpgraft.cache.after"


def source_label(src: GGUFModel) -> str:
    """What provenance records as the MTP source: the original reference, else the file name."""
    origin = src.get(CACHE_ORIGIN)
    return origin if isinstance(origin, str) and origin else src.path.name


def _source_order(src: GGUFModel) -> list[str]:
    after = src.get(CACHE_AFTER)
    return ([after] if isinstance(after, str) and after else []) + [r.name for r in src.refs]


# --------------------------------------------------------------------------- type conversion


def _convert_chunks(ref: TensorRef, target: str) -> Callable[[], Iterator[bytes]]:
    """Dequantize a tensor and requantize it in numpy (mtpgraft.requant: gguf-py's bytes), a
    bounded number of rows at a time on a few threads (plan time has refused every type outside
    ggml_types.NUMPY_READS / NUMPY_MAKES)."""
    from gguf import GGMLQuantizationType as Q  # gguf-py's enum, for its numpy (de)quantizers

    from . import requant

    src_t = Q(ref.info.ggml_type)
    to = Q[target]
    ne0 = ref.info.ne[0]
    rows = max(1, CONVERT_CHUNK_BYTES // max(1, ne0 * 4))

    def gen() -> Iterator[bytes]:
        yield from requant.ordered_map(lambda raw: requant.convert(raw, src_t, to, ne0),
                                       read_tensor_rows(ref, rows), requant.workers())

    return gen


# --------------------------------------------------------------------------- attach


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


def plan_attach(base_path: str | os.PathLike[str], source_path: str | os.PathLike[str],
                out_path: str | os.PathLike[str], *, mtp_type: str | None = None, replace: bool = False,
                force: bool = False, llama_cpp: str | None = None, runtime: str = MAINLINE) -> GraftPlan:
    """Check that SOURCE's MTP block fits BASE and plan the output. Reads headers only; every check
    runs before llama-quantize is looked up (and only when a type needs it): `runtime`'s, or
    ik_llama.cpp's when a type only ik makes (`match` on an IQ4_KS base)."""
    word = mtp_target(mtp_type, policies=ATTACH_POLICIES) if mtp_type else None
    base, src = GGUFModel(base_path), GGUFModel(source_path)
    outputs = _resolve_outputs(Path(out_path), len(base.shards))
    check_outputs(outputs, base.paths + src.paths, force=force)
    arch = base.arch
    rule = require_mtp_arch(arch)  # first: a gemma4 base gets the reason, not "architecture mismatch"
    if src.arch != arch:
        raise GraftError(f"architecture mismatch: base is {arch}, MTP source is {src.arch}")
    st_b, st_s = _loadable(base), _loadable(src)
    warnings = _check_same_model(base, src)
    place = _placement(base, st_b, src, st_s, rule, replace, warnings)
    policy = _type_policy(base, place.trunk, word)
    actions, mtp_out = _mtp_tensors(base, st_b, place, policy, warnings)
    shards, changes = _attach_shards(base, src, outputs, rule, place, mtp_out, warnings)
    _provenance(shards[0].kvs, changes, {
        f"{PROV}version": __version__,
        f"{PROV}mtp.source": source_label(src),
        f"{PROV}mtp.source_sha256": "",  # apply_plan fills in the sha256 of the bytes it copies
        f"{PROV}mtp.type_policy": policy.name,
    })
    quantize_tool, made = None, {a.to_type for a in actions if a.method == "llama-quantize"}
    if made:
        from .tools import find_tool

        q_runtime = runtime if made <= ggml_types.quantize_makes(runtime) else IK
        quantize_tool = str(find_tool("llama-quantize", llama_cpp if q_runtime == runtime else None, q_runtime))
    return GraftPlan(
        operation="attach", base=str(base.path), source=str(src.path), outputs=[str(o) for o in outputs],
        mtp_type=policy.name, arch=arch, trunk_layers=place.trunk,
        mtp_layers=[place.renum[i] for i in place.src_layers], tensors=actions, key_changes=changes,
        warnings=warnings, output_bytes=sum(t.nbytes for s in shards for t in s.tensors), force=force,
        _shards=shards, _source_refs=place.src_refs, _quantize_with=quantize_tool,
        _quantize_runtime=q_runtime if made else MAINLINE,
    )


def _loadable(model: GGUFModel) -> Structure:
    """The model's structure, or a GraftError when llama.cpp would refuse the file whatever its MTP
    block: no output is ever written from such a file."""
    st = analyse(model)
    if st.defects:
        more = f" (and {len(st.defects) - 1} more problem(s); see `mtpgraft inspect`)" if len(st.defects) > 1 else ""
        raise GraftError(f"{model.path.name}: llama.cpp would refuse this file: {st.defects[0]}{more}")
    return st


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
               replace: bool, warnings: list[str]) -> _Placement:
    arch = base.arch
    src_layers = _source_mtp_layers(src, st_s)
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
    blocks = _blocks(base, st_b)
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
    _base_trunk(base, _loadable(base), replace)


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
                 warnings: list[str]) -> tuple[list[TensorAction], list[OutTensor]]:
    """Each MTP tensor's output name, type and method. Copied tensors point at the source's bytes;
    converted and quantized ones are filled in by apply_plan from the actions."""
    n_embd = base.get_int(f"{base.arch}.embedding_length")
    vocab = vocab_fingerprint(base)[0]
    actions: list[TensorAction] = []
    out: list[OutTensor] = []
    for r in place.src_refs:
        i, suffix = layer_of(r.name)  # type: ignore[misc]
        new_name = f"blk.{place.renum[i]}.{suffix}"
        twin = _check_shape(r, suffix, st_b, place.trunk, n_embd, vocab)
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
            out.append(OutTensor(new_name, r.info.ne, target.id, nbytes))  # filled in by apply_plan
    return actions, out


def _check_shape(r: TensorRef, suffix: str, st_b: Structure, trunk: int, n_embd: int | None,
                 vocab: int | None) -> TensorRef | None:
    """Shapes must fit the base's hyperparameters. Returns the base twin of a transformer tensor."""
    ne = tuple(r.info.ne)
    if not suffix.startswith("nextn."):
        twin = _twin(st_b, trunk, suffix)
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


def _attach_shards(base: GGUFModel, src: GGUFModel, outputs: list[Path], rule: ArchRule, place: _Placement,
                   mtp_out: list[OutTensor], warnings: list[str]) -> tuple[list[_ShardSpec], list[KeyChange]]:
    """Every output shard's metadata and tensor list, the MTP block placed where the converter puts it."""
    arch, trunk, n_mtp = base.arch, place.trunk, len(place.src_layers)
    bc_key, nextn_key = f"{arch}.block_count", f"{arch}.nextn_predict_layers"
    dropped = {r.name for r in base.refs if (lo := layer_of(r.name)) and lo[0] >= trunk}
    total_tensors = len(base.refs) - len(dropped) + len(mtp_out)
    shards: list[_ShardSpec] = []
    changes: list[KeyChange] = []
    for si, shard in enumerate(base.shards):
        kvs = list(shard.kv.values())
        ch: list[KeyChange] = []
        if si == 0:
            _set_kv(kvs, bc_key, GGUFValueType.UINT32, trunk + n_mtp, ch)
            src_keys = list(src.kv)
            after = bc_key
            if nextn_key in src.kv:
                pos = src_keys.index(nextn_key)
                after = next((k for k in reversed(src_keys[:pos]) if k in shard.kv), None) or bc_key
            _set_kv(kvs, nextn_key, GGUFValueType.UINT32, n_mtp, ch, after=after)
            _extend_layer_arrays(kvs, rule, arch, trunk, n_mtp, src, place.src_layers, ch, warnings)
        if "split.tensors.count" in shard.kv:
            _set_kv(kvs, "split.tensors.count", GGUFValueType.INT32, total_tensors, ch)
        changes.extend(ch if si == 0 else [KeyChange(f"{shard.path.name}: {c.key}", c.old, c.new) for c in ch])
        tensors = [OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset)
                   for r in base.refs if r.shard == si and r.name not in dropped]
        shards.append(_ShardSpec(outputs[si], kvs, tensors))
    last = shards[-1]
    pos = len(last.tensors) if base.is_split else _mtp_position(src, last, place)
    last.tensors[pos:pos] = mtp_out
    return shards, changes


def _mtp_position(src: GGUFModel, last: _ShardSpec, place: _Placement) -> int:
    """After the base tensor that precedes the MTP block in the source (the converter's order)."""
    src_order = _source_order(src)
    first = src_order.index(place.src_refs[0].name)
    names = {t.name: i for i, t in enumerate(last.tensors)}
    for prev in reversed(src_order[:first]):
        lo = layer_of(prev)
        key = f"blk.{place.renum[lo[0]]}.{lo[1]}" if lo and lo[0] in place.renum else prev
        if key in names:
            return names[key] + 1
    return 0 if first == 0 else len(last.tensors)


# --------------------------------------------------------------------------- detach / extract


def _blocks(model: GGUFModel, st: Structure) -> Blocks:
    """The file's trunk and MTP blocks as its tensors say; a GraftError when tensors contradict each
    other or the keys so that no reading keeps every layer (st.block_count is set)."""
    b = reconcile(st)
    if b.contradiction:
        raise GraftError(f"{model.path.name}: {b.contradiction}; no graft repairs this without guessing which "
                         "layers are real: convert or download the model again")
    return b


def _mtp_layers_of(model: GGUFModel, what: str) -> tuple[Structure, list[int], int]:
    st = _loadable(model)
    rule = rule_for(model.arch)
    if rule is not None and not rule.in_file:
        require_mtp_arch(model.arch)  # a drafter pair: raises why nothing is grafted into either file
    if st.block_count is None:
        raise GraftError(f"{model.path.name} has no {st.arch}.block_count key; llama.cpp cannot load it")
    blocks = _blocks(model, st)
    if not blocks.mtp:
        if what == "detach" and st.nextn:
            # trunk only but the key kept (glm4moe & co. abort with draft-mtp), or a stray key over
            # trunk layers: drop the key, keep every layer
            return st, [], blocks.trunk
        raise GraftError(f"{model.path.name} has no MTP block to {what}"
                         + (f" ({blocks.key_mismatch})" if blocks.stray_key else ""))
    if not any(i < blocks.mtp[0] for i in st.layers) and what == "detach":
        raise GraftError(f"{model.path.name} is an MTP-only file; there is no trunk to keep")
    # the tensors, not the keys: a broken file's keys may be off by one
    return st, list(blocks.mtp), blocks.trunk


def plan_detach(model_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                force: bool = False) -> GraftPlan:
    """A trunk-only copy: MTP tensors dropped, block_count = trunk, no nextn key, arrays truncated."""
    model = GGUFModel(model_path)
    out = Path(out_path)
    check_outputs([out], model.paths, force=force)
    arch = model.arch
    rule = rule_for(arch)
    st, layers, trunk = _mtp_layers_of(model, "detach")
    kvs = [kv for kv in model.kv.values() if not kv.key.startswith("split.")]
    changes: list[KeyChange] = [KeyChange(k, model.get(k), None) for k in model.kv if k.startswith("split.")]
    _set_kv(kvs, f"{arch}.block_count", GGUFValueType.UINT32, trunk, changes)
    _del_kv(kvs, f"{arch}.nextn_predict_layers", changes)
    if rule is not None:
        _extend_layer_arrays(kvs, rule, arch, trunk, 0, None, [], changes, [])
    for k in [kv.key for kv in kvs if kv.key.startswith(PROV + "mtp.")]:
        _del_kv(kvs, k, changes)
    dropped = [r for r in model.refs if (lo := layer_of(r.name)) and lo[0] >= trunk]
    keep = [r for r in model.refs if r not in dropped]
    tensors = [OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset) for r in keep]
    actions = [TensorAction(r.name, "", r.info.shape, r.info.type_name, "", "drop", r.info.nbytes, 0)
               for r in dropped]
    return GraftPlan(
        operation="detach", base=str(model.path), source=None, outputs=[str(out)], mtp_type="",
        arch=arch, trunk_layers=trunk, mtp_layers=layers, tensors=actions, key_changes=changes,
        warnings=[], output_bytes=sum(t.nbytes for t in tensors), force=force,
        _shards=[_ShardSpec(out, kvs, tensors)],
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
                 force: bool = False) -> GraftPlan:
    """An MTP-only sidecar in convert_hf_to_gguf.py's `--mtp` layout (token_embd, output_norm,
    output + blk.N.*, full metadata), which llama-server takes with `-md`."""
    model = GGUFModel(model_path)
    out = Path(out_path) if out_path else default_extract_name(model.path)
    check_outputs([out], model.paths, force=force)
    arch = model.arch
    st, layers, trunk = _mtp_layers_of(model, "extract")
    rule = rule_for(arch)
    if rule is not None and rule.max_nextn is not None and len(layers) > rule.max_nextn:
        raise GraftError(f"{model.path.name} has {len(layers)} MTP blocks ({blk_names(layers)}); {arch} runs at "
                         f"most {rule.max_nextn}: an MTP-only file made from it would not load")
    _require_sidecar_fits(model, st, layers, trunk + len(layers))
    kvs = [kv for kv in model.kv.values() if not kv.key.startswith("split.")]
    changes: list[KeyChange] = [KeyChange(k, model.get(k), None) for k in model.kv if k.startswith("split.")]
    bc_key, nextn_key = f"{arch}.block_count", f"{arch}.nextn_predict_layers"
    _set_kv(kvs, bc_key, GGUFValueType.UINT32, trunk + len(layers), changes)
    _set_kv(kvs, nextn_key, GGUFValueType.UINT32, len(layers), changes, after=bc_key)
    shared = ("token_embd.weight", "output_norm.weight", "output.weight")
    keep = [r for r in model.refs if r.name in shared or ((lo := layer_of(r.name)) and lo[0] in layers)]
    tensors = [OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset) for r in keep]
    actions = [TensorAction(r.name, r.name, r.info.shape, r.info.type_name, r.info.type_name, "copy",
                            r.info.nbytes, r.info.nbytes) for r in keep]
    return GraftPlan(
        operation="extract", base=str(model.path), source=None, outputs=[str(out)], mtp_type="keep",
        arch=arch, trunk_layers=trunk, mtp_layers=layers, tensors=actions, key_changes=changes,
        warnings=[], output_bytes=sum(t.nbytes for t in tensors), force=force,
        _shards=[_ShardSpec(out, kvs, tensors)],
    )


# --------------------------------------------------------------------------- execution


def _hash_refs(refs: Iterable[TensorRef], stop: threading.Event) -> str | None:
    """sha256 of the tensors' bytes in order; None when `stop` is set first."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK_BYTES))
    for r in refs:
        with open(r.path, "rb", buffering=0) as f:
            f.seek(r.abs_offset)
            left = r.info.nbytes
            while left:
                if stop.is_set():
                    return None
                n = f.readinto(buf[:min(left, CHUNK_BYTES)])
                if not n:
                    raise MtpgraftError(f"{r.path}: unexpected end of file reading {r.name}")
                h.update(buf[:n])
                left -= n
    return h.hexdigest()


class _Digest:
    """The sha256 of the MTP source's bytes, computed in a thread while the output is written: the
    body's copy runs in the kernel, so the pass costs no time of its own, and it brings the MTP
    bytes into the page cache before their copy (after the body) reads them. Leaving the block
    stops the thread and waits for it."""

    def __init__(self, refs: Iterable[TensorRef]) -> None:
        self._stop = threading.Event()
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(list(refs),), name="mtpgraft-digest", daemon=True)

    def _run(self, refs: list[TensorRef]) -> None:
        try:
            self._digest = _hash_refs(refs, self._stop)
        except BaseException as e:  # handed to the main thread by result()
            self._error = e

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest

    def __enter__(self) -> _Digest:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def _quantize_mtp(plan: GraftPlan, workdir: Path) -> dict[str, tuple[Path, int]]:
    """Give MTP tensors K-quant / IQ types with the real llama-quantize, on a file holding the
    output's metadata and only the MTP tensors (in F32). Returns name -> (file, absolute offset)."""
    from .gguf_io import GGUFModel as _M
    from .tools import run_tool

    targets = {a.name: a.to_type for a in plan.tensors if a.method == "llama-quantize"}
    src_by_out = {a.name: a.source_name for a in plan.tensors}
    refs = {r.name: r for r in plan._source_refs}
    # ik_llama.cpp's llama-quantize asserts an attn_v.weight per layer (src/llama-quantize.cpp), which
    # a file of the MTP block alone lacks: for it the tensors go under names that say nothing, and
    # without --pure, which there skips the --custom-q rules.
    ik = plan._quantize_runtime == IK
    alias = {a.name: f"mtpgraft.{j}.weight" if ik else a.name for j, a in enumerate(plan.tensors)}
    kvs = [kv for kv in plan._shards[0].kvs if not kv.key.startswith("split.")]
    tensors: list[OutTensor] = []
    for t in (t for s in plan._shards for t in s.tensors):
        if t.name not in src_by_out:
            continue
        r, n = refs[src_by_out[t.name]], tensor_nbytes(F32, t.ne)
        if r.info.ggml_type == F32:
            tensors.append(OutTensor(alias[t.name], t.ne, F32, n, r.path, r.abs_offset))
        else:
            tensors.append(OutTensor(alias[t.name], t.ne, F32, n, produce=_convert_chunks(r, "F32")))
    f32_path = workdir / "mtp-f32.gguf"
    with writing(f32_path), open(f32_path, "wb") as fh:
        write_gguf(fh, kvs, tensors, alignment=plan_alignment(plan))
    q_path = workdir / "mtp-quant.gguf"
    cmd: list[str] = [plan._quantize_with or "llama-quantize", "--allow-requantize"] + ([] if ik else ["--pure"])
    cmd += ggml_types.quantize_rules_argv(plan._quantize_runtime,
                                          [(f"^{re.escape(alias[name])}$", tname) for name, tname in targets.items()])
    first = next(iter(targets.values()))
    cmd += [str(f32_path), str(q_path), first, "1"]
    run_tool(cmd, timeout=3600)
    qm = _M(q_path)
    out: dict[str, tuple[Path, int]] = {}
    for name, tname in targets.items():
        r = qm.by_name.get(alias[name])
        if r is None or r.info.type_name != tname:
            got = r.info.type_name if r else "missing"
            raise MtpgraftError(f"llama-quantize did not give {name} type {tname} (got {got})")
        out[name] = (q_path, r.abs_offset)
    return out


def plan_alignment(plan: GraftPlan) -> int:
    kv = next((k for k in plan._shards[0].kvs if k.key == "general.alignment"), None)
    return int(kv.value) if kv is not None else 32


def _bind_mtp(plan: GraftPlan, shards: list[_ShardSpec], located: dict[str, tuple[Path, int]]) -> None:
    """Point each MTP tensor at its bytes: the source (a plain copy already does), a numpy
    conversion of it, or llama-quantize's output (`located`)."""
    refs = {r.name: r for r in plan._source_refs}
    acts = {a.name: a for a in plan.tensors}
    for s in shards:
        for j, t in enumerate(s.tensors):
            a = acts.get(t.name)
            if a is None or a.method == "copy":
                continue  # a plain copy already points at the source's bytes
            if a.method == "llama-quantize":
                path, off = located[t.name]
                s.tensors[j] = OutTensor(t.name, t.ne, t.ggml_type, t.nbytes, path, off)
                continue
            r = refs[a.source_name]
            s.tensors[j] = OutTensor(t.name, t.ne, t.ggml_type, t.nbytes, produce=_convert_chunks(r, a.to_type))


def _shared_bytes(shards: list[_ShardSpec], layout: Layout) -> int:
    """Bytes the outputs will share with an input instead of writing them: each shard's aligned run
    (the input it copies most from; see gguf_io.Layout) where the filesystem clones between the
    two. The free-space check asks only for the rest: on btrfs or XFS a graft needs room for its MTP
    block, not for a second body. The estimate leaves out a block at each end of the run."""
    from .blocks import block_size, can_clone

    if not (layout.align and layout.clone):
        return 0
    total = 0
    with PendingOutput(shards[0].path) as probe:
        fd = os.open(probe.path, os.O_WRONLY)
        try:
            for s in shards:
                found = main_input(s.tensors)
                if found is None:
                    continue
                src, n = found
                sfd = os.open(src, os.O_RDONLY)
                try:
                    if can_clone(sfd, fd):
                        total += max(0, n - 2 * block_size(fd))
                finally:
                    os.close(sfd)
        finally:
            os.close(fd)
    return total


def apply_plan(plan: GraftPlan, *, progress: Callable[[int], None] | None = None,
               layout: Layout = REFLINK) -> list[Path]:
    """Write the planned output(s): temporary files beside the targets, renamed only on success.
    `layout` says where the tensor data goes (by default so that copy-on-write filesystems share
    the body's blocks with the base; see gguf_io.Layout)."""
    progress = progress or (lambda n: None)
    outputs = [s.path for s in plan._shards]
    check_outputs(outputs, force=plan.force)  # they may have appeared since planning
    shards = [_ShardSpec(s.path, list(s.kvs), list(s.tensors)) for s in plan._shards]  # the plan stays as it was
    ensure_space(outputs[0], plan.output_bytes - _shared_bytes(shards, layout))  # all shards go to one folder
    key = f"{PROV}mtp.source_sha256"
    digest: _Digest | None = None
    with contextlib.ExitStack() as stack:
        if plan.operation in ("attach", "sidecar"):  # both carry a grafted MTP block
            kvs = shards[0].kvs
            k = next(i for i, kv in enumerate(kvs) if kv.key == key)
            kvs[k] = encode_kv(key, GGUFValueType.STRING, _NO_DIGEST)  # filled in once the file is written
            digest = stack.enter_context(_Digest(plan._source_refs))
            if any(a.method == "llama-quantize" for a in plan.tensors):
                workdir = stack.enter_context(PendingOutput(outputs[0], folder=True))
                _bind_mtp(plan, shards, _quantize_mtp(plan, workdir.path))
            else:
                _bind_mtp(plan, shards, {})
        align = plan_alignment(plan)
        pending = [stack.enter_context(PendingOutput(s.path)) for s in shards]
        written = []
        for p, s in zip(pending, shards, strict=True):
            with writing(s.path), open(p.path, "wb") as fh:
                written.append(write_gguf(fh, s.kvs, s.tensors, alignment=align, progress=progress, layout=layout))
        sha = digest.result() if digest is not None else None
        if sha is not None:
            _patch_kv(pending[0].path, written[0].kv_offsets[key], encode_kv(key, GGUFValueType.STRING, sha))
        check_written(plan, shards, [p.path for p in pending], sha, key)  # a failure removes them
        for p in pending:
            p.install(force=plan.force)
    return outputs


@dataclass(frozen=True)
class BlockSharing:
    """How much of an output's body (the tensors copied from the base) sits in the base's own blocks,
    and how much of what was copied from the MTP source (a kept MTP block) sits in the source's."""

    body_bytes: int
    shared_bytes: int | None  # None: the filesystem does not say (no FIEMAP)
    mtp_bytes: int = 0  # copied from the MTP source as they are
    mtp_shared_bytes: int | None = 0

    @property
    def shared_fraction(self) -> float | None:
        if self.shared_bytes is None or not self.body_bytes:
            return None
        return self.shared_bytes / self.body_bytes


def block_sharing(plan: GraftPlan) -> BlockSharing:
    """After apply_plan: compare the written outputs' extents with their inputs' (FIEMAP)."""
    mtp_sources = {r.path for r in plan._source_refs}
    counts = {False: [0, 0], True: [0, 0]}  # from the MTP source? -> [copied, shared]
    known = True
    for spec in plan._shards:
        for t, n in _copied_and_shared(spec):
            c = counts[t.src_path in mtp_sources]
            c[0] += t.nbytes
            if n is None:
                known = False
            else:
                c[1] += n
    (body, shared), (mtp, mtp_shared) = counts[False], counts[True]
    return BlockSharing(body, shared if known else None, mtp, mtp_shared if known else None)


def _copied_and_shared(spec: _ShardSpec) -> Iterator[tuple[OutTensor, int | None]]:
    """Each tensor a written shard copied from an input, with the bytes of it that share the
    input's blocks (None: no FIEMAP)."""
    from .blocks import common_bytes
    from .gguf_io import GGUFFile

    out = GGUFFile(spec.path)
    where = {t.name: out.data_offset + t.offset for t in out.tensors}
    fds: dict[Path, int] = {}
    ofd = os.open(spec.path, os.O_RDONLY)
    try:
        for t in spec.tensors:
            if t.src_path is None or t.name not in where:
                continue
            sfd = fds.get(t.src_path)
            if sfd is None:
                sfd = fds[t.src_path] = os.open(t.src_path, os.O_RDONLY)
            yield t, common_bytes(ofd, where[t.name], sfd, t.src_offset, t.nbytes)
    finally:
        os.close(ofd)
        for fd in fds.values():
            os.close(fd)


def describe_plan(plan: GraftPlan) -> str:
    """The human-readable plan (`--dry-run`)."""
    lines = [f"{plan.operation}: {plan.base}" + (f" + MTP from {plan.source}" if plan.source else "")]
    lines.append(f"  output: {', '.join(plan.outputs)} ({plan.output_bytes / 1e6:.1f} MB of tensors)")
    lines.append(f"  architecture {plan.arch}, trunk {plan.trunk_layers} layers, MTP "
                 f"{', '.join(f'blk.{i}' for i in plan.mtp_layers)}" + (f", type policy {plan.mtp_type}" if plan.mtp_type else ""))
    if plan.tensors:
        lines.append("  tensors:")
        for a in plan.tensors:
            if a.method == "drop":
                lines.append(f"    drop     {shown(a.source_name):<40} {a.from_type:<7} {a.bytes_in:>12,} B")
            else:  # names from files: shown() keeps each on its line
                name = shown(a.source_name) if a.name == a.source_name else f"{shown(a.source_name)} -> {shown(a.name)}"
                conv = a.from_type if a.from_type == a.to_type else f"{a.from_type} -> {a.to_type}"
                lines.append(f"    {a.method:<8} {name:<44} {conv:<16} {a.bytes_out:>12,} B")
    if plan.key_changes:
        lines.append("  keys:")
        for c in plan.key_changes:
            lines.append(f"    {shown(c.key)}: {c.old!r} -> {c.new!r}")
    for w in plan.warnings:
        lines.append(f"  warning: {w}")
    return "\n".join(lines)
