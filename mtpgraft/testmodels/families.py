"""The families `family.build` writes, each one `FamilySpec`: read off llama.cpp 0c1e570
(src/models/<arch>.cpp load_arch_hparams / load_arch_tensors / graph_mtp) and the converter
(conversion/*.py) for the keys and the --no-mtp / --mtp layouts.

- glm4moe: GLM-4.5/4.6/4.7 (see .glm4moe's docstring); byte for byte what .glm4moe writes.
- deepseek32: DeepSeek-V3.2. MLA attention (q_lora, kv_lora; attn_k_b / attn_v_b split as the
  converter splits kv_b_proj; head_count_kv 1, key_length = kv_lora + rope, value_length = kv_lora,
  key_length_mla / value_length_mla required in practice: without them "requires MLA"), the DSA
  indexer in EVERY layer the loader reads, the NextN layer included (the MTP graph never runs it),
  sigmoid-gated MoE with exp_probs_b and one shared expert after a dense lead; the NextN layer is an
  MoE layer (graph_mtp asserts ffn_gate_inp). indexer.key_length a power of two >= 64 (Hadamard).
  --no-mtp drops block 4 and the key; trunk-only with the key loads (TENSOR_NOT_REQUIRED) and aborts
  with draft-mtp.
- glm-dsa: GLM-5.x. deepseek32's layout, but the NextN layer's indexer tensors are optional (not
  written here: the MTP layer skips the indexer) and `attention.indexer.types` has one entry per TRUNK
  layer (the loader reads it with n_layer(): a block_count-long one is refused); layer 0 must be a
  full indexer layer, and a shared layer (types false) has no indexer tensors (GLM-5.2: its graph
  reuses the last full layer's top-k). expert_gating_func optional (sigmoid).
"""

from __future__ import annotations

from .family import (
    NEXTN_NORMS,
    Ctx,
    FamilySpec,
    Row,
    block_count,
    file_type,
    nextn_key,
    per_layer,
    quantization_version,
)

U32, F32, BOOL = "UINT32", "FLOAT32", "BOOL"
GATING_SIGMOID = 2  # llama_expert_gating_func_type
GATING_SQRT_SOFTPLUS = 4

_MOE: tuple[Row, ...] = (
    ("ffn_gate_inp.weight", ("expert", "embd"), "in"),
    ("exp_probs_b.bias", ("expert",), 0.01),
    ("ffn_gate_exps.weight", ("expert", "ff_exp", "embd"), "in"),
    ("ffn_up_exps.weight", ("expert", "ff_exp", "embd"), "in"),
    ("ffn_down_exps.weight", ("expert", "embd", "ff_exp"), "out"),
    ("ffn_gate_shexp.weight", ("shexp", "embd"), "in"),
    ("ffn_up_shexp.weight", ("shexp", "embd"), "in"),
    ("ffn_down_shexp.weight", ("embd", "shexp"), "out"),
)
_DENSE: tuple[Row, ...] = (
    ("ffn_gate.weight", ("ff", "embd"), "in"),
    ("ffn_up.weight", ("ff", "embd"), "in"),
    ("ffn_down.weight", ("embd", "ff"), "out"),
)

# ------------------------------------------------------------------------------------------ glm4moe

GLM4MOE = FamilySpec(
    arch="glm4moe", tokenizer_pre="glm4",
    sizes={"embd": 256, "q": 256, "kv": 128, "ff": 512, "expert": 4, "ff_exp": 256, "shexp": 256},
    keys=(("block_count", U32, block_count), ("context_length", U32, 4096), ("embedding_length", U32, 256),
          ("feed_forward_length", U32, 512), ("attention.head_count", U32, 4),
          ("attention.head_count_kv", U32, 2), ("rope.freq_base", F32, 1_000_000.0),
          ("attention.layer_norm_rms_epsilon", F32, 1e-6), ("expert_count", U32, 4),
          ("expert_used_count", U32, 2), ("attention.key_length", U32, 64),
          ("attention.value_length", U32, 64), ("general.file_type", U32, file_type),
          ("rope.dimension_count", U32, 32), ("expert_feed_forward_length", U32, 256),
          ("expert_shared_count", U32, 1), ("leading_dense_block_count", U32, 1),
          ("expert_gating_func", U32, GATING_SIGMOID), ("expert_weights_scale", F32, 1.0),
          ("expert_weights_norm", BOOL, True), ("nextn_predict_layers", U32, nextn_key),
          ("general.quantization_version", U32, quantization_version)),
    parts={
        "attn": (("attn_norm.weight", ("embd",), "norm"), ("attn_q.weight", ("q", "embd"), "in"),
                 ("attn_q.bias", ("q",), 0.02), ("attn_k.weight", ("kv", "embd"), "in"),
                 ("attn_k.bias", ("kv",), 0.02), ("attn_v.weight", ("kv", "embd"), "in"),
                 ("attn_v.bias", ("kv",), 0.02), ("attn_output.weight", ("embd", "q"), "out"),
                 ("post_attention_norm.weight", ("embd",), "norm")),
        "dense": _DENSE, "moe": _MOE, "nextn": NEXTN_NORMS},
    trunk=(("attn", "dense"), ("attn", "moe"), ("attn", "moe"), ("attn", "moe")),
    mtp=("attn", "moe", "nextn"), flip="ffn_{}_shexp.weight",
)

# ---------------------------------------------------------------------- deepseek32 / glm-dsa (MLA + DSA)

# n_head 4; q_lora 256, kv_lora 256; qk_nope 64 + qk_rope 32 = key_length_mla 96; v_head 64;
# indexer: 4 heads x 64 (a power of two >= 64: the Hadamard rotation), top_k 2048.
_MLA_SIZES = {"embd": 256, "q_lora": 256, "kv_lora": 256, "q_b": 4 * 96, "kv_a": 256 + 32, "head": 4,
              "nope": 64, "v_head": 64, "o": 4 * 64, "idx_head": 4, "idx_dim": 64, "idx_q": 4 * 64,
              "ff": 512, "expert": 4, "ff_exp": 256, "shexp": 256}
