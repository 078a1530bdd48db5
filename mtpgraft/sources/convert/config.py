"""config.json as the converter reads it: parsed with bounds, every field it reads type- and
range-checked, and its architecture looked up in the head table."""

from __future__ import annotations

from typing import Any

from ...errors import SourceError
from ...parsing import int_field, load_json, number_field, str_list_field
from .rules import HEAD_RULES, REFUSED, HeadRule

# The config keys that name a MoE router's gating function (the converter's find_hparam list).
SCORE_FUNC_KEYS = ("score_function", "scoring_func", "score_func", "moe_router_activation",
                   "moe_router_activation_func", "expert_selection_fn")

# --------------------------------------------------------------------------- config.json, typed

_MAX_DIM = 1 << 20  # sizes (hidden, intermediate, head_dim): the largest real ones are ~1e5
# Every int field the converter reads, and the largest value mtpgraft takes (far above any real model,
# far below what would make a plan allocate without bound: layer ranges, per-layer arrays).
CONFIG_INTS: dict[str, int] = {
    "num_hidden_layers": 4096, "mtp_num_hidden_layers": 64, "num_nextn_predict_layers": 64,
    "max_position_embeddings": 1 << 26, "n_ctx": 1 << 26, "n_positions": 1 << 26, "vocab_size": 1 << 26,
    **dict.fromkeys(("hidden_size", "n_embd", "dim", "prefix_dense_intermediate_size", "dense_intermediate_size",
                     "intermediate_size", "n_inner", "hidden_dim", "head_dim", "moe_intermediate_size",
                     "shared_expert_intermediate_size", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                     "qk_rope_head_dim", "v_head_dim"), _MAX_DIM),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "num_key_value_heads", "n_kv_heads",
                     "num_local_experts", "num_experts", "n_routed_experts", "num_experts_per_tok",
                     "num_experts_per_token", "n_group", "topk_group", "n_shared_experts"), 1 << 16),
    "first_k_dense_replace": 4096, "full_attention_interval": 4096,
    "layer_group_size": 4096, "moe_shared_expert_intermediate_size": _MAX_DIM,  # Ling 3
    "swa_num_key_value_heads": 1 << 16, "swa_num_attention_heads": 1 << 16,  # MiMo-V2
    "swa_head_dim": _MAX_DIM, "swa_v_head_dim": _MAX_DIM,
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
            int_field(hp[key], f"{label}: config.json {key}", 1 if key in ("full_attention_interval", "layer_group_size") else 0, hi)
    if hp.get("layer_types") is not None:
        str_list_field(hp["layer_types"], f"{label}: config.json layer_types", max_len=CONFIG_INTS["num_hidden_layers"])
    for key in ("routed_scaling_factor", "router_scaling_factor"):
        if hp.get(key) is not None:
            number_field(hp[key], f"{label}: config.json {key}", 0.0, 1e6)
    if hp.get("norm_topk_prob") is not None and not isinstance(hp["norm_topk_prob"], bool):
        raise SourceError(f"{label}: config.json norm_topk_prob is not true or false")
    for key in SCORE_FUNC_KEYS:
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


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The converter's hparams: text_config moved to the top level."""
    return {**config, **(config.get("text_config") or {})}
