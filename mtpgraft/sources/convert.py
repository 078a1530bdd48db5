"""Safetensors -> GGUF for the MTP head only, in numpy: what llama.cpp's convert_hf_to_gguf.py (at the
pinned commit) writes for these tensors, byte for byte.

The converter's rules for Qwen3.5/3.6 (conversion/qwen.py `_QwenMtpMixin`, `Qwen3NextModel`,
`Qwen2MoeModel`; conversion/base.py `prepare_tensors`):
- `mtp.layers.i.X` becomes layer L = num_hidden_layers + i; `mtp.fc` / `pre_fc_norm_embedding` /
  `pre_fc_norm_hidden` / `norm` become `nextn.eh_proj` / `enorm` / `hnorm` / `shared_head_norm` of L.
- Tensors are visited in safetensors order: shards sorted by name, tensor names sorted in each shard.
- BF16 (anything not F16/F32) is cast to float32 first; every `*norm.weight` gets +1 in that dtype.
- MoE: `experts.gate_up_proj` [E, 2F, H] is split on dim -2 (gate, then up); per-expert tensors are
  stacked when the last one arrives (down, gate, up).
- 1-D tensors, `*_norm.weight`, non-`.weight` tensors, `ffn_gate_inp` and `ffn_gate_inp_shexp` are F32;
  the others take the output type (auto: BF16/F16 by the first 2-D tensor, else F16). F16 by astype,
  BF16 and Q8_0 by gguf-py's quantizers (Q8_0 falls back to F16 for rows it cannot hold).
- The GGUF shape is the HF shape reversed; no data is transposed.

`plan_head` reads headers only and checks the config; `check_head_against_base` compares it with a
base GGUF before any tensor byte is fetched; `write_head` streams the tensors, one bounded chunk at a
time, from wherever `locate` says the bytes are.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, LlamaFileType, quants

from ..errors import GraftError, SourceError
from ..gguf_io import (
    CONVERTER,
    KV,
    GGUFModel,
    GGUFValueType,
    OutTensor,
    encode_kv,
    tensor_nbytes,
    write_gguf,
)
from ..parsing import int_field, load_json, number_field, str_list_field
from .donor import MAX_BLOCKS, MAX_MTP_LAYERS
from .safetensors import DTYPE_SIZE, STensor

Q = GGMLQuantizationType
V = GGUFValueType
CHUNK_BYTES = 16 << 20
OUTTYPES = {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16,
            "bf16": LlamaFileType.MOSTLY_BF16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
_FTYPE_TENSOR = {LlamaFileType.ALL_F32: Q.F32, LlamaFileType.MOSTLY_F16: Q.F16,
                 LlamaFileType.MOSTLY_BF16: Q.BF16, LlamaFileType.MOSTLY_Q8_0: Q.Q8_0}


# --------------------------------------------------------------------------- the architecture table

# HF name (after `model.layers.L.`) -> GGUF name (after `blk.L.`), the qwen35/qwen35moe tensor map.
_QWEN_NAMES = {
    "eh_proj.weight": "nextn.eh_proj.weight",
    "enorm.weight": "nextn.enorm.weight",
    "hnorm.weight": "nextn.hnorm.weight",
    "shared_head.norm.weight": "nextn.shared_head_norm.weight",
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "post_attention_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "mlp.gate.weight": "ffn_gate_inp.weight",
    "mlp.shared_expert_gate.weight": "ffn_gate_inp_shexp.weight",
    "mlp.shared_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_expert.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_expert.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.experts.gate_proj.weight": "ffn_gate_exps.weight",
    "mlp.experts.up_proj.weight": "ffn_up_exps.weight",
    "mlp.experts.down_proj.weight": "ffn_down_exps.weight",
}
_QWEN_MTP_TOP = {"fc": "eh_proj", "pre_fc_norm_embedding": "enorm", "pre_fc_norm_hidden": "hnorm",
                 "norm": "shared_head.norm"}
# Kept F32 whatever the output type (prepare_tensors' list, the entries an MTP head can hold).
_FORCED_F32 = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")


_GLM_NAMES = {k: v for k, v in _QWEN_NAMES.items() if not k.startswith("mlp.shared_expert")} | {
    "shared_head.head.weight": "nextn.shared_head_head.weight",
    "embed_tokens.weight": "nextn.embed_tokens.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "mlp.gate.e_score_correction.bias": "exp_probs_b.bias",
    "mlp.shared_experts.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
}
_QWEN_MOE_KEYS = (("expert_feed_forward_length", "moe_intermediate_size"),
                  ("expert_shared_feed_forward_length", "shared_expert_intermediate_size"))
_GLM_MOE_KEYS = (("expert_feed_forward_length", "moe_intermediate_size"), ("expert_shared_count", "n_shared_experts"),
                 ("leading_dense_block_count", "first_k_dense_replace"))


@dataclass(frozen=True)
class HeadRule:
    """How one family of HF checkpoints stores its MTP head and how the converter maps it."""

    arch: str
    n_mtp_key: str  # the config key giving the number of MTP layers
    moe: bool
    names: dict[str, str]
    plus_one_norms: bool  # Qwen3.5 stores RMSNorm weights as offsets from 1
    layer_indexed: bool = False  # the head is model.layers.N.* (GLM-4.5), not mtp.* (Qwen3.5)
    moe_keys: tuple[tuple[str, str], ...] = ()  # (GGUF key suffix, config key) the converter adds for MoE
    hybrid: bool = False  # qwen35's recurrent_layers / full_attention_interval keys


_QWEN = {"n_mtp_key": "mtp_num_hidden_layers", "names": _QWEN_NAMES, "plus_one_norms": True, "hybrid": True}
HEAD_RULES: dict[str, HeadRule] = {
    "Qwen3_5ForConditionalGeneration": HeadRule("qwen35", moe=False, **_QWEN),
    "Qwen3_5ForCausalLM": HeadRule("qwen35", moe=False, **_QWEN),
    "Qwen3_5MoeForConditionalGeneration": HeadRule("qwen35moe", moe=True, moe_keys=_QWEN_MOE_KEYS, **_QWEN),
    "Qwen3_5MoeForCausalLM": HeadRule("qwen35moe", moe=True, moe_keys=_QWEN_MOE_KEYS, **_QWEN),
    "Glm4MoeForCausalLM": HeadRule("glm4moe", "num_nextn_predict_layers", True, _GLM_NAMES, False,
                                   layer_indexed=True, moe_keys=_GLM_MOE_KEYS),
}

# Architectures whose checkpoints carry an MTP head that mtpgraft does not convert, and why.
REFUSED = {
    "Qwen3NextForCausalLM": "Qwen3-Next checkpoints do not state mtp_num_hidden_layers and mtpgraft has "
                            "no reference conversion for them; convert with llama.cpp's convert_hf_to_gguf.py",
    "DeepseekV3ForCausalLM": "llama.cpp's converter drops DeepSeek-V3's MTP layers (deepseek2 keeps MTP only "
                             "for GLM-4.7-Flash), so there is no GGUF head to build",
    "DeepseekV32ForCausalLM": "llama.cpp's converter drops DeepSeek-V3.2's MTP layers",
    "Glm4MoeLiteForCausalLM": "GLM-4.7-Flash converts through the deepseek2 MLA path (kv_b_proj split into "
                              "k_b/v_b, per-layer transposes), which mtpgraft does not reproduce; use a GGUF donor",
    "DeepseekV4ForCausalLM": "DeepSeek-V4's head (mtp.N.*, compressed attention) is converted only with "
                             "convert_hf_to_gguf.py --mtp; use a GGUF donor",
}


# --------------------------------------------------------------------------- config.json, typed

_MAX_DIM = 1 << 20  # sizes (hidden, intermediate, head_dim): the largest real ones are ~1e5
# Every int field the converter reads, and the largest value mtpgraft takes (far above any real model,
# far below what would make a plan allocate without bound: layer ranges, per-layer arrays).
CONFIG_INTS: dict[str, int] = {
    "num_hidden_layers": 4096, "mtp_num_hidden_layers": 64, "num_nextn_predict_layers": 64,
    "max_position_embeddings": 1 << 26, "n_ctx": 1 << 26, "n_positions": 1 << 26, "vocab_size": 1 << 26,
    **dict.fromkeys(("hidden_size", "n_embd", "dim", "prefix_dense_intermediate_size", "dense_intermediate_size",
                     "intermediate_size", "n_inner", "hidden_dim", "head_dim", "moe_intermediate_size",
                     "shared_expert_intermediate_size"), _MAX_DIM),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "num_key_value_heads", "n_kv_heads",
                     "num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok",
                     "num_experts_per_token", "n_group", "topk_group", "n_shared_experts"), 1 << 16),
    "first_k_dense_replace": 4096, "full_attention_interval": 4096,
}


def read_config(raw: bytes, label: str) -> dict[str, Any]:
    """config.json parsed with bounds and every field the converter reads type- and range-checked."""
    config = load_json(raw, label)
    check_config(config, label)
    return config


def check_config(config: Any, label: str) -> None:
    """Refuse a config whose fields are not what the converter reads (one line, exit 3): a count that
    is not an int in range, architectures that are not strings, a text_config that is not an object."""
    if not isinstance(config, dict):
        raise SourceError(f"{label}: config.json is not a JSON object")
    if config.get("architectures") is not None:
        str_list_field(config["architectures"], f"{label}: config.json architectures")
    if not isinstance(config.get("text_config", {}), dict):
        raise SourceError(f"{label}: config.json text_config is not a JSON object")
    hp = text_config(config)
    for key, hi in CONFIG_INTS.items():
        if hp.get(key) is not None:
            int_field(hp[key], f"{label}: config.json {key}", 1 if key == "full_attention_interval" else 0, hi)
    if hp.get("layer_types") is not None:
        str_list_field(hp["layer_types"], f"{label}: config.json layer_types", max_len=CONFIG_INTS["num_hidden_layers"])
    if hp.get("routed_scaling_factor") is not None:
        number_field(hp["routed_scaling_factor"], f"{label}: config.json routed_scaling_factor", 0.0, 1e6)
    if hp.get("norm_topk_prob") is not None and not isinstance(hp["norm_topk_prob"], bool):
        raise SourceError(f"{label}: config.json norm_topk_prob is not true or false")
    for key in _SCORE_FUNC_KEYS:
        if hp.get(key) is not None and not isinstance(hp[key], str):
            raise SourceError(f"{label}: config.json {key} is not a string")


def head_rule(config: dict[str, Any], file: str) -> HeadRule:
    check_config(config, file)
    archs = config.get("architectures") or []
    hf_arch = archs[0] if archs else None
    if hf_arch in HEAD_RULES:
        return HEAD_RULES[hf_arch]
    if hf_arch in REFUSED:
        raise SourceError(f"{file}: {hf_arch}: {REFUSED[hf_arch]}")
    known = ", ".join(sorted(HEAD_RULES))
    raise SourceError(f"{file}: no MTP head conversion for architecture {hf_arch or '(none given)'} "
                      f"(mtpgraft converts {known}; use a GGUF donor for the others)")


def mtp_predicate(config: dict[str, Any], label: str) -> Callable[[str], bool]:
    """Which safetensors tensor names belong to the MTP head (refuses unknown architectures)."""
    rule = head_rule(config, label)
    n_layers = int(text_config(config).get("num_hidden_layers") or 0)
    return lambda name: _hf_layer_name(rule, name, n_layers) is not None


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The converter's hparams: text_config moved to the top level."""
    return {**config, **(config.get("text_config") or {})}


