"""Tiny GGUF models that the real llama-server runs with MTP, with known acceptance.

This module builds qwen35 / qwen35moe and holds what every family shares (tokenizer, successor map,
token directions, the writer); mtpgraft.testmodels.glm4moe builds glm4moe (in-file nextn layer) and
mtpgraft.testmodels.gemma4 a gemma4 target with gemma4-assistant drafters (`-md`). All of them keep
the contract below; build_tiny_model(arch=...) and build_test_set(arch=...) dispatch on the arch.

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

import functools
import importlib
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..outputs import PendingOutput
from .writer import write_model

if TYPE_CHECKING:  # numpy is imported where it is used, so `mtpgraft --help` does not pay for it
    import gguf
    import numpy as np

ARCHES = ("qwen35", "qwen35moe")  # built in this module
FAMILY_ARCHES = (*ARCHES, "glm4moe", "gemma4")  # every architecture build_tiny_model writes
LAYOUTS = ("full", "base", "mtp-only")
HEADS = ("aligned", "mixed", "random")
DTYPES = ("f32", "f16", "bf16")

N_EMBD = 256
N_VOCAB = 512
TRUNK_LAYERS = 4
MTP_LAYERS = 1
BLOCK_COUNT = TRUNK_LAYERS + MTP_LAYERS
MTP_BLOCK = TRUNK_LAYERS  # the MTP block's index: blk.4
FULL_ATTENTION_INTERVAL = 4  # layer 3 is full attention, 0-2 are gated delta net
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = 64
N_FF = 512
N_ROT = 16  # partial rotary factor 0.25 of head_dim
ROPE_SECTIONS = (3, 3, 2, 0)  # sums to N_ROT / 2
SSM_CONV_KERNEL = 4
SSM_STATE_SIZE = 64  # head_k_dim = head_v_dim
SSM_GROUP_COUNT = 2  # key heads
SSM_TIME_STEP_RANK = 4  # value heads
SSM_INNER_SIZE = SSM_STATE_SIZE * SSM_TIME_STEP_RANK
N_EXPERT = 4
N_EXPERT_USED = 2
N_FF_EXP = 256
N_FF_SHEXP = 256
CONTEXT_LENGTH = 4096
RMS_EPS = 1e-6
ROPE_FREQ_BASE = 10_000_000.0

# How many tensors the MTP block has (blk.4.*, nextn tensors included).
MTP_TENSOR_COUNT = {"qwen35": 15, "qwen35moe": 20}

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
BOS_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
# A ChatML template that honours the thinking switch the way Qwen's does (chat_template_kwargs
# {"enable_thinking": false} closes an empty think block; anything else opens one), and whose assistant
# turn starts by echoing the last word of the last message, so that the contract above carries over to
# chat: the rendered prompt ends in whatever the message ends in.
CHAT_TEMPLATE = (
    "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}{{- '<think>\\n' }}{%- endif %}"
    "{{- messages[-1]['content'].split()[-1] }}{%- endif %}"
)

# Prompts that follow the contract above (any prompt ending in a letter / non-letter does).
PROSE_PROMPT = "Once upon a time there was a small model that liked to predict the next word"
CODE_PROMPT = "def main():\n    values = [1, 2, 3]\n    return sum(values)\n"

_LOGIT_SCALE = 2.0  # output rows have norm 2; the normed hidden state has norm 16: margin 32
_EMBED_NORM = 16.0  # |token embedding| (elements ~ +-1): keeps every weight well inside f16 / K-quant range
_BRANCH_STD = 1.6e-3  # residual-branch output projections: each adds ~1-2% of the embedding's norm
_IN_STD = 1.0 / 16.0  # input projections: unit-variance activations from a normed input
_FLIP = 3.0  # the mixed head's FFN adds -3x the state on a wrong token: the state becomes its antipode
_GATE_Z = 8.0  # pre-activation of a lookup unit on its own token (silu(8) ~ 8; silu(-8) ~ 0)

# A small ASCII corpus (prose and code) the BPE merges are trained on.
_CORPUS = """\
The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore, and the shells
she sells are surely sea shells. It was the best of times, it was the worst of times, it was the age
of wisdom, it was the age of foolishness. In the beginning there was nothing but the quiet hum of a
machine that wanted to learn how people write. A model reads a sentence and tries to guess the next
word; when it is right, the reader does not notice, and when it is wrong, everything changes. Speculative
decoding lets a small head propose several tokens that the large model then checks in one pass. When the
proposal is accepted the answer arrives faster, and when it is rejected nothing is lost but a little time.
Once upon a time there was a little village near the mountains where the rivers met. People there told
stories about the weather, the harvest, the market and the long winter nights. They wrote letters to
their friends and family, and every letter began with the same greeting: dear friend, I hope you are well.
def main(argv):
    values = [1, 2, 3, 4, 5]
    total = 0
    for value in values:
        if value % 2 == 0:
            total += value * 10
        else:
            total -= 1
    return {"total": total, "count": len(values)}

