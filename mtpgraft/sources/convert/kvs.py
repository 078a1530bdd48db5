"""The metadata the converter writes for the head, from the config: (key, type, value) in its order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ...errors import SourceError
from ...ggml_types import FILE_TYPES
from ...gguf_io import shown
from ...parsing import number_field, str_list_field
from .config import CONFIG_INTS, SCORE_FUNC_KEYS
from .rules import HeadRule

# The largest scale or limit mtpgraft takes (real ones are below 100; a FLOAT32 holds up to 3.4e38).
_MAX_SCALE = 1e6
_GATING = {"softmax": 1, "sigmoid": 2, "sqrtsoftplus": 3}  # gguf.ExpertGatingFuncType


def _first(hp: dict[str, Any], keys: Sequence[str]) -> Any:
    """The value of the first of `keys` that config.json has (configs name the same field differently)."""
    return next((hp[k] for k in keys if k in hp), None)


def head_kvs(rule: HeadRule, hp: dict[str, Any], n_layers: int, n_mtp: int, ftype: str, *,
             label: str = "the checkpoint") -> list[tuple[str, str, Any]]:
    """The structural keys of the converter's output that describe the head, in its order; a config
    field they cannot be made from is refused naming the checkpoint (`label`) and the field."""
    try:
        return _head_kvs(rule, hp, n_layers, n_mtp, ftype)
    except SourceError as e:  # the helpers below name the field ("config.json: x ..."), not the checkpoint
        raise SourceError(f"{label}: {e}") from None


def _head_kvs(rule: HeadRule, hp: dict[str, Any], n_layers: int, n_mtp: int,
              ftype: str) -> list[tuple[str, str, Any]]:
    a = rule.arch
    hp = {**rule.config_defaults, **hp}
    if rule.mla:
        hp = {**hp, "num_key_value_heads": 1}  # DeepseekV2Model: MLA is written as MQA
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
    if rule.mla_lengths_first:  # where transformers' head_dim put them, with DeepseekV2Model's values
        kvs += _mla_lengths(a, hp)
    elif not rule.mla and rule.early_head_dim and (hd := hp.get("head_dim")) is not None:
        kvs += [(f"{a}.attention.key_length", "UINT32", int(hd)), (f"{a}.attention.value_length", "UINT32", int(hd))]
    kvs.append(("general.file_type", "UINT32", FILE_TYPES[ftype]))
    for suffix, field_ in rule.moe_keys:
        if (v := hp.get(field_)) is not None:
            kvs.append((f"{a}.{suffix}", "UINT32", int(v)))
        if rule.mla and not rule.mla_lengths_first and suffix == "leading_dense_block_count":
            kvs += _mla_lengths(a, hp)
    if rule.sigmoid_routing:
        _sigmoid_routing_kvs(kvs, a, hp)
    if rule.hy_routing:
        _hy_routing_kvs(kvs, a, hp)
    if rule.own_keys is not None:
        OWN_KEYS[rule.own_keys](kvs, a, hp, n_layers, n_mtp)
    if rule.mla:
        if (v := hp.get("routed_scaling_factor")) is not None:
            kvs.append((f"{a}.expert_weights_scale", "FLOAT32", float(v)))
        if hp.get("norm_topk_prob"):
            kvs.append((f"{a}.expert_weights_norm", "BOOL", True))
    if rule.mla_rope_dims:
        factor = _rotary_factor(hp) if rule.partial_rope else 1.0
        kvs.append((f"{a}.rope.dimension_count", "UINT32", int(int(hp["qk_rope_head_dim"]) * factor)))
    kvs.append((f"{a}.nextn_predict_layers", "UINT32", n_mtp))
    if rule.hybrid:
        kvs += _hybrid_kvs(a, hp, n_layers, n_mtp)
    return kvs


def _mla_lengths(a: str, hp: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """MLA's attention lengths as llama.cpp reads them: the compressed KV (kv_lora_rank) plus the rope part."""
    missing = [k for k in ("kv_lora_rank", "qk_rope_head_dim") if hp.get(k) is None]
    if missing:
        raise SourceError(f"config.json: no {missing[0]}, which an MLA head needs")
    rank = int(hp["kv_lora_rank"])
    return [(f"{a}.attention.key_length", "UINT32", rank + int(hp["qk_rope_head_dim"])),
            (f"{a}.attention.value_length", "UINT32", rank)]