# --------------------------------------------------------------------------- the plan


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
        return tensor_nbytes(int(Q[self.ggml_type]), self.ne)


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
        m = re.match(r"model\.layers\.(\d+)\.", name)
        return name if m and int(m.group(1)) >= n_layers else None
    if name.startswith("model.mtp."):
        name = name[len("model."):]
    if not name.startswith("mtp."):
        return None
    parts = name.split(".", 3)
    if len(parts) == 4 and parts[1] == "layers" and parts[2].isdecimal():
        return f"model.layers.{n_layers + int(parts[2])}.{parts[3]}"
    if len(parts) == 3 and parts[1] in _QWEN_MTP_TOP:
        return f"model.layers.{n_layers}.{_QWEN_MTP_TOP[parts[1]]}.{parts[2]}"
    return name  # an mtp.* tensor the converter cannot map: refused below


# TextModel.filter_tensors: multimodal tensors the converter skips (the subset Qwen checkpoints hold).
_SKIPPED = ("visual.", "vision.", "audio.", "vision_", "audio_", "talker.", "projector.", "patch_embed",
            "merger.", "mtp_only_")
# Qwen3.5 trunk names not in the MTP table: linear attention and the model's ends.
_QWEN_TRUNK = {"linear_attn.in_proj_qkv.weight": "attn_qkv.weight", "linear_attn.in_proj_z.weight": "attn_gate.weight",
               "linear_attn.in_proj_a.weight": "ssm_alpha.weight", "linear_attn.in_proj_b.weight": "ssm_beta.weight",
               "linear_attn.conv1d.weight": "ssm_conv1d.weight", "linear_attn.dt_bias": "ssm_dt.bias",
               "linear_attn.A_log": "ssm_a", "linear_attn.norm.weight": "ssm_norm.weight",
               "linear_attn.out_proj.weight": "ssm_out.weight"}
