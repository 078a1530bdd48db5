"""One builder for every in-file MTP family: a family is a `FamilySpec` (data), not a generator.

A spec says what the converter writes and the loader reads: the keys in the converter's order (a
value may depend on the layout: block_count, the nextn key, per-layer arrays), the named sizes, the
tensor parts (ordered (suffix, numpy shape, init) rows) that each trunk layer and each MTP head is
made of, and where the "mixed" head's wrong-token units live. `build` writes the four layouts every
family has: "full" (trunk + heads, the key), "base" (what convert_hf_to_gguf.py --no-mtp writes: the
trunk, no key), "base-key" (the trunk with the key kept) and "mtp-only" (what --mtp writes: token_embd,
output_norm, output and the heads), with an "aligned" / "mixed" / "random" head of known acceptance
(see the package docstring: the trunk and the heads use the same token directions, `weights`).

Draw order is the row order: each block draws its tensors from its own stream, in the order listed,
so a spec reproduces a hand-written generator byte for byte (tests/test_families.py checks glm4moe).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from .dims import HEADS
from .vocab import tiny_vocab
from .weights import (
    BRANCH_STD,
    IN_STD,
    Gen,
    add_flip_units,
    eh_proj,
    embeddings,
    head_stds,
    rotation,
)
from .writer import file_type_of, write_tiny_gguf

if TYPE_CHECKING:
    import gguf
    import numpy as np

LAYOUTS = ("full", "base", "base-key", "mtp-only")

# A tensor row: (suffix after blk.N., numpy shape (sizes by name or number), init). init is "norm" (a
# norm weight ~1), "a_log" (a gated delta net's negative decay), "in" (an input projection), "out" (a residual branch's output projection: tiny in
# the trunk and in aligned/mixed heads, ordinary in a random head) or a float (a fixed std).
Row = tuple[str, tuple[str | int, ...], "str | float"]


@dataclass(frozen=True)
class Ctx:
    """What a key's value may depend on."""

    layout: str
    trunk: int
    nextn: int
    dtype: str

    @property
    def has_key(self) -> bool:
        return self.layout != "base"

    @property
    def block_count(self) -> int:
        return self.trunk + (self.nextn if self.has_key else 0)


# A key: (name, gguf value type name, value or value(ctx); None leaves the key out). A name without a
# dot-prefix of its own ("general.") is the architecture's: `{arch}.{name}`.
Key = tuple[str, str, Any]


@dataclass(frozen=True)
class FamilySpec:
    arch: str
    tokenizer_pre: str
    sizes: dict[str, int]
    keys: tuple[Key, ...]
    parts: dict[str, tuple[Row, ...]]
    trunk: tuple[tuple[str, ...], ...]  # the parts of each trunk layer, in order
    mtp: tuple[str, ...]  # the parts of each head after nextn.eh_proj (its last part: the nextn norms)
    flip: str  # the FFN the mixed head's units live in ("ffn_{}_shexp.weight")
    nextn: int = 1
    flip_gain: float = 1.0
    streams: tuple[int, int, int] = (200, 300, 4)  # trunk layer il: [0]+il; head k: [1]+10k+head; output_norm
    test_set: dict[str, dict[str, object]] = field(default_factory=lambda: dict(TEST_SET))
    # heads whose parts follow their own index (step35: full-attention and SWA heads): head k's parts
    mtp_by_head: tuple[tuple[str, ...], ...] = ()
    # tensors outside the blocks beside output_norm (deepseek4's output_hc_*), drawn after it from its
    # stream; a sidecar carries them too (arch.py's shared_tensors)
    globals: tuple[Row, ...] = ()
    note: str = ""

    @property
    def trunk_layers(self) -> int:
        return len(self.trunk)

    def mtp_parts(self, k: int) -> tuple[str, ...]:
        return self.mtp_by_head[k] if self.mtp_by_head else self.mtp

    def mtp_tensor_count(self, k: int = 0) -> int:
        return 1 + sum(len(self.parts[p]) for p in self.mtp_parts(k))


TEST_SET: dict[str, dict[str, object]] = {
    "full-aligned": {"layout": "full", "head": "aligned"},
    "full-mixed": {"layout": "full", "head": "mixed"},
    "full-random": {"layout": "full", "head": "random"},
    "base": {"layout": "base"},
    "base-key": {"layout": "base-key"},
    "mtp-only-aligned": {"layout": "mtp-only", "head": "aligned"},
    "mtp-only-mixed": {"layout": "mtp-only", "head": "mixed"},
}

NEXTN_NORMS: tuple[Row, ...] = (("nextn.shared_head_norm.weight", ("embd",), "norm"),
                                ("nextn.enorm.weight", ("embd",), "norm"), ("nextn.hnorm.weight", ("embd",), "norm"))


def _draw(g: Gen, spec: FamilySpec, rows: tuple[Row, ...], *, in_std: float, out_std: float) -> dict[str, np.ndarray]:
    import numpy as np

    out = {}
    for name, shape, init in rows:
        dims = tuple(spec.sizes[d] if isinstance(d, str) else d for d in shape)
        if init == "norm":
            out[name] = g.norm(dims[0])
        elif init == "a_log":  # a gated delta net's decay (-exp(A_log)): negative, as trained ones are
            out[name] = -np.exp(g.rng.uniform(0.0, 2.5, dims)).astype(np.float32)
        else:
            out[name] = g.normal(dims, in_std if init == "in" else out_std if init == "out" else float(init))
    return out