def _rotary_factor(hp: dict[str, Any]) -> float:
    """The converter's partial_rotary_factor: rope_parameters' (or rope_scaling's), else the top-level
    one (mirrored only into a single-pattern rope_parameters), else 1."""
    params = hp.get("rope_parameters", hp.get("rope_scaling")) or {}
    if not isinstance(params, dict):
        raise SourceError("config.json: rope_parameters is not a JSON object")
    if "full_attention" not in params and "sliding_attention" not in params and "partial_rotary_factor" not in params:
        params = {"partial_rotary_factor": _first(hp, ("partial_rotary_factor", "rope_pct", "rope_percent"))}
    v = params.get("partial_rotary_factor")
    if v is None:
        return 1.0
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
        raise SourceError(f"config.json: partial_rotary_factor {v!r} is not a number in (0, 1]")
    return float(v)


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
    if (v := _first(hp, SCORE_FUNC_KEYS)) is not None:
        if v not in _GATING:
            raise SourceError(f"config.json: unsupported expert score function {v!r}")
        kvs.append((f"{a}.expert_gating_func", "UINT32", _GATING[v]))
    return kvs


def _sigmoid_gating(kvs: list[tuple[str, str, Any]], a: str) -> None:
    """expert_gating_func = sigmoid, where the key already is (the writer overwrites in place) or last."""
    _overwrite(kvs, (f"{a}.expert_gating_func", "UINT32", _GATING["sigmoid"]))


def _sigmoid_routing_kvs(kvs: list[tuple[str, str, Any]], a: str, hp: dict[str, Any]) -> None:
    """Glm4MoeModel.set_gguf_parameters' own keys, in its order (added to `kvs` in place)."""
    _sigmoid_gating(kvs, a)
    if (v := hp.get("routed_scaling_factor")) is not None:
        kvs.append((f"{a}.expert_weights_scale", "FLOAT32", float(v)))
    if (v := hp.get("norm_topk_prob")) is not None:
        kvs.append((f"{a}.expert_weights_norm", "BOOL", bool(v)))


def _hy_routing_kvs(kvs: list[tuple[str, str, Any]], a: str, hp: dict[str, Any]) -> None:
    """HYV3Model.set_gguf_parameters' own keys, in its order (added to `kvs` in place)."""
    missing = [k for k in ("moe_intermediate_size", "router_scaling_factor") if hp.get(k) is None]
    if missing:
        raise SourceError(f"config.json: no {missing[0]}, which the converter reads for a Hy3 head")
    ff, shared, norm = int(hp["moe_intermediate_size"]), hp.get("num_shared_experts", 1), hp.get("route_norm", True)
    if isinstance(shared, bool) or not isinstance(shared, int) or not 0 <= shared <= 1 << 16:
        raise SourceError(f"config.json: num_shared_experts {shared!r} is not a count")
    if not isinstance(norm, bool):
        raise SourceError("config.json: route_norm is not true or false")
    kvs += [(f"{a}.expert_feed_forward_length", "UINT32", ff),
            (f"{a}.expert_shared_feed_forward_length", "UINT32", ff * shared),
            (f"{a}.expert_weights_norm", "BOOL", norm),
            (f"{a}.expert_weights_scale", "FLOAT32", float(hp["router_scaling_factor"]))]
    _sigmoid_gating(kvs, a)