_QWEN_ENDS = {"lm_head.weight": "output.weight", "model.embed_tokens.weight": "token_embd.weight",
              "model.norm.weight": "output_norm.weight"}


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
        if any(s in t.name for s in _SKIPPED):
            continue
        if _hf_layer_name(rule, t.name, n_layers) is not None:
            return last
        name = _filtered_name(t.name)
        m = re.match(r"model\.layers\.(\d+)\.(.+)$", name)
        if not m:
            last = _QWEN_ENDS.get(name, name)
            continue
        bid, suffix = m.group(1), m.group(2)
        if re.match(r"mlp\.experts\.\d+\.", suffix):
            pending[bid] = pending.get(bid, 0) + 1
            if pending[bid] >= 3 * n_experts:
                last = f"blk.{bid}.ffn_up_exps.weight"  # written down, gate, up
            continue
        if suffix.startswith("mlp.experts.gate_up_proj"):
            suffix = "mlp.experts.up_proj.weight"
        elif suffix.startswith("mlp.experts.down_proj"):
            suffix = "mlp.experts.down_proj.weight"
        g = rule.names.get(suffix) or _QWEN_TRUNK.get(suffix)
        last = f"blk.{bid}.{g}" if g else name
    return last


def _guess_ftype(ordered: Sequence[tuple[str, STensor]]) -> LlamaFileType:
    """--outtype auto: the dtype of the first 2-D+ tensor that is BF16 or F16, else F16."""
    for _, t in ordered:
        if len(t.shape) < 2 or any(s in t.name for s in ("visual.", "vision", "audio")):
            continue
        if t.dtype == "BF16":
            return LlamaFileType.MOSTLY_BF16
        if t.dtype == "F16":
            return LlamaFileType.MOSTLY_F16
    return LlamaFileType.MOSTLY_F16