_MLA: tuple[Row, ...] = (
    ("attn_norm.weight", ("embd",), "norm"),
    ("attn_q_a_norm.weight", ("q_lora",), "norm"),
    ("attn_kv_a_norm.weight", ("kv_lora",), "norm"),
    ("attn_q_a.weight", ("q_lora", "embd"), "in"),
    ("attn_q_b.weight", ("q_b", "q_lora"), "in"),
    ("attn_kv_a_mqa.weight", ("kv_a", "embd"), "in"),
    ("attn_k_b.weight", ("head", "kv_lora", "nope"), "in"),
    ("attn_v_b.weight", ("head", "v_head", "kv_lora"), "in"),
    ("attn_output.weight", ("embd", "o"), "out"),
    ("ffn_norm.weight", ("embd",), "norm"),
)
_INDEXER: tuple[Row, ...] = (
    ("indexer.k_norm.weight", ("idx_dim",), "norm"),
    ("indexer.k_norm.bias", ("idx_dim",), 0.02),
    ("indexer.proj.weight", ("idx_head", "embd"), "in"),
    ("indexer.attn_k.weight", ("idx_dim", "embd"), "in"),
    ("indexer.attn_q_b.weight", ("idx_q", "q_lora"), "in"),
)


def _mla_keys(gating: int | None, extra: tuple = (), indexer: bool = True) -> tuple:
    """DeepseekV2Model.set_gguf_parameters' keys (+ V3.2's / GLM-5's nextn and indexer keys)."""
    idx = (("attention.indexer.head_count", U32, 4), ("attention.indexer.key_length", U32, 64),
           ("attention.indexer.top_k", U32, 2048)) if indexer else ()
    return (("block_count", U32, block_count), ("context_length", U32, 4096), ("embedding_length", U32, 256),
            ("feed_forward_length", U32, 512), ("attention.head_count", U32, 4),
            ("attention.head_count_kv", U32, 1), ("rope.freq_base", F32, 10_000.0),
            ("attention.layer_norm_rms_epsilon", F32, 1e-6), ("expert_count", U32, 4),
            ("expert_used_count", U32, 2), ("general.file_type", U32, file_type),
            ("leading_dense_block_count", U32, 1), ("vocab_size", U32, 512), ("attention.q_lora_rank", U32, 256),
            ("attention.kv_lora_rank", U32, 256), ("attention.key_length", U32, 256 + 32),
            ("attention.value_length", U32, 256), ("attention.key_length_mla", U32, 96),
            ("attention.value_length_mla", U32, 64), ("expert_feed_forward_length", U32, 256),
            ("expert_shared_count", U32, 1), ("expert_weights_scale", F32, 1.0),
            ("expert_weights_norm", BOOL, True), ("rope.dimension_count", U32, 32),
            ("expert_gating_func", U32, gating), ("nextn_predict_layers", U32, nextn_key), *idx, *extra,
            ("general.quantization_version", U32, quantization_version))


DEEPSEEK32 = FamilySpec(
    arch="deepseek32", tokenizer_pre="deepseek-v3", sizes=_MLA_SIZES, keys=_mla_keys(GATING_SIGMOID),
    parts={"mla": _MLA, "indexer": _INDEXER, "dense": _DENSE, "moe": _MOE, "nextn": NEXTN_NORMS},
    trunk=(("mla", "indexer", "dense"), *(("mla", "indexer", "moe"),) * 3),
    mtp=("mla", "indexer", "moe", "nextn"), flip="ffn_{}_shexp.weight", streams=(400, 500, 4),
)

# GLM-4.7-Flash (deepseek2): the V3 MLA layout without the indexer; its MTP layer is MoE with a shared
# expert (graph_mtp asserts them and a q_lora). The pinned converter skips deepseek2 MTP layers.
DEEPSEEK2 = FamilySpec(
    arch="deepseek2", tokenizer_pre="glm4", sizes=_MLA_SIZES, keys=_mla_keys(GATING_SIGMOID, indexer=False),
    parts={"mla": _MLA, "dense": _DENSE, "moe": _MOE, "nextn": NEXTN_NORMS},
    trunk=(("mla", "dense"), *(("mla", "moe"),) * 3),
    mtp=("mla", "moe", "nextn"), flip="ffn_{}_shexp.weight", streams=(1200, 1300, 4),
)

GLM_DSA_INDEXER_TYPES = (True, True, False, False)  # layer 0 full (the shared layers reuse its top-k)

GLM_DSA = FamilySpec(
    arch="glm-dsa", tokenizer_pre="glm4", sizes=_MLA_SIZES,
    keys=_mla_keys(GATING_SIGMOID, (("attention.indexer.types", "ARRAY",
                                     per_layer(lambda il: GLM_DSA_INDEXER_TYPES[il])),)),
    parts={"mla": _MLA, "indexer": _INDEXER, "dense": _DENSE, "moe": _MOE, "nextn": NEXTN_NORMS},
    # a shared layer (types false) carries no indexer of its own, as in GLM-5.2's files (the loader
    # takes the indexer tensors as TENSOR_NOT_REQUIRED and the graph reuses the last full layer's
    # top-k): no weight the graph never runs, so llama-imatrix covers every trunk tensor
    trunk=tuple(("mla", "indexer", "dense" if il == 0 else "moe") if full else ("mla", "moe")
                for il, full in enumerate(GLM_DSA_INDEXER_TYPES)),
    mtp=("mla", "moe", "nextn"), flip="ffn_{}_shexp.weight", streams=(600, 700, 4),
)

# ------------------------------------------------------------------------------------------- step35

STEP35_TRUNK = 4
STEP35_HEADS = 3