def _ling_kvs(kvs: list[tuple[str, str, Any]], a: str, hp: dict[str, Any], n_layers: int, n_mtp: int) -> None:
    """BailingMoeV3Model.set_gguf_parameters' own keys, in its order (added to `kvs` in place; the ones
    TextModel wrote already are overwritten where they are, as the writer does)."""
    need = ("layer_group_size", "kv_lora_rank", "qk_rope_head_dim", "moe_intermediate_size",
            "moe_shared_expert_intermediate_size", "first_k_dense_replace", "routed_scaling_factor", "norm_topk_prob")
    missing = [k for k in need if hp.get(k) is None]
    if missing:
        raise SourceError(f"config.json: no {missing[0]}, which the converter reads for a Ling 3 head")
    group, shared = int(hp["layer_group_size"]), hp.get("num_shared_experts", 1)
    if isinstance(shared, bool) or not isinstance(shared, int) or not 0 <= shared <= 1 << 16:
        raise SourceError(f"config.json: num_shared_experts {shared!r} is not a count")
    full = [il >= n_layers or (il + 1) % group == 0 or il >= n_layers // group * group
            for il in range(n_layers + n_mtp)]  # is_full_attention: the rest are KDA layers
    _overwrite(kvs, (f"{a}.attention.head_count_kv", "ARRAY", [int(f) for f in full]))
    _overwrite(kvs, (f"{a}.attention.key_length", "UINT32", int(hp["kv_lora_rank"]) + int(hp["qk_rope_head_dim"])))
    kvs += [(f"{a}.expert_feed_forward_length", "UINT32", int(hp["moe_intermediate_size"])),
            (f"{a}.expert_shared_feed_forward_length", "UINT32", int(hp["moe_shared_expert_intermediate_size"])),
            (f"{a}.expert_shared_count", "UINT32", shared),
            (f"{a}.leading_dense_block_count", "UINT32", int(hp["first_k_dense_replace"])),
            (f"{a}.expert_weights_scale", "FLOAT32", float(hp["routed_scaling_factor"])),
            (f"{a}.expert_weights_norm", "BOOL", bool(hp["norm_topk_prob"]))]
    for key, suffix in (("expert_swiglu_limit_list", "swiglu_clamp_exp"), ("share_expert_swiglu_limit_list",
                                                                           "swiglu_clamp_shexp")):
        if (values := hp.get(key)) is not None:  # per block: cut or padded with 0 (None is 0)
            kvs.append((f"{a}.{suffix}", "ARRAY", _clamp_limits(values, key, n_layers + n_mtp)))


def _clamp_limits(values: Any, key: str, n_blocks: int) -> list[float]:
    """Per-block SwiGLU limits (None is 0), cut or padded with 0 to `n_blocks`; each within +-_MAX_SCALE."""
    ok = isinstance(values, list) and len(values) <= 1 << 16 and all(
        v is None or (isinstance(v, int | float) and not isinstance(v, bool) and abs(v) <= _MAX_SCALE) for v in values)
    if not ok:
        raise SourceError(f"config.json: {key} is not a list of numbers from -{_MAX_SCALE:g} to {_MAX_SCALE:g}")
    cut = [0.0 if v is None else float(v) for v in values[:n_blocks]]
    return cut + [0.0] * (n_blocks - len(cut))


def _cohere_kvs(kvs: list[tuple[str, str, Any]], a: str, hp: dict[str, Any], n_layers: int, n_mtp: int) -> None:
    """Cohere2MoeModel.set_gguf_parameters' expert keys, in its order (added to `kvs`)."""
    if hp.get("intermediate_size") is None:
        raise SourceError("config.json: no intermediate_size, which the converter reads for a Cohere 2 MoE head")
    ff, shared, norm = int(hp["intermediate_size"]), hp.get("num_shared_experts", 0), hp.get("norm_topk_prob", False)
    if isinstance(shared, bool) or not isinstance(shared, int) or not 0 <= shared <= 1 << 16:
        raise SourceError(f"config.json: num_shared_experts {shared!r} is not a count")
    if shared and hp.get("shared_expert_combination_strategy", "average") != "average":
        raise SourceError("config.json: shared_expert_combination_strategy is not average, the only one the "
                          "converter takes for Cohere 2 MoE")
    types = hp.get("mlp_layer_types")
    if types is None:
        dense = int(hp.get("first_k_dense_replace") or 0)
    else:
        str_list_field(types, "config.json mlp_layer_types", max_len=1 << 12)
        if len(types) != n_layers:  # the converter would count leading dense layers past the trunk's
            raise SourceError(f"config.json: mlp_layer_types has {len(types)} entries, num_hidden_layers is "
                              f"{n_layers}")
        dense = next((i for i, t in enumerate(types) if t != "dense"), len(types))
    kvs += [(f"{a}.expert_feed_forward_length", "UINT32", ff), (f"{a}.leading_dense_block_count", "UINT32", dense),
            (f"{a}.expert_weights_norm", "BOOL", bool(norm))]
    if shared:
        kvs += [(f"{a}.expert_shared_count", "UINT32", shared),
                (f"{a}.expert_shared_feed_forward_length", "UINT32", ff * shared)]