def _target_type(gguf_name: str, n_dims: int, ftype: LlamaFileType, ne0: int) -> Q:
    if n_dims <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return Q.F32
    if gguf_name.endswith(_FORCED_F32):
        return Q.F32
    t = _FTYPE_TENSOR[ftype]
    if t == Q.Q8_0 and ne0 % 32:
        return Q.F16  # the converter's QuantError fallback
    return t


def _piece(file: str, t: STensor, r0: int | None = None, r1: int | None = None) -> Piece:
    shape = t.shape or (1,)
    cols = shape[-1]
    rows = shape[-2] if len(shape) >= 2 else 1
    outer = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    return Piece(t, file, outer, rows, cols, 0 if r0 is None else r0, rows if r1 is None else r1)


def plan_head(config: dict[str, Any], headers: Sequence[tuple[str, dict[str, STensor]]], *,
              outtype: str = "auto", label: str = "the checkpoint") -> HeadPlan:
    """Plan the MTP head of a checkpoint: `headers` are (shard file, its tensors) for every shard."""
    rule = head_rule(config, label)
    hp = text_config(config)
    n_layers = int(hp.get("num_hidden_layers") or 0)
    n_mtp = int(hp.get(rule.n_mtp_key) or 0)
    if n_layers <= 0:
        raise SourceError(f"{label}: config.json has no num_hidden_layers")
    if n_mtp <= 0:
        raise SourceError(f"{label}: no MTP head: config.json gives {rule.n_mtp_key} = {n_mtp}")
    if n_layers > MAX_BLOCKS or n_mtp > MAX_MTP_LAYERS:  # before any list is sized by them
        raise SourceError(f"{label}: config.json gives num_hidden_layers = {n_layers} and {rule.n_mtp_key} = "
                          f"{n_mtp}; no model has more than {MAX_BLOCKS} layers or {MAX_MTP_LAYERS} MTP layers")
    ordered = [(f, t) for f, ts in sorted(headers, key=lambda h: h[0]) for t in sorted(ts.values(), key=lambda t: t.name)]
    if outtype == "auto":
        ftype = _guess_ftype(ordered)
    elif outtype in OUTTYPES:
        ftype = OUTTYPES[outtype]
    else:
        raise SourceError(f"unknown output type {outtype!r} (auto, {', '.join(OUTTYPES)})")
    n_experts = int(hp.get("num_local_experts") or hp.get("num_experts") or hp.get("n_routed_experts") or 0)
    tensors: list[HeadTensor] = []
    pending: dict[int, dict[str, tuple[str, STensor]]] = {}
    files: list[str] = []
    for file, t in ordered:
        hf = _hf_layer_name(rule, t.name, n_layers)
        if hf is None:
            continue
        if file not in files:
            files.append(file)
        if t.dtype not in DTYPE_SIZE:
            raise SourceError(f"{label}: {t.name} has dtype {t.dtype}; mtpgraft converts BF16, F16 and F32 heads")
        m = re.match(r"model\.layers\.(\d+)\.(.+)$", hf)
        if not m:
            raise SourceError(f"{label}: cannot map MTP tensor {t.name}")
        bid, suffix = int(m.group(1)), m.group(2)
        tensors.extend(_map_tensor(rule, file, t, bid, suffix, n_experts, pending, ftype, label))
    leftover = [n for d in pending.values() for n in d]
    if leftover:
        raise SourceError(f"{label}: incomplete experts in the MTP head ({leftover[0]} ...)")
    if not tensors:
        raise SourceError(f"{label}: no MTP tensors (no mtp.* tensor in the safetensors files)")
    mtp_layers = list(range(n_layers, n_layers + n_mtp))
    kvs = _head_kvs(rule, hp, n_layers, n_mtp, ftype)
    outname = ftype.name.partition("_")[2]
    return HeadPlan(rule.arch, str((config.get("architectures") or [""])[0]), n_layers, mtp_layers, outname,
                    kvs, tensors, files, _preceding(rule, ordered, n_layers, n_experts), sorted(h[0] for h in headers))


