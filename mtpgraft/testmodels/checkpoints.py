"""Tiny random Hugging Face checkpoints with an MTP head, in numpy: Qwen3.5/3.6 (dense and MoE),
Qwen3-Next, GLM-4.5, GLM-4.7-Flash, GLM-5, DeepSeek-V3.2 and Hy3 (the last five layer-indexed: the MTP
layer is model.layers.N), MiMo-V2 (three model.mtp.layers.* heads), Step-3.5 (three layer-indexed heads),
Ling 3 and Cohere 2 MoE (layer-indexed) and Nemotron-3 (mtp.layers.0 and 1, folded by
the converter into one block).

The Qwen3.5/3.6 ones have the layout of the real Qwen/Qwen3.6-27B and Qwen3.6-35B-A3B repos:
`config.json` with the text model nested under `text_config`, the trunk under `model.language_model.*`,
the head under top-level `mtp.*`, sharded safetensors with `model.safetensors.index.json`, and a
byte-level BPE tokenizer that transformers loads. Qwen3-Next (Qwen/Qwen3-Next-80B-A3B) is flat: no
text_config, the trunk under `model.*`, fused in_proj_qkvz / in_proj_ba linear attention, per-expert
MoE tensors, the same `mtp.*` head, and no `mtp_num_hidden_layers` in config.json. The same (variant,
seed) always gives the same bytes, so tests rebuild exactly the checkpoint that
scripts/make_convert_reference.py fed to llama.cpp's converter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..sources.safetensors import write_safetensors
from .vocab import bytes_to_unicode


@dataclass(frozen=True)
class Variant:
    name: str
    moe: bool
    dtype: str  # safetensors dtype of every tensor: "BF16", "F16" or "F32"
    experts: str = "fused"  # MoE expert layout: "fused" (gate_up_proj) or "per-expert"
    shards: int = 2
    mtp_layers: int = 1
    # "qwen35" (Qwen3.5/3.6: mtp.*), "qwen3next" (Qwen3-Next: mtp.*) or "glm4moe" (layer-indexed MTP)
    family: str = "qwen35"


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("dense-bf16", moe=False, dtype="BF16"),
    Variant("dense-f16", moe=False, dtype="F16"),
    Variant("moe-bf16", moe=True, dtype="BF16"),
    Variant("moe-f16-per-expert", moe=True, dtype="F16", experts="per-expert", shards=1),
    Variant("glm4moe-bf16", moe=True, dtype="BF16", experts="per-expert", family="glm4moe"),
    Variant("qwen3next-bf16", moe=True, dtype="BF16", experts="per-expert", family="qwen3next"),
    Variant("glm-dsa-bf16", moe=True, dtype="BF16", experts="per-expert", family="glm-dsa"),
    Variant("glm47flash-bf16", moe=True, dtype="BF16", experts="per-expert", family="deepseek2"),
    Variant("deepseek32-bf16", moe=True, dtype="BF16", experts="per-expert", family="deepseek32"),
    Variant("hy3-bf16", moe=True, dtype="BF16", experts="per-expert", family="hy_v3"),
    # MiMo-V2 (three model.mtp.layers.* heads) and Step-3.5
    Variant("mimo2-bf16", moe=True, dtype="BF16", experts="per-expert", shards=1, mtp_layers=3, family="mimo2"),
    Variant("step35-bf16", moe=True, dtype="BF16", shards=1, mtp_layers=3, family="step35"),

    Variant("ling3-bf16", moe=True, dtype="BF16", experts="per-expert", family="bailingmoe3"),
    Variant("nemotron3-bf16", moe=True, dtype="BF16", experts="per-expert", family="nemotron_h_moe"),
    Variant("cohere2moe-bf16", moe=True, dtype="BF16", experts="per-expert", family="cohere2moe"),
)}

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FF, VOCAB = 64, 2, 1, 32, 128, 320
EXPERTS, EXPERTS_USED, EXPERT_FF, SHARED_FF = 4, 2, 32, 32
LIN_K_HEADS, LIN_V_HEADS, LIN_K_DIM, LIN_V_DIM, CONV_K = 1, 2, 16, 16, 4
LAYER_TYPES = ["linear_attention", "full_attention"]


def _glm_config() -> dict[str, Any]:
    return {"architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", "hidden_size": HIDDEN,
            "num_hidden_layers": len(LAYER_TYPES), "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM, "intermediate_size": FF, "moe_intermediate_size": EXPERT_FF,
            "n_routed_experts": EXPERTS, "n_shared_experts": 1, "num_experts_per_tok": EXPERTS_USED,
            "first_k_dense_replace": 1, "num_nextn_predict_layers": 1, "partial_rotary_factor": 0.5,
            "rope_theta": 1000000.0, "rms_norm_eps": 1e-5, "vocab_size": VOCAB, "max_position_embeddings": 4096,
            "attention_bias": True, "use_qk_norm": False, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
            "n_group": 1, "topk_group": 1, "tie_word_embeddings": False, "hidden_act": "silu"}


Q_LORA, KV_LORA, QK_NOPE, QK_ROPE, V_DIM, INDEX_HEADS, INDEX_DIM = 32, 32, 16, 16, 16, 2, 64


def _mla_config(v: Variant) -> dict[str, Any]:
    """GLM-5's config.json (GlmMoeDsaForCausalLM): DeepSeek-V3.2's MLA + DSA indexer layout; or
    GLM-4.7-Flash's (Glm4MoeLiteForCausalLM, deepseek2): the same MLA without the indexer."""
    if v.family == "deepseek2":
        cfg = _mla_config(Variant(v.name, v.moe, v.dtype, family="glm-dsa"))
        for k in ("index_n_heads", "index_head_dim", "index_topk"):
            del cfg[k]
        return cfg | {"architectures": ["Glm4MoeLiteForCausalLM"], "model_type": "glm4_moe_lite"}
    if v.family == "deepseek32":
        cfg = _mla_config(Variant(v.name, v.moe, v.dtype, family="glm-dsa"))
        return cfg | {"architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32"}
    return {"architectures": ["GlmMoeDsaForCausalLM"], "model_type": "glm_moe_dsa", "hidden_size": HIDDEN,
            "num_hidden_layers": len(LAYER_TYPES), "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
            "q_lora_rank": Q_LORA, "kv_lora_rank": KV_LORA, "qk_nope_head_dim": QK_NOPE, "qk_rope_head_dim": QK_ROPE,
            "qk_head_dim": QK_NOPE + QK_ROPE, "v_head_dim": V_DIM, "head_dim": QK_ROPE, "intermediate_size": FF,
            "moe_intermediate_size": EXPERT_FF, "n_routed_experts": EXPERTS, "n_shared_experts": 1,
            "num_experts_per_tok": EXPERTS_USED, "first_k_dense_replace": 1, "num_nextn_predict_layers": 1,
            "routed_scaling_factor": 2.5, "norm_topk_prob": True, "n_group": 1, "topk_group": 1,
            "scoring_func": "sigmoid", "topk_method": "noaux_tc", "index_n_heads": INDEX_HEADS,
            "index_head_dim": INDEX_DIM, "index_topk": 16, "rope_theta": 1000000.0, "rms_norm_eps": 1e-5,
            "vocab_size": VOCAB, "max_position_embeddings": 4096, "attention_bias": False,
            "tie_word_embeddings": False, "hidden_act": "silu"}