class Counter(object):
    def __init__(self, start=0):
        self.count = start

    def add(self, n=1):
        self.count += n
        return self.count

int main(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        printf("%d: %s\\n", i, argv[i]);
    }
    return 0;
}
x = [a + b for a, b in zip(xs, ys)]  # 42 == 6 * 7; 3.14 != 2.71; (1 << 8) - 1 == 255
if (x != NULL && y->next == NULL) { return -1; } else { x->next = y; }
"""

# The qwen35 pre-tokenizer regex, restricted to what Python's re can say (ASCII letters and digits).
_PRETOKENIZE = re.compile(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|(?:[^\r\n\w]|_)?[^\W\d_]+"
    r"|\d"
    r"| ?(?:[^\s\w]|_)+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what byte-level BPE token texts use)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


@dataclass(frozen=True)
class TinyVocab:
    """The tokenizer and the successor map shared by every tiny model built with one seed."""

    tokens: tuple[str, ...]  # GGUF token texts (byte-level BPE characters)
    token_bytes: tuple[bytes, ...]  # what each token decodes to (specials: their text)
    token_types: tuple[int, ...]
    merges: tuple[str, ...]
    succ: tuple[int, ...]  # the trunk's next token for each token
    letters: frozenset[int]  # tokens whose last byte is an ASCII letter
    wrong: frozenset[int]  # letter tokens the "mixed" MTP head gets wrong
    bos_id: int
    eos_id: int
    pad_id: int

    def continuation(self, last_token: int, n: int) -> list[int]:
        """The n tokens the trunk generates after `last_token` (greedy or sampled alike)."""
        out = []
        t = last_token
        for _ in range(n):
            t = self.succ[t]
            out.append(t)
        return out

    def detokenize(self, ids: Iterable[int]) -> str:
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")


def _train_merges(n_tokens: int) -> list[tuple[str, str]]:
    enc = _bytes_to_unicode()
    words = Counter(tuple(enc[b] for b in m.group(0).encode()) for m in _PRETOKENIZE.finditer(_CORPUS))
    merges: list[tuple[str, str]] = []
    made: set[str] = set()
    while len(made) < n_tokens:
        pairs: Counter[tuple[str, str]] = Counter()
        for w, c in words.items():
            for a, b in zip(w, w[1:], strict=False):
                pairs[(a, b)] += c
        if not pairs:
            raise RuntimeError("BPE corpus too small for the vocabulary")  # a bug, not a user error
        best = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))[0]
        merges.append(best)
        made.add(best[0] + best[1])
        joined = best[0] + best[1]
        new_words: Counter[tuple[str, ...]] = Counter()
        for w, c in words.items():
            out: list[str] = []
            i = 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == best[0] and w[i + 1] == best[1]:
                    out.append(joined)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words[tuple(out)] += c
        words = new_words
    return merges


@functools.lru_cache(maxsize=8)
def tiny_vocab(seed: int = 0) -> TinyVocab:
    """The vocabulary and successor map of the tiny models built with `seed`."""
    tokens, token_bytes, merges = _token_table()
    n_normal = N_VOCAB - len(SPECIAL_TOKENS)
    token_types = [1] * n_normal + [3] * len(SPECIAL_TOKENS)  # NORMAL, CONTROL
    succ, letters, letter_cycle = _successors(token_bytes, seed)
    # Wrong on half the prose cycle in the pattern wrong, wrong, right, right: unlike every other
    # token, no draft length can step over the wrong ones (n_max 1..4 give 1/3, 1/2, 1/3, 1/4).
    wrong = frozenset(t for i, t in enumerate(letter_cycle) if i % 4 < 2)
    return TinyVocab(
        tokens=tuple(tokens), token_bytes=tuple(token_bytes), token_types=tuple(token_types),
        merges=tuple(f"{a} {b}" for a, b in merges), succ=tuple(succ), letters=frozenset(letters),
        wrong=wrong, bos_id=tokens.index(BOS_TOKEN), eos_id=tokens.index(EOS_TOKEN),
        pad_id=tokens.index(PAD_TOKEN))


def _token_table() -> tuple[list[str], list[bytes], list[tuple[str, str]]]:
    """(token texts, what each decodes to, BPE merges): the 256 bytes, the merged tokens, the specials."""
    enc = _bytes_to_unicode()
    dec = {c: b for b, c in enc.items()}
    merges = _train_merges(N_VOCAB - 256 - len(SPECIAL_TOKENS))
    tokens = [enc[b] for b in range(256)]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            seen.add(a + b)
            tokens.append(a + b)
    tokens += SPECIAL_TOKENS
    assert len(tokens) == N_VOCAB
    token_bytes = [bytes(dec[c] for c in t) for t in tokens[:-len(SPECIAL_TOKENS)]]
    token_bytes += [s.encode() for s in SPECIAL_TOKENS]
    return tokens, token_bytes, merges


def _successors(token_bytes: list[bytes], seed: int) -> tuple[list[int], list[int], list[int]]:
    """(succ, the letter tokens, the letter cycle): two random cycles, letter tokens and printable others."""
    import numpy as np

    def is_letter(b: int) -> bool:
        return 65 <= b <= 90 or 97 <= b <= 122

    def printable(bs: bytes) -> bool:
        return all(32 <= b < 127 or b in (9, 10) for b in bs)

    n_normal = N_VOCAB - len(SPECIAL_TOKENS)
    letters = [t for t in range(n_normal) if is_letter(token_bytes[t][-1])]
    others = [t for t in range(n_normal) if t not in set(letters) and printable(token_bytes[t])]
    rng = np.random.default_rng([seed, 1])
    letter_cycle = [letters[i] for i in rng.permutation(len(letters))]
    other_cycle = [others[i] for i in rng.permutation(len(others))]
    succ = [-1] * N_VOCAB
    for cycle in (letter_cycle, other_cycle):
        for i, t in enumerate(cycle):
            succ[t] = cycle[(i + 1) % len(cycle)]
    # Tokens outside both cycles (control and high bytes, specials) enter the non-letter cycle. A token
    # and its antipode (t ^ 256) must have different successors, else their output logits cancel.
    for t in range(N_VOCAB):
        if succ[t] < 0:
            anti = succ[t ^ 256]
            succ[t] = next(c for c in other_cycle if c != anti)
    return succ, letters, letter_cycle


# ---------------------------------------------------------------------------------------------
# weights


def _rotation(seed: int, n: int = N_EMBD, stream: int = 2) -> np.ndarray:
    import numpy as np

    q, r = np.linalg.qr(np.random.default_rng([seed, stream]).standard_normal((n, n)))
    return q * np.sign(np.diag(r))  # columns: orthonormal token directions


def _direction(R: np.ndarray, t: int) -> np.ndarray:
    """Unit vector of token t: +-R[:, t mod n] for an n x n rotation R (n = 256: t and t^256 are
    antipodes; n = 512: every token has its own direction)."""
    n = R.shape[1]
    return R[:, t % n] * (1.0 if t < n else -1.0)


class _Gen:
    def __init__(self, *key: int) -> None:
        import numpy as np

        self.rng = np.random.default_rng(list(key))

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape) * std).astype("float32")

    def norm(self, n: int) -> np.ndarray:
        # Qwen3.5 norms are stored with the +1 the converter adds: values around 1.
        return (1.0 + self.rng.standard_normal(n) * 0.02).astype("float32")


def _embeddings(seed: int, vocab: TinyVocab) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    R = _rotation(seed)
    g = _Gen(seed, 3)
    embd = np.stack([_direction(R, t) * _EMBED_NORM for t in range(N_VOCAB)]).astype(np.float32)
    embd += g.normal(embd.shape, 0.002 * _EMBED_NORM)
    out = np.zeros((N_VOCAB, N_EMBD), dtype=np.float32)
    for t, s in enumerate(vocab.succ):
        out[s] += _LOGIT_SCALE * _direction(R, t)
    out += g.normal(out.shape, 0.002)
    return embd, out


def _attention_block(g: _Gen, *, branch_std: float) -> dict[str, np.ndarray]:
    q_out = 2 * N_HEAD * HEAD_DIM  # query + output gate
    return {
        "attn_q_norm.weight": g.norm(HEAD_DIM),
        "attn_k_norm.weight": g.norm(HEAD_DIM),
        "attn_q.weight": g.normal((q_out, N_EMBD), _IN_STD),
        "attn_k.weight": g.normal((N_HEAD_KV * HEAD_DIM, N_EMBD), _IN_STD),
        "attn_v.weight": g.normal((N_HEAD_KV * HEAD_DIM, N_EMBD), _IN_STD),
        "attn_output.weight": g.normal((N_EMBD, N_HEAD * HEAD_DIM), branch_std),
    }


def _linear_attention_block(g: _Gen) -> dict[str, np.ndarray]:
    import numpy as np

    key_dim = SSM_STATE_SIZE * SSM_GROUP_COUNT
    value_dim = SSM_STATE_SIZE * SSM_TIME_STEP_RANK
    conv_dim = 2 * key_dim + value_dim
    return {
        "attn_qkv.weight": g.normal((conv_dim, N_EMBD), _IN_STD),
        "attn_gate.weight": g.normal((value_dim, N_EMBD), _IN_STD),
        "ssm_conv1d.weight": g.normal((conv_dim, SSM_CONV_KERNEL), 0.5),
        "ssm_dt.bias": g.normal((SSM_TIME_STEP_RANK,), 0.5),
        "ssm_a": -np.exp(g.rng.uniform(0.0, 2.5, SSM_TIME_STEP_RANK)).astype(np.float32),
        "ssm_beta.weight": g.normal((SSM_TIME_STEP_RANK, N_EMBD), _IN_STD),
        "ssm_alpha.weight": g.normal((SSM_TIME_STEP_RANK, N_EMBD), _IN_STD),
        "ssm_norm.weight": g.norm(SSM_STATE_SIZE),
        "ssm_out.weight": g.normal((N_EMBD, value_dim), _BRANCH_STD),
    }


def _dense_ffn(g: _Gen, *, branch_std: float, in_std: float = _IN_STD) -> dict[str, np.ndarray]:
    return {
        "ffn_gate.weight": g.normal((N_FF, N_EMBD), in_std),
        "ffn_up.weight": g.normal((N_FF, N_EMBD), in_std),
        "ffn_down.weight": g.normal((N_EMBD, N_FF), branch_std),
    }


def _moe_ffn(g: _Gen, *, branch_std: float, in_std: float = _IN_STD) -> dict[str, np.ndarray]:
    return {
        "ffn_gate_inp.weight": g.normal((N_EXPERT, N_EMBD), in_std),
        "ffn_gate_exps.weight": g.normal((N_EXPERT, N_FF_EXP, N_EMBD), in_std),
        "ffn_up_exps.weight": g.normal((N_EXPERT, N_FF_EXP, N_EMBD), in_std),
        "ffn_down_exps.weight": g.normal((N_EXPERT, N_EMBD, N_FF_EXP), branch_std),
        "ffn_gate_inp_shexp.weight": g.normal((N_EMBD,), 0.001),
        "ffn_gate_shexp.weight": g.normal((N_FF_SHEXP, N_EMBD), in_std),
        "ffn_up_shexp.weight": g.normal((N_FF_SHEXP, N_EMBD), in_std),
        "ffn_down_shexp.weight": g.normal((N_EMBD, N_FF_SHEXP), branch_std),
    }


def _trunk_block(arch: str, seed: int, il: int) -> dict[str, np.ndarray]:
    g = _Gen(seed, 10 + il)
    t = {"attn_norm.weight": g.norm(N_EMBD), "post_attention_norm.weight": g.norm(N_EMBD)}
    if (il + 1) % FULL_ATTENTION_INTERVAL == 0:
        t |= _attention_block(g, branch_std=_BRANCH_STD)
    else:
        t |= _linear_attention_block(g)
    t |= (_moe_ffn if arch == "qwen35moe" else _dense_ffn)(g, branch_std=_BRANCH_STD)
    return t


def _eh_proj(g: _Gen, R: np.ndarray, head: str) -> np.ndarray:
    """nextn.eh_proj {2*n_embd, n_embd}: [e-part | h-part] as numpy (n_embd, 2*n_embd)."""
    import numpy as np

    if head == "random":
        # Ordinary random init: the head has no idea what the trunk will say.
        return g.normal((N_EMBD, 2 * N_EMBD), _EMBED_NORM / 16.0 / np.sqrt(2 * N_EMBD))
    # e-part: R diag(d) R^T keeps every token direction (scaled by d_k); the normed embedding has
    # norm 16, so the state gets norm d_k * EMBED_NORM, like the trunk's.
    d = g.rng.uniform(0.75, 1.25, N_EMBD)
    e_part = (R * d) @ R.T * (_EMBED_NORM / 16.0)
    h_part = g.normal((N_EMBD, N_EMBD), 0.01 * _EMBED_NORM / 256.0)  # a whisper of the trunk's state
    return np.concatenate([e_part, h_part], axis=1).astype(np.float32)


def _head_stds(head: str) -> tuple[float, float]:
    """(branch_std, in_std) of the MTP block's residual branches."""
    return (1.0 / 16.0, 1.0 / 16.0) if head == "random" else (_BRANCH_STD, _IN_STD)


