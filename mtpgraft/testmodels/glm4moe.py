"""Tiny glm4moe (GLM-4.5 / 4.6 / 4.7 layout) models that the real llama-server runs with MTP, with
known acceptance.

Same contract as the qwen35 models (see the package docstring): one successor per token, letter
tokens ("prose") and non-letter tokens ("code"); the MTP head is "aligned" (acceptance 1.0),
"mixed" (wrong on half the letter tokens: 1/3 at --spec-draft-n-max 3 on a prompt ending in a letter,
1.0 otherwise) or "random" (~0). The trunk weights are identical across heads and layouts.

Layout, as convert_hf_to_gguf.py writes GLM-4.5-Air (conversion/glm.py) and as
src/models/glm4-moe.cpp loads it: 4 trunk layers, the first `LEADING_DENSE` of them with a dense FFN
(ffn_gate/up/down), the others MoE (ffn_gate_inp, exp_probs_b.bias, ffn_{gate,up,down}_exps and one
shared expert ffn_{gate,up,down}_shexp, sigmoid gating with normalised top-k weights); attention with
q/k/v biases and partial rotary (0.5). The MTP block blk.4 is built like any layer after the dense
lead, so it is an MoE layer, plus nextn.eh_proj, nextn.enorm, nextn.hnorm, nextn.shared_head_norm
(embed_tokens and shared_head_head are left out: the loader falls back to token_embd / output, as for
GLM-4.5 checkpoints).

Layouts: "full" (block_count 5, nextn_predict_layers 1, blk.4 present), "base" (what --no-mtp writes:
block_count 4, no key), "base-key" (trunk only but the key kept: block_count 5, key 1, no blk.4: it
loads and runs without MTP, and llama-server ABORTS on `GGML_ASSERT(layer.nextn.eh_proj && "MTP block
missing nextn.eh_proj")` when started with --spec-type draft-mtp), "mtp-only" (what --mtp writes:
token_embd, output_norm, output and blk.4, for `-md`).

The mixed head's wrong-token units live in the MTP block's shared expert, which always runs and has
no output gate in GLM (unlike qwen35moe's).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .dims import HEADS, N_EMBD, RMS_EPS
from .vocab import TinyVocab, tiny_vocab
from .weights import (
    BRANCH_STD,
    IN_STD,
    Gen,
    add_flip_units,
    eh_proj,
    embeddings,
    head_stds,
    nextn_norms,
    rotation,
)
from .writer import file_type_of, write_tiny_gguf

if TYPE_CHECKING:
    import gguf
    import numpy as np

ARCH = "glm4moe"
LAYOUTS = ("full", "base", "base-key", "mtp-only")
TRUNK_LAYERS = 4
LEADING_DENSE = 1  # GLM-4.5/4.6/Air: first_k_dense_replace = 1 (GLM-4.7-Flash-like configs use 1 too)
MTP_BLOCK = TRUNK_LAYERS
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = 64
N_ROT = 32  # partial_rotary_factor 0.5
N_FF = 512  # dense layers
N_EXPERT = 4
N_EXPERT_USED = 2
N_FF_EXP = 256
N_EXPERT_SHARED = 1
CONTEXT_LENGTH = 4096
ROPE_FREQ_BASE = 1_000_000.0
EXPERT_WEIGHTS_SCALE = 1.0  # GLM-4.5-Air routed_scaling_factor
GATING_SIGMOID = 2  # llama_expert_gating_func_type

# Tensors of the MTP block (blk.4.*, nextn tensors included).
MTP_TENSOR_COUNT = 21

TEST_SET: dict[str, dict[str, object]] = {
    "full-aligned": {"layout": "full", "head": "aligned"},
    "full-mixed": {"layout": "full", "head": "mixed"},
    "full-random": {"layout": "full", "head": "random"},
    "base": {"layout": "base"},
    "base-key": {"layout": "base-key"},
    "mtp-only-aligned": {"layout": "mtp-only", "head": "aligned"},
    "mtp-only-mixed": {"layout": "mtp-only", "head": "mixed"},
}


def _attention(g: Gen, *, branch_std: float) -> dict[str, np.ndarray]:
    q, kv = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    return {
        "attn_q.weight": g.normal((q, N_EMBD), IN_STD),
        "attn_q.bias": g.normal((q,), 0.02),
        "attn_k.weight": g.normal((kv, N_EMBD), IN_STD),
        "attn_k.bias": g.normal((kv,), 0.02),
        "attn_v.weight": g.normal((kv, N_EMBD), IN_STD),
        "attn_v.bias": g.normal((kv,), 0.02),
        "attn_output.weight": g.normal((N_EMBD, q), branch_std),
    }


def _dense_ffn(g: Gen, *, branch_std: float) -> dict[str, np.ndarray]:
    return {
        "ffn_gate.weight": g.normal((N_FF, N_EMBD), IN_STD),
        "ffn_up.weight": g.normal((N_FF, N_EMBD), IN_STD),
        "ffn_down.weight": g.normal((N_EMBD, N_FF), branch_std),
    }


def _moe_ffn(g: Gen, *, branch_std: float, in_std: float = IN_STD) -> dict[str, np.ndarray]:
    shexp = N_FF_EXP * N_EXPERT_SHARED
    return {
        "ffn_gate_inp.weight": g.normal((N_EXPERT, N_EMBD), in_std),
        "exp_probs_b.bias": g.normal((N_EXPERT,), 0.01),
        "ffn_gate_exps.weight": g.normal((N_EXPERT, N_FF_EXP, N_EMBD), in_std),
        "ffn_up_exps.weight": g.normal((N_EXPERT, N_FF_EXP, N_EMBD), in_std),
        "ffn_down_exps.weight": g.normal((N_EXPERT, N_EMBD, N_FF_EXP), branch_std),
        "ffn_gate_shexp.weight": g.normal((shexp, N_EMBD), in_std),
        "ffn_up_shexp.weight": g.normal((shexp, N_EMBD), in_std),
        "ffn_down_shexp.weight": g.normal((N_EMBD, shexp), branch_std),
    }


def _trunk_block(seed: int, il: int) -> dict[str, np.ndarray]:
    g = Gen(seed, 200 + il)
    t = {"attn_norm.weight": g.norm(N_EMBD), **_attention(g, branch_std=BRANCH_STD),
         "post_attention_norm.weight": g.norm(N_EMBD)}
    t |= _dense_ffn(g, branch_std=BRANCH_STD) if il < LEADING_DENSE else _moe_ffn(g, branch_std=BRANCH_STD)
    return t


def _mtp_block(seed: int, head: str) -> dict[str, np.ndarray]:
    g = Gen(seed, 300 + HEADS.index(head))
    R = rotation(seed)
    eh = eh_proj(g, R, head)
    branch_std, in_std = head_stds(head)
    t = {"nextn.eh_proj.weight": eh, "attn_norm.weight": g.norm(N_EMBD),
         **_attention(g, branch_std=branch_std), "post_attention_norm.weight": g.norm(N_EMBD)}
    ffn = _moe_ffn(g, branch_std=branch_std, in_std=in_std)
    if head == "mixed":
        add_flip_units(ffn, "ffn_{}_shexp.weight", eh, R, tiny_vocab(seed))
    return t | ffn | nextn_norms(g)


def build(path: str | os.PathLike[str], *, layout: str = "full", head: str = "aligned",
          dtype: str = "f32", seed: int = 0) -> Path:
    """Write one tiny glm4moe model (see the module docstring) atomically; return its path."""
    vocab = tiny_vocab(seed)
    has_mtp = layout in ("full", "mtp-only")
    keys = functools.partial(_keys, dtype=dtype, has_key=layout != "base")
    name = f"mtpgraft tiny {ARCH} {layout}" + (f" {head}" if has_mtp else "")
    return write_tiny_gguf(Path(path), ARCH, name, keys, _tensors(layout, head, seed, vocab), dtype=dtype,
                           vocab=vocab, tokenizer_pre="glm4")


def _tensors(layout: str, head: str, seed: int, vocab: TinyVocab) -> list[tuple[str, np.ndarray]]:
    """output, token_embd, the trunk blocks, output_norm, the MTP block (for layouts that have it)."""
    embd, output = embeddings(seed, vocab)
    tensors: list[tuple[str, np.ndarray]] = [("output.weight", output), ("token_embd.weight", embd)]
    if layout != "mtp-only":
        for il in range(TRUNK_LAYERS):
            tensors += [(f"blk.{il}.{k}", v) for k, v in _trunk_block(seed, il).items()]
    tensors.append(("output_norm.weight", Gen(seed, 4).norm(N_EMBD)))
    if layout in ("full", "mtp-only"):
        tensors += [(f"blk.{MTP_BLOCK}.{k}", v) for k, v in _mtp_block(seed, head).items()]
    return tensors


def _keys(w: gguf.GGUFWriter, *, dtype: str, has_key: bool) -> None:
    """The glm4moe keys; nextn_predict_layers (and the block it counts) where `has_key`."""
    import gguf

    w.add_block_count(TRUNK_LAYERS + (1 if has_key else 0))
    w.add_context_length(CONTEXT_LENGTH)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(ROPE_FREQ_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_expert_count(N_EXPERT)
    w.add_expert_used_count(N_EXPERT_USED)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_file_type(file_type_of(dtype))
    w.add_rope_dimension_count(N_ROT)
    w.add_expert_feed_forward_length(N_FF_EXP)
    w.add_expert_shared_count(N_EXPERT_SHARED)
    w.add_leading_dense_block_count(LEADING_DENSE)
    w.add_uint32(f"{ARCH}.expert_gating_func", GATING_SIGMOID)
    w.add_expert_weights_scale(EXPERT_WEIGHTS_SCALE)
    w.add_bool(f"{ARCH}.expert_weights_norm", True)
    if has_key:
        w.add_nextn_predict_layers(1)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