def _hy_config() -> dict[str, Any]:
    """Hy3's config.json (HYV3ForCausalLM, tencent/Hy3): one MTP layer appended at model.layers.N."""
    return {"architectures": ["HYV3ForCausalLM"], "model_type": "hy_v3", "hidden_size": HIDDEN,
            "num_hidden_layers": len(LAYER_TYPES), "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM, "intermediate_size": FF, "moe_intermediate_size": EXPERT_FF, "num_experts": EXPERTS,
            "num_experts_per_tok": EXPERTS_USED, "num_shared_experts": 1, "router_scaling_factor": 2.5,
            "route_norm": True, "first_k_dense_replace": 1, "mlp_layer_types": ["dense", "sparse"],
            "num_nextn_predict_layers": 1, "qk_norm": True, "rms_norm_eps": 1e-5, "vocab_size": VOCAB,
            "max_position_embeddings": 4096, "rope_parameters": {"rope_type": "default", "rope_theta": 11158840.0},
            "tie_word_embeddings": False, "hidden_act": "silu"}


def _qwen3next_config() -> dict[str, Any]:
    """Qwen3-Next's config.json: flat, and (as on the Hub) without mtp_num_hidden_layers."""
    return {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "hidden_size": HIDDEN,
            "num_hidden_layers": len(LAYER_TYPES), "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM, "intermediate_size": FF, "vocab_size": VOCAB, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6, "layer_types": LAYER_TYPES, "full_attention_interval": 2,
            "linear_conv_kernel_dim": CONV_K, "linear_key_head_dim": LIN_K_DIM, "linear_value_head_dim": LIN_V_DIM,
            "linear_num_key_heads": LIN_K_HEADS, "linear_num_value_heads": LIN_V_HEADS,
            "num_experts": EXPERTS, "num_experts_per_tok": EXPERTS_USED, "moe_intermediate_size": EXPERT_FF,
            "shared_expert_intermediate_size": SHARED_FF, "decoder_sparse_step": 1, "mlp_only_layers": [],
            "norm_topk_prob": True, "partial_rotary_factor": 0.25, "rope_theta": 10000000.0,
            "tie_word_embeddings": False, "hidden_act": "silu"}


# ---------------------------------------------------------------- Ling 3 (bailingmoe3)

KDA_HEAD_DIM = 8  # not v_head_dim: value_length is the KDA head_dim the converter writes first


def _ling3_config() -> dict[str, Any]:
    """Ling/Ring 3's config.json (BailingMoeV3ForCausalLM, inclusionAI/Ling-3.0-flash): layer_group_size 1
    makes every trunk layer MLA (no KDA layer), which is all the head's conversion touches."""
    return {"architectures": ["BailingMoeV3ForCausalLM"], "model_type": "bailing_moe_v3", "hidden_size": HIDDEN,
            "num_hidden_layers": len(LAYER_TYPES), "num_attention_heads": HEADS, "num_key_value_heads": HEADS,
            "head_dim": KDA_HEAD_DIM, "layer_group_size": 1, "no_kda_lora": True, "kda_safe_gate": True,
            "kda_lower_bound": -5.0, "short_conv_kernel_size": CONV_K,
            "gated_attention_proj_granularity_type": "head_wise", "q_lora_rank": Q_LORA, "kv_lora_rank": KV_LORA,
            "qk_nope_head_dim": QK_NOPE, "qk_rope_head_dim": QK_ROPE, "v_head_dim": V_DIM, "intermediate_size": FF,
            "moe_intermediate_size": EXPERT_FF, "moe_shared_expert_intermediate_size": SHARED_FF,
            "num_experts": EXPERTS, "num_experts_per_tok": EXPERTS_USED, "num_shared_experts": 1,
            "first_k_dense_replace": 1, "routed_scaling_factor": 2.5, "norm_topk_prob": True,
            "score_function": "sigmoid", "num_nextn_predict_layers": 1, "rope_theta": 10000.0,
            # per block, cut or padded by the converter: the MTP block's limit given, then left out
            "expert_swiglu_limit_list": [None, 7.0, 6.5], "share_expert_swiglu_limit_list": [None, 7.0],
            "rms_norm_eps": 1e-6, "vocab_size": VOCAB, "max_position_embeddings": 4096,
            "tie_word_embeddings": False, "hidden_act": "silu"}