_NEMOTRON_KINDS = {"M": "ssm", "*": "attn", "E": "moe", "mamba": "ssm", "linear_attention": "ssm",
                   "attention": "attn", "full_attention": "attn", "moe": "moe"}


def _nemotron_kvs(kvs: list[tuple[str, str, Any]], a: str, hp: dict[str, Any], n_layers: int, n_mtp: int) -> None:
    """NemotronHModel.set_gguf_parameters' own keys, in its order (in place, as for Ling 3); the folded MTP
    block counts as an attention and an MoE layer."""
    need = ("num_experts_per_tok", "head_dim", "moe_intermediate_size", "moe_shared_expert_intermediate_size",
            "n_shared_experts", "norm_topk_prob", "routed_scaling_factor", "num_key_value_heads")
    missing = [k for k in need if hp.get(k) is None]
    if missing:
        raise SourceError(f"config.json: no {missing[0]}, which the converter reads for a Nemotron-H MoE head "
                          f"(it keeps the MTP head of MoE models only)")
    key = "hybrid_override_pattern" if hp.get("hybrid_override_pattern") else "layers_block_type"
    pattern = hp.get(key)
    ok = isinstance(pattern, str) or (isinstance(pattern, list) and all(isinstance(k, str) for k in pattern))
    kinds = [_NEMOTRON_KINDS.get(k) for k in pattern] if ok else []  # type: ignore[union-attr]
    if len(kinds) != n_layers or None in kinds:
        raise SourceError(f"config.json: {key} {shown(repr(pattern), 60)} is not one of M, * and E per layer "
                          f"({n_layers} layers)")
    kinds += ["attn+moe"] * n_mtp
    ff, kv_heads = int(hp["moe_intermediate_size"]), int(hp["num_key_value_heads"])
    if "ssm" in kinds:  # GraniteHybridModel: no rope, so an arbitrary context length
        _overwrite(kvs, (f"{a}.context_length", "UINT32", 1 << 20))
    _overwrite(kvs, (f"{a}.feed_forward_length", "ARRAY", [ff if "moe" in k else 0 for k in kinds]))
    _overwrite(kvs, (f"{a}.attention.head_count_kv", "ARRAY", [kv_heads if "attn" in k else 0 for k in kinds]))
    kvs += [(f"{a}.attention.key_length", "UINT32", int(hp["head_dim"])),
            (f"{a}.attention.value_length", "UINT32", int(hp["head_dim"])),
            (f"{a}.expert_feed_forward_length", "UINT32", ff),
            (f"{a}.expert_shared_feed_forward_length", "UINT32", int(hp["moe_shared_expert_intermediate_size"])),
            (f"{a}.expert_shared_count", "UINT32", int(hp["n_shared_experts"])),
            (f"{a}.expert_weights_norm", "BOOL", bool(hp["norm_topk_prob"])),
            (f"{a}.expert_weights_scale", "FLOAT32", float(hp["routed_scaling_factor"]))]


def _overwrite(kvs: list[tuple[str, str, Any]], kv: tuple[str, str, Any]) -> None:
    """A key set again: replaced where it is (the writer overwrites in place), else appended."""
    at = next((i for i, old in enumerate(kvs) if old[0] == kv[0]), None)
    if at is None:
        kvs.append(kv)
    else:
        kvs[at] = kv


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


# ------------------------------------------------------------------------------------- MiMo-V2