def _add_flip_units(ffn: dict[str, np.ndarray], prefix: str, eh: np.ndarray, R: np.ndarray,
                    vocab: TinyVocab, *, gain: float = 1.0) -> None:
    """The "mixed" head: one SiLU FFN unit per wrong token w. Gate and up fire only on w's direction
    (zero on every other token, which is orthogonal), and down adds -FLIP x the state, turning it into
    w's antipode, whose successor differs from succ(w). `prefix` names the FFN ("ffn_{}.weight");
    `gain` undoes a gate on the FFN's output (qwen35moe's shared expert: sigmoid(~0) = 0.5)."""
    import numpy as np

    gate, up, down = (ffn[prefix.format(k)] for k in ("gate", "up", "down"))
    silu = _GATE_Z / (1.0 + np.exp(-_GATE_Z))
    for u, w in enumerate(sorted(vocab.wrong)):
        v = _direction(R, w)
        gate[u] = v * (_GATE_Z / 16.0)  # the normed state of token w is 16 v
        up[u] = v / 16.0
        size = np.linalg.norm(eh[:, :N_EMBD] @ (16.0 * v))  # |state| before the FFN
        down[:, u] = -v * (_FLIP * gain * size / silu)


def _mtp_block(arch: str, seed: int, head: str, vocab: TinyVocab) -> dict[str, np.ndarray]:
    g = _Gen(seed, 100 + HEADS.index(head))
    R = _rotation(seed)
    eh = _eh_proj(g, R, head)
    branch_std, in_std = _head_stds(head)
    t = {
        "nextn.eh_proj.weight": eh,
        "attn_norm.weight": g.norm(N_EMBD),
        "post_attention_norm.weight": g.norm(N_EMBD),
    }
    t |= _attention_block(g, branch_std=branch_std)
    moe = arch == "qwen35moe"
    ffn = (_moe_ffn if moe else _dense_ffn)(g, branch_std=branch_std, in_std=in_std)
    if head == "mixed":
        _add_flip_units(ffn, "ffn_{}_shexp.weight" if moe else "ffn_{}.weight", eh, R, vocab,
                        gain=2.0 if moe else 1.0)
    t |= ffn
    t |= _nextn_norms(g)
    return t