def _ling3_shapes() -> dict[str, tuple[int, ...]]:
    """Ling 3's layout: model.word_embeddings, attention.* MLA with a head-wise g_proj gate and
    attention.dense as output, mlp.gate with expert_bias, shared_experts; the MTP layer is model.layers.N
    with eh_proj, enorm, hnorm and final_layernorm."""
    n = len(LAYER_TYPES)
    shapes: dict[str, tuple[int, ...]] = {"lm_head.weight": (VOCAB, HIDDEN), "model.word_embeddings.weight": (VOCAB, HIDDEN),
                                          "model.norm.weight": (HIDDEN,)}
    for i in range(n + 1):
        p = f"model.layers.{i}"
        block = _glm_block(p, dense=i < 1, family="deepseek2")
        block = {k.replace(".self_attn.", ".attention.").replace("attention.o_proj", "attention.dense")
                 .replace("gate.e_score_correction_bias", "gate.expert_bias"): s for k, s in block.items()}
        shapes.update(block | {f"{p}.attention.g_proj.weight": (HEADS, HIDDEN)})
    m = f"model.layers.{n}"
    shapes.update({f"{m}.eh_proj.weight": (HIDDEN, 2 * HIDDEN), f"{m}.enorm.weight": (HIDDEN,),
                   f"{m}.hnorm.weight": (HIDDEN,), f"{m}.final_layernorm.weight": (HIDDEN,)})
    return shapes


# --------------------------------------------------------- Nemotron-3 (nemotron_h_moe)

NEMOTRON_PATTERN = "M*E"  # Mamba2, attention, MoE (hybrid_override_pattern): one layer of each kind
MAMBA_HEADS, MAMBA_HEAD_DIM, SSM_STATE, SSM_GROUPS = 4, 16, 16, 1


def _nemotron3_config() -> dict[str, Any]:
    """Nemotron-3's config.json (NemotronHForCausalLM, nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B): one MTP
    head stored as mtp.layers.0 (fusion + attention) and mtp.layers.1 (MoE + final norm)."""
    return {"architectures": ["NemotronHForCausalLM"], "model_type": "nemotron_h", "hidden_size": HIDDEN,
            "num_hidden_layers": len(NEMOTRON_PATTERN), "hybrid_override_pattern": NEMOTRON_PATTERN,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
            "mamba_num_heads": MAMBA_HEADS, "mamba_head_dim": MAMBA_HEAD_DIM, "ssm_state_size": SSM_STATE,
            "n_groups": SSM_GROUPS, "conv_kernel": CONV_K, "expand": 2, "intermediate_size": FF,
            "moe_intermediate_size": EXPERT_FF, "moe_shared_expert_intermediate_size": SHARED_FF,
            "n_routed_experts": EXPERTS, "n_shared_experts": 1, "num_experts_per_tok": EXPERTS_USED,
            "norm_topk_prob": True, "routed_scaling_factor": 2.5, "n_group": 1, "topk_group": 1,
            "num_nextn_predict_layers": 1, "layer_norm_epsilon": 1e-5, "vocab_size": VOCAB,
            "max_position_embeddings": 4096, "mlp_hidden_act": "relu2", "tie_word_embeddings": False}


def _nemotron_mixer(p: str, kind: str) -> dict[str, tuple[int, ...]]:
    """One Nemotron-H layer's norm and mixer: Mamba2 (M), attention (*) or relu^2 MoE (E)."""
    out: dict[str, tuple[int, ...]] = {f"{p}.norm.weight": (HIDDEN,)}
    m = f"{p}.mixer"
    if kind == "M":
        d_inner, conv = MAMBA_HEADS * MAMBA_HEAD_DIM, MAMBA_HEADS * MAMBA_HEAD_DIM + 2 * SSM_GROUPS * SSM_STATE
        return out | {f"{m}.in_proj.weight": (d_inner + conv + MAMBA_HEADS, HIDDEN), f"{m}.conv1d.weight": (conv, 1, CONV_K),
                      f"{m}.conv1d.bias": (conv,), f"{m}.dt_bias": (MAMBA_HEADS,), f"{m}.A_log": (MAMBA_HEADS,),
                      f"{m}.D": (MAMBA_HEADS,), f"{m}.norm.weight": (d_inner,), f"{m}.out_proj.weight": (HIDDEN, d_inner)}
    if kind == "*":
        return out | {f"{m}.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN), f"{m}.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                      f"{m}.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN), f"{m}.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM)}
    out |= {f"{m}.gate.weight": (EXPERTS, HIDDEN), f"{m}.gate.e_score_correction_bias": (EXPERTS,),
            f"{m}.shared_experts.up_proj.weight": (SHARED_FF, HIDDEN),
            f"{m}.shared_experts.down_proj.weight": (HIDDEN, SHARED_FF)}
    for e in range(EXPERTS):
        out |= {f"{m}.experts.{e}.up_proj.weight": (EXPERT_FF, HIDDEN), f"{m}.experts.{e}.down_proj.weight": (HIDDEN, EXPERT_FF)}
    return out


def _nemotron3_shapes() -> dict[str, tuple[int, ...]]:
    """Nemotron-H's layout: backbone.embeddings, backbone.layers.N.{norm, mixer.*}, backbone.norm_f; the MTP
    head as mtp.layers.0 (enorm, hnorm, eh_proj, then an attention layer) and mtp.layers.1 (an MoE layer
    and final_layernorm), which the converter folds into one block."""
    shapes: dict[str, tuple[int, ...]] = {"lm_head.weight": (VOCAB, HIDDEN), "backbone.embeddings.weight": (VOCAB, HIDDEN),
                                          "backbone.norm_f.weight": (HIDDEN,)}
    for i, kind in enumerate(NEMOTRON_PATTERN):
        shapes.update(_nemotron_mixer(f"backbone.layers.{i}", kind))
    shapes |= {"mtp.layers.0.enorm.weight": (HIDDEN,), "mtp.layers.0.hnorm.weight": (HIDDEN,),
               "mtp.layers.0.eh_proj.weight": (HIDDEN, 2 * HIDDEN)}
    shapes.update(_nemotron_mixer("mtp.layers.0", "*"))
    shapes.update(_nemotron_mixer("mtp.layers.1", "E"))
    shapes["mtp.layers.1.final_layernorm.weight"] = (HIDDEN,)
    return shapes


