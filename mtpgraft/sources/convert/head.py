"""The converted head planned from headers only: which safetensors tensors (or slabs of them) become
which GGUF tensors, with what shape and type, after which trunk tensor, and with which keys."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import SourceError
from ...ggml_types import BY_NAME
from ...gguf_io import shown, tensor_nbytes
from ..donor import MAX_BLOCKS, MAX_MTP_LAYERS
from ..safetensors import DTYPE_SIZE, STensor
from .config import head_rule, text_config
from .kvs import head_kvs
from .rules import FORCED_F32, QWEN_ENDS, QWEN_MTP_TOP, QWEN_TRUNK, SKIPPED, HeadRule

# --outtype: the output file type, named as the tensor type its 2-D weights take (the converter's
# LlamaFileType ALL_F32, MOSTLY_F16, MOSTLY_BF16, MOSTLY_Q8_0).
OUTTYPES = {"f32": "F32", "f16": "F16", "bf16": "BF16", "q8_0": "Q8_0"}
# A layer number in a tensor name: ASCII digits, at most 6 (int() of thousands of digits raises, and
# \d takes other scripts' digits); a name with any other is not a layer's (unmappable if it is mtp.*).
LAYER_NO = "([0-9]{1,6})"


@dataclass(frozen=True)
class Piece:
    """A slab of one safetensors tensor: for each of `outer` blocks, rows [r0, r1) of `rows` rows of
    `cols` elements (a plain tensor is outer=1, all rows)."""

    src: STensor
    file: str
    outer: int
    rows: int
    cols: int
    r0: int
    r1: int
    transposed: bool = False  # each block's slab is written transposed (MLA's attn_k_b)
    interleaved: bool = False  # the slab's two halves written row by row in turn (LlamaModel.permute)


@dataclass(frozen=True)
class HeadTensor:
    name: str
    ne: tuple[int, ...]
    ggml_type: str
    source_dtype: str
    plus_one: bool
    pieces: tuple[Piece, ...] = field(repr=False)

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(BY_NAME[self.ggml_type].id, self.ne)


@dataclass(frozen=True)
class HeadPlan:
    """What the converted MTP head will hold: metadata (key, type, value) and tensors, in order."""

    arch: str
    hf_arch: str
    trunk_layers: int
    mtp_layers: list[int]
    outtype: str
    kvs: list[tuple[str, str, Any]]
    tensors: list[HeadTensor]
    files: list[str]  # the shards that hold MTP tensors
    after: str | None = None  # the GGUF tensor the converter writes just before the MTP block
    inputs: list[str] = field(default_factory=list)  # the shards whose headers the plan read

    @property
    def source_bytes(self) -> int:
        """Bytes of the safetensors tensors the head is made from (each counted once)."""
        return sum(t.nbytes for _, t in self.ranges())

    def ranges(self) -> list[tuple[str, STensor]]:
        """Each source tensor once, in the order the plan reads them."""
        seen: dict[tuple[str, str], tuple[str, STensor]] = {}
        for t in self.tensors:
            for p in t.pieces:
                seen.setdefault((p.file, p.src.name), (p.file, p.src))
        return list(seen.values())


def _hf_layer_name(rule: HeadRule, name: str, n_layers: int) -> str | None:
    """The converter's rename of an MTP tensor to `model.layers.L.X`; None for non-MTP tensors."""
    name = _filtered_name(name)
    if rule.layer_indexed:
        m = re.match(r"model\.layers\." + LAYER_NO + r"\.", name)
        return name if m and int(m.group(1)) >= n_layers else None
    if name.startswith("model.mtp."):
        name = name[len("model."):]
    if not name.startswith("mtp."):
        return None
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[1] == "layers" and re.fullmatch(LAYER_NO, parts[2]):
        if rule.mtp_fold is not None:  # one block; a layer the fold does not name stays unmappable
            renames = rule.mtp_fold.get(parts[2])
            return name if renames is None else f"model.layers.{n_layers}.{renames.get(parts[3], parts[3])}"
        return f"model.layers.{n_layers + int(parts[2])}.{parts[3]}"
    if len(parts) == 3 and parts[1] in QWEN_MTP_TOP:
        return f"model.layers.{n_layers}.{QWEN_MTP_TOP[parts[1]]}.{parts[2]}"
    return name  # an mtp.* tensor the converter cannot map: refused below