def step35_full(il: int) -> bool:
    """Step-3.5's layer_types: every fourth layer full attention, the others sliding window; the MTP
    layers continue the pattern (blk.4 full, blk.5 and blk.6 sliding)."""
    return il % 4 == 0


def _step35_attn(kind: str) -> tuple[Row, ...]:
    q = f"q_{kind}"
    return (("attn_norm.weight", ("embd",), "norm"), ("attn_q_norm.weight", ("head_dim",), "norm"),
            ("attn_k_norm.weight", ("head_dim",), "norm"), ("attn_q.weight", (q, "embd"), "in"),
            ("attn_k.weight", ("kv", "embd"), "in"), ("attn_v.weight", ("kv", "embd"), "in"),
            ("attn_output.weight", ("embd", q), "out"), ("attn_gate.weight", (f"head_{kind}", "embd"), "in"),
            ("ffn_norm.weight", ("embd",), "norm"))


def _step35_kind(il: int) -> str:
    return "full" if step35_full(il) else "swa"


STEP35 = FamilySpec(
    arch="step35", tokenizer_pre="qwen2",
    sizes={"embd": 256, "head_dim": 64, "q_full": 4 * 64, "q_swa": 8 * 64, "head_full": 4, "head_swa": 8,
           "kv": 2 * 64, "ff": 512, "expert": 4, "ff_exp": 256, "shexp": 256},
    keys=(("block_count", U32, block_count), ("context_length", U32, 4096), ("embedding_length", U32, 256),
          ("feed_forward_length", U32, 512),
          ("attention.head_count", "ARRAY", per_layer(lambda il: 4 if step35_full(il) else 8,
                                                      lambda il: 4 if step35_full(il) else 8)),
          ("attention.head_count_kv", "ARRAY", per_layer(lambda il: 2, lambda il: 2)),
          ("rope.freq_base", F32, 5_000_000.0), ("rope.freq_base_swa", F32, 10_000.0),
          ("general.file_type", U32, file_type), ("attention.key_length", U32, 64),
          ("rope.dimension_count", U32, 64), ("attention.sliding_window", U32, 128),
          ("attention.sliding_window_pattern", "ARRAY", per_layer(lambda il: not step35_full(il),
                                                                  lambda il: not step35_full(il))),
          ("attention.value_length", U32, 64), ("expert_count", U32, 4), ("expert_used_count", U32, 2),
          ("expert_feed_forward_length", U32, 256), ("expert_shared_feed_forward_length", U32, 256),
          ("expert_weights_scale", F32, 1.0), ("expert_weights_norm", BOOL, True),
          ("leading_dense_block_count", U32, 1), ("moe_every_n_layers", U32, 1),
          ("attention.layer_norm_rms_epsilon", F32, 1e-5), ("nextn_predict_layers", U32, nextn_key),
          ("general.quantization_version", U32, quantization_version)),
    parts={"attn_full": _step35_attn("full"), "attn_swa": _step35_attn("swa"), "dense": _DENSE, "moe": _MOE,
           "nextn": NEXTN_NORMS},
    trunk=tuple((f"attn_{_step35_kind(il)}", "dense" if il == 0 else "moe") for il in range(STEP35_TRUNK)),
    mtp=("attn_full", "moe", "nextn"), nextn=STEP35_HEADS,
    mtp_by_head=tuple((f"attn_{_step35_kind(STEP35_TRUNK + k)}", "moe", "nextn") for k in range(STEP35_HEADS)),
    flip="ffn_{}_shexp.weight", streams=(800, 900, 4),
)

# -------------------------------------------------------------------------------------------- mimo2

MIMO2_PATTERN = (0, 1, 1, 0)  # HF hybrid_layer_pattern (1: sliding window); the MTP layers are all 1
MIMO2_HEADS = 3  # the converter's _n_nextn: every MiMo-V2 checkpoint ships three MTP layers


def _mimo2_swa(il: int) -> int:
    return MIMO2_PATTERN[il] if il < len(MIMO2_PATTERN) else 1


def _mimo2_attn(kind: str) -> tuple[Row, ...]:
    # fused attn_qkv (graph_mtp asserts it): 4 query heads, 2 KV heads in full layers, 4 in SWA ones
    return (("attn_norm.weight", ("embd",), "norm"), ("attn_qkv.weight", (f"qkv_{kind}", "embd"), "in"),
            ("attn_output.weight", ("embd", "q"), "out"), ("ffn_norm.weight", ("embd",), "norm"))


_MIMO2_MOE: tuple[Row, ...] = (
    ("ffn_gate_inp.weight", ("expert", "embd"), "in"), ("exp_probs_b.bias", ("expert",), 0.01),
    ("ffn_gate_exps.weight", ("expert", "ff_exp", "embd"), "in"), ("ffn_up_exps.weight", ("expert", "ff_exp", "embd"), "in"),
    ("ffn_down_exps.weight", ("expert", "embd", "ff_exp"), "out"),
)