# -------------------------------------------------------------- Cohere 2 MoE (cohere2moe)


def _cohere2moe_config() -> dict[str, Any]:
    """Cohere 2 MoE's config.json (Cohere2MoeForCausalLM, CohereLabs/North-Mini-Code-1.0): every layer
    MoE with a shared expert (intermediate_size is the expert size), zero attention biases, one MTP
    layer at model.layers.N."""
    return {"architectures": ["Cohere2MoeForCausalLM"], "model_type": "cohere2_moe", "hidden_size": HIDDEN,
            "num_hidden_layers": len(LAYER_TYPES), "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM, "intermediate_size": EXPERT_FF, "num_experts": EXPERTS,
            "num_experts_per_tok": EXPERTS_USED, "num_shared_experts": 1, "first_k_dense_replace": 0,
            "norm_topk_prob": True, "logit_scale": 0.25, "sliding_window": 128,
            "layer_types": ["sliding_attention", "full_attention"], "num_nextn_predict_layers": 1,
            "attention_bias": True, "layer_norm_eps": 1e-5, "rope_theta": 50000.0, "vocab_size": VOCAB,
            "max_position_embeddings": 4096, "tie_word_embeddings": False, "hidden_act": "silu"}


def _cohere2moe_shapes() -> dict[str, tuple[int, ...]]:
    """Cohere 2 MoE's layout: per layer input_layernorm, q/k/v/o with biases (zero: see build_checkpoint),
    mlp.gate, per-expert and shared_experts tensors; the MTP layer adds eh_proj, enorm, hnorm, shared_head.norm."""
    n = len(LAYER_TYPES)
    shapes: dict[str, tuple[int, ...]] = {"lm_head.weight": (VOCAB, HIDDEN), "model.embed_tokens.weight": (VOCAB, HIDDEN),
                                          "model.norm.weight": (HIDDEN,)}
    for i in range(n + 1):
        p = f"model.layers.{i}"
        shapes[f"{p}.input_layernorm.weight"] = (HIDDEN,)
        for w, rows in (("q", HEADS * HEAD_DIM), ("k", KV_HEADS * HEAD_DIM), ("v", KV_HEADS * HEAD_DIM)):
            shapes |= {f"{p}.self_attn.{w}_proj.weight": (rows, HIDDEN), f"{p}.self_attn.{w}_proj.bias": (rows,)}
        shapes |= {f"{p}.self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM), f"{p}.mlp.gate.weight": (EXPERTS, HIDDEN)}
        for e in range(EXPERTS):
            shapes |= {f"{p}.mlp.experts.{e}.{w}_proj.weight": (EXPERT_FF, HIDDEN) for w in ("gate", "up")}
            shapes[f"{p}.mlp.experts.{e}.down_proj.weight"] = (HIDDEN, EXPERT_FF)
        shapes |= {f"{p}.mlp.shared_experts.{w}_proj.weight": (EXPERT_FF, HIDDEN) for w in ("gate", "up")}
        shapes[f"{p}.mlp.shared_experts.down_proj.weight"] = (HIDDEN, EXPERT_FF)
    m = f"model.layers.{n}"
    shapes |= {f"{m}.eh_proj.weight": (HIDDEN, 2 * HIDDEN), f"{m}.enorm.weight": (HIDDEN,), f"{m}.hnorm.weight": (HIDDEN,),
               f"{m}.shared_head.norm.weight": (HIDDEN,)}
    return shapes


def config(v: Variant) -> dict[str, Any]:
    if v.family == "cohere2moe":
        return _cohere2moe_config()
    if v.family == "bailingmoe3":
        return _ling3_config()
    if v.family == "nemotron_h_moe":
        return _nemotron3_config()
    if v.family == "glm4moe":
        return _glm_config()
    if v.family == "qwen3next":
        return _qwen3next_config()
    if v.family in ("glm-dsa", "deepseek2", "deepseek32"):
        return _mla_config(v)
    if v.family == "hy_v3":
        return _hy_config()
    if v.family == "mimo2":
        return _mimo2_config()
    if v.family == "step35":
        return _step35_config()
    text: dict[str, Any] = {
        "model_type": "qwen3_5_moe_text" if v.moe else "qwen3_5_text",
        "hidden_size": HIDDEN, "num_hidden_layers": len(LAYER_TYPES), "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM, "vocab_size": VOCAB,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "layer_types": LAYER_TYPES,
        "full_attention_interval": 2, "linear_conv_kernel_dim": CONV_K,
        "linear_key_head_dim": LIN_K_DIM, "linear_value_head_dim": LIN_V_DIM,
        "linear_num_key_heads": LIN_K_HEADS, "linear_num_value_heads": LIN_V_HEADS,
        "mtp_num_hidden_layers": v.mtp_layers, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                            "mrope_section": [2, 1, 1], "mrope_interleaved": True},
    }
    if v.moe:
        text.update(num_experts=EXPERTS, num_experts_per_tok=EXPERTS_USED, moe_intermediate_size=EXPERT_FF,
                    shared_expert_intermediate_size=SHARED_FF)
    else:
        text["intermediate_size"] = FF
    arch = "Qwen3_5MoeForConditionalGeneration" if v.moe else "Qwen3_5ForConditionalGeneration"
    return {"architectures": [arch], "model_type": "qwen3_5_moe" if v.moe else "qwen3_5",
            "text_config": text, "tie_word_embeddings": False}


def _attention(p: str) -> dict[str, tuple[int, ...]]:
    return {
        f"{p}.self_attn.q_proj.weight": (2 * HEADS * HEAD_DIM, HIDDEN),
        f"{p}.self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
        f"{p}.self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
        f"{p}.self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
        f"{p}.self_attn.q_norm.weight": (HEAD_DIM,),
        f"{p}.self_attn.k_norm.weight": (HEAD_DIM,),
    }