def _map_tensor(rule: HeadRule, file: str, t: STensor, bid: int, suffix: str, n_experts: int,
                pending: dict[int, dict[str, tuple[str, STensor]]], ftype: LlamaFileType,
                label: str) -> list[HeadTensor]:
    plus_one = rule.plus_one_norms and suffix.endswith("norm.weight")
    if rule.moe and suffix in ("mlp.experts.gate_up_proj", "mlp.experts.gate_up_proj.weight"):
        if len(t.shape) < 3 or t.shape[-2] % 2:
            raise SourceError(f"{label}: unexpected gate_up_proj shape {list(t.shape)} for {t.name}")
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
    if rule.moe and suffix.startswith("mlp.experts."):
        got = pending.setdefault(bid, {})
        got[f"model.layers.{bid}.{suffix}"] = (file, t)
        if len(got) < n_experts * 3:
            return []
        out = []
        for w in ("down_proj", "gate_proj", "up_proj"):
            parts = [got.pop(f"model.layers.{bid}.mlp.experts.{x}.{w}.weight", None) for x in range(n_experts)]
            if any(p is None for p in parts):
                raise SourceError(f"{label}: layer {bid} lacks some mlp.experts.N.{w} tensors")
            first = parts[0][1]  # type: ignore[index]
            shape = (n_experts, *first.shape)
            out.append(_tensor(rule, f"mlp.experts.{w}.weight", bid, shape, first.dtype, plus_one,
                               tuple(_piece(f_, s) for f_, s in parts), ftype, label))  # type: ignore[misc]
        return out
    return [_tensor(rule, suffix, bid, t.shape, t.dtype, plus_one, (_piece(file, t),), ftype, label)]