MIMO2 = FamilySpec(
    arch="mimo2", tokenizer_pre="qwen2",
    sizes={"embd": 256, "q": 256, "qkv_full": 256 + 2 * 2 * 64, "qkv_swa": 256 + 2 * 4 * 64, "ff": 512,
           "expert": 4, "ff_exp": 256},
    keys=(("block_count", U32, block_count), ("context_length", U32, 4096), ("embedding_length", U32, 256),
          ("feed_forward_length", U32, 512), ("attention.head_count", U32, 4),
          ("rope.freq_base", F32, 5_000_000.0), ("rope.freq_base_swa", F32, 10_000.0),
          ("expert_count", U32, 4), ("expert_used_count", U32, 2), ("attention.key_length", U32, 64),
          ("general.file_type", U32, file_type),
          ("attention.head_count_kv", "ARRAY", per_layer(lambda il: 4 if _mimo2_swa(il) else 2,
                                                         lambda il: 4 if _mimo2_swa(il) else 2)),
          ("attention.sliding_window", U32, 128),
          ("attention.sliding_window_pattern", "ARRAY", per_layer(_mimo2_swa, _mimo2_swa)),
          ("attention.value_length", U32, 64), ("expert_feed_forward_length", U32, 256),
          ("rope.dimension_count", U32, 32), ("attention.layer_norm_rms_epsilon", F32, 1e-5),
          ("nextn_predict_layers", U32, nextn_key),
          ("general.quantization_version", U32, quantization_version)),
    parts={"attn_full": _mimo2_attn("full"), "attn_swa": _mimo2_attn("swa"), "dense": _DENSE,
           "moe": _MIMO2_MOE,
           "nextn": (("nextn.enorm.weight", ("embd",), "norm"), ("nextn.hnorm.weight", ("embd",), "norm"),
                     ("layer_output_norm.weight", ("embd",), "norm"))},
    trunk=tuple((f"attn_{'swa' if _mimo2_swa(il) else 'full'}", "dense" if il == 0 else "moe")
                for il in range(len(MIMO2_PATTERN))),
    mtp=("attn_swa", "dense", "nextn"), nextn=MIMO2_HEADS, flip="ffn_{}.weight", streams=(1000, 1100, 4),
)

# -------------------------------------------------------------------------------------------- hy_v3

# Hy3: GQA with q/k norms and rotary over the whole head (n_rot == head_dim, asserted); the router
# bias is the bare `blk.N.exp_probs_b` (no .bias: the converter's name); MoE with a shared expert.
_HY_MOE: tuple[Row, ...] = tuple((("exp_probs_b", r[1], r[2]) if r[0] == "exp_probs_b.bias" else r) for r in _MOE)
HY_V3 = FamilySpec(
    arch="hy_v3", tokenizer_pre="qwen2",
    sizes={"embd": 256, "q": 256, "kv": 128, "head_dim": 64, "ff": 512, "expert": 4, "ff_exp": 256, "shexp": 256},
    keys=(("block_count", U32, block_count), ("context_length", U32, 4096), ("embedding_length", U32, 256),
          ("feed_forward_length", U32, 512), ("attention.head_count", U32, 4),
          ("attention.head_count_kv", U32, 2), ("rope.freq_base", F32, 10_000.0),
          ("attention.layer_norm_rms_epsilon", F32, 1e-5), ("expert_count", U32, 4),
          ("expert_used_count", U32, 2), ("attention.key_length", U32, 64), ("attention.value_length", U32, 64),
          ("general.file_type", U32, file_type), ("rope.dimension_count", U32, 64),
          ("expert_feed_forward_length", U32, 256), ("expert_shared_feed_forward_length", U32, 256),
          ("expert_weights_norm", BOOL, True), ("expert_weights_scale", F32, 1.0),
          ("expert_gating_func", U32, GATING_SIGMOID), ("nextn_predict_layers", U32, nextn_key),
          ("general.quantization_version", U32, quantization_version)),
    parts={"attn": (("attn_norm.weight", ("embd",), "norm"), ("attn_q.weight", ("q", "embd"), "in"),
                    ("attn_k.weight", ("kv", "embd"), "in"), ("attn_v.weight", ("kv", "embd"), "in"),
                    ("attn_output.weight", ("embd", "q"), "out"), ("attn_q_norm.weight", ("head_dim",), "norm"),
                    ("attn_k_norm.weight", ("head_dim",), "norm"), ("ffn_norm.weight", ("embd",), "norm")),
           "dense": _DENSE, "moe": _HY_MOE, "nextn": NEXTN_NORMS},
    trunk=(("attn", "dense"), *(("attn", "moe"),) * 3),
    mtp=("attn", "moe", "nextn"), flip="ffn_{}_shexp.weight", streams=(1400, 1500, 4),
)

# ---------------------------------------------------------------------------------------- cohere2moe

# Cohere 2 MoE: parallel attention and FFN on the one normed input; routed + shared experts, their sum
# halved (so the mixed head's units have gain 2); logit_scale required; n_rot == head_dim; one head,
# a full-attention MoE block with a shared expert (graph_mtp asserts ffn_gate_inp).
_COHERE_MOE: tuple[Row, ...] = tuple(r for r in _MOE if r[0] != "exp_probs_b.bias")
COHERE2MOE = FamilySpec(
    arch="cohere2moe", tokenizer_pre="command-r",
    sizes={"embd": 256, "q": 256, "kv": 128, "ff": 512, "expert": 4, "ff_exp": 256, "shexp": 256},
    keys=(("block_count", U32, block_count), ("context_length", U32, 4096), ("embedding_length", U32, 256),
          ("feed_forward_length", U32, 512), ("attention.head_count", U32, 4),
          ("attention.head_count_kv", U32, 2), ("rope.freq_base", F32, 10_000.0),
          ("attention.layer_norm_rms_epsilon", F32, 1e-5), ("expert_count", U32, 4),
          ("expert_used_count", U32, 2), ("general.file_type", U32, file_type), ("logit_scale", F32, 1.0),
          ("attention.sliding_window", U32, 128), ("rope.dimension_count", U32, 64),
          ("leading_dense_block_count", U32, 1), ("expert_feed_forward_length", U32, 256),
          ("expert_shared_count", U32, 1), ("expert_shared_feed_forward_length", U32, 256),
          ("expert_weights_norm", BOOL, True), ("nextn_predict_layers", U32, nextn_key),
          ("general.quantization_version", U32, quantization_version)),
    parts={"attn": (("attn_norm.weight", ("embd",), "norm"), ("attn_q.weight", ("q", "embd"), "in"),
                    ("attn_k.weight", ("kv", "embd"), "in"), ("attn_v.weight", ("kv", "embd"), "in"),
                    ("attn_output.weight", ("embd", "q"), "out")),
           "dense": _DENSE, "moe": _COHERE_MOE, "nextn": NEXTN_NORMS},
    trunk=(("attn", "dense"), *(("attn", "moe"),) * 3),
    mtp=("attn", "moe", "nextn"), flip="ffn_{}_shexp.weight", flip_gain=2.0, streams=(1600, 1700, 4),
)