def _mimo_kvs(kvs: list[tuple[str, str, Any]], a: str, hp: dict[str, Any], n_layers: int, n_mtp: int) -> None:
    """MimoV2Model.set_gguf_parameters' own keys, in its order (added to `kvs` in place): every MTP
    layer is a sliding-window one, so hybrid_layer_pattern gets a 1 and head_count_kv the SWA count."""
    need = ("hybrid_layer_pattern", "num_key_value_heads", "swa_num_key_value_heads", "head_dim", "v_head_dim",
            "moe_intermediate_size")
    missing = [k for k in need if hp.get(k) is None]
    if missing:
        raise SourceError(f"config.json: no {missing[0]}, which the converter reads for a MiMo-V2 head")
    pattern = hp["hybrid_layer_pattern"]
    # ints only: the converter writes the list as it is, so a 1.0 would make the array FLOAT32
    if not isinstance(pattern, list) or len(pattern) != n_layers or any(type(x) is not int or x not in (0, 1)
                                                                        for x in pattern):
        raise SourceError(f"config.json: hybrid_layer_pattern is not {n_layers} entries of 0 or 1 "
                          "(one per num_hidden_layers)")
    hybrid = [*pattern, *[1] * n_mtp]
    full, swa = int(hp["num_key_value_heads"]), int(hp["swa_num_key_value_heads"])
    _overwrite(kvs, (f"{a}.attention.head_count_kv", "ARRAY", [swa if x == 1 else full for x in hybrid]))
    _overwrite(kvs, (f"{a}.attention.value_length", "UINT32", int(hp["v_head_dim"])))
    kvs += [(f"{a}.attention.sliding_window_pattern", "ARRAY", hybrid),
            (f"{a}.expert_feed_forward_length", "UINT32", int(hp["moe_intermediate_size"])),
            (f"{a}.rope.dimension_count", "UINT32", int(int(hp["head_dim"]) * _mimo_rotary_factor(hp)))]
    if (v := hp.get("attention_value_scale")) is not None:
        kvs.append((f"{a}.attention.value_scale", "FLOAT32", number_field(v, "config.json attention_value_scale",
                                                                          0.0, _MAX_SCALE)))


def _mimo_rotary_factor(hp: dict[str, Any]) -> float:
    """MimoV2Model's rope_parameters["partial_rotary_factor"]: TextModel mirrors the top-level one into a
    single-pattern rope_parameters only; the converter fails without one."""
    params = hp.get("rope_parameters", hp.get("rope_scaling")) or {}
    if not isinstance(params, dict):
        raise SourceError("config.json: rope_parameters is not a JSON object")
    v = params.get("partial_rotary_factor")
    if v is None and "full_attention" not in params and "sliding_attention" not in params:
        v = hp.get("partial_rotary_factor")
    if v is None:
        raise SourceError("config.json: no partial_rotary_factor in rope_parameters, which the converter reads "
                          "for a MiMo-V2 head")
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
        raise SourceError(f"config.json: partial_rotary_factor {v!r} is not a number in (0, 1]")
    return float(v)


# ------------------------------------------------------------------------------------- Step-3.5

def _padded(hp: dict[str, Any], key: str, n: int, default: Any, kinds: tuple[type, ...]) -> list[Any]:
    """Step35Model's _pad: a per-layer list cut or padded with `default` to the block count."""
    v = hp.get(key)
    if v is None:
        v = []
    if not isinstance(v, list) or any(x is not None and (isinstance(x, bool) or not isinstance(x, kinds)) for x in v):
        raise SourceError(f"config.json: {key} is not a list of {'/'.join(k.__name__ for k in kinds)} entries")
    return (list(v) + [default] * n)[:n]


def _step_counts(hp: dict[str, Any], key: str, default: int | None = None) -> int:
    v = hp.get(key, default)
    if v is None:
        raise SourceError(f"config.json: no {key}, which the converter reads for a Step-3.5 head")
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1 << 20:
        raise SourceError(f"config.json: {key} {v!r} is not a count, which the converter reads for a Step-3.5 head")
    return v


