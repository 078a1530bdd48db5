"""The tiny models' byte-level BPE tokenizer and successor map, their chat template and the prompts
that follow the contract (see mtpgraft.testmodels)."""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from .dims import N_VOCAB

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
PRETOKENIZE = re.compile(
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|(?:[^\r\n\w]|_)?[^\W\d_]+"
    r"|\d"
    r"| ?(?:[^\s\w]|_)+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)


def bytes_to_unicode() -> dict[int, str]:
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
    enc = bytes_to_unicode()
    words = Counter(tuple(enc[b] for b in m.group(0).encode()) for m in PRETOKENIZE.finditer(_CORPUS))
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
    enc = bytes_to_unicode()
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