def _tensor(rule: HeadRule, suffix: str, bid: int, shape: tuple[int, ...], dtype: str, plus_one: bool,
            pieces: tuple[Piece, ...], ftype: LlamaFileType, label: str) -> HeadTensor:
    gsuffix = rule.names.get(suffix)
    if gsuffix is None:
        raise SourceError(f"{label}: cannot map MTP tensor model.layers.{bid}.{suffix} to a {rule.arch} name")
    name = f"blk.{bid}.{gsuffix}"
    ne = tuple(reversed(shape)) if shape else (1,)
    target = _target_type(name, len(shape), ftype, ne[0])
    return HeadTensor(name, ne, target.name, dtype, plus_one, pieces)


_SCORE_FUNC_KEYS = ("score_function", "scoring_func", "score_func", "moe_router_activation",
                    "moe_router_activation_func", "expert_selection_fn")
_GATING = {"softmax": 1, "sigmoid": 2, "sqrtsoftplus": 3}  # gguf.ExpertGatingFuncType

def _first(hp: dict[str, Any], keys: Sequence[str]) -> Any:
    """The value of the first of `keys` that config.json has (configs name the same field differently)."""
    return next((hp[k] for k in keys if k in hp), None)


def _head_kvs(rule: HeadRule, hp: dict[str, Any], n_layers: int, n_mtp: int,
              ftype: LlamaFileType) -> list[tuple[str, str, Any]]:
    """The structural keys of the converter's output that describe the head, in its order."""
    a = rule.arch
    kvs: list[tuple[str, str, Any]] = [("general.architecture", "STRING", a),
                                       (f"{a}.block_count", "UINT32", n_layers + n_mtp)]
    for key, names in ((f"{a}.context_length", ("max_position_embeddings", "n_ctx", "n_positions")),
                       (f"{a}.embedding_length", ("hidden_size", "n_embd", "dim")),
                       (f"{a}.feed_forward_length", ("prefix_dense_intermediate_size", "dense_intermediate_size",
                                                     "intermediate_size", "n_inner", "hidden_dim")),
                       (f"{a}.attention.head_count", ("num_attention_heads", "n_head", "n_heads")),
                       (f"{a}.attention.head_count_kv", ("num_key_value_heads", "n_kv_heads"))):
        if (v := _first(hp, names)) is not None:
            kvs.append((key, "UINT32", int(v)))
    if rule.moe:
        kvs += _moe_kvs(a, hp)
    if (hd := hp.get("head_dim")) is not None:
        kvs += [(f"{a}.attention.key_length", "UINT32", int(hd)), (f"{a}.attention.value_length", "UINT32", int(hd))]
    kvs.append(("general.file_type", "UINT32", int(ftype)))
    for suffix, field_ in rule.moe_keys:
        if (v := hp.get(field_)) is not None:
            kvs.append((f"{a}.{suffix}", "UINT32", int(v)))
    if rule.arch == "glm4moe":
        _glm4moe_kvs(kvs, a, hp)
    kvs.append((f"{a}.nextn_predict_layers", "UINT32", n_mtp))
    if rule.hybrid:
        kvs += _hybrid_kvs(a, hp, n_layers, n_mtp)
    return kvs


