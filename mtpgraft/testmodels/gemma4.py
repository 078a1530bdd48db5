"""Tiny gemma4 target + gemma4-assistant drafter pairs that the real llama-server runs with
`-md ASSISTANT --spec-type draft-mtp`, with known acceptance.

Gemma 4 keeps its MTP head outside the model: a separate file of arch `gemma4-assistant`
(conversion/gemma.py Gemma4AssistantModel, src/models/gemma4-assistant.cpp). The layouts:

- "base": the target, arch gemma4. 6 layers, sliding-window pattern 5:1 with the last layer full
  attention (as in every released Gemma 4), per-layer head_count_kv (2 on sliding layers, 1 on full
  ones), head dims 64 (sliding) / 128 (full), rope_freqs for the proportional rope of full layers,
  post-norms on both residual branches, layer_output_scale, final_logit_softcapping 30, no per-layer
  embeddings. n_embd 512. Unlike released Gemma 4 it has its own output.weight (the loader takes it
  when present) instead of tying the output to token_embd.
- "assistant": the drafter, arch gemma4-assistant: n_embd 256, embedding_length_out 512 (the target's
  hidden size), block_count = nextn_predict_layers = 4 (pattern 3:1, last full), per layer only a query
  projection (attn_q, attn_q_norm, attn_output) plus norms, FFN and layer_output_scale; globally
  token_embd (its tied output head), output_norm, rope_freqs, nextn.pre_projection {2*512, 256} and
  nextn.post_projection {256, 512}. Its layers attend over the TARGET's KV cache (sliding layers read
  target layer 4, the full one layer 5), so it only runs next to the target, never alone.

Behaviour: the contract of the package docstring (fixed successor per token, letter / non-letter
classes). Each draft step feeds the assistant [target token_embd[t] * sqrt(512) ; h];
pre_projection maps the token part onto the assistant's own direction of t and keeps only a whisper
of h, so the draft is a function of t: head "aligned" drafts succ(t) (acceptance 1.0), "mixed" drafts
a wrong letter for the letter tokens in TinyVocab.wrong (the assistant's output head maps them
elsewhere: 1/3 at --spec-draft-n-max 3 on a prompt ending in a letter, 1.0 otherwise, as for the
qwen35 mixed head), "random" is random (~0).

Every 2-D weight has a row length (ne[0]) that is a multiple of 256, so every quant type applies.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .dims import HEADS, N_VOCAB, RMS_EPS
from .vocab import TinyVocab, tiny_vocab
from .weights import LOGIT_SCALE, Gen, direction, rotation
from .writer import file_type_of, write_tiny_gguf

if TYPE_CHECKING:
    import gguf
    import numpy as np

ARCH = "gemma4"
ASSISTANT_ARCH = "gemma4-assistant"
LAYOUTS = ("base", "assistant")
N_EMBD = 512  # target
N_EMBD_ASSISTANT = 256
TARGET_SWA = (True, True, True, True, True, False)
ASSISTANT_SWA = (True, True, True, False)
N_HEAD = 4
HEAD_DIM_SWA = 64
HEAD_DIM_FULL = 128
N_HEAD_KV_SWA = 2
N_HEAD_KV_FULL = 1
N_FF = 512
SLIDING_WINDOW = 512
CONTEXT_LENGTH = 4096
ROPE_FREQ_BASE = 1_000_000.0
ROPE_FREQ_BASE_SWA = 10_000.0
PARTIAL_ROTARY_FULL = 0.25
FINAL_LOGIT_SOFTCAPPING = 30.0

_EMBED_NORM = 16.0  # |stored token embedding|; the graph scales it by sqrt(n_embd)
_POST_NORM = 0.01  # branch post-norm weight / residual element RMS: each branch adds ~1%

TEST_SET: dict[str, dict[str, object]] = {
    "base": {"layout": "base"},
    "assistant-aligned": {"layout": "assistant", "head": "aligned"},
    "assistant-mixed": {"layout": "assistant", "head": "mixed"},
    "assistant-random": {"layout": "assistant", "head": "random"},
}


def _rope_freqs() -> np.ndarray:
    """What the converter writes for the full layers' proportional rope (generate_extra_tensors)."""
    import numpy as np

    n_rot = int(HEAD_DIM_FULL * PARTIAL_ROTARY_FULL / 2)
    return np.array([1.0] * n_rot + [1e30] * (HEAD_DIM_FULL // 2 - n_rot), dtype=np.float32)


def _layer(g: Gen, n_embd: int, swa: bool, *, kv: bool, post: float) -> dict[str, np.ndarray]:
    """One gemma4 block; `post` is the branch post-norms' weight (their output's element RMS)."""
    import numpy as np

    hd = HEAD_DIM_SWA if swa else HEAD_DIM_FULL
    n_kv = N_HEAD_KV_SWA if swa else N_HEAD_KV_FULL
    std = 1.0 / 16.0
    t = {"attn_norm.weight": g.norm(n_embd), "attn_q.weight": g.normal((N_HEAD * hd, n_embd), std)}
    if kv:
        t["attn_k.weight"] = g.normal((n_kv * hd, n_embd), std)
        t["attn_v.weight"] = g.normal((n_kv * hd, n_embd), std)
    t["attn_output.weight"] = g.normal((n_embd, N_HEAD * hd), std)
    t["attn_q_norm.weight"] = g.norm(hd)
    if kv:
        t["attn_k_norm.weight"] = g.norm(hd)
    t["post_attention_norm.weight"] = g.norm(n_embd) * post
    t["ffn_norm.weight"] = g.norm(n_embd)
    t["ffn_gate.weight"] = g.normal((N_FF, n_embd), std)
    t["ffn_up.weight"] = g.normal((N_FF, n_embd), std)
    t["ffn_down.weight"] = g.normal((n_embd, N_FF), std)
    t["post_ffw_norm.weight"] = g.norm(n_embd) * post
    t["layer_output_scale.weight"] = np.ones(1, dtype=np.float32)
    return t


def _target_tensors(seed: int, vocab: TinyVocab) -> list[tuple[str, np.ndarray]]:
    import numpy as np

    R = rotation(seed, N_EMBD, stream=5)  # 512 directions: every token its own
    g = Gen(seed, 400)
    embd = np.stack([direction(R, t) * _EMBED_NORM for t in range(N_VOCAB)]).astype(np.float32)
    embd += g.normal(embd.shape, 0.002 * _EMBED_NORM)
    # the normed final state has norm sqrt(512): rows of norm 32/sqrt(512) give a margin of 32
    out = np.zeros((N_VOCAB, N_EMBD), dtype=np.float32)
    for t, s in enumerate(vocab.succ):
        out[s] += 32.0 / np.sqrt(N_EMBD) * direction(R, t)
    out += g.normal(out.shape, 0.002)
    tensors = [("token_embd.weight", embd), ("output.weight", out), ("rope_freqs.weight", _rope_freqs())]
    for il, swa in enumerate(TARGET_SWA):
        layer = _layer(Gen(seed, 410 + il), N_EMBD, swa, kv=True, post=_POST_NORM * _EMBED_NORM)
        tensors += [(f"blk.{il}.{k}", v) for k, v in layer.items()]
    tensors.append(("output_norm.weight", g.norm(N_EMBD)))
    return tensors


def drafted(vocab: TinyVocab, head: str) -> list[int]:
    """The token the assistant drafts after each token (for "aligned" and "mixed")."""
    p = list(vocab.succ)
    if head == "mixed":
        for w in sorted(vocab.wrong):
            # a letter two or more steps ahead: wrong (the letter cycle is long), and never the
            # draft of w's antipode (their output rows would cancel)
            k = vocab.succ[vocab.succ[w]]
            while k == vocab.succ[w] or k == p[w ^ 256]:
                k = vocab.succ[k]
            p[w] = k
    return p


def _assistant_tensors(seed: int, head: str, vocab: TinyVocab) -> list[tuple[str, np.ndarray]]:
    import numpy as np

    Rt = rotation(seed, N_EMBD, stream=5)
    Ra = rotation(seed, N_EMBD_ASSISTANT, stream=6)
    g = Gen(seed, 500 + HEADS.index(head))
    x_norm = _EMBED_NORM * np.sqrt(N_EMBD)  # |target token_embd row| * sqrt(n_embd)
    n = N_EMBD_ASSISTANT
    if head == "random":
        pre = g.normal((n, 2 * N_EMBD), 1.0 / x_norm)
        embd = g.normal((N_VOCAB, n), LOGIT_SCALE / np.sqrt(n))
        post = 1.0
    else:
        # token part: target direction of t -> the assistant's +-Ra[:, t mod 256], scaled to norm 16
        e_part = Ra @ (Rt[:, :n] - Rt[:, n:]).T * (_EMBED_NORM / x_norm)
        h_part = g.normal((n, N_EMBD), 0.01 / np.sqrt(N_EMBD))  # a whisper of h (|h| ~ sqrt(512))
        pre = np.concatenate([e_part, h_part], axis=1).astype(np.float32)
        embd = np.zeros((N_VOCAB, n), dtype=np.float32)
        for t, d in enumerate(drafted(vocab, head)):
            embd[d] += LOGIT_SCALE * direction(Ra, t)  # the normed state has norm 16: margin 32
        embd += g.normal(embd.shape, 0.002)
        post = _POST_NORM
    tensors = [("token_embd.weight", embd), ("rope_freqs.weight", _rope_freqs()),
               ("nextn.pre_projection.weight", pre)]
    for il, swa in enumerate(ASSISTANT_SWA):
        layer = _layer(Gen(seed, 510 + il), n, swa, kv=False, post=post)
        tensors += [(f"blk.{il}.{k}", v) for k, v in layer.items()]
    tensors += [("output_norm.weight", g.norm(n)),
                ("nextn.post_projection.weight", g.normal((N_EMBD, n), 1.0 / 16.0))]
    return tensors


def _attention_keys(w: gguf.GGUFWriter, swa: tuple[bool, ...]) -> None:
    w.add_head_count(N_HEAD)
    w.add_head_count_kv([N_HEAD_KV_SWA if s else N_HEAD_KV_FULL for s in swa])
    w.add_key_length(HEAD_DIM_FULL)
    w.add_value_length(HEAD_DIM_FULL)
    w.add_key_length_swa(HEAD_DIM_SWA)
    w.add_value_length_swa(HEAD_DIM_SWA)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_sliding_window(SLIDING_WINDOW)
    w.add_sliding_window_pattern(list(swa))
    w.add_shared_kv_layers(0)
    w.add_embedding_length_per_layer_input(0)
    w.add_rope_freq_base(ROPE_FREQ_BASE)
    w.add_rope_freq_base_swa(ROPE_FREQ_BASE_SWA)
    w.add_rope_dimension_count(HEAD_DIM_FULL)
    w.add_rope_dimension_count_swa(HEAD_DIM_SWA)


def build(path: str | os.PathLike[str], *, layout: str = "base", head: str = "aligned",
          dtype: str = "f32", seed: int = 0) -> Path:
    """Write the tiny gemma4 target ("base") or one of its assistants (see the module docstring)."""
    import gguf

    vocab = tiny_vocab(seed)
    assistant = layout == "assistant"
    arch = ASSISTANT_ARCH if assistant else ARCH
    swa = ASSISTANT_SWA if assistant else TARGET_SWA

    def keys(w: gguf.GGUFWriter) -> None:
        w.add_block_count(len(swa))
        w.add_context_length(CONTEXT_LENGTH)
        w.add_embedding_length(N_EMBD_ASSISTANT if assistant else N_EMBD)
        if assistant:
            w.add_embedding_length_out(N_EMBD)
            w.add_nextn_predict_layers(len(swa))
        w.add_feed_forward_length(N_FF)
        _attention_keys(w, swa)
        if not assistant:
            w.add_final_logit_softcapping(FINAL_LOGIT_SOFTCAPPING)
        w.add_file_type(file_type_of(dtype))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    tensors = _assistant_tensors(seed, head, vocab) if assistant else _target_tensors(seed, vocab)
    name = f"mtpgraft tiny {arch}" + (f" {head}" if assistant else "")
    return write_tiny_gguf(Path(path), arch, name, keys, tensors, dtype=dtype, vocab=vocab,
                           tokenizer_pre="default")