def _filtered_name(name: str) -> str:
    """ModelBase.filter_tensors' renames."""
    if name.endswith("e_score_correction_bias"):
        name = name.replace("e_score_correction_bias", "e_score_correction.bias")
    return name.replace("language_model.", "")


def _preceding(rule: HeadRule, ordered: Sequence[tuple[str, STensor]], n_layers: int, n_experts: int) -> str | None:
    """The GGUF name of the last tensor the converter writes before the MTP block (graft puts the
    block after it), following its write order: per-expert tensors are written, stacked, when a
    layer's last one arrives. An unmappable name is returned as it is: graft then appends the block."""
    last: str | None = None
    pending: dict[str, int] = {}
    for _, t in ordered:
        if any(s in t.name for s in SKIPPED):
            continue
        if _hf_layer_name(rule, t.name, n_layers) is not None:
            return last
        name = _filtered_name(t.name)
        m = re.match(r"(?:model|backbone)\.layers\." + LAYER_NO + r"\.(.+)$", name)  # backbone: Nemotron-H
        if not m:
            last = QWEN_ENDS.get(name, name)
            continue
        bid, suffix = m.group(1), m.group(2)
        if re.match(re.escape(rule.experts) + r"\d+\.", suffix):
            pending[bid] = pending.get(bid, 0) + 1
            if pending[bid] >= len(rule.expert_weights) * n_experts:  # written stacked, in the rule's order
                last = f"blk.{bid}.ffn_{rule.expert_weights[-1].removesuffix('_proj')}_exps.weight"
            continue
        if suffix.startswith("mlp.experts.gate_up_proj"):
            suffix = "mlp.experts.up_proj.weight"
        elif suffix.startswith("mlp.experts.down_proj"):
            suffix = "mlp.experts.down_proj.weight"
        g = rule.names.get(suffix) or QWEN_TRUNK.get(suffix)
        last = f"blk.{bid}.{g}" if g else name
    return last


def _guess_ftype(ordered: Sequence[tuple[str, STensor]]) -> str:
    """--outtype auto: the dtype of the first 2-D+ tensor that is BF16 or F16, else F16."""
    for _, t in ordered:
        if len(t.shape) < 2 or any(s in t.name for s in ("visual.", "vision", "audio")):
            continue
        if t.dtype in ("BF16", "F16"):
            return t.dtype
    return "F16"


def _file_type(outtype: str, ordered: Sequence[tuple[str, STensor]]) -> str:
    """--outtype as the tensor type name of its 2-D weights (auto: from the checkpoint's dtypes)."""
    if outtype == "auto":
        return _guess_ftype(ordered)
    if outtype in OUTTYPES:
        return OUTTYPES[outtype]
    raise SourceError(f"unknown output type {outtype!r} (auto, {', '.join(OUTTYPES)})")


def _target_type(rule: HeadRule, gguf_name: str, n_dims: int, ftype: str, ne0: int) -> str:
    if n_dims <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return "F32"
    if gguf_name.endswith(FORCED_F32) and (rule.router_f32 or not gguf_name.endswith("ffn_gate_inp.weight")):
        return "F32"
    if not BY_NAME[ftype].row_fits(ne0):
        return "F16"  # the converter's QuantError fallback (Q8_0 rows of a whole number of blocks only)
    return ftype


def _piece(file: str, t: STensor, r0: int | None = None, r1: int | None = None) -> Piece:
    shape = t.shape or (1,)
    cols = shape[-1]
    rows = shape[-2] if len(shape) >= 2 else 1
    outer = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return Piece(t, file, outer, rows, cols, 0 if r0 is None else r0, rows if r1 is None else r1)