def trunk_block(spec: FamilySpec, seed: int, il: int) -> dict[str, np.ndarray]:
    g = Gen(seed, spec.streams[0] + il)
    t: dict[str, np.ndarray] = {}
    for part in spec.trunk[il]:
        t |= _draw(g, spec, spec.parts[part], in_std=IN_STD, out_std=BRANCH_STD)
    return t


def mtp_block(spec: FamilySpec, seed: int, head: str, k: int = 0) -> dict[str, np.ndarray]:
    """Head k (0 = the first MTP layer); every head of a family predicts succ(its input token)."""
    g = Gen(seed, spec.streams[1] + 10 * k + HEADS.index(head))
    R = rotation(seed)
    eh = eh_proj(g, R, head)
    branch_std, in_std = head_stds(head)
    t = {"nextn.eh_proj.weight": eh}
    for part in spec.mtp_parts(k):
        t |= _draw(g, spec, spec.parts[part], in_std=in_std, out_std=branch_std)
    if head == "mixed":
        add_flip_units(t, spec.flip, eh, R, tiny_vocab(seed), gain=spec.flip_gain)
    return t


def tensors(spec: FamilySpec, layout: str, head: str | tuple[str, ...], seed: int) -> list[tuple[str, np.ndarray]]:
    """output, token_embd, the trunk blocks, output_norm, the heads (for layouts that have them);
    `head` is every head's kind, or one kind per head (chained heads of different known rates)."""
    kinds = (head,) * spec.nextn if isinstance(head, str) else head
    embd, output = embeddings(seed, tiny_vocab(seed))
    out: list[tuple[str, np.ndarray]] = [("output.weight", output), ("token_embd.weight", embd)]
    if layout != "mtp-only":
        for il in range(spec.trunk_layers):
            out += [(f"blk.{il}.{n}", v) for n, v in trunk_block(spec, seed, il).items()]
    g = Gen(seed, spec.streams[2])
    out.append(("output_norm.weight", g.norm(spec.sizes["embd"])))
    out += list(_draw(g, spec, spec.globals, in_std=IN_STD, out_std=BRANCH_STD).items())
    if layout in ("full", "mtp-only"):
        for k in range(spec.nextn):
            out += [(f"blk.{spec.trunk_layers + k}.{n}", v) for n, v in mtp_block(spec, seed, kinds[k], k).items()]
    return out


def _add_keys(w: gguf.GGUFWriter, spec: FamilySpec, ctx: Ctx) -> None:
    import gguf

    for name, vtype, value in spec.keys:
        v = value(ctx) if callable(value) else value
        if v is None:
            continue
        key = name if name.startswith("general.") else f"{spec.arch}.{name}"
        if isinstance(v, list):
            w.add_array(key, v)
        else:
            w.add_key_value(key, v, gguf.GGUFValueType[vtype])


def build(spec: FamilySpec, path: str | os.PathLike[str], *, layout: str = "full",
          head: str | tuple[str, ...] = "aligned", dtype: str = "f32", seed: int = 0) -> Path:
    """Write one tiny model of `spec`'s family atomically; return its path. `head`: one kind for
    every head, or a tuple with one kind per head (len spec.nextn)."""
    if not isinstance(head, str) and (len(head) != spec.nextn or not set(head) <= set(HEADS)):
        raise UsageError(f"{spec.arch} has {spec.nextn} heads, each one of {', '.join(HEADS)}; got {head}")
    ctx = Ctx(layout, spec.trunk_layers, spec.nextn, dtype)
    has_mtp = layout in ("full", "mtp-only")
    kind = head if isinstance(head, str) else ",".join(head)
    name = f"mtpgraft tiny {spec.arch} {layout}" + (f" {kind}" if has_mtp else "")

    def keys(w: gguf.GGUFWriter) -> None:
        _add_keys(w, spec, ctx)

    return write_tiny_gguf(Path(path), spec.arch, name, keys, tensors(spec, layout, head, seed), dtype=dtype,
                           vocab=tiny_vocab(seed), tokenizer_pre=spec.tokenizer_pre)


# Values shared by the specs' key lists.
def block_count(ctx: Ctx) -> int:
    return ctx.block_count


def nextn_key(ctx: Ctx) -> int | None:
    return ctx.nextn if ctx.has_key else None


def file_type(ctx: Ctx) -> int:
    return int(file_type_of(ctx.dtype))


def quantization_version(ctx: Ctx) -> int:
    import gguf

    return gguf.GGML_QUANT_VERSION


def per_layer(trunk: Callable[[int], Any], mtp: Callable[[int], Any] | None = None) -> Callable[[Ctx], list]:
    """A per-layer array: trunk(il) for each trunk layer, then mtp(il) for each head's layer when the
    file declares them (mtp None: the array covers the trunk only, as glm-dsa's indexer types)."""
    def value(ctx: Ctx) -> list:
        n = ctx.block_count if mtp is not None else ctx.trunk
        return [trunk(il) if il < ctx.trunk else mtp(il) for il in range(n)]  # type: ignore[misc]
    return value