def _nextn_norms(g: _Gen) -> dict[str, np.ndarray]:
    return {
        "nextn.shared_head_norm.weight": g.norm(N_EMBD),
        "nextn.enorm.weight": g.norm(N_EMBD),
        "nextn.hnorm.weight": g.norm(N_EMBD),
    }


# ---------------------------------------------------------------------------------------------
# layout and writing

# HF names sort as lm_head < model.embed_tokens < model.layers.* < model.norm < mtp.*; within a layer
# the converter keeps the HF order, which these lists reproduce.
_LINEAR_ORDER = ("attn_norm", "ssm_a", "ssm_conv1d", "ssm_dt", "ssm_alpha", "ssm_beta", "attn_qkv",
                 "attn_gate", "ssm_norm", "ssm_out")
_ATTN_ORDER = ("attn_norm",)
_ATTN_TAIL = ("attn_k_norm", "attn_k", "attn_output", "attn_q_norm", "attn_q", "attn_v")
_DENSE_FFN_ORDER = ("ffn_down", "ffn_gate", "ffn_up")
_MOE_FFN_ORDER = ("ffn_down_exps", "ffn_gate_exps", "ffn_up_exps", "ffn_gate_inp", "ffn_down_shexp",
                  "ffn_gate_shexp", "ffn_up_shexp", "ffn_gate_inp_shexp")