def _linear_attention(p: str, v: Variant) -> dict[str, tuple[int, ...]]:
    qkv = 2 * LIN_K_HEADS * LIN_K_DIM + LIN_V_HEADS * LIN_V_DIM
    if v.family == "qwen3next":  # fused projections: [q, k, v, z] and [b, a] per key head
        proj = {f"{p}.linear_attn.in_proj_qkvz.weight": (qkv + LIN_V_HEADS * LIN_V_DIM, HIDDEN),
                f"{p}.linear_attn.in_proj_ba.weight": (2 * LIN_V_HEADS, HIDDEN)}
    else:
        proj = {f"{p}.linear_attn.in_proj_qkv.weight": (qkv, HIDDEN),
                f"{p}.linear_attn.in_proj_z.weight": (LIN_V_HEADS * LIN_V_DIM, HIDDEN),
                f"{p}.linear_attn.in_proj_a.weight": (LIN_V_HEADS, HIDDEN),
                f"{p}.linear_attn.in_proj_b.weight": (LIN_V_HEADS, HIDDEN)}
    return {
        **proj,
        f"{p}.linear_attn.conv1d.weight": (qkv, 1, CONV_K),
        f"{p}.linear_attn.dt_bias": (LIN_V_HEADS,),
        f"{p}.linear_attn.A_log": (LIN_V_HEADS,),
        f"{p}.linear_attn.norm.weight": (LIN_V_DIM,),
        f"{p}.linear_attn.out_proj.weight": (HIDDEN, LIN_V_HEADS * LIN_V_DIM),
    }


def _mlp(p: str, v: Variant) -> dict[str, tuple[int, ...]]:
    if not v.moe:
        return {f"{p}.mlp.gate_proj.weight": (FF, HIDDEN), f"{p}.mlp.up_proj.weight": (FF, HIDDEN),
                f"{p}.mlp.down_proj.weight": (HIDDEN, FF)}
    out: dict[str, tuple[int, ...]] = {f"{p}.mlp.gate.weight": (EXPERTS, HIDDEN)}
    if v.experts == "fused":
        out[f"{p}.mlp.experts.gate_up_proj"] = (EXPERTS, 2 * EXPERT_FF, HIDDEN)
        out[f"{p}.mlp.experts.down_proj"] = (EXPERTS, HIDDEN, EXPERT_FF)
    else:
        for e in range(EXPERTS):
            out[f"{p}.mlp.experts.{e}.gate_proj.weight"] = (EXPERT_FF, HIDDEN)
            out[f"{p}.mlp.experts.{e}.up_proj.weight"] = (EXPERT_FF, HIDDEN)
            out[f"{p}.mlp.experts.{e}.down_proj.weight"] = (HIDDEN, EXPERT_FF)
    out.update({f"{p}.mlp.shared_expert.gate_proj.weight": (SHARED_FF, HIDDEN),
                f"{p}.mlp.shared_expert.up_proj.weight": (SHARED_FF, HIDDEN),
                f"{p}.mlp.shared_expert.down_proj.weight": (HIDDEN, SHARED_FF),
                f"{p}.mlp.shared_expert_gate.weight": (1, HIDDEN)})
    return out


def _block(p: str, v: Variant, kind: str) -> dict[str, tuple[int, ...]]:
    out = {f"{p}.input_layernorm.weight": (HIDDEN,), f"{p}.post_attention_layernorm.weight": (HIDDEN,)}
    out.update(_attention(p) if kind == "full_attention" else _linear_attention(p, v))
    out.update(_mlp(p, v))
    return out


def _glm_block(p: str, dense: bool, family: str = "glm4moe") -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {f"{p}.input_layernorm.weight": (HIDDEN,),
                                       f"{p}.post_attention_layernorm.weight": (HIDDEN,)}
    if family != "glm4moe":
        out.update(_mla_attention(p, indexer=family != "deepseek2"))
    else:
        for w, rows in (("q", HEADS * HEAD_DIM), ("k", KV_HEADS * HEAD_DIM), ("v", KV_HEADS * HEAD_DIM)):
            out[f"{p}.self_attn.{w}_proj.weight"] = (rows, HIDDEN)
            out[f"{p}.self_attn.{w}_proj.bias"] = (rows,)
        out[f"{p}.self_attn.o_proj.weight"] = (HIDDEN, HEADS * HEAD_DIM)
    if dense:
        out.update({f"{p}.mlp.gate_proj.weight": (FF, HIDDEN), f"{p}.mlp.up_proj.weight": (FF, HIDDEN),
                    f"{p}.mlp.down_proj.weight": (HIDDEN, FF)})
        return out
    out[f"{p}.mlp.gate.weight"] = (EXPERTS, HIDDEN)
    out[f"{p}.mlp.gate.e_score_correction_bias"] = (EXPERTS,)
    for e in range(EXPERTS):
        out[f"{p}.mlp.experts.{e}.gate_proj.weight"] = (EXPERT_FF, HIDDEN)
        out[f"{p}.mlp.experts.{e}.up_proj.weight"] = (EXPERT_FF, HIDDEN)
        out[f"{p}.mlp.experts.{e}.down_proj.weight"] = (HIDDEN, EXPERT_FF)
    out.update({f"{p}.mlp.shared_experts.gate_proj.weight": (EXPERT_FF, HIDDEN),
                f"{p}.mlp.shared_experts.up_proj.weight": (EXPERT_FF, HIDDEN),
                f"{p}.mlp.shared_experts.down_proj.weight": (HIDDEN, EXPERT_FF)})
    return out


def _mla_attention(p: str, indexer: bool) -> dict[str, tuple[int, ...]]:
    """MLA (low-rank q and kv, kv_b_proj decompressing both k_nope and v) and the DSA indexer."""
    a, ix = f"{p}.self_attn", f"{p}.self_attn.indexer"
    out = {f"{a}.q_a_proj.weight": (Q_LORA, HIDDEN), f"{a}.q_a_layernorm.weight": (Q_LORA,),
            f"{a}.q_b_proj.weight": (HEADS * (QK_NOPE + QK_ROPE), Q_LORA),
            f"{a}.kv_a_proj_with_mqa.weight": (KV_LORA + QK_ROPE, HIDDEN), f"{a}.kv_a_layernorm.weight": (KV_LORA,),
            f"{a}.kv_b_proj.weight": (HEADS * (QK_NOPE + V_DIM), KV_LORA), f"{a}.o_proj.weight": (HIDDEN, HEADS * V_DIM)}
    if not indexer:
        return out
    return out | {f"{ix}.wq_b.weight": (INDEX_HEADS * INDEX_DIM, Q_LORA), f"{ix}.wk.weight": (INDEX_DIM, HIDDEN),
            f"{ix}.k_norm.weight": (INDEX_DIM,), f"{ix}.k_norm.bias": (INDEX_DIM,),
            f"{ix}.weights_proj.weight": (INDEX_HEADS, HIDDEN)}


