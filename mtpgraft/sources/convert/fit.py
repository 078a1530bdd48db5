"""Whether a planned head fits a base GGUF: architecture, sizes, vocabulary and layer count, checked
on headers and config.json before any tensor byte is fetched."""

from __future__ import annotations

from typing import Any

from ...errors import GraftError
from ...gguf_io import GGUFModel
from .config import text_config
from .head import HeadPlan

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
        if isinstance(value, list):  # a per-layer array (MiMo-V2's, Ling 3's head_count_kv): the trunk's entries
            value = value[:plan.trunk_layers]
            have = have[:plan.trunk_layers] if isinstance(have, list) else have
        elif isinstance(have, list):
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