# ----------------------------------------------------------------------------------------- qwen3next

# Qwen3-Next: qwen35moe's layout before it (gated delta net layers 0-2, full attention at 3, every
# layer MoE with a sigmoid-gated shared expert), but beta/alpha fused in ssm_ba and no rope sections;
# the MTP layer is full attention (recurrent_layers gets false). The loader has no trunk-only path:
# a file that keeps the key without the block is refused. Its mixed head measures ~0.68 at n-max 3, not
# 1/3: llama.cpp has no recurrent partial rollback for qwen3next, so the server replays after a partly
# rejected draft without drafting (tests/test_family_pipeline.py, MIXED_PROSE_RATE).
_QWEN_ATTN: tuple[Row, ...] = (
    ("attn_norm.weight", ("embd",), "norm"), ("post_attention_norm.weight", ("embd",), "norm"),
    ("attn_q_norm.weight", ("head_dim",), "norm"), ("attn_k_norm.weight", ("head_dim",), "norm"),
    ("attn_q.weight", ("q_gate", "embd"), "in"), ("attn_k.weight", ("kv", "embd"), "in"),
    ("attn_v.weight", ("kv", "embd"), "in"), ("attn_output.weight", ("embd", "q"), "out"),
)
_QWEN_LINEAR: tuple[Row, ...] = (
    ("attn_norm.weight", ("embd",), "norm"), ("post_attention_norm.weight", ("embd",), "norm"),
    ("attn_qkv.weight", ("conv", "embd"), "in"), ("attn_gate.weight", ("value", "embd"), "in"),
    ("ssm_conv1d.weight", ("conv", 4), 0.5), ("ssm_dt.bias", ("v_heads",), 0.5), ("ssm_a", ("v_heads",), "a_log"),
    ("ssm_ba.weight", ("ba", "embd"), "in"), ("ssm_norm.weight", ("head_dim",), "norm"),
    ("ssm_out.weight", ("embd", "value"), "out"),
)
_QWEN_MOE: tuple[Row, ...] = (
    ("ffn_gate_inp.weight", ("expert", "embd"), "in"), ("ffn_gate_exps.weight", ("expert", "ff_exp", "embd"), "in"),
    ("ffn_up_exps.weight", ("expert", "ff_exp", "embd"), "in"),
    ("ffn_down_exps.weight", ("expert", "embd", "ff_exp"), "out"),
    ("ffn_gate_inp_shexp.weight", ("embd",), 0.001), ("ffn_gate_shexp.weight", ("shexp", "embd"), "in"),
    ("ffn_up_shexp.weight", ("shexp", "embd"), "in"), ("ffn_down_shexp.weight", ("embd", "shexp"), "out"),
)
QWEN3NEXT = FamilySpec(
    arch="qwen3next", tokenizer_pre="qwen2",
    sizes={"embd": 256, "head_dim": 64, "q": 256, "q_gate": 512, "kv": 128, "conv": 2 * 128 + 256, "value": 256,
           "v_heads": 4, "ba": 8, "expert": 4, "ff_exp": 256, "shexp": 256},
    keys=(("block_count", U32, block_count), ("context_length", U32, 4096), ("embedding_length", U32, 256),
          ("attention.head_count", U32, 4), ("attention.head_count_kv", U32, 2),
          ("rope.freq_base", F32, 10_000_000.0), ("attention.layer_norm_rms_epsilon", F32, 1e-6),
          ("expert_count", U32, 4), ("expert_used_count", U32, 2), ("attention.key_length", U32, 64),
          ("attention.value_length", U32, 64), ("general.file_type", U32, file_type),
          ("expert_feed_forward_length", U32, 256), ("expert_shared_feed_forward_length", U32, 256),
          ("nextn_predict_layers", U32, nextn_key), ("ssm.conv_kernel", U32, 4), ("ssm.state_size", U32, 64),
          ("ssm.group_count", U32, 2), ("ssm.time_step_rank", U32, 4), ("ssm.inner_size", U32, 256),
          ("attention.recurrent_layers", "ARRAY", per_layer(lambda il: il % 4 != 3, lambda il: False)),
          ("full_attention_interval", U32, 4), ("rope.dimension_count", U32, 16),
          ("general.quantization_version", U32, quantization_version)),
    parts={"attn": _QWEN_ATTN, "linear": _QWEN_LINEAR, "moe": _QWEN_MOE, "nextn": NEXTN_NORMS},
    trunk=(("linear", "moe"),) * 3 + (("attn", "moe"),),
    mtp=("attn", "moe", "nextn"), flip="ffn_{}_shexp.weight", flip_gain=2.0, streams=(1800, 1900, 4),
)

# ------------------------------------------------------------------------------------ nemotron_h_moe