def _step_kvs(kvs: list[tuple[str, str, Any]], a: str, hp: dict[str, Any], n_layers: int, n_mtp: int) -> None:
    """Step35Model.set_gguf_parameters' own keys, in its order (added to `kvs` in place)."""
    n_blocks = n_layers + n_mtp
    types = _padded(hp, "layer_types", n_blocks, "full_attention", (str,))
    factors = _padded(hp, "partial_rotary_factors", n_blocks, 0.5, (int, float))
    if [1.0 if t == "sliding_attention" else 0.5 for t in types] == factors:
        swa = [t == "sliding_attention" for t in types]
    else:  # the converter asserts it
        raise SourceError("config.json: partial_rotary_factors is not 1.0 for each sliding_attention layer "
                          "and 0.5 for the others, as the converter asserts")
    other = hp.get("attention_other_setting") or {}
    if not isinstance(other, dict):
        raise SourceError("config.json: attention_other_setting is not a JSON object")
    heads, groups = _step_counts(hp, "num_attention_heads"), _step_counts(hp, "num_attention_groups")
    heads_swa, groups_swa = _step_counts(other, "num_attention_heads", heads), _step_counts(other, "num_attention_groups", groups)
    _overwrite(kvs, (f"{a}.attention.head_count", "ARRAY", [heads_swa if s else heads for s in swa]))
    _overwrite(kvs, (f"{a}.attention.head_count_kv", "ARRAY", [groups_swa if s else groups for s in swa]))
    _overwrite(kvs, (f"{a}.attention.sliding_window_pattern", "ARRAY", swa))
    _overwrite(kvs, (f"{a}.attention.value_length", "UINT32", _step_counts(hp, "head_dim")))
    for suffix, key in (("expert_count", "moe_num_experts"), ("expert_used_count", "moe_top_k"),
                        ("expert_feed_forward_length", "moe_intermediate_size"),
                        ("expert_shared_feed_forward_length", "share_expert_dim")):
        _overwrite(kvs, (f"{a}.{suffix}", "UINT32", _step_counts(hp, key)))
    _step_expert_weights(kvs, a, hp)
    _overwrite(kvs, (f"{a}.leading_dense_block_count", "UINT32", _leading_dense(hp)))
    _overwrite(kvs, (f"{a}.moe_every_n_layers", "UINT32", _step_counts(hp, "moe_every_n_layer", 1)))
    for suffix, key in (("swiglu_clamp_exp", "swiglu_limits"), ("swiglu_clamp_shexp", "swiglu_limits_shared")):
        if hp.get(key) is not None:  # Step35Model._pad: cut or padded with 0, as Ling 3's
            _overwrite(kvs, (f"{a}.{suffix}", "ARRAY", _clamp_limits(hp[key], key, n_blocks)))


def _step_expert_weights(kvs: list[tuple[str, str, Any]], a: str, hp: dict[str, Any]) -> None:
    if (v := hp.get("moe_router_scaling_factor")) is not None:
        scale = number_field(v, "config.json moe_router_scaling_factor", 0.0, _MAX_SCALE)
        _overwrite(kvs, (f"{a}.expert_weights_scale", "FLOAT32", scale))
    if (v := hp.get("norm_expert_weight")) is not None:
        if not isinstance(v, bool):
            raise SourceError("config.json: norm_expert_weight is not true or false")
        _overwrite(kvs, (f"{a}.expert_weights_norm", "BOOL", v))


def _leading_dense(hp: dict[str, Any]) -> int:
    """The first MoE layer of moe_layers_enum ("3,4,...,44"), 0 without one."""
    enum = hp.get("moe_layers_enum")
    if not isinstance(enum, str) or not enum.strip():
        return 0
    try:
        layers = sorted(int(i) for i in enum.strip().split(","))
    except ValueError:
        raise SourceError(f"config.json: moe_layers_enum {enum[:40]!r} is not comma-separated layer numbers") from None
    if layers[0] > CONFIG_INTS["num_hidden_layers"]:  # the converter writes it as a UINT32
        raise SourceError(f"config.json: moe_layers_enum starts at layer {shown(str(layers[0]), 40)}, past the "
                          f"{CONFIG_INTS['num_hidden_layers']:,} layers mtpgraft takes")
    return max(0, layers[0])


# A converter class's own keys (HeadRule.own_keys), each added to the keys written so far, in place.
OWN_KEYS: dict[str, Callable[[list[tuple[str, str, Any]], str, dict[str, Any], int, int], None]] = {
    "BailingMoeV3Model": _ling_kvs, "NemotronHModel": _nemotron_kvs, "Cohere2MoeModel": _cohere_kvs,
    "MimoV2Model": _mimo_kvs, "Step35Model": _step_kvs}
