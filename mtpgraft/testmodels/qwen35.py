"""The qwen35 / qwen35moe tiny models: their test set, keys and tensors in the order
convert_hf_to_gguf.py writes them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

from .dims import (
    BLOCK_COUNT,
    CONTEXT_LENGTH,
    FULL_ATTENTION_INTERVAL,
    HEAD_DIM,
    MTP_BLOCK,
    MTP_LAYERS,
    N_EMBD,
    N_EXPERT,
    N_EXPERT_USED,
    N_FF,
    N_FF_EXP,
    N_FF_SHEXP,
    N_HEAD,
    N_HEAD_KV,
    N_ROT,
    RMS_EPS,
    ROPE_FREQ_BASE,
    ROPE_SECTIONS,
    SSM_CONV_KERNEL,
    SSM_GROUP_COUNT,
    SSM_INNER_SIZE,
    SSM_STATE_SIZE,
    SSM_TIME_STEP_RANK,
    TRUNK_LAYERS,
)
from .vocab import TinyVocab, tiny_vocab
from .weights import Gen, embeddings, mtp_block, trunk_block
from .writer import file_type_of, write_tiny_gguf

if TYPE_CHECKING:  # numpy is imported where it is used, so `mtpgraft --help` does not pay for it
    import gguf
    import numpy as np

LAYOUTS = ("full", "base", "mtp-only")

# HF names sort as lm_head < model.embed_tokens < model.layers.* < model.norm < mtp.*; within a layer
# the converter keeps the HF order, which these lists reproduce.
_LINEAR_ORDER = ("attn_norm", "ssm_a", "ssm_conv1d", "ssm_dt", "ssm_alpha", "ssm_beta", "attn_qkv",
                 "attn_gate", "ssm_norm", "ssm_out")
_ATTN_ORDER = ("attn_norm",)
_ATTN_TAIL = ("attn_k_norm", "attn_k", "attn_output", "attn_q_norm", "attn_q", "attn_v")
_DENSE_FFN_ORDER = ("ffn_down", "ffn_gate", "ffn_up")
_MOE_FFN_ORDER = ("ffn_down_exps", "ffn_gate_exps", "ffn_up_exps", "ffn_gate_inp", "ffn_down_shexp",
                  "ffn_gate_shexp", "ffn_up_shexp", "ffn_gate_inp_shexp")


def ordered(block: dict[str, np.ndarray], arch: str, *, mtp: bool) -> list[str]:
    ffn = _MOE_FFN_ORDER if arch == "qwen35moe" else _DENSE_FFN_ORDER
    stems = {k.split(".")[0] if not k.startswith("nextn.") else k.rsplit(".", 1)[0]: k for k in block}
    if "ssm_out" in stems:
        order = [*_LINEAR_ORDER, *ffn, "post_attention_norm"]
    else:
        order = [*_ATTN_ORDER, *ffn, "post_attention_norm", *_ATTN_TAIL]
    if mtp:
        order = ["nextn.eh_proj", *order, "nextn.shared_head_norm", "nextn.enorm", "nextn.hnorm"]
    names = [stems[s] for s in order]
    assert sorted(names) == sorted(block), (sorted(names), sorted(block))
    return names


def build(path: Path, *, arch: str, layout: str, head: str, dtype: str, seed: int,
                  recurrent_layers_array: bool) -> Path:
    vocab = tiny_vocab(seed)
    has_mtp = layout != "base"
    keys = functools.partial(qwen35_keys, arch=arch, dtype=dtype, has_mtp=has_mtp,
                             recurrent_layers_array=recurrent_layers_array)
    name = f"mtpgraft tiny {arch} {layout}" + (f" {head}" if has_mtp else "")
    return write_tiny_gguf(Path(path), arch, name, keys, _qwen35_tensors(arch, layout, head, seed, vocab),
                           dtype=dtype, vocab=vocab, tokenizer_pre="qwen35")


def _qwen35_tensors(arch: str, layout: str, head: str, seed: int, vocab: TinyVocab) -> list[tuple[str, np.ndarray]]:
    """The tensors of a qwen35 / qwen35moe model in the converter's order (see ordered)."""
    embd, output = embeddings(seed, vocab)
    tensors: list[tuple[str, np.ndarray]] = [("output.weight", output), ("token_embd.weight", embd)]
    if layout != "mtp-only":
        for il in range(TRUNK_LAYERS):
            block = trunk_block(arch, seed, il)
            tensors += [(f"blk.{il}.{k}", block[k]) for k in ordered(block, arch, mtp=False)]
    tensors.append(("output_norm.weight", Gen(seed, 4).norm(N_EMBD)))
    if layout != "base":
        block = mtp_block(arch, seed, head, vocab)
        tensors += [(f"blk.{MTP_BLOCK}.{k}", block[k]) for k in ordered(block, arch, mtp=True)]
    return tensors


def qwen35_keys(w: gguf.GGUFWriter, *, arch: str, dtype: str, has_mtp: bool,
                 recurrent_layers_array: bool) -> None:
    """The qwen35 / qwen35moe keys, in the converter's order."""
    import gguf

    block_count = BLOCK_COUNT if has_mtp else TRUNK_LAYERS
    w.add_block_count(block_count)
    w.add_context_length(CONTEXT_LENGTH)
    w.add_embedding_length(N_EMBD)
    if arch == "qwen35":
        w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_sections(list(ROPE_SECTIONS))
    w.add_rope_freq_base(ROPE_FREQ_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)
    if arch == "qwen35moe":
        w.add_expert_count(N_EXPERT)
        w.add_expert_used_count(N_EXPERT_USED)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_file_type(file_type_of(dtype))
    if arch == "qwen35moe":
        w.add_expert_feed_forward_length(N_FF_EXP)
        w.add_expert_shared_feed_forward_length(N_FF_SHEXP)
    if has_mtp:
        w.add_nextn_predict_layers(MTP_LAYERS)
    w.add_ssm_conv_kernel(SSM_CONV_KERNEL)
    w.add_ssm_state_size(SSM_STATE_SIZE)
    w.add_ssm_group_count(SSM_GROUP_COUNT)
    w.add_ssm_time_step_rank(SSM_TIME_STEP_RANK)
    w.add_ssm_inner_size(SSM_INNER_SIZE)
    if recurrent_layers_array:
        recurrent = [(i + 1) % FULL_ATTENTION_INTERVAL != 0 for i in range(TRUNK_LAYERS)]
        recurrent += [False] * (block_count - TRUNK_LAYERS)
        # gguf 0.19.0 has no constant for this key: write it by name.
        w.add_array(f"{arch}.attention.recurrent_layers", recurrent)
    w.add_full_attention_interval(FULL_ATTENTION_INTERVAL)
    w.add_rope_dimension_count(N_ROT)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


# name -> build_tiny_model keyword arguments
TEST_SET: dict[str, dict[str, object]] = {
    "full-aligned": {"layout": "full", "head": "aligned"},
    "full-mixed": {"layout": "full", "head": "mixed"},
    "full-random": {"layout": "full", "head": "random"},
    "full-aligned-norec": {"layout": "full", "head": "aligned", "recurrent_layers_array": False},
    "base": {"layout": "base"},
    "base-norec": {"layout": "base", "recurrent_layers_array": False},
    "mtp-only-aligned": {"layout": "mtp-only", "head": "aligned"},
    "mtp-only-mixed": {"layout": "mtp-only", "head": "mixed"},
}