def _glm_shapes(family: str = "glm4moe") -> dict[str, tuple[int, ...]]:
    """GLM-4.5 layout (GLM-4.7-Flash's with MLA, GLM-5's with MLA and the indexer): the MTP layer is
    model.layers.N (N = num_hidden_layers), an MoE layer plus eh_proj, enorm, hnorm,
    shared_head.{norm,head} and its own embed_tokens."""
    n = len(LAYER_TYPES)
    shapes: dict[str, tuple[int, ...]] = {"lm_head.weight": (VOCAB, HIDDEN), "model.embed_tokens.weight": (VOCAB, HIDDEN),
                                          "model.norm.weight": (HIDDEN,)}
    for i in range(n + 1):
        shapes.update(_glm_block(f"model.layers.{i}", dense=i < 1, family=family))
    m = f"model.layers.{n}"
    shapes.update({f"{m}.eh_proj.weight": (HIDDEN, 2 * HIDDEN), f"{m}.enorm.weight": (HIDDEN,),
                   f"{m}.hnorm.weight": (HIDDEN,), f"{m}.shared_head.norm.weight": (HIDDEN,),
                   f"{m}.shared_head.head.weight": (VOCAB, HIDDEN), f"{m}.embed_tokens.weight": (VOCAB, HIDDEN)})
    return shapes


def _hy_shapes() -> dict[str, tuple[int, ...]]:
    """Hy3's layout as saved (transformers renames on load): q/k norms, mlp.router.gate, mlp.expert_bias,
    mlp.shared_mlp and per-expert tensors; the MTP layer adds eh_proj, enorm, hnorm, final_layernorm."""
    n = len(LAYER_TYPES)
    shapes: dict[str, tuple[int, ...]] = {"lm_head.weight": (VOCAB, HIDDEN), "model.embed_tokens.weight": (VOCAB, HIDDEN),
                                          "model.norm.weight": (HIDDEN,)}
    for i in range(n + 1):
        p = f"model.layers.{i}"
        shapes.update({f"{p}.input_layernorm.weight": (HIDDEN,), f"{p}.post_attention_layernorm.weight": (HIDDEN,)})
        shapes.update({k: s for k, s in _attention(p).items() if "q_proj" not in k})
        shapes[f"{p}.self_attn.q_proj.weight"] = (HEADS * HEAD_DIM, HIDDEN)
        if i < 1:
            shapes.update({f"{p}.mlp.{w}_proj.weight": (FF, HIDDEN) for w in ("gate", "up")})
            shapes[f"{p}.mlp.down_proj.weight"] = (HIDDEN, FF)
            continue
        shapes.update({f"{p}.mlp.router.gate.weight": (EXPERTS, HIDDEN), f"{p}.mlp.expert_bias": (EXPERTS,)})
        for e in range(EXPERTS):
            shapes.update({f"{p}.mlp.experts.{e}.{w}_proj.weight": (EXPERT_FF, HIDDEN) for w in ("gate", "up")})
            shapes[f"{p}.mlp.experts.{e}.down_proj.weight"] = (HIDDEN, EXPERT_FF)
        shapes.update({f"{p}.mlp.shared_mlp.{w}_proj.weight": (EXPERT_FF, HIDDEN) for w in ("gate", "up")})
        shapes[f"{p}.mlp.shared_mlp.down_proj.weight"] = (HIDDEN, EXPERT_FF)
    m = f"model.layers.{n}"
    shapes.update({f"{m}.eh_proj.weight": (HIDDEN, 2 * HIDDEN), f"{m}.enorm.weight": (HIDDEN,),
                   f"{m}.hnorm.weight": (HIDDEN,), f"{m}.final_layernorm.weight": (HIDDEN,)})
    return shapes


# ------------------------------------------------------------------------- MiMo-V2, Step-3.5

MIMO2_PATTERN, MIMO2_SWA_KV, MIMO2_V_DIM = [0, 1], 2, 16  # hybrid_layer_pattern (1: sliding window)


def _mimo2_config() -> dict[str, Any]:
    """MiMo-V2's config.json (MiMoV2FlashForCausalLM): full and sliding-window layers with their own KV
    head counts, no MTP layer count (the converter's is three), fused qkv_proj as MiMo-V2.5 ships it."""
    return {"architectures": ["MiMoV2FlashForCausalLM"], "model_type": "mimo_v2_flash", "hidden_size": HIDDEN,
            "num_hidden_layers": len(MIMO2_PATTERN), "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "swa_num_attention_heads": HEADS, "swa_num_key_value_heads": MIMO2_SWA_KV, "head_dim": HEAD_DIM,
            "swa_head_dim": HEAD_DIM, "v_head_dim": MIMO2_V_DIM, "swa_v_head_dim": MIMO2_V_DIM,
            "hybrid_layer_pattern": MIMO2_PATTERN, "sliding_window": 128, "intermediate_size": FF,
            "moe_intermediate_size": EXPERT_FF, "n_routed_experts": EXPERTS, "num_experts_per_tok": EXPERTS_USED,
            "moe_layer_freq": [0, 1], "scoring_func": "sigmoid", "topk_method": "noaux_tc", "n_group": 1,
            "topk_group": 1, "norm_topk_prob": True, "routed_scaling_factor": None, "swa_rope_theta": 10000.0,
            "rope_parameters": {"rope_type": "default", "rope_theta": 5000000.0, "partial_rotary_factor": 0.5},
            "layernorm_epsilon": 1e-5,
            "attention_value_scale": 0.707, "add_swa_attention_sink_bias": True,
            "add_full_attention_sink_bias": False, "attention_bias": False, "vocab_size": VOCAB,
            "max_position_embeddings": 4096, "tie_word_embeddings": False, "hidden_act": "silu"}