def _moe_kvs(a: str, hp: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """Expert counts, expert groups and the gating function of a MoE config."""
    kvs: list[tuple[str, str, Any]] = []
    if (v := _first(hp, ("num_local_experts", "num_experts", "n_routed_experts"))) is not None:
        kvs.append((f"{a}.expert_count", "UINT32", int(v)))
    if (v := _first(hp, ("num_experts_per_tok", "num_experts_per_token"))) is not None:
        kvs.append((f"{a}.expert_used_count", "UINT32", int(v)))
    for suffix, field_ in (("expert_group_count", "n_group"), ("expert_group_used_count", "topk_group")):
        if (v := hp.get(field_)) is not None:
            kvs.append((f"{a}.{suffix}", "UINT32", int(v)))
    if (v := _first(hp, _SCORE_FUNC_KEYS)) is not None:
        if v not in _GATING:
            raise SourceError(f"config.json: unsupported expert score function {v!r}")
        kvs.append((f"{a}.expert_gating_func", "UINT32", _GATING[v]))
    return kvs


def _glm4moe_kvs(kvs: list[tuple[str, str, Any]], a: str, hp: dict[str, Any]) -> None:
    """Glm4MoeModel.set_gguf_parameters' own keys, in its order (added to `kvs` in place)."""
    gating = (f"{a}.expert_gating_func", "UINT32", _GATING["sigmoid"])
    at = next((i for i, kv in enumerate(kvs) if kv[0] == gating[0]), None)
    if at is None:
        kvs.append(gating)
    else:
        kvs[at] = gating  # the writer overwrites a key in place
    if (v := hp.get("routed_scaling_factor")) is not None:
        kvs.append((f"{a}.expert_weights_scale", "FLOAT32", float(v)))
    if (v := hp.get("norm_topk_prob")) is not None:
        kvs.append((f"{a}.expert_weights_norm", "BOOL", bool(v)))


def _hybrid_kvs(a: str, hp: dict[str, Any], n_layers: int, n_mtp: int) -> list[tuple[str, str, Any]]:
    """Which layers are recurrent (linear attention), and the full-attention interval."""
    kvs: list[tuple[str, str, Any]] = []
    if (layer_types := hp.get("layer_types")) is not None:
        if len(layer_types) != n_layers:
            raise SourceError(f"config.json: layer_types has {len(layer_types)} entries, num_hidden_layers is {n_layers}")
        kvs.append((f"{a}.attention.recurrent_layers", "ARRAY",
                    [t == "linear_attention" for t in layer_types] + [False] * n_mtp))
    interval = hp.get("full_attention_interval")  # null is absent, as for every other field
    kvs.append((f"{a}.full_attention_interval", "UINT32", 4 if interval is None else int(interval)))
    return kvs


def encode_head_kvs(plan: HeadPlan) -> list[KV]:
    out = []
    for key, vtype, value in plan.kvs:
        if vtype == "ARRAY":
            out.append(encode_kv(key, V.ARRAY, value, V.BOOL))
        else:
            out.append(encode_kv(key, V[vtype], value))
    return out


# --------------------------------------------------------------------------- checks against the base

# GGUF key suffix -> the config fields it can come from (the converter's find_hparam lists).
_CONFIG_NAMES = {"embedding_length": ("hidden_size", "n_embd", "dim"),
                 "feed_forward_length": ("intermediate_size", "n_inner", "hidden_dim"),
                 "attention.head_count": ("num_attention_heads", "n_head", "n_heads"),
                 "attention.head_count_kv": ("num_key_value_heads", "n_kv_heads"),
                 "attention.key_length": ("head_dim",), "attention.value_length": ("head_dim",),
                 "expert_count": ("num_local_experts", "num_experts", "n_routed_experts"),
                 "expert_used_count": ("num_experts_per_tok", "num_experts_per_token"),
                 "expert_feed_forward_length": ("moe_intermediate_size",),
                 "expert_shared_feed_forward_length": ("shared_expert_intermediate_size",),
                 "expert_shared_count": ("n_shared_experts",), "leading_dense_block_count": ("first_k_dense_replace",)}


def check_head_against_base(plan: HeadPlan, config: dict[str, Any], base: GGUFModel, *, label: str) -> None:
    """Refuse a checkpoint whose head cannot fit BASE: architecture, sizes, vocabulary, layer count."""
    if base.arch != plan.arch:
        raise GraftError(f"{label} is {plan.hf_arch} ({plan.arch}); the base is {base.arch}")
    a = plan.arch
    for key, _, value in plan.kvs:
        suffix = key[len(a) + 1:] if key.startswith(a + ".") else None
        if suffix not in _CONFIG_NAMES:
            continue
        have = base.get(key)
        if isinstance(have, list):
            have = have[0] if have and all(x == have[0] for x in have) else have
        if have is not None and have != value:
            hp = text_config(config)
            field_ = next((f for f in _CONFIG_NAMES[suffix] if f in hp), _CONFIG_NAMES[suffix][0])
            raise GraftError(f"{label} does not fit the base: config.json {field_} = {value}, "
                             f"the base's {key} = {have}")
    vocab = text_config(config).get("vocab_size")
    tokens = base.kv.get("tokenizer.ggml.tokens")
    emb = base.by_name.get("token_embd.weight")
    n_vocab = tokens.count if tokens is not None else (emb.info.ne[1] if emb is not None and len(emb.info.ne) > 1 else None)
    if vocab is not None and n_vocab is not None and int(vocab) != n_vocab:
        raise GraftError(f"{label} does not fit the base: config.json vocab_size = {vocab}, the base has "
                         f"{n_vocab} tokens")
    bc = base.get(f"{a}.block_count")
    nextn = int(base.get(f"{a}.nextn_predict_layers", 0) or 0)
    trunk = int(bc) - nextn if bc is not None else None
    if trunk is not None and trunk != plan.trunk_layers:
        raise GraftError(f"{label} does not fit the base: config.json num_hidden_layers = {plan.trunk_layers}, "
                         f"the base's trunk has {trunk} layers")


# --------------------------------------------------------------------------- writing

Locate = Callable[[Piece], tuple[Path, int]]  # where a piece's source tensor starts (file, offset)


def _decode(raw: bytes, dtype: str) -> np.ndarray:
    """The converter's dtype rule: F16 and F32 stay, everything else becomes float32."""
    if dtype == "F16":
        return np.frombuffer(raw, dtype=np.float16)
    if dtype == "F32":
        return np.frombuffer(raw, dtype=np.float32)
    bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)