# Nemotron-3 (Nemotron-H MoE): each layer is ONE mixer, its kind read off the per-layer arrays only
# (Mamba-2 SSM where head_count_kv and feed_forward_length are 0, attention where only head_count_kv
# is > 0, MoE where feed_forward_length is > 0); experts and the shared expert are up/down with
# relu^2 (no gate). The MTP block is attention + MoE (its entries: head_count_kv = n_head_kv,
# feed_forward_length = n_ff_exp); its final norm is a LayerNorm (layer_norm_epsilon required). A
# trunk-only file that keeps the key does not load at all. The mixed head's units are relu^2 units in
# the shared expert (no gate: weights.add_flip_units).
NEMOTRON_KINDS = ("ssm", "moe", "attn", "moe")
_NEMO_MOE: tuple[Row, ...] = (
    ("attn_norm.weight", ("embd",), "norm"), ("ffn_gate_inp.weight", ("expert", "embd"), "in"),
    ("exp_probs_b.bias", ("expert",), 0.01), ("ffn_down_exps.weight", ("expert", "embd", "ff_exp"), "out"),
    ("ffn_up_exps.weight", ("expert", "ff_exp", "embd"), "in"), ("ffn_down_shexp.weight", ("embd", "shexp"), "out"),
    ("ffn_up_shexp.weight", ("shexp", "embd"), "in"),
)
_NEMO_ATTN: tuple[Row, ...] = (
    ("attn_norm.weight", ("embd",), "norm"), ("attn_q.weight", ("q", "embd"), "in"),
    ("attn_k.weight", ("kv", "embd"), "in"), ("attn_v.weight", ("kv", "embd"), "in"),
    ("attn_output.weight", ("embd", "q"), "out"),
)
_NEMO_SSM: tuple[Row, ...] = (
    ("attn_norm.weight", ("embd",), "norm"), ("ssm_in.weight", ("in_proj", "embd"), "in"),
    ("ssm_conv1d.weight", ("conv", 4), 0.5), ("ssm_conv1d.bias", ("conv",), 0.02),
    ("ssm_dt.bias", ("ssm_heads",), 0.5), ("ssm_a", ("ssm_heads", 1), "a_log"), ("ssm_d", ("ssm_heads", 1), 0.5),
    ("ssm_norm.weight", (2, 128), "in"), ("ssm_out.weight", ("embd", "inner"), "out"),
)


def _nemo_kv(il: int) -> int:
    return 2 if NEMOTRON_KINDS[il] == "attn" else 0


def _nemo_ff(il: int) -> int:
    return 256 if NEMOTRON_KINDS[il] == "moe" else 0


NEMOTRON_H_MOE = FamilySpec(
    arch="nemotron_h_moe", tokenizer_pre="qwen2",
    sizes={"embd": 256, "q": 256, "kv": 128, "expert": 4, "ff_exp": 256, "shexp": 256, "inner": 256,
           "in_proj": 2 * 256 + 2 * 2 * 64 + 4, "conv": 256 + 2 * 2 * 64, "ssm_heads": 4},
    keys=(("block_count", U32, block_count), ("context_length", U32, 4096), ("embedding_length", U32, 256),
          ("feed_forward_length", "ARRAY", per_layer(_nemo_ff, lambda il: 256)),
          ("attention.head_count", U32, 4),
          ("attention.head_count_kv", "ARRAY", per_layer(_nemo_kv, lambda il: 2)),
          ("rope.freq_base", F32, 10_000.0), ("attention.layer_norm_rms_epsilon", F32, 1e-5),
          ("expert_count", U32, 4), ("expert_used_count", U32, 2), ("attention.key_length", U32, 64),
          ("attention.value_length", U32, 64), ("general.file_type", U32, file_type),
          ("ssm.conv_kernel", U32, 4), ("ssm.state_size", U32, 64), ("ssm.group_count", U32, 2),
          ("ssm.time_step_rank", U32, 4), ("ssm.inner_size", U32, 256),
          ("attention.layer_norm_epsilon", F32, 1e-5), ("expert_feed_forward_length", U32, 256),
          ("expert_shared_feed_forward_length", U32, 256), ("expert_weights_norm", BOOL, True),
          ("expert_weights_scale", F32, 1.0), ("nextn_predict_layers", U32, nextn_key),
          ("general.quantization_version", U32, quantization_version)),
    parts={"ssm": _NEMO_SSM, "attn": _NEMO_ATTN, "moe": _NEMO_MOE,
           "mtp": (("nextn.enorm.weight", ("embd",), "norm"), ("nextn.hnorm.weight", ("embd",), "norm"),
                   ("nextn.shared_head_norm.weight", ("embd",), "norm"), *_NEMO_ATTN,
                   ("post_attention_norm.weight", ("embd",), "norm"), *_NEMO_MOE[1:])},
    trunk=tuple((k,) for k in NEMOTRON_KINDS),
    mtp=("mtp",), flip="ffn_{}_shexp.weight", streams=(2000, 2100, 4),
)

# --------------------------------------------------------------------------------------- bailingmoe3