def _ordered(block: dict[str, np.ndarray], arch: str, *, mtp: bool) -> list[str]:
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


def _tensor_type(name: str, arr: np.ndarray, dtype: str):
    import gguf

    # convert_hf_to_gguf.py: 1-D tensors, *_norm.weight, gate_inp and ssm_conv1d stay F32, as does
    # anything not named .weight (ssm_a, ssm_dt.bias).
    keep_f32 = (arr.ndim <= 1 or name.endswith("_norm.weight") or "ffn_gate_inp" in name
                or "ssm_conv1d" in name or not name.endswith(".weight"))
    if keep_f32 or dtype == "f32":
        return gguf.GGMLQuantizationType.F32
    return {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16}[dtype]


def build_tiny_model(path: str | os.PathLike[str], *, arch: str = "qwen35", layout: str = "full",
                     head: str = "aligned", recurrent_layers_array: bool = True, dtype: str = "f32",
                     seed: int = 0) -> Path:
    """Write one tiny model to `path` (atomically) and return the path. See the module docstring
    (qwen35, qwen35moe) and those of mtpgraft.testmodels.glm4moe and .gemma4 (their layouts)."""
    from ..errors import UsageError

    family = _family(arch)
    layouts = family.LAYOUTS if family else LAYOUTS
    for what, value, allowed in (("arch", arch, FAMILY_ARCHES), ("layout", layout, layouts),
                                 ("head", head, HEADS), ("dtype", dtype, DTYPES)):
        if value not in allowed:
            raise UsageError(f"unknown {what} {value!r}; choose one of {', '.join(allowed)}")
    if family is None:
        return _build_qwen35(Path(path), arch=arch, layout=layout, head=head, dtype=dtype, seed=seed,
                             recurrent_layers_array=recurrent_layers_array)
    if not recurrent_layers_array:
        raise UsageError(f"recurrent_layers_array applies to qwen35/qwen35moe, not {arch}")
    return family.build(path, layout=layout, head=head, dtype=dtype, seed=seed)


