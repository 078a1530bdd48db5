"""The table of Hugging Face MTP heads mtpgraft converts: per architecture, how the checkpoint stores
its head and how llama.cpp's converter names, types and describes it (and the architectures refused)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# HF name (after `model.layers.L.`) -> GGUF name (after `blk.L.`), the qwen35/qwen35moe tensor map.
QWEN_NAMES = {
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
QWEN_MTP_TOP = {"fc": "eh_proj", "pre_fc_norm_embedding": "enorm", "pre_fc_norm_hidden": "hnorm",
                "norm": "shared_head.norm"}
# Kept F32 whatever the output type (prepare_tensors' list, the entries an MTP head can hold).
FORCED_F32 = ("ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight", "indexer.proj.weight")


GLM_NAMES = {k: v for k, v in QWEN_NAMES.items() if not k.startswith("mlp.shared_expert")} | {
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
# DeepseekV2Model's MLA layout (GLM-4.7-Flash, GLM-5, DeepSeek-V3.2): kv_b_proj is split into attn_k_b and attn_v_b
# (MLA_SPLIT); the DSA indexer's tensors (GLM-5); the post-attention norm is ffn_norm.
DSA_NAMES = {k: v for k, v in GLM_NAMES.items() if not k.startswith("self_attn.")} | {
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_a_proj.weight": "attn_q_a.weight",
    "self_attn.q_a_layernorm.weight": "attn_q_a_norm.weight",
    "self_attn.q_b_proj.weight": "attn_q_b.weight",
    "self_attn.kv_a_proj_with_mqa.weight": "attn_kv_a_mqa.weight",
    "self_attn.kv_a_layernorm.weight": "attn_kv_a_norm.weight",
    "self_attn.kv_b_proj.weight": "attn_v_b.weight",  # written as attn_k_b, then attn_v_b (the last one)
    "self_attn.k_b_proj.weight": "attn_k_b.weight",
    "self_attn.v_b_proj.weight": "attn_v_b.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.indexer.wq_b.weight": "indexer.attn_q_b.weight",
    "self_attn.indexer.wk.weight": "indexer.attn_k.weight",
    "self_attn.indexer.k_norm.weight": "indexer.k_norm.weight",
    "self_attn.indexer.k_norm.bias": "indexer.k_norm.bias",
    "self_attn.indexer.weights_proj.weight": "indexer.proj.weight",
}
MLA_SPLIT = "self_attn.kv_b_proj.weight"
# Hy3 (HYV3Model), as saved: the router and its bias under their own names (the bias written bare, no
# .bias), shared_mlp, and the MTP layer's final_layernorm as nextn.shared_head_norm.
HY_NAMES = {k: v for k, v in GLM_NAMES.items() if not k.endswith(".bias") and k != "mlp.gate.weight"} | {
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.router.gate.weight": "ffn_gate_inp.weight",
    "mlp.expert_bias": "exp_probs_b",
    "mlp.shared_mlp.gate_proj.weight": "ffn_gate_shexp.weight",
    "mlp.shared_mlp.up_proj.weight": "ffn_up_shexp.weight",
    "mlp.shared_mlp.down_proj.weight": "ffn_down_shexp.weight",
    "final_layernorm.weight": "nextn.shared_head_norm.weight",
}
# MiMo-V2 (MimoV2Model): model.mtp.layers.K as extra layers, fused qkv_proj (V2.5) or split q/k/v
# (V2-Flash), attention sinks (the converter appends .weight), the layer's final_layernorm.
MIMO_NAMES = {k: v for k, v in GLM_NAMES.items()
              if not k.startswith(("self_attn.", "mlp.shared_experts.")) or k.endswith("_proj.weight")} | {
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.qkv_proj.weight": "attn_qkv.weight",
    "self_attn.attention_sink_bias": "attn_sinks.weight",
    "final_layernorm.weight": "layer_output_norm.weight",
}
MIMO_EXPERTS = ("gate_proj", "up_proj", "down_proj")  # MimoV2Model stacks and writes them in this order
# Step-3.5 (Step35Model): the head is model.layers.N+i; q/k norms, the head-wise attention gate
# g_proj, fused 3-D moe.* experts with a router bias (the converter appends .bias) and share_expert; the
# MTP layer's transformer.shared_head.{norm,output} become nextn.shared_head_{norm,head}.
_STEP_KEPT = ("eh_proj.", "enorm.", "hnorm.", "input_layernorm.", "self_attn.", "mlp.gate_proj.", "mlp.up_proj.",
              "mlp.down_proj.")
STEP_NAMES = {k: v for k, v in QWEN_NAMES.items() if k.startswith(_STEP_KEPT)} | {
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.g_proj.weight": "attn_gate.weight",
    "moe.gate.weight": "ffn_gate_inp.weight",
    "moe.router_bias": "exp_probs_b.bias",
    "moe.gate_proj.weight": "ffn_gate_exps.weight",
    "moe.up_proj.weight": "ffn_up_exps.weight",
    "moe.down_proj.weight": "ffn_down_exps.weight",
    "share_expert.gate_proj.weight": "ffn_gate_shexp.weight",
    "share_expert.up_proj.weight": "ffn_up_shexp.weight",
    "share_expert.down_proj.weight": "ffn_down_shexp.weight",
    "embed_tokens.weight": "nextn.embed_tokens.weight",
    "transformer.shared_head.norm.weight": "nextn.shared_head_norm.weight",
    "transformer.shared_head.output.weight": "nextn.shared_head_head.weight",
}
# Step35Model.modify_tensors squeezes these (size-1 dimensions dropped) before they are written.
STEP_SQUEEZED = ("self_attn.g_proj.weight", "moe.gate.weight", "moe.up_proj.weight", "moe.gate_proj.weight",
                 "moe.down_proj.weight")
# Ling/Ring 3 (BailingMoeV3Model): attention.* MLA with attention.dense as output and a head-wise
# attention.g_proj gate (attn_gate on a full-attention layer, as the MTP layer is), mlp.gate's
# expert_bias (written exp_probs_b.bias), and the MTP layer's final_layernorm as layer_output_norm.
LING_NAMES = {k.replace("self_attn.", "attention."): v for k, v in DSA_NAMES.items()
              if not k.startswith(("self_attn.indexer.", "mlp.gate.e_score", "shared_head.", "embed_tokens."))} | {
    "attention.q_proj.weight": "attn_q.weight",  # a model without q_lora_rank
    "attention.dense.weight": "attn_output.weight",
    "attention.g_proj.weight": "attn_gate.weight",
    "mlp.gate.expert_bias": "exp_probs_b.bias",
    "final_layernorm.weight": "layer_output_norm.weight",
}
LING_MLA_SPLIT = "attention.kv_b_proj.weight"
# Nemotron-3 (NemotronHModel): mtp.layers.0 (fusion + attention) and mtp.layers.1 (MoE + final norm)
# folded into one block, with _MTP_SPECIAL_RENAMES (NEMOTRON_FOLD); names after `model.layers.N.`.
NEMOTRON_FOLD = {"0": {}, "1": {"norm.weight": "post_attention_layernorm.weight",
                                "final_layernorm.weight": "shared_head.norm.weight"}}
NEMOTRON_NAMES = {
    "eh_proj.weight": "nextn.eh_proj.weight", "enorm.weight": "nextn.enorm.weight",
    "hnorm.weight": "nextn.hnorm.weight", "shared_head.norm.weight": "nextn.shared_head_norm.weight",
    "norm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "post_attention_norm.weight",
    "mixer.q_proj.weight": "attn_q.weight", "mixer.k_proj.weight": "attn_k.weight",
    "mixer.v_proj.weight": "attn_v.weight", "mixer.o_proj.weight": "attn_output.weight",
    "mixer.gate.weight": "ffn_gate_inp.weight", "mixer.gate.e_score_correction.bias": "exp_probs_b.bias",
    "mixer.shared_experts.up_proj.weight": "ffn_up_shexp.weight",
    "mixer.shared_experts.down_proj.weight": "ffn_down_shexp.weight",
    "mlp.experts.up_proj.weight": "ffn_up_exps.weight", "mlp.experts.down_proj.weight": "ffn_down_exps.weight",
}
# Cohere 2 MoE (Cohere2MoeModel): GLM-4.5's layer-indexed names; its attention biases are dropped.
COHERE_NAMES = {k: v for k, v in GLM_NAMES.items() if not k.endswith(".bias")}
# What transformers' Cohere2MoeConfig fills in when config.json lacks the key (the converter reads
# AutoConfig's dict): softmax routing, and a dense size that is present but null, so no feed_forward_length.
COHERE_DEFAULTS = {"expert_selection_fn": "softmax", "prefix_dense_intermediate_size": None}

QWEN_MOE_KEYS = (("expert_feed_forward_length", "moe_intermediate_size"),
                  ("expert_shared_feed_forward_length", "shared_expert_intermediate_size"))
DSA_MOE_KEYS = (("leading_dense_block_count", "first_k_dense_replace"),
                ("expert_feed_forward_length", "moe_intermediate_size"), ("expert_shared_count", "n_shared_experts"))
GLM_MOE_KEYS = (("expert_feed_forward_length", "moe_intermediate_size"), ("expert_shared_count", "n_shared_experts"),
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
    # Glm4MoeModel.set_gguf_parameters' own keys: sigmoid expert gating (replacing the config's),
    # expert_weights_scale (routed_scaling_factor) and expert_weights_norm (norm_topk_prob).
    sigmoid_routing: bool = False
    # config.json may leave n_mtp_key out (or 0): the converter then counts the mtp.layers.K it finds
    # (_QwenMtpMixin.opt_num_mtp_layers; Qwen3-Next states no count).
    counted_mtp: bool = False
    # DeepseekV2Model's MLA (GLM-5): kv_b_proj split per KV head into attn_k_b (transposed) and attn_v_b;
    # head_count_kv 1, key_length kv_lora_rank + qk_rope_head_dim, value_length kv_lora_rank, and its
    # expert_weights_scale / expert_weights_norm (the latter only when true) after the MoE keys.
    mla: bool = False
    # DeepseekV2Model's rope.dimension_count, written just before nextn_predict_layers: the head carries it
    # so that a graft puts the count where the converter does.
    mla_rope_dims: bool = False
    # Where the MLA key/value lengths sit: transformers' config class for the model type gives head_dim
    # (glm_moe_dsa and deepseek_v32 do), so TextModel writes them early (DeepseekV2Model overwrites them in place), or
    # it gives none (glm4_moe_lite) and they follow leading_dense_block_count.
    mla_lengths_first: bool = False
    # GlmMoeDsaModel's rope.dimension_count is qk_rope_head_dim x partial_rotary_factor (DeepseekV2Model's
    # is qk_rope_head_dim).
    partial_rope: bool = False
    # HYV3Model.set_gguf_parameters' own keys after file_type: expert_feed_forward_length,
    # expert_shared_feed_forward_length (x num_shared_experts), expert_weights_norm (route_norm, default
    # true), expert_weights_scale (router_scaling_factor, default 1), sigmoid gating.
    hy_routing: bool = False
    # the converter's own MTP layer count, which config.json does not state (MimoV2Model._n_nextn: 3)
    fixed_mtp: int = 0
    squeezed: tuple[str, ...] = ()  # HF names (after `model.layers.L.`) written with size-1 dimensions dropped
    # The MLA kv_b_proj split without DeepseekV2Model's keys: (the tensor's name, the config key giving
    # the number of heads it is cut into). BailingMoeV3Model cuts attention.kv_b_proj by num_attention_heads.
    mla_split: tuple[str, str] | None = None
    # The converter class whose set_gguf_parameters' own keys the head carries (kvs.OWN_KEYS says which):
    # BailingMoeV3Model (head_count_kv per layer, the MLA key_length over head_dim's), NemotronHModel
    # (per-layer feed_forward_length and head_count_kv, key/value_length after file_type), Cohere2MoeModel,
    # MimoV2Model (head_count_kv and sliding_window_pattern from hybrid_layer_pattern, a sliding-window entry
    # per MTP layer), Step35Model (head_count, head_count_kv and sliding_window_pattern from layer_types,
    # padded; its expert keys; swiglu_clamp_* padded with 0).
    own_keys: str | None = None
    # TextModel writes key_length and value_length from head_dim before file_type (GraniteHybridModel,
    # and so NemotronHModel, ignores head_dim there).
    early_head_dim: bool = True
    # mtp.layers.K.X folded into one block (NemotronHModel: K 0 and 1), X renamed per K where the map says;
    # the converter takes exactly one MTP head then.
    mtp_fold: dict[str, dict[str, str]] | None = None
    # Where per-expert tensors sit (`<experts>N.<weight>.weight`) and which weights, in the order the
    # converter writes them stacked.
    experts: str = "mlp.experts."
    expert_weights: tuple[str, ...] = ("down_proj", "gate_proj", "up_proj")
    # False: the converter matches its forced-F32 list against an MTP tensor's checkpoint layer number
    # (NemotronHModel: mtp.layers.1's router is looked up as blk.1), so the head's router keeps the output type.
    router_f32: bool = True
    # LlamaModel.permute, which GraniteMoeModel applies (undo_permute): (q tensor, k tensor) whose rows are
    # reordered per head, each head's two rotary halves interleaved; q by num_attention_heads, k by
    # num_key_value_heads.
    permute_qk: tuple[str, str] | None = None
    # config.json keys as transformers' config class fills them in when absent (the converter reads them so).
    config_defaults: dict[str, Any] = field(default_factory=dict)
    # The head's *.bias tensors are dropped (Cohere2MoeModel drops them after checking they are zero; mtpgraft
    # does not read them: see the README).
    drop_biases: bool = False
    # Every MTP layer has its own eh_proj (Qwen's one mtp.fc is the first layer's only); the converter
    # writes the head without a missing one, which llama.cpp then cannot use.
    eh_proj_per_layer: bool = True

    @property
    def kv_b_split(self) -> tuple[str, str]:
        """(the kv_b_proj tensor an MLA head cuts, the config key giving into how many heads)."""
        return self.mla_split or (MLA_SPLIT, "num_key_value_heads")


_QWEN = {"n_mtp_key": "mtp_num_hidden_layers", "names": QWEN_NAMES, "plus_one_norms": True, "hybrid": True,
         "eh_proj_per_layer": False}
HEAD_RULES: dict[str, HeadRule] = {
    "Qwen3_5ForConditionalGeneration": HeadRule("qwen35", moe=False, **_QWEN),
    "Qwen3_5ForCausalLM": HeadRule("qwen35", moe=False, **_QWEN),
    "Qwen3_5MoeForConditionalGeneration": HeadRule("qwen35moe", moe=True, moe_keys=QWEN_MOE_KEYS, **_QWEN),
    "Qwen3_5MoeForCausalLM": HeadRule("qwen35moe", moe=True, moe_keys=QWEN_MOE_KEYS, **_QWEN),
    "Qwen3NextForCausalLM": HeadRule("qwen3next", moe=True, moe_keys=QWEN_MOE_KEYS, counted_mtp=True, **_QWEN),
    "GlmMoeDsaForCausalLM": HeadRule("glm-dsa", "num_nextn_predict_layers", True, DSA_NAMES, False,
                                     layer_indexed=True, moe_keys=DSA_MOE_KEYS, mla=True, mla_rope_dims=True,
                                     mla_lengths_first=True, partial_rope=True),
    "DeepseekV32ForCausalLM": HeadRule("deepseek32", "num_nextn_predict_layers", True, DSA_NAMES, False,
                                       layer_indexed=True, moe_keys=DSA_MOE_KEYS, mla=True, mla_rope_dims=True,
                                       mla_lengths_first=True),
    "Glm4MoeLiteForCausalLM": HeadRule("deepseek2", "num_nextn_predict_layers", True, DSA_NAMES, False,
                                       layer_indexed=True, moe_keys=DSA_MOE_KEYS, mla=True, mla_rope_dims=True),
    "HYV3ForCausalLM": HeadRule("hy_v3", "num_nextn_predict_layers", True, HY_NAMES, False, layer_indexed=True,
                                hy_routing=True),
    # MiMo-V2
    "MiMoV2FlashForCausalLM": HeadRule("mimo2", "", True, MIMO_NAMES, False, fixed_mtp=3,
                                       expert_weights=MIMO_EXPERTS, own_keys="MimoV2Model"),
    "MiMoV2ForCausalLM": HeadRule("mimo2", "", True, MIMO_NAMES, False, fixed_mtp=3,
                                  expert_weights=MIMO_EXPERTS, own_keys="MimoV2Model"),
    # Step-3.5
    "Step3p5ForCausalLM": HeadRule("step35", "num_nextn_predict_layers", True, STEP_NAMES, True, layer_indexed=True,
                                   own_keys="Step35Model", squeezed=STEP_SQUEEZED),

    "BailingMoeV3ForCausalLM": HeadRule("bailingmoe3", "num_nextn_predict_layers", True, LING_NAMES, False,
                                        layer_indexed=True, mla_split=(LING_MLA_SPLIT, "num_attention_heads"),
                                        own_keys="BailingMoeV3Model"),
    "NemotronHForCausalLM": HeadRule("nemotron_h_moe", "num_nextn_predict_layers", True, NEMOTRON_NAMES, False,
                                     mtp_fold=NEMOTRON_FOLD, experts="mixer.experts.",
                                     expert_weights=("down_proj", "up_proj"), router_f32=False, own_keys="NemotronHModel",
                                     early_head_dim=False,
                                     permute_qk=("mixer.q_proj.weight", "mixer.k_proj.weight")),
    "Cohere2MoeForCausalLM": HeadRule("cohere2moe", "num_nextn_predict_layers", True, COHERE_NAMES, False,
                                      layer_indexed=True, config_defaults=COHERE_DEFAULTS, drop_biases=True,
                                      own_keys="Cohere2MoeModel"),
    "Glm4MoeForCausalLM": HeadRule("glm4moe", "num_nextn_predict_layers", True, GLM_NAMES, False,
                                   layer_indexed=True, moe_keys=GLM_MOE_KEYS, sigmoid_routing=True),
}

# Architectures whose checkpoints carry an MTP head that mtpgraft does not convert, and why: what the
# pinned convert_hf_to_gguf.py (llama.cpp 0c1e570, conversion/*.py) does with the head. Refused from
# config.json alone, before any tensor byte is read.
_DONOR = "; use a GGUF donor converted with convert_hf_to_gguf.py"
REFUSED = {
    "DeepseekV3ForCausalLM": "llama.cpp's converter drops DeepSeek-V3's MTP layers (deepseek2 keeps MTP only "
                             "for GLM-4.7-Flash), so there is no GGUF head to build",
    "DeepseekV4ForCausalLM": "llama.cpp's converter drops DeepSeek-V4's mtp.* head from a full conversion "
                             "and writes it only with --mtp, as a head-only file (e_proj and h_proj "
                             "concatenated into eh_proj)" + _DONOR,
    "Step3p7ForConditionalGeneration": "llama.cpp's converter keeps Step-3.7's MTP layers through Step-3.5's "
                                       "class, but mtpgraft has no reference conversion of its multimodal "
                                       "checkpoint (Step3p5ForCausalLM converts)" + _DONOR,
}


# TextModel.filter_tensors: multimodal tensors the converter skips (the subset Qwen checkpoints hold).
SKIPPED = ("visual.", "vision.", "audio.", "vision_", "audio_", "talker.", "projector.", "patch_embed",
           "merger.", "mtp_only_")
# Qwen3.5 trunk names not in the MTP table: linear attention and the model's ends (Qwen3-Next's fused
# in_proj_qkvz is written as attn_qkv, then attn_gate: the name here is the last one written).
QWEN_TRUNK = {"linear_attn.in_proj_qkvz.weight": "attn_gate.weight", "linear_attn.in_proj_ba.weight": "ssm_ba.weight",
              "linear_attn.in_proj_qkv.weight": "attn_qkv.weight", "linear_attn.in_proj_z.weight": "attn_gate.weight",
              "linear_attn.in_proj_a.weight": "ssm_alpha.weight", "linear_attn.in_proj_b.weight": "ssm_beta.weight",
              "linear_attn.conv1d.weight": "ssm_conv1d.weight", "linear_attn.dt_bias": "ssm_dt.bias",
              "linear_attn.A_log": "ssm_a", "linear_attn.norm.weight": "ssm_norm.weight",
              "linear_attn.out_proj.weight": "ssm_out.weight"}
QWEN_ENDS = {"lm_head.weight": "output.weight", "model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight"}