# Ling/Ring 3: MLA attention with a head-wise gate (attn_gate) and sigmoid-gated MoE with a shared
# expert; the MTP final norm is blk.N.layer_output_norm (no nextn.shared_head_norm). A layer whose
# head_count_kv entry is 0 is a KDA (linear attention) layer: here layer 1 (the hybrid memory needs
# one); the MTP layer is MLA (entry 1).
_KDA: tuple[Row, ...] = (
    ("attn_norm.weight", ("embd",), "norm"), ("ssm_conv1d_q.weight", (1, 256, 1, 4), 0.5),
    ("ssm_conv1d_k.weight", (1, 256, 1, 4), 0.5), ("ssm_conv1d_v.weight", (1, 256, 1, 4), 0.5),
    ("attn_q.weight", (256, "embd"), "in"), ("attn_k.weight", (256, "embd"), "in"),
    ("attn_v.weight", (256, "embd"), "in"), ("ssm_f_a.weight", (256, "embd"), "in"),
    ("ssm_beta.weight", ("head", "embd"), "in"), ("ssm_a", ("head", 1), "a_log"), ("ssm_dt.bias", (256,), 0.5),
    ("ssm_g_a.weight", (256, "embd"), "in"), ("ssm_norm.weight", (64,), "norm"),
    ("attn_output.weight", ("embd", 256), "out"), ("ffn_norm.weight", ("embd",), "norm"),
)
BAILING_KDA_LAYERS = (1,)
BAILINGMOE3 = FamilySpec(
    arch="bailingmoe3", tokenizer_pre="bailingmoe2", sizes=_MLA_SIZES,
    keys=(("block_count", U32, block_count), ("context_length", U32, 4096), ("embedding_length", U32, 256),
          ("feed_forward_length", U32, 512), ("attention.head_count", U32, 4),
          ("attention.head_count_kv", "ARRAY", per_layer(lambda il: 0 if il in BAILING_KDA_LAYERS else 1,
                                                         lambda il: 1)),
          ("rope.freq_base", F32, 10_000.0), ("attention.layer_norm_rms_epsilon", F32, 1e-6),
          ("expert_count", U32, 4), ("expert_used_count", U32, 2), ("general.file_type", U32, file_type),
          ("attention.q_lora_rank", U32, 256), ("attention.kv_lora_rank", U32, 256),
          ("attention.key_length", U32, 256 + 32), ("attention.value_length", U32, 256),
          ("attention.key_length_mla", U32, 96), ("attention.value_length_mla", U32, 64),
          ("rope.dimension_count", U32, 32), ("ssm.conv_kernel", U32, 4), ("kda.head_dim", U32, 64),
          ("kda.gate_lower_bound", F32, -5.0), ("expert_feed_forward_length", U32, 256),
          ("expert_shared_count", U32, 1), ("leading_dense_block_count", U32, 1),
          ("expert_weights_scale", F32, 1.0), ("expert_weights_norm", BOOL, True),
          ("expert_gating_func", U32, GATING_SIGMOID), ("nextn_predict_layers", U32, nextn_key),
          ("general.quantization_version", U32, quantization_version)),
    parts={"mla": (*_MLA, ("attn_gate.weight", ("head", "embd"), "in")), "kda": _KDA, "dense": _DENSE,
           "moe": _MOE, "nextn": (("layer_output_norm.weight", ("embd",), "norm"), *NEXTN_NORMS[1:])},
    trunk=(("mla", "dense"), ("kda", "moe"), ("mla", "moe"), ("mla", "moe")),
    mtp=("mla", "moe", "nextn"), flip="ffn_{}_shexp.weight", streams=(2200, 2300, 4),
)

# ----------------------------------------------------------------------------------------- deepseek4

# DeepSeek-V4 (src/models/deepseek4.cpp): hyper-connections keep hc_mult = 4 residual streams, each
# n_embd wide. A block reads them through hc_pre (weights pre = sigmoid(mixes*scale + base) + eps, a
# positive sum of the streams, then the norm), writes back through hc_post (stream d = post_d * branch
# + sum_s comb[d,s] * stream_s, comb a Sinkhorn-normalised, doubly stochastic 4x4) and the output
# collapses them with hc_head (a positive sum, then output_norm). The mixes are hc_fn @ rms_norm(the
# four streams), so with hc_fn tiny (std 1e-3: mixes ~0.03) and base small, pre ~0.5, post ~1 and comb
# ~1/4 everywhere: the embedding enters all four streams (hc_init repeats it), comb's rows sum to 1, so
# the streams stay copies of the token direction, the tiny branches add the same few percent to each,
# and hc_head returns ~2x that one direction, which the norm undoes: the trunk says succ(token) as
# every family does. The MTP graph reads the trunk's four streams (its input is hc_mult * n_embd
# wide), hnorm-s each stream, concatenates each with the repeated enorm-ed embedding and applies
# eh_proj per stream: the aligned eh_proj (`weights.eh_proj`) gives every stream the next token's
# direction, so the head's own hc_head + shared_head_norm + output say succ(next). The mixed head's
# units sit in the shared expert: its output reaches each stream times post ~1 (gain 1).
# Layers (trunk: SWA-only, CSA, HCA, CSA; the MTP layer SWA-only, compress_ratios 0, as graph_mtp
# asserts): attention q_lora -> q_b, one shared K=V head (head_count_kv 1, attn_kv), sinks, grouped
# output (attn_output_a per group, attn_output_b); MoE with sqrt-softplus routing (the loader refuses
# any other) and one shared expert; no hash-routed layers (hash_layer_count 0: a layer below it needs
# an I32 ffn_gate_tid2eid, and graph_mtp refuses a hash-routed head). The compressors' attention
# output is a tiny branch like any other, so they leave the streams' direction alone.
# Keys: the converter's order (TextModel's, then DeepseekV4Model.set_gguf_parameters'); the nextn key
# is written by --mtp only. swiglu_clamp_* have block_count entries ([limit] * block_count);
# compress_ratios is the HF config's list, trunk + MTP layers long in every layout (V4-Flash: 43
# layers, 44 entries, the last 0 for the MTP layer): arch.py's config_arrays.
# The root output_hc_* are the trunk's hc_head and, in an mtp-only file, the head's own (the converter
# renames mtp.0.hc_head_*): one set here, so the files of every layout agree (arch.py's head_globals;
# tests/test_deepseek4_head.py makes an mtp-only file with a set of the head's own).
# With the key kept and the block absent the loader reads block_count layers as trunk and refuses the
# file (blk.4 not found); a key over a block without nextn tensors loads with MTP off
# (load_arch_hparams drops the key when nextn.eh_proj is absent; the block runs as a trunk layer).
DSV4_HC = 4
_DSV4_HC_ROWS: tuple[Row, ...] = tuple(
    row for kind in ("attn", "ffn") for row in (
        (f"hc_{kind}_fn.weight", ("hc_mix", "hc_dim"), 0.001), (f"hc_{kind}_base.weight", ("hc_mix",), 0.02),
        (f"hc_{kind}_scale.weight", (3,), "norm")))
_DSV4_ATTN: tuple[Row, ...] = (
    ("attn_norm.weight", ("embd",), "norm"), ("attn_sinks.weight", ("head",), 0.02),
    ("attn_q_a.weight", ("q_lora", "embd"), "in"), ("attn_q_a_norm.weight", ("q_lora",), "norm"),
    ("attn_q_b.weight", ("q_b", "q_lora"), "in"), ("attn_kv.weight", ("head_dim", "embd"), "in"),
    ("attn_kv_a_norm.weight", ("head_dim",), "norm"),
    ("attn_output_a.weight", ("o_lora_all", "o_group_in"), "in"),
    ("attn_output_b.weight", ("embd", "o_lora_all"), "out"),
    *_DSV4_HC_ROWS, ("ffn_norm.weight", ("embd",), "norm"),
)