def _encode(x: np.ndarray, target: Q, cols: int) -> bytes:
    x = x.reshape(-1, cols)
    if target == Q.F32:
        return x.astype(np.float32, copy=False).tobytes()
    if target == Q.F16:
        return x.astype(np.float16, copy=False).tobytes()
    return np.ascontiguousarray(quants.quantize(x, target)).tobytes()


def _piece_chunks(p: Piece, fd: int, base: int) -> Iterator[tuple[bytes, int]]:
    """Raw bytes of a piece in bounded chunks, with the row length in elements."""
    es = DTYPE_SIZE[p.src.dtype]
    row = p.cols * es
    step = max(1, CHUNK_BYTES // max(1, row))
    for o in range(p.outer):
        for r in range(p.r0, p.r1, step):
            n = min(step, p.r1 - r)
            off = base + (o * p.rows + r) * row
            data = os.pread(fd, n * row, off)
            if len(data) != n * row:
                raise SourceError(f"{p.file}: unexpected end of data reading {p.src.name}")
            yield data, p.cols


def tensor_producer(t: HeadTensor, locate: Locate) -> Callable[[], Iterator[bytes]]:
    target = Q[t.ggml_type]

    def gen() -> Iterator[bytes]:
        for p in t.pieces:
            path, base = locate(p)
            fd = os.open(path, os.O_RDONLY)
            try:
                for raw, cols in _piece_chunks(p, fd, base):
                    x = _decode(raw, p.src.dtype)
                    if t.plus_one:
                        x = x + x.dtype.type(1)
                    yield _encode(x, target, cols)
            finally:
                os.close(fd)

    return gen


def write_head(plan: HeadPlan, locate: Locate | None, out: Path, *, extra_kvs: Sequence[KV] = (),
               progress: Callable[[int], None] = lambda n: None) -> None:
    """Write the head as a GGUF holding the plan's keys (+ extra_kvs) and only the MTP tensors
    (locate None: the header only, the data left a hole, for planning)."""
    tensors = [OutTensor(t.name, t.ne, int(Q[t.ggml_type]), t.nbytes,
                         produce=tensor_producer(t, locate) if locate is not None else None)
               for t in plan.tensors]
    with open(out, "wb") as fh:
        write_gguf(fh, encode_head_kvs(plan) + list(extra_kvs), tensors, alignment=32, progress=progress,
                   header_only=locate is None, layout=CONVERTER)  # as its header-only twin