def _mimo2_shapes() -> dict[str, tuple[int, ...]]:
    """MiMo-V2's layout: fused qkv_proj, attention sinks on sliding-window layers, per-expert MoE after
    a dense first layer; model.mtp.layers.K are sliding-window dense layers with enorm, hnorm, eh_proj
    and final_layernorm."""
    shapes: dict[str, tuple[int, ...]] = {"lm_head.weight": (VOCAB, HIDDEN), "model.embed_tokens.weight": (VOCAB, HIDDEN),
                                          "model.norm.weight": (HIDDEN,)}
    layers = [(f"model.layers.{i}", swa, i > 0) for i, swa in enumerate(MIMO2_PATTERN)]
    for p, swa, moe in layers + [(f"model.mtp.layers.{k}", 1, False) for k in range(3)]:
        kv = MIMO2_SWA_KV if swa else KV_HEADS
        shapes.update({f"{p}.input_layernorm.weight": (HIDDEN,), f"{p}.post_attention_layernorm.weight": (HIDDEN,),
                       f"{p}.self_attn.qkv_proj.weight": ((HEADS + kv) * HEAD_DIM + kv * MIMO2_V_DIM, HIDDEN),
                       f"{p}.self_attn.o_proj.weight": (HIDDEN, HEADS * MIMO2_V_DIM)})
        if swa:
            shapes[f"{p}.self_attn.attention_sink_bias"] = (HEADS,)
        if not moe:
            shapes.update({f"{p}.mlp.{w}_proj.weight": (FF, HIDDEN) for w in ("gate", "up")})
            shapes[f"{p}.mlp.down_proj.weight"] = (HIDDEN, FF)
            continue
        shapes.update({f"{p}.mlp.gate.weight": (EXPERTS, HIDDEN), f"{p}.mlp.gate.e_score_correction_bias": (EXPERTS,)})
        for e in range(EXPERTS):
            shapes.update({f"{p}.mlp.experts.{e}.{w}_proj.weight": (EXPERT_FF, HIDDEN) for w in ("gate", "up")})
            shapes[f"{p}.mlp.experts.{e}.down_proj.weight"] = (HIDDEN, EXPERT_FF)
    for k in range(3):
        m = f"model.mtp.layers.{k}"
        shapes.update({f"{m}.enorm.weight": (HIDDEN,), f"{m}.hnorm.weight": (HIDDEN,),
                       f"{m}.eh_proj.weight": (HIDDEN, 2 * HIDDEN), f"{m}.final_layernorm.weight": (HIDDEN,)})
    return shapes