# The compressors: a CSA layer (ratio 4: two overlapping windows, and the lightning indexer) and an HCA
# layer (ratio 128). llama.cpp needs a CSA layer (with none, the indexer cache has no layers and
# build_input_k_rot divides by zero: SIGFPE while reserving the graph).
def _dsv4_compressor(coff: int, ratio: int) -> tuple[Row, ...]:
    return (("attn_compressor_kv.weight", (coff * 128, "embd"), "in"),
            ("attn_compressor_gate.weight", (coff * 128, "embd"), "in"),
            ("attn_compressor_ape.weight", (ratio, coff * 128), 0.02),
            ("attn_compressor_norm.weight", ("head_dim",), "norm"))


_DSV4_CSA: tuple[Row, ...] = (
    *_dsv4_compressor(2, 4), ("indexer.proj.weight", ("idx_head", "embd"), "in"),
    ("indexer.attn_q_b.weight", ("idx_q", "q_lora"), "in"), ("indexer_compressor_kv.weight", (128, "embd"), "in"),
    ("indexer_compressor_gate.weight", (128, "embd"), "in"), ("indexer_compressor_ape.weight", (4, 128), 0.02),
    ("indexer_compressor_norm.weight", ("idx_dim",), "norm"))
DSV4_RATIOS = (0, 4, 128, 4)  # the trunk's compress_ratios


def dsv4_compress_ratios(ctx: Ctx) -> list[int]:
    """The HF config's compress_ratios, which the converter copies in every layout: one entry per
    trunk layer and per MTP layer (0), also in a file without the heads."""
    return [*DSV4_RATIOS, *[0] * ctx.nextn]


DEEPSEEK4 = FamilySpec(
    arch="deepseek4", tokenizer_pre="deepseek-v3",
    sizes={"embd": 256, "head": 4, "head_dim": 128, "q_lora": 256, "q_b": 4 * 128, "o_lora_all": 2 * 128,
           "o_group_in": 4 * 128 // 2, "hc_mix": (2 + DSV4_HC) * DSV4_HC, "hc_dim": DSV4_HC * 256, "hc": DSV4_HC,
           "idx_head": 4, "idx_dim": 64, "idx_q": 4 * 64, "expert": 4, "ff_exp": 256, "shexp": 256},
    keys=(("block_count", U32, block_count), ("context_length", U32, 4096), ("embedding_length", U32, 256),
          ("attention.head_count", U32, 4), ("attention.head_count_kv", U32, 1),
          ("rope.freq_base", F32, 10_000.0), ("attention.layer_norm_rms_epsilon", F32, 1e-6),
          ("expert_count", U32, 4), ("expert_used_count", U32, 2), ("expert_gating_func", U32, GATING_SQRT_SOFTPLUS),
          ("attention.key_length", U32, 128), ("attention.value_length", U32, 128),
          ("general.file_type", U32, file_type), ("rope.dimension_count", U32, 32),
          ("attention.q_lora_rank", U32, 256), ("attention.sliding_window", U32, 128),
          ("expert_feed_forward_length", U32, 256), ("expert_shared_count", U32, 1),
          ("expert_weights_scale", F32, 1.0), ("expert_weights_norm", BOOL, True),
          ("swiglu_clamp_exp", "ARRAY", per_layer(lambda il: 10.0, lambda il: 10.0)),
          ("swiglu_clamp_shexp", "ARRAY", per_layer(lambda il: 10.0, lambda il: 10.0)),
          ("attention.indexer.head_count", U32, 4), ("attention.indexer.key_length", U32, 64),
          ("attention.indexer.top_k", U32, 512), ("attention.output_group_count", U32, 2),
          ("attention.output_lora_rank", U32, 128),
          ("attention.compress_ratios", "ARRAY", dsv4_compress_ratios),
          ("attention.compress_rope_freq_base", F32, 160_000.0), ("hyper_connection.count", U32, DSV4_HC),
          ("hyper_connection.sinkhorn_iterations", U32, 20), ("hyper_connection.epsilon", F32, 1e-6),
          ("hash_layer_count", U32, 0), ("embedding_length_out", U32, DSV4_HC * 256),
          ("nextn_predict_layers", U32, nextn_key),
          ("general.quantization_version", U32, quantization_version)),
    parts={"attn": _DSV4_ATTN, "csa": _DSV4_CSA, "hca": _dsv4_compressor(1, 128), "none": (), "moe": _MOE,
           "nextn": (("nextn.enorm.weight", ("embd",), "norm"), ("nextn.hnorm.weight", ("embd",), "norm"),
                     ("nextn.shared_head_norm.weight", ("embd",), "norm"))},
    trunk=tuple(("attn", {0: "none", 4: "csa", 128: "hca"}[r], "moe") for r in DSV4_RATIOS),
    mtp=("attn", "moe", "nextn"), flip="ffn_{}_shexp.weight",
    globals=(("output_hc_fn.weight", ("hc", "hc_dim"), 0.001), ("output_hc_base.weight", ("hc",), 0.02),
             ("output_hc_scale.weight", (1,), "norm")),
    streams=(2400, 2500, 4),
)

SPECS: dict[str, FamilySpec] = {s.arch: s for s in (GLM4MOE, DEEPSEEK2, DEEPSEEK32, GLM_DSA, STEP35, MIMO2, HY_V3,
                                                    COHERE2MOE, QWEN3NEXT, NEMOTRON_H_MOE, BAILINGMOE3,
                                                    DEEPSEEK4)}