def plan_head(config: dict[str, Any], headers: Sequence[tuple[str, dict[str, STensor]]], *,
              outtype: str = "auto", label: str = "the checkpoint") -> HeadPlan:
    """Plan the MTP head of a checkpoint: `headers` are (shard file, its tensors) for every shard."""
    rule = head_rule(config, label)
    hp = text_config(config)
    n_layers, n_mtp = _layer_counts(rule, hp, headers, label)
    ordered = [(f, t) for f, ts in sorted(headers, key=lambda h: h[0]) for t in sorted(ts.values(), key=lambda t: t.name)]
    ftype = _file_type(outtype, ordered)
    n_experts = int(hp.get("num_local_experts") or hp.get("num_experts") or hp.get("n_routed_experts") or 0)
    split_name, split_heads = rule.kv_b_split
    split = _mla_dims(hp, label, split_heads) if rule.mla or rule.mla_split else None
    tensors: list[HeadTensor] = []
    pending: dict[int, dict[str, tuple[str, STensor]]] = {}
    files: list[str] = []
    for file, t in ordered:
        hf = _hf_layer_name(rule, t.name, n_layers)
        if hf is None or (rule.drop_biases and hf.endswith(".bias")):
            continue
        if file not in files:
            files.append(file)
        if t.dtype not in DTYPE_SIZE:
            raise SourceError(f"{label}: {shown(t.name)} has dtype {shown(t.dtype, 20)}; mtpgraft converts BF16, F16 and F32 heads")
        m = re.match(r"model\.layers\.([0-9]+)\.(.+)$", hf)  # numbers bounded above
        if not m:
            raise SourceError(f"{label}: cannot map MTP tensor {shown(t.name)}")
        bid, suffix = int(m.group(1)), m.group(2)
        if bid >= n_layers + n_mtp:  # MimoV2Model asserts the index; the others' tensor maps stop there
            raise SourceError(f"{label}: {shown(t.name)} is MTP layer {bid - n_layers}; the converter takes "
                              + (f"{rule.arch}'s {n_mtp} MTP layers only" if rule.fixed_mtp else
                                 f"{n_mtp} (config.json {rule.n_mtp_key}) and fails on it"))
        if split is not None and suffix == split_name:
            tensors.extend(_mla_split(rule, file, t, bid, split, ftype, label))
            continue
        if rule.permute_qk is not None and suffix in rule.permute_qk:
            tensors.append(_permuted(rule, hp, file, t, bid, suffix, ftype, label))
            continue
        tensors.extend(_map_tensor(rule, file, t, bid, suffix, n_experts, pending, ftype, label))
    leftover = [n for d in pending.values() for n in d]
    if leftover:
        raise SourceError(f"{label}: incomplete experts in the MTP head ({leftover[0]} ...)")
    if not tensors:
        raise SourceError(f"{label}: no MTP tensors (no mtp.* tensor in the safetensors files)")
    mtp_layers = list(range(n_layers, n_layers + n_mtp))
    kvs = head_kvs(rule, hp, n_layers, n_mtp, ftype, label=label)
    _check_eh_proj(rule, tensors, mtp_layers, label)
    return HeadPlan(rule.arch, str((config.get("architectures") or [""])[0]), n_layers, mtp_layers, ftype,
                    kvs, tensors, files, _preceding(rule, ordered, n_layers, n_experts), sorted(h[0] for h in headers))


def _check_eh_proj(rule: HeadRule, tensors: Sequence[HeadTensor], mtp_layers: list[int], label: str) -> None:
    """Each MTP layer the converter writes has its eh_proj (Qwen: the first one): without it llama.cpp
    does not use the head (a layer of a 3-layer MiMo head alone would graft as 1 head, not 3)."""
    have = {t.name for t in tensors}
    for k, layer in enumerate(mtp_layers if rule.eh_proj_per_layer else mtp_layers[:1]):
        if f"blk.{layer}.nextn.eh_proj.weight" not in have:
            raise SourceError(f"{label}: MTP layer {k} of the {len(mtp_layers)} the converter writes has no eh_proj "
                              f"tensor (blk.{layer}.nextn.eh_proj.weight), without which llama.cpp cannot use "
                              "the head")