def _family(arch: str) -> ModuleType | None:
    """The module building `arch`'s models, or None for qwen35/qwen35moe (built here)."""
    if arch not in FAMILY_ARCHES[len(ARCHES):]:
        return None
    return importlib.import_module(f"{__name__}.{arch}")


def variants_for(arch: str) -> dict[str, dict[str, object]]:
    """{variant name: build_tiny_model keyword arguments} of `arch`'s test set."""
    family = _family(arch)
    return family.TEST_SET if family else TEST_SET


def _build_qwen35(path: Path, *, arch: str, layout: str, head: str, dtype: str, seed: int,
                  recurrent_layers_array: bool) -> Path:
    vocab = tiny_vocab(seed)
    has_mtp = layout != "base"
    keys = functools.partial(_qwen35_keys, arch=arch, dtype=dtype, has_mtp=has_mtp,
                             recurrent_layers_array=recurrent_layers_array)
    name = f"mtpgraft tiny {arch} {layout}" + (f" {head}" if has_mtp else "")
    return write_tiny_gguf(Path(path), arch, name, keys, _qwen35_tensors(arch, layout, head, seed, vocab),
                           dtype=dtype, vocab=vocab, tokenizer_pre="qwen35")


def _qwen35_tensors(arch: str, layout: str, head: str, seed: int, vocab: TinyVocab) -> list[tuple[str, np.ndarray]]:
    """The tensors of a qwen35 / qwen35moe model in the converter's order (see _ordered)."""
    embd, output = _embeddings(seed, vocab)
    tensors: list[tuple[str, np.ndarray]] = [("output.weight", output), ("token_embd.weight", embd)]
    if layout != "mtp-only":
        for il in range(TRUNK_LAYERS):
            block = _trunk_block(arch, seed, il)
            tensors += [(f"blk.{il}.{k}", block[k]) for k in _ordered(block, arch, mtp=False)]
    tensors.append(("output_norm.weight", _Gen(seed, 4).norm(N_EMBD)))
    if layout != "base":
        block = _mtp_block(arch, seed, head, vocab)
        tensors += [(f"blk.{MTP_BLOCK}.{k}", block[k]) for k in _ordered(block, arch, mtp=True)]
    return tensors


