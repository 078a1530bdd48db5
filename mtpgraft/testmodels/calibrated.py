"""The calibrated tiny models: soft logits whose quantization moves KLD and MTP acceptance as on a
real model (`build_tiny_model(..., calibration=Calibration())`, `builtin:tiny-qwen35-calibrated-*`).

The aligned / mixed / random models have a logit margin of ~32: every quant keeps every argmax, so
KLD is 0 and acceptance is a certainty. These keep the tokenizer, dimensions, layouts and file layout
of the others, and change three things:

- Regions. Every printable token belongs to one of four regions, each a successor cycle of its own, so
  generation stays in the region of the prompt's last token: `code` (line breaks, indentation and code
  symbols), `factual` (digits, colons and other marks, word starts " a".." m"), `analysis` (sentence
  punctuation, blank lines, word starts " n".." z") and `creative` (the other tokens ending in a
  letter: word pieces). The built-in raw prompts end in tokens of their
  category's region (code-debug and code-review end in "." : analysis). Use raw mode: in chat mode
  the template echoes the last word of the message, and most messages end in ".".
- Trunk. After token t the trunk gives succ(t) logit `top`, the runner-up succ(succ(t)) `top - m_t`
  and the rest ~0 (PPL on English text ~800, finite: every token keeps some probability). The margins
  m_t are drawn uniformly from [margin_min, margin_max], so quantization noise on token_embd, output
  and the blocks flips a controlled share of argmaxes (more as bits fall); margin_min keeps MTP at
  temperature 0 lossless (batch-vs-single rounding is far below it).
- Head. One FFN unit per token (as the "mixed" head's flip units) pushes the head's state toward the
  output row of its prediction, so the head answers with a margin of several logits that no
  quantization flips. It predicts succ(t), except on a share `head_error` of each region's tokens,
  where it predicts succ(succ(succ(t))): acceptance per region falls in the published order, falls
  with draft depth, and falls as the trunk (not the q8_0 head) loses bits.

qwen35 only for now (qwen35moe's shared expert has 256 units, fewer than the tokens); other families
take `Calibration` through the same builder once their head can carry the units.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from .dims import MTP_BLOCK, N_EMBD, N_FF, N_VOCAB, TRUNK_LAYERS
from .qwen35 import ordered, qwen35_keys
from .vocab import PRETOKENIZE, SPECIAL_TOKENS, TinyVocab, bytes_to_unicode, tiny_vocab
from .weights import (
    _GATE_Z,
    BRANCH_STD,
    Gen,
    attention_block,
    dense_ffn,
    direction,
    eh_proj,
    nextn_norms,
    rotation,
    trunk_block,
)
from .writer import write_tiny_gguf

if TYPE_CHECKING:  # numpy is imported where it is used, so `mtpgraft --help` does not pay for it
    import numpy as np

REGIONS = ("code", "factual", "analysis", "creative")
_CODE_BYTES = frozenset(b"()[]{}=<>;#_`'\"\\/*+&|^~%")
_SENTENCE_BYTES = frozenset(b".,?!-")


@dataclass(frozen=True)
class Calibration:
    """How soft the trunk is and how often the head is wrong (see the module docstring)."""

    top: float = 4.0  # the trunk's top logit (its runner-up: top - margin; the rest: background)
    background: float = 1.5  # x log(1 + count) of each bigram of data/calibration-tiny.txt
    margin_min: float = 0.02
    margin_max: float = 0.3
    head_error: tuple[tuple[str, float], ...] = (("code", 0.04), ("factual", 0.08), ("analysis", 0.22),
                                                 ("creative", 0.32))
    head_push: float = 3.0  # the head's unit adds this many times the state's norm toward its answer
    head_sharpen: float = 2.0  # nextn.shared_head_norm scale: the head drafts with confidence


# name -> build_tiny_model keyword arguments, as qwen35.TEST_SET (calibration added by the caller)
CALIBRATED_SET: dict[str, dict[str, object]] = {
    "calibrated-full": {"layout": "full"},
    "calibrated-base": {"layout": "base"},
    "calibrated-mtp-only": {"layout": "mtp-only"},
}


ARCHES = ("qwen35",)  # the architectures a calibrated model is built for


def builtin_kwargs(arch: str, variant: str) -> dict[str, object] | None:
    """build_tiny_model keyword arguments of `builtin:tiny-ARCH-VARIANT` when it names a calibrated
    model (None: it does not, or not for this architecture)."""
    if variant not in CALIBRATED_SET or arch not in ARCHES:
        return None
    return {**CALIBRATED_SET[variant], "calibration": Calibration()}


def region_of(bs: bytes) -> str | None:
    """The region of a token that decodes to `bs` (None: not printable ASCII, never generated)."""
    if not bs or not all(32 <= b < 127 or b in (9, 10) for b in bs):
        return None
    if chr(bs[-1]).isalpha():
        if bs[0] == 32 and len(bs) > 1:  # a word start (" the"): split by its first letter
            return "factual" if chr(bs[1]).lower() <= "m" else "analysis"
        return "creative"
    if b"\n\n" in bs or (set(bs) <= _SENTENCE_BYTES | {32} and set(bs) & _SENTENCE_BYTES):
        return "analysis"
    if b"\n" in bs or set(bs) & _CODE_BYTES or not bs.strip():
        return "code"
    return "factual"


@dataclass(frozen=True)
class CalibratedVocab:
    """The tokenizer of tiny_vocab(seed) with the calibrated successor map, margins and head answers."""

    vocab: TinyVocab  # succ: the trunk's argmax after each token
    runner_up: tuple[int, ...]  # the trunk's second choice (succ(succ(t)))
    margin: tuple[float, ...]  # top-1 minus top-2 logit at temperature 1
    head: tuple[int, ...]  # what the MTP head predicts after each token
    region: tuple[str | None, ...]


@functools.lru_cache(maxsize=8)
def calibrated_vocab(seed: int = 0, cal: Calibration = Calibration()) -> CalibratedVocab:
    import numpy as np

    base = tiny_vocab(seed)
    region = tuple(region_of(b) if t < N_VOCAB - len(SPECIAL_TOKENS) else None
                   for t, b in enumerate(base.token_bytes))
    rng = np.random.default_rng([seed, 24])
    succ = [-1] * N_VOCAB
    for r in REGIONS:
        members = [t for t in range(N_VOCAB) if region[t] == r]
        _fill_cycle(succ, members, rng)
    factual = [t for t in range(N_VOCAB) if region[t] == "factual"]
    for t in range(N_VOCAB):  # tokens outside the regions lead into the factual one (not where
        if succ[t] < 0:       # their antipode's top two are: those logits would cancel)
            anti = {succ[t ^ 256], succ[succ[t ^ 256]]} if succ[t ^ 256] >= 0 else set()
            succ[t] = next(c for i in range(len(factual))
                           if not {c := factual[(t + i) % len(factual)], succ[c]} & anti)
    runner_up = [succ[succ[t]] for t in range(N_VOCAB)]
    margin = rng.uniform(cal.margin_min, cal.margin_max, N_VOCAB)
    errors = dict(cal.head_error)
    head = list(succ)
    for r in REGIONS:
        members = [t for t in range(N_VOCAB) if region[t] == r]
        for t in rng.choice(members, round(errors.get(r, 0.0) * len(members)), replace=False):
            head[t] = succ[succ[succ[t]]]
    letters = frozenset(t for t in range(N_VOCAB) if region[t] == "creative")
    vocab = dataclasses.replace(base, succ=tuple(succ), letters=letters, wrong=frozenset())
    return CalibratedVocab(vocab, tuple(runner_up), tuple(float(m) for m in margin), tuple(head), region)


def _fill_cycle(succ: list[int], members: list[int], rng: np.random.Generator) -> None:
    """One random cycle over `members` in which no token shares its top two with its antipode
    (t ^ 256: the opposite direction, whose logits are the negatives of t's)."""
    for _ in range(1000):
        order = [members[i] for i in rng.permutation(len(members))]
        nxt = {t: order[(i + 1) % len(order)] for i, t in enumerate(order)}
        top2 = {t: {nxt[t], nxt[nxt[t]]} for t in order}
        if all(not (top2[t] & top2[t ^ 256]) for t in order if t ^ 256 in top2):
            for t, n in nxt.items():
                succ[t] = n
            return
    raise RuntimeError("no antipode-free cycle")  # a bug in the regions, not a user error


def calibrated_embeddings(seed: int, cv: CalibratedVocab, cal: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """(token_embd, output): token t's embedding is 16 x its direction; output row j gives, at the
    normed state of token t, the logit cal.top when j = succ(t) and cal.top - m_t when j is t's
    runner-up. A token and its antipode share a direction with opposite signs, so each direction
    carries the difference of their two tables. The rows are divided by output_norm's weights
    (output_norm_weight(seed)), so the margins are exactly these, not 2% off."""
    import numpy as np

    R = rotation(seed)
    embd = np.stack([direction(R, t) * 16.0 for t in range(N_VOCAB)]).astype(np.float32)
    coef = np.zeros((N_VOCAB, N_EMBD))  # coef[j, k]: row j's weight on R[:, k]
    for t in range(N_VOCAB - len(SPECIAL_TOKENS)):
        sign = 1.0 if t < N_EMBD else -1.0
        coef[cv.vocab.succ[t], t % N_EMBD] += sign * cal.top / 16.0
        coef[cv.runner_up[t], t % N_EMBD] += sign * (cal.top - cv.margin[t]) / 16.0
    _add_background(coef, cv, cal)
    return embd, ((coef @ R.T) / output_norm_weight(seed)).astype(np.float32)


def output_norm_weight(seed: int) -> np.ndarray:
    return Gen(seed, 4).norm(N_EMBD)


def _add_background(coef: np.ndarray, cv: CalibratedVocab, cal: Calibration) -> None:
    """What the trunk knows of real text: bigram logits cal.background x log(1 + count) from the
    calibration text (capped below the runner-up), so the reference predicts text better than chance
    and quantization noise makes it worse (PPL ratio > 1), as on a real model."""

    import numpy as np

    text = resources.files("mtpgraft").joinpath("data/calibration-tiny.txt").read_text(encoding="utf-8")
    ids = tokenize(text, cv.vocab)
    counts = np.zeros((N_VOCAB, N_VOCAB))
    np.add.at(counts, (ids[:-1], ids[1:]), 1.0)
    cap = cal.top - cal.margin_max - 1.0
    for t in range(N_VOCAB - len(SPECIAL_TOKENS)):
        keep = {cv.vocab.succ[t], cv.runner_up[t], cv.vocab.succ[t ^ 256], cv.runner_up[t ^ 256]}
        b = np.minimum(cal.background * np.log1p(counts[t]), cap)
        b[list(keep)] = 0.0
        coef[:, t % N_EMBD] += (1.0 if t < N_EMBD else -1.0) * b / 16.0


def tokenize(text: str, vocab: TinyVocab) -> list[int]:
    """`text` in the tiny vocabulary's token ids, as llama.cpp's BPE (qwen35 pre-tokenizer) splits it."""

    enc = bytes_to_unicode()
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(vocab.merges)}
    index = {t: i for i, t in enumerate(vocab.tokens)}
    out: list[int] = []
    for m in PRETOKENIZE.finditer(text):
        word = [enc[b] for b in m.group(0).encode()]
        while len(word) > 1:
            pairs = enumerate(zip(word, word[1:], strict=False))
            rank, i = min((ranks.get(pair, len(ranks)), i) for i, pair in pairs)
            if rank == len(ranks):
                break
            word[i:i + 2] = [word[i] + word[i + 1]]
        out += [index[w] for w in word]
    return out


def head_units(ffn: dict[str, np.ndarray], eh: np.ndarray, output: np.ndarray, seed: int,
               cv: CalibratedVocab, cal: Calibration) -> None:
    """One SiLU unit per token t (gate and up fire on t's direction only) adding head_push x the
    state's norm along output row head[t]: the head's answer wins by several logits."""
    import numpy as np

    R = rotation(seed)
    silu = _GATE_Z / (1.0 + np.exp(-_GATE_Z))
    gate, up, down = ffn["ffn_gate.weight"], ffn["ffn_up.weight"], ffn["ffn_down.weight"]
    for t in range(min(N_FF, N_VOCAB - len(SPECIAL_TOKENS))):
        v = direction(R, t)
        gate[t] = v * (_GATE_Z / 16.0)  # the normed state of token t is 16 v
        up[t] = v / 16.0
        size = np.linalg.norm(eh[:, :N_EMBD] @ (16.0 * v))
        row = output[cv.head[t]]
        down[:, t] = row / np.linalg.norm(row) * (cal.head_push * size / silu)


def calibrated_tensors(arch: str, layout: str, seed: int, cal: Calibration) -> list[tuple[str, np.ndarray]]:
    """The tensors of a calibrated qwen35 model in the converter's order (qwen35.ordered)."""

    cv = calibrated_vocab(seed, cal)
    embd, output = calibrated_embeddings(seed, cv, cal)
    tensors: list[tuple[str, np.ndarray]] = [("output.weight", output), ("token_embd.weight", embd)]
    if layout != "mtp-only":
        for il in range(TRUNK_LAYERS):
            block = trunk_block(arch, seed, il)
            tensors += [(f"blk.{il}.{k}", block[k]) for k in ordered(block, arch, mtp=False)]
    tensors.append(("output_norm.weight", output_norm_weight(seed)))
    if layout != "base":
        block = _calibrated_head(arch, seed, cv, cal, output)
        tensors += [(f"blk.{MTP_BLOCK}.{k}", block[k]) for k in ordered(block, arch, mtp=True)]
    return tensors


def _calibrated_head(arch: str, seed: int, cv: CalibratedVocab, cal: Calibration,
                     output: np.ndarray) -> dict[str, np.ndarray]:
    g = Gen(seed, 124)
    eh = eh_proj(g, rotation(seed), "aligned")
    t = {"nextn.eh_proj.weight": eh, "attn_norm.weight": g.norm(N_EMBD),
         "post_attention_norm.weight": g.norm(N_EMBD)}
    t |= attention_block(g, branch_std=BRANCH_STD)
    ffn = dense_ffn(g, branch_std=BRANCH_STD)
    head_units(ffn, eh, output, seed, cv, cal)
    t |= ffn
    t |= nextn_norms(g)
    t["nextn.shared_head_norm.weight"] = t["nextn.shared_head_norm.weight"] * cal.head_sharpen
    return t


def build(path: Path, *, arch: str, layout: str, dtype: str, seed: int, recurrent_layers_array: bool,
          calibration: Calibration) -> Path:
    """Write a calibrated qwen35 model (keys, tokenizer and tensor order as qwen35.build)."""

    if arch not in ARCHES:
        raise UsageError(f"a calibrated test model is built for qwen35 only, not {arch}")
    keys = functools.partial(qwen35_keys, arch=arch, dtype=dtype, has_mtp=layout != "base",
                      recurrent_layers_array=recurrent_layers_array)
    name = f"mtpgraft tiny {arch} {layout} calibrated"
    return write_tiny_gguf(Path(path), arch, name, keys, calibrated_tensors(arch, layout, seed, calibration),
                           dtype=dtype, vocab=calibrated_vocab(seed, calibration).vocab, tokenizer_pre="qwen35")