def _layer_counts(rule: HeadRule, hp: dict[str, Any], headers: Sequence[tuple[str, dict[str, STensor]]],
                  label: str) -> tuple[int, int]:
    """(trunk layers, MTP layers), checked before any list is sized by them."""
    n_layers = int(hp.get("num_hidden_layers") or 0)
    n_mtp = rule.fixed_mtp or int(hp.get(rule.n_mtp_key) or 0)
    count, none = f"{rule.n_mtp_key} = {n_mtp}", f"config.json gives {rule.n_mtp_key} = {n_mtp}"
    if rule.fixed_mtp:  # the converter's own count; config.json states none
        count = f"{n_mtp} MTP layers (the converter's count for {rule.arch})"
    if not n_mtp and rule.counted_mtp:  # the converter's count: the highest mtp.layers.K, plus 1
        n_mtp = _counted_mtp_layers(headers)
        count = f"{n_mtp} mtp.layers (config.json gives no {rule.n_mtp_key})"
        none = f"config.json gives no {rule.n_mtp_key} and the checkpoint has no mtp.layers"
    if n_layers <= 0:
        raise SourceError(f"{label}: config.json has no num_hidden_layers")
    if n_mtp <= 0:
        raise SourceError(f"{label}: no MTP head: {none}")
    if rule.mtp_fold is not None and n_mtp != 1:
        raise SourceError(f"{label}: config.json gives {count}; llama.cpp's converter folds exactly one MTP head "
                          f"for {rule.arch}")
    if n_layers > MAX_BLOCKS or n_mtp > MAX_MTP_LAYERS:
        raise SourceError(f"{label}: config.json gives num_hidden_layers = {n_layers} and {count}; no model has "
                          f"more than {MAX_BLOCKS} layers or {MAX_MTP_LAYERS} MTP layers")
    return n_layers, n_mtp


def _mla_dims(hp: dict[str, Any], label: str, heads: str) -> tuple[int, int, int]:
    """(heads, qk_nope_head_dim, v_head_dim): how the converter cuts kv_b_proj (DeepseekV2Model by
    num_key_value_heads, before it sets head_count_kv to 1 for the metadata)."""
    keys = (heads, "qk_nope_head_dim", "v_head_dim")
    for k in keys:  # types and ranges are check_config's; a 0 would split kv_b_proj into nothing
        if hp.get(k) is None:
            raise SourceError(f"{label}: config.json has no {k}, which the MLA head's kv_b_proj split needs")
        if not hp[k]:
            raise SourceError(f"{label}: config.json {k} = 0; the MLA head's kv_b_proj split needs at least 1")
    return int(hp[keys[0]]), int(hp[keys[1]]), int(hp[keys[2]])


def _mla_split(rule: HeadRule, file: str, t: STensor, bid: int, dims: tuple[int, int, int], ftype: str,
               label: str) -> list[HeadTensor]:
    """kv_b_proj [kv heads x (nope + v), kv_lora_rank] as the converter writes it: per head, its nope
    rows transposed (attn_k_b, [kv heads, rank, nope]), then its v rows (attn_v_b, [kv heads, v, rank])."""
    n_kv, nope, v = dims
    if len(t.shape) != 2 or t.shape[0] != n_kv * (nope + v):
        raise SourceError(f"{label}: {shown(t.name)} has shape {list(t.shape)}, not [{n_kv * (nope + v)}, kv_lora_rank] "
                          f"({rule.kv_b_split[1]} x "
                          f"(qk_nope_head_dim + v_head_dim) rows)")
    rank = t.shape[1]
    at = rule.kv_b_split[0].removesuffix("kv_b_proj.weight")  # self_attn. or attention.
    k_b = Piece(t, file, n_kv, nope + v, rank, 0, nope, transposed=True)
    v_b = Piece(t, file, n_kv, nope + v, rank, nope, nope + v)
    return [_tensor(rule, f"{at}k_b_proj.weight", bid, (n_kv, rank, nope), t.dtype, False, (k_b,), ftype, label),
            _tensor(rule, f"{at}v_b_proj.weight", bid, (n_kv, v, rank), t.dtype, False, (v_b,), ftype, label)]


def _permuted(rule: HeadRule, hp: dict[str, Any], file: str, t: STensor, bid: int, suffix: str, ftype: str,
              label: str) -> HeadTensor:
    """q or k as LlamaModel.permute writes it: in each head, row i of the second half after row i of
    the first (one interleaved piece per head), from a [heads x head_dim, hidden_size] tensor."""
    key = "num_attention_heads" if suffix == rule.permute_qk[0] else "num_key_value_heads"  # type: ignore[index]
    heads, head_dim, hidden = (int(hp.get(k) or 0) for k in (key, "head_dim", "hidden_size"))
    if not heads or not head_dim or head_dim % 2 or not hidden:
        raise SourceError(f"{label}: config.json gives {key} = {heads}, head_dim = {head_dim} and hidden_size = "
                          f"{hidden}; permuting {shown(t.name)} needs heads, an even head_dim and hidden_size")
    if list(t.shape) != [heads * head_dim, hidden]:
        raise SourceError(f"{label}: {shown(t.name)} has shape {list(t.shape)}, not [{heads * head_dim}, {hidden}] "
                          f"({key} x head_dim, hidden_size)")
    pieces = tuple(Piece(t, file, 1, t.shape[0], hidden, h * head_dim, (h + 1) * head_dim, interleaved=True)
                   for h in range(heads))
    return _tensor(rule, suffix, bid, t.shape, t.dtype, False, pieces, ftype, label)


