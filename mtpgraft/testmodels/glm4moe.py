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

The models are written by the one family builder (.family) from the GLM4MOE spec (.families); the
constants below describe that spec.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import family
from .families import GLM4MOE

ARCH = "glm4moe"
LAYOUTS = family.LAYOUTS
TRUNK_LAYERS = GLM4MOE.trunk_layers
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

# Tensors of the MTP block (blk.4.*, nextn tensors included).
MTP_TENSOR_COUNT = GLM4MOE.mtp_tensor_count()

TEST_SET: dict[str, dict[str, object]] = GLM4MOE.test_set


def build(path: str | os.PathLike[str], *, layout: str = "full", head: str = "aligned",
          dtype: str = "f32", seed: int = 0) -> Path:
    """Write one tiny glm4moe model (see the module docstring) atomically; return its path."""
    return family.build(GLM4MOE, path, layout=layout, head=head, dtype=dtype, seed=seed)