STEP35_TYPES = ["full_attention", "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]
STEP35_SWA_HEADS = 4


def _step35_config() -> dict[str, Any]:
    """Step-3.5's config.json (Step3p5ForCausalLM): layer_types and partial_rotary_factors with entries for
    the three MTP layers (model.layers.N+i), sliding-window layers with their own head count, per-layer
    SwiGLU clamps given for the trunk only, a leading dense layer. No model_type (the Hub's is step3p5):
    transformers 5 knows step3p5 and renames the fields (num_attention_groups, moe_num_experts ...) that
    the pinned Step35Model reads, which then fails; without it the converter reads config.json as it is,
    as it does where transformers does not know step3p5 (4.57), and as mtpgraft does."""
    n = 2
    return {"architectures": ["Step3p5ForCausalLM"], "hidden_size": HIDDEN,
            "num_hidden_layers": n, "num_attention_heads": HEADS, "num_attention_groups": KV_HEADS,
            "head_dim": HEAD_DIM, "intermediate_size": FF, "vocab_size": VOCAB, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "rope_theta": [5000000.0, 10000.0], "layer_types": STEP35_TYPES,
            "partial_rotary_factors": [1.0 if t == "sliding_attention" else 0.5 for t in STEP35_TYPES],
            "attention_other_setting": {"attention_type": "sliding_attention", "num_attention_heads": STEP35_SWA_HEADS,
                                        "num_attention_groups": KV_HEADS, "head_dim": HEAD_DIM,
                                        "true_head_dim": HEAD_DIM},
            "sliding_window": 128, "moe_num_experts": EXPERTS, "moe_top_k": EXPERTS_USED,
            "moe_intermediate_size": EXPERT_FF, "share_expert_dim": SHARED_FF, "moe_router_scaling_factor": 3.0,
            "norm_expert_weight": True, "moe_layers_enum": "1", "moe_every_n_layer": 1,
            "moe_router_activation": "sigmoid", "use_moe_router_bias": True, "use_head_wise_attn_gate": True,
            "num_nextn_predict_layers": 3, "swiglu_limits": [0.0, 7.0], "swiglu_limits_shared": [0.0, 16.0],
            "tie_word_embeddings": False, "hidden_act": "silu"}


def _step35_shapes() -> dict[str, tuple[int, ...]]:
    """Step-3.5's layout: q/k norms and a head-wise attention gate (g_proj), fused 3-D moe.* experts with a
    router bias and share_expert after a dense first layer; the MTP layers model.layers.N+i add eh_proj,
    enorm, hnorm and transformer.shared_head.{norm,output}."""
    shapes: dict[str, tuple[int, ...]] = {"lm_head.weight": (VOCAB, HIDDEN), "model.embed_tokens.weight": (VOCAB, HIDDEN),
                                          "model.norm.weight": (HIDDEN,)}
    for i, kind in enumerate(STEP35_TYPES):
        p, heads = f"model.layers.{i}", STEP35_SWA_HEADS if kind == "sliding_attention" else HEADS
        shapes.update({f"{p}.input_layernorm.weight": (HIDDEN,), f"{p}.post_attention_layernorm.weight": (HIDDEN,),
                       f"{p}.self_attn.q_proj.weight": (heads * HEAD_DIM, HIDDEN),
                       f"{p}.self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                       f"{p}.self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
                       f"{p}.self_attn.o_proj.weight": (HIDDEN, heads * HEAD_DIM),
                       f"{p}.self_attn.g_proj.weight": (heads, HIDDEN), f"{p}.self_attn.q_norm.weight": (HEAD_DIM,),
                       f"{p}.self_attn.k_norm.weight": (HEAD_DIM,)})
        if i == 0:
            shapes.update({f"{p}.mlp.{w}_proj.weight": (FF, HIDDEN) for w in ("gate", "up")})
            shapes[f"{p}.mlp.down_proj.weight"] = (HIDDEN, FF)
            continue
        shapes.update({f"{p}.moe.gate.weight": (EXPERTS, HIDDEN), f"{p}.moe.router_bias": (EXPERTS,),
                       f"{p}.moe.gate_proj.weight": (EXPERTS, EXPERT_FF, HIDDEN),
                       f"{p}.moe.up_proj.weight": (EXPERTS, EXPERT_FF, HIDDEN),
                       f"{p}.moe.down_proj.weight": (EXPERTS, HIDDEN, EXPERT_FF),
                       f"{p}.share_expert.gate_proj.weight": (SHARED_FF, HIDDEN),
                       f"{p}.share_expert.up_proj.weight": (SHARED_FF, HIDDEN),
                       f"{p}.share_expert.down_proj.weight": (HIDDEN, SHARED_FF)})
        if i >= 2:
            shapes.update({f"{p}.eh_proj.weight": (HIDDEN, 2 * HIDDEN), f"{p}.enorm.weight": (HIDDEN,),
                           f"{p}.hnorm.weight": (HIDDEN,), f"{p}.transformer.shared_head.norm.weight": (HIDDEN,),
                           f"{p}.transformer.shared_head.output.weight": (VOCAB, HIDDEN)})
    return shapes


def tensor_shapes(v: Variant) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint: trunk, lm_head and the MTP head."""
    if v.family in ("glm4moe", "glm-dsa", "deepseek2", "deepseek32"):
        return _glm_shapes(v.family)
    if v.family == "hy_v3":
        return _hy_shapes()
    if v.family == "mimo2":
        return _mimo2_shapes()
    if v.family == "step35":
        return _step35_shapes()
    if v.family == "bailingmoe3":
        return _ling3_shapes()
    if v.family == "nemotron_h_moe":
        return _nemotron3_shapes()
    if v.family == "cohere2moe":
        return _cohere2moe_shapes()
    lm = "model" if v.family == "qwen3next" else "model.language_model"
    shapes: dict[str, tuple[int, ...]] = {"lm_head.weight": (VOCAB, HIDDEN),
                                          f"{lm}.embed_tokens.weight": (VOCAB, HIDDEN),
                                          f"{lm}.norm.weight": (HIDDEN,)}
    for i, kind in enumerate(LAYER_TYPES):
        shapes.update(_block(f"{lm}.layers.{i}", v, kind))
    shapes.update({"mtp.fc.weight": (HIDDEN, 2 * HIDDEN), "mtp.pre_fc_norm_embedding.weight": (HIDDEN,),
                   "mtp.pre_fc_norm_hidden.weight": (HIDDEN,), "mtp.norm.weight": (HIDDEN,)})
    for i in range(v.mtp_layers):
        shapes.update(_block(f"mtp.layers.{i}", v, "full_attention"))
    return shapes


def _values(rng: np.random.Generator, name: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Random values; norms are stored as offsets from 1 (the converter adds the 1)."""
    scale = 0.3 if name.endswith("norm.weight") else 0.05
    x = rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)
    if dtype == "F16":
        return x.astype(np.float16)
    if dtype == "BF16":  # truncate to bfloat16 bits; any bit pattern is a valid checkpoint
        return (x.view(np.uint32) >> 16).astype(np.uint16)
    return x


def build_checkpoint(out_dir: str | Path, variant: str, *, seed: int = 0) -> Path:
    """Write config.json, the tokenizer and the safetensors shards of a tiny random checkpoint."""
    v = VARIANTS[variant]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = tensor_shapes(v)
    arrays = {n: _values(rng, n, s, v.dtype) for n, s in shapes.items()}
    if v.family == "cohere2moe":  # the converter refuses a non-zero bias (and drops the zero ones)
        arrays |= {n: a * 0 for n, a in arrays.items() if n.endswith(".bias")}
    names = list(shapes)
    # Shard like the Hub's checkpoints: trunk first, the MTP head in the last shard.
    per = -(-len(names) // v.shards)
    parts = [names[i:i + per] for i in range(0, len(names), per)]
    weight_map: dict[str, str] = {}
    for k, part in enumerate(parts, 1):
        fname = "model.safetensors" if v.shards == 1 else f"model-{k:05d}-of-{len(parts):05d}.safetensors"
        write_safetensors(out / fname, {n: (v.dtype, shapes[n], arrays[n].tobytes()) for n in part})
        weight_map.update(dict.fromkeys(part, fname))
    if v.shards > 1:
        index = {"metadata": {"total_size": sum(a.nbytes for a in arrays.values())}, "weight_map": weight_map}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (out / "config.json").write_text(json.dumps(config(v), indent=2))
    _write_tokenizer(out)
    return out


def _write_tokenizer(out: Path) -> None:
    """A 256-byte BPE vocabulary with a few merges and two special tokens (ids below VOCAB)."""
    enc = bytes_to_unicode()
    base = [enc[b] for b in range(256)]
    vocab = {t: i for i, t in enumerate(base)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("a", "n")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    specials = ["<|endoftext|>", "<|im_start|>", "[gMASK]", "<|user|>", "<|observation|>"]  # GLM's too
    added = [{"id": len(vocab) + k, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for k, s in enumerate(specials)]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "bos_token": None, "add_bos_token": False, "model_max_length": 4096}))