def _counted_mtp_layers(headers: Sequence[tuple[str, dict[str, STensor]]]) -> int:
    """The converter's count of MTP layers when config.json gives none: the highest mtp.layers.K, plus 1."""
    found = [re.match(r"(?:model\.)?mtp\.layers\." + LAYER_NO + r"\.", _filtered_name(n)) for _, ts in headers for n in ts]
    return max((int(m.group(1)) + 1 for m in found if m), default=0)


def _map_tensor(rule: HeadRule, file: str, t: STensor, bid: int, suffix: str, n_experts: int,
                pending: dict[int, dict[str, tuple[str, STensor]]], ftype: str,
                label: str) -> list[HeadTensor]:
    plus_one = rule.plus_one_norms and suffix.endswith("norm.weight")
    if rule.moe and suffix in ("mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj.weight"):
        if len(t.shape) < 3 or t.shape[-2] % 2:
            raise SourceError(f"{label}: unexpected gate_up_proj shape {list(t.shape)} for {shown(t.name)}")
        f = t.shape[-2] // 2
        out = []
        for which, (r0, r1) in (("gate", (0, f)), ("up", (f, 2 * f))):
            shape = (*t.shape[:-2], f, t.shape[-1])
            out.append(_tensor(rule, f"mlp.experts.{which}_proj.weight", bid, shape, t.dtype, plus_one,
                               (_piece(file, t, r0, r1),), ftype, label))
        return out
    if rule.moe and suffix in ("mlp.experts.down_proj", "mlp.experts.down_proj.weight"):
        return [_tensor(rule, "mlp.experts.down_proj.weight", bid, t.shape, t.dtype, plus_one,
                        (_piece(file, t),), ftype, label)]
    if rule.moe and suffix.startswith(rule.experts):
        got = pending.setdefault(bid, {})
        got[f"model.layers.{bid}.{suffix}"] = (file, t)
        if len(got) < n_experts * len(rule.expert_weights):
            return []
        out = []
        for w in rule.expert_weights:
            parts = [got.pop(f"model.layers.{bid}.{rule.experts}{x}.{w}.weight", None) for x in range(n_experts)]
            if any(p is None for p in parts):
                raise SourceError(f"{label}: layer {bid} lacks some {rule.experts}N.{w} tensors")
            first = parts[0][1]  # type: ignore[index]
            shape = (n_experts, *first.shape)
            out.append(_tensor(rule, f"mlp.experts.{w}.weight", bid, shape, first.dtype, plus_one,
                               tuple(_piece(f_, s) for f_, s in parts), ftype, label))  # type: ignore[misc]
        return out
    shape = tuple(d for d in t.shape if d != 1) if suffix in rule.squeezed else t.shape  # torch's squeeze()
    return [_tensor(rule, suffix, bid, shape, t.dtype, plus_one, (_piece(file, t),), ftype, label)]


def _tensor(rule: HeadRule, suffix: str, bid: int, shape: tuple[int, ...], dtype: str, plus_one: bool,
            pieces: tuple[Piece, ...], ftype: str, label: str) -> HeadTensor:
    gsuffix = rule.names.get(suffix)
    if gsuffix is None:
        raise SourceError(f"{label}: cannot map MTP tensor model.layers.{bid}.{suffix} to a {rule.arch} name")
    name = f"blk.{bid}.{gsuffix}"
    ne = tuple(reversed(shape)) if shape else (1,)
    target = _target_type(rule, name, len(shape), ftype, ne[0])
    return HeadTensor(name, ne, target, dtype, plus_one, pieces)


def mtp_predicate(config: dict[str, Any], label: str) -> Callable[[str], bool]:
    """Which safetensors tensor names belong to the MTP head (refuses unknown architectures)."""
    rule = head_rule(config, label)
    n_layers = int(text_config(config).get("num_hidden_layers") or 0)
    return lambda name: _hf_layer_name(rule, name, n_layers) is not None
