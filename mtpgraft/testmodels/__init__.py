"""Tiny GGUF models that the real llama-server runs with MTP, with known acceptance.

`qwen35` builds qwen35 / qwen35moe and `gemma4` a gemma4 target with gemma4-assistant drafters
(`-md`); every other in-file MTP family is data: a `families.FamilySpec` (keys, sizes, the tensors of
each trunk layer and head) that the one builder `family.build` writes (glm4moe, deepseek2, deepseek32,
deepseek4, glm-dsa, step35, mimo2, hy_v3, cohere2moe, qwen3next, nemotron_h_moe, bailingmoe3;
`.glm4moe` keeps its constants; a chain family's heads may each take their own kind). All of them are made
from what every family shares: `dims` (names and sizes), `vocab` (tokenizer, successor map,
prompts), `weights` (token directions, blocks, heads) and `writer`. All of them keep the contract below; build_tiny_model(arch=...) and build_test_set(arch=...)
(`build`) dispatch on the arch. Beside them: `synthetic` (random-weight files of any size),
`checkpoints` (seeded Hugging Face checkpoints), `trunks` and `fingerprint` (the converter references).

The models are built in numpy and written with gguf.GGUFWriter in the layout llama.cpp's
convert_hf_to_gguf.py writes for Qwen3.5 / Qwen3.6 (keys, tensor names, F32 rules, tensor order of a
single-shard checkpoint: output, token_embd, blk.0..3, output_norm, then the MTP block blk.4).

How they behave (the contract tests and other code write prompts against):

- Every token has a fixed successor: the trunk predicts ``succ(last token)`` whatever came before,
  with a logit margin of ~32, so temperature 0.7 follows it too. Generation never emits a special
  token, so a request always runs to n_predict.
- Two classes of tokens. LETTER tokens are those whose last byte is an ASCII letter; ``succ`` maps
  them to letter tokens ("prose"). Every other token maps to a printable non-letter token
  (digits, punctuation, spaces, newlines: "code"). So a prompt whose LAST CHARACTER is an ASCII letter
  continues with letter tokens, and a prompt ending in a space, digit, punctuation or newline
  continues with non-letter tokens.
- The MTP head (blk.4) sees the token just sampled and predicts its successor:
    * head="aligned": always ``succ(next)``, exactly what the trunk will say: acceptance 1.0.
    * head="mixed": wrong on half the letter tokens (two of every four along the prose cycle), right
      on everything else: a prompt ending in a letter settles at acceptance 1/3 with
      --spec-draft-n-max 3 (1/3, 1/2, 1/3, 1/4 for n_max 1..4, within 0.03 over 64 tokens), a prompt
      not ending in a letter gets 1.0.
    * head="random": random weights: acceptance ~0.
- The trunk weights are identical (same seed) across heads and layouts, so base + the MTP block of
  full-X is full-X tensor for tensor, byte for byte. Only the MTP block differs between heads.
- layout="base" has no MTP: with --spec-type draft-mtp llama-server exits with "failed to create MTP
  context". layout="mtp-only" (what convert_hf_to_gguf.py --mtp writes) works as `-md` beside a base
  model (llama-server then picks draft-mtp itself); served as the main model it crashes llama-server.
- Quantized copies (llama-quantize Q2_K ... Q8_0, IQ2_XXS with an imatrix and the MTP block kept at
  q8_0) keep all of the above.

tiny_vocab(seed) gives the tokenizer and successor map (``continuation``, ``detokenize``) to compute
expected outputs; PROSE_PROMPT and CODE_PROMPT are ready-made prompts of each kind.

Dimensions: n_embd 256, 4 trunk layers (0-2 gated delta net, 3 full attention), MTP block blk.4,
4 query heads x 64, 2 KV heads, n_ff 512, 512-token byte-level BPE vocabulary (gpt2 / qwen35).
qwen35moe has 4 experts (2 used, n_ff_exp 256) plus a shared expert (256). Every 2-D weight that
llama-quantize quantizes has a row length (ne[0]) that is a multiple of 256, so every quant type
applies.

How it works: token t's embedding is +-R[:, t mod 256] (R a random rotation; t and t^256 are
antipodes), so embeddings are exactly orthogonal or opposite. Residual branches are scaled to a few
percent of the embedding, so the final hidden state points at the current token; the output head's
row j is the sum of the embeddings of j's predecessors. The MTP eh_proj passes the (normed) next
token's embedding through a symmetric map that keeps every token direction; the "mixed" head adds FFN
units that each fire on exactly one wrong token and flip the state to its antipode.
"""

from __future__ import annotations

from .build import build_test_set, build_tiny_model, variant_filename, variants_for
from .dims import (
    ARCHES,
    BLOCK_COUNT,
    CONTEXT_LENGTH,
    DTYPES,
    FAMILY_ARCHES,
    FULL_ATTENTION_INTERVAL,
    HEAD_DIM,
    HEADS,
    MTP_BLOCK,
    MTP_LAYERS,
    MTP_TENSOR_COUNT,
    N_EMBD,
    N_EXPERT,
    N_EXPERT_USED,
    N_FF,
    N_FF_EXP,
    N_FF_SHEXP,
    N_HEAD,
    N_HEAD_KV,
    N_ROT,
    N_VOCAB,
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
from .qwen35 import LAYOUTS, TEST_SET
from .vocab import (
    BOS_TOKEN,
    CHAT_TEMPLATE,
    CODE_PROMPT,
    EOS_TOKEN,
    PAD_TOKEN,
    PROSE_PROMPT,
    SPECIAL_TOKENS,
    TinyVocab,
    tiny_vocab,
)
from .writer import write_tiny_gguf

__all__ = [
    "ARCHES", "BLOCK_COUNT", "BOS_TOKEN", "CHAT_TEMPLATE", "CODE_PROMPT", "CONTEXT_LENGTH", "DTYPES", "EOS_TOKEN",
    "FAMILY_ARCHES", "FULL_ATTENTION_INTERVAL", "HEADS", "HEAD_DIM", "LAYOUTS", "MTP_BLOCK", "MTP_LAYERS",
    "MTP_TENSOR_COUNT", "N_EMBD", "N_EXPERT", "N_EXPERT_USED", "N_FF", "N_FF_EXP", "N_FF_SHEXP", "N_HEAD",
    "N_HEAD_KV", "N_ROT", "N_VOCAB", "PAD_TOKEN", "PROSE_PROMPT", "RMS_EPS", "ROPE_FREQ_BASE", "ROPE_SECTIONS",
    "SPECIAL_TOKENS", "SSM_CONV_KERNEL", "SSM_GROUP_COUNT", "SSM_INNER_SIZE", "SSM_STATE_SIZE",
    "SSM_TIME_STEP_RANK", "TEST_SET", "TRUNK_LAYERS", "TinyVocab", "build_test_set", "build_tiny_model",
    "tiny_vocab", "variant_filename", "variants_for", "write_tiny_gguf",
]