def _qwen35_keys(w: gguf.GGUFWriter, *, arch: str, dtype: str, has_mtp: bool,
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
    w.add_file_type(_file_type(dtype))
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


def _file_type(dtype: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]


def write_tiny_gguf(path: Path, arch: str, name: str, keys: Callable[[gguf.GGUFWriter], None],
                    tensors: list[tuple[str, np.ndarray]], *, dtype: str, vocab: TinyVocab,
                    tokenizer_pre: str) -> Path:
    """Write one tiny model atomically: general keys, `keys(w)` (the architecture's), the tiny
    byte-level BPE tokenizer, then `tensors` (float32 arrays; 1-D and norm tensors stay F32, the
    others in `dtype`)."""
    import gguf

    def all_keys(w: gguf.GGUFWriter) -> None:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name)
        keys(w)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tokenizer_pre)
        w.add_token_list(list(vocab.tokens))
        w.add_token_types(list(vocab.token_types))
        w.add_token_merges(list(vocab.merges))
        w.add_eos_token_id(vocab.eos_id)
        w.add_pad_token_id(vocab.pad_id)
        w.add_bos_token_id(vocab.bos_id)
        w.add_add_bos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)

    with PendingOutput(path) as tmp:
        write_model(tmp.path, arch, all_keys, [(n, a, _tensor_type(n, a, dtype)) for n, a in tensors])
        tmp.install(force=True)  # build_test_set refused existing files without --force
    return path


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


def variant_filename(arch: str, name: str, dtype: str = "f16") -> str:
    return f"tiny-{arch}-{name}-{dtype}.gguf"


def build_test_set(outdir: str | os.PathLike[str], *, arch: str = "qwen35", dtype: str = "f16",
                   seed: int = 0, force: bool = False) -> dict[str, Path]:
    """Write every variant of `arch`'s test set into `outdir` (created if missing); return {name: path}.

    OutputExistsError if one of the files exists, unless `force`.
    """
    from ..errors import OutputExistsError, Setting

    outdir = Path(outdir)
    variants = variants_for(arch)
    paths = {name: outdir / variant_filename(arch, name, dtype) for name in variants}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not force:
        more = f" and {len(existing) - 1} more test models" if len(existing) > 1 else ""
        raise OutputExistsError(f"{outdir} already holds {existing[0]}{more}; use ", Setting("force", True),
                                " to replace them")
    outdir.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        build_tiny_model(path, arch=arch, dtype=dtype, seed=seed, **variants[name])  # type: ignore[arg-type]
    return paths
