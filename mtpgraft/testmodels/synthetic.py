"""Synthetic GGUFs: the qwen35 / qwen35moe tensor layout of the tiny models at any size, random weights.

The one generator of GGUFs that need not run in llama.cpp. `qwen35_specs` gives the names, shapes
(ggml order, ne[0] first) and tensor order of `build_tiny_model` for any dimensions (order="converter";
tests/test_testmodels.py pins it to what build_tiny_model writes) or block by block (order="blocks":
token_embd, blk.0.., output_norm, output, and in a block attention, FFN, nextn: the order the graft tests
were written against, whose messages name a block's first tensor). On top of it:

- `make_model`: a small model with random weights, any layout / type / size, split or not (the graft,
  Hub and signal tests);
- `split_model` and `rewrite`: a split set of a GGUF as llama-gguf-split writes it, and a copy with keys
  or tensors changed or dropped (the broken grafts people publish);
- the benchmarks take `qwen35_specs` at Qwen3.6-like sizes and fill the data themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..gguf_io import (
    CONVERTER,
    KV,
    GGUFFile,
    GGUFModel,
    GGUFValueType,
    Layout,
    OutTensor,
    encode_kv,
    write_gguf,
)
from .qwen35 import ordered
from .writer import write_model

if TYPE_CHECKING:  # numpy is imported where it is used, so `mtpgraft --help` does not pay for it
    import gguf
    import numpy as np

ORDERS = ("converter", "blocks")


@dataclass(frozen=True)
class Dims:
    """Sizes of a qwen35-shaped model (the defaults are the runnable tiny models')."""

    n_embd: int = 256
    n_ff: int = 512
    n_head: int = 4
    n_head_kv: int = 2
    head_dim: int = 64
    ssm_state: int = 64
    ssm_groups: int = 2
    ssm_rank: int = 4
    n_expert: int = 4
    n_ff_exp: int = 256
    n_ff_shexp: int = 256
    vocab: int = 512
    full_attention_interval: int = 4


def small_dims(*, n_embd: int = 64, n_ff: int = 128, vocab: int = 32) -> Dims:
    """The sizes of make_model's models (fast to write; the experts and the shared expert are n_ff wide)."""
    return Dims(n_embd=n_embd, n_ff=n_ff, n_head=2, n_head_kv=1, head_dim=32, ssm_state=32, ssm_groups=2,
                ssm_rank=2, n_expert=4, n_ff_exp=n_ff, n_ff_shexp=n_ff, vocab=vocab)


def _layer(arch: str, il: int, d: Dims, *, mtp: bool) -> dict[str, tuple[int, ...]]:
    """{suffix: ne} of one block (shapes as the converter writes them, ne[0] first), in "blocks" order."""
    e = d.n_embd
    t: dict[str, tuple[int, ...]] = {"attn_norm.weight": (e,)}
    if mtp or (il + 1) % d.full_attention_interval == 0:
        t |= {"attn_q.weight": (e, 2 * d.n_head * d.head_dim), "attn_k.weight": (e, d.n_head_kv * d.head_dim),
              "attn_v.weight": (e, d.n_head_kv * d.head_dim), "attn_output.weight": (d.n_head * d.head_dim, e),
              "attn_q_norm.weight": (d.head_dim,), "attn_k_norm.weight": (d.head_dim,)}
    else:
        key, value = d.ssm_state * d.ssm_groups, d.ssm_state * d.ssm_rank
        conv = 2 * key + value
        t |= {"attn_qkv.weight": (e, conv), "attn_gate.weight": (e, value), "ssm_conv1d.weight": (4, conv),
              "ssm_dt.bias": (d.ssm_rank,), "ssm_a": (d.ssm_rank,), "ssm_beta.weight": (e, d.ssm_rank),
              "ssm_alpha.weight": (e, d.ssm_rank), "ssm_norm.weight": (d.ssm_state,),
              "ssm_out.weight": (value, e)}
    t["post_attention_norm.weight"] = (e,)
    if arch == "qwen35moe":
        x, f, s = d.n_expert, d.n_ff_exp, d.n_ff_shexp
        t |= {"ffn_gate_inp.weight": (e, x), "ffn_gate_exps.weight": (e, f, x), "ffn_up_exps.weight": (e, f, x),
              "ffn_down_exps.weight": (f, e, x), "ffn_gate_inp_shexp.weight": (e,),
              "ffn_gate_shexp.weight": (e, s), "ffn_up_shexp.weight": (e, s), "ffn_down_shexp.weight": (s, e)}
    else:
        t |= {"ffn_gate.weight": (e, d.n_ff), "ffn_up.weight": (e, d.n_ff), "ffn_down.weight": (d.n_ff, e)}
    if mtp:
        t |= {"nextn.eh_proj.weight": (2 * e, e), "nextn.enorm.weight": (e,), "nextn.hnorm.weight": (e,),
              "nextn.shared_head_norm.weight": (e,)}
    return t


def qwen35_specs(arch: str = "qwen35", *, trunk: int = 4, layout: str = "full", dims: Dims = Dims(),
                 order: str = "converter") -> list[tuple[str, tuple[int, ...]]]:
    """[(tensor name, ne)] of a qwen35/qwen35moe model with the MTP block blk.{trunk} (layout full | base |
    mtp-only). order="converter": build_tiny_model's (output, token_embd, the trunk blocks, output_norm,
    the MTP block; within a block the HF order); order="blocks": token_embd, the blocks, output_norm,
    output (within a block as `_layer` lists them)."""
    def block(il: int, mtp: bool) -> list[tuple[str, tuple[int, ...]]]:
        b = _layer(arch, il, dims, mtp=mtp)
        names = ordered(b, arch, mtp=mtp) if order == "converter" else list(b)
        return [(f"blk.{il}.{k}", b[k]) for k in names]

    vocab_shape = (dims.n_embd, dims.vocab)
    trunk_blocks = [s for il in range(trunk) for s in block(il, False)] if layout != "mtp-only" else []
    mtp_block = block(trunk, True) if layout != "base" else []
    if order == "converter":
        return [("output.weight", vocab_shape), ("token_embd.weight", vocab_shape), *trunk_blocks,
                ("output_norm.weight", (dims.n_embd,)), *mtp_block]
    return [("token_embd.weight", vocab_shape), *trunk_blocks, *mtp_block, ("output_norm.weight", (dims.n_embd,)),
            ("output.weight", vocab_shape)]


# ---------------------------------------------------------------------------------------------
# make_model: small random-weight models (the graft, Hub and signal tests)


def make_model(path: Path, *, arch: str = "qwen35", trunk: int = 4, layout: str = "full",
               wtype: gguf.GGMLQuantizationType | None = None, seed: int = 0, mtp_seed: int | None = None,
               n_embd: int = 64, vocab: int = 32, vocab_salt: str = "", recurrent_array: bool = True,
               alignment: int | None = None, n_ff: int = 128, arch_name: str | None = None,
               name: str = "Tiny Test", file_type: int | None = None, extra_kv: dict[str, str | int] | None = None,
               drop_keys: tuple[str, ...] = (), shards: int = 1) -> Path:
    """Write a small qwen35 / qwen35moe model (small_dims, order "blocks") to `path`; return it.

    layout: full | base | mtp-only. Weights are F16 (`wtype`: any type gguf-py quantizes), 1-D tensors
    and rows not a multiple of 32 F32, like the converter's. Trunk weights depend only on `seed`, MTP
    weights on `mtp_seed`, so base + the MTP block of full is full byte for byte. `file_type` overrides
    general.file_type (a quant's label on F16 data), `extra_kv` adds string / uint32 keys, `drop_keys`
    leaves keys out, `shards` > 1 writes a split set instead (see writer.write_model)."""
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFValueType as V

    wtype = Q.F16 if wtype is None else wtype
    kv = _model_kv(arch, arch_name or arch, trunk=trunk, n_mtp=0 if layout == "base" else 1, wtype=wtype, n_embd=n_embd,
                   n_ff=n_ff, vocab=[f"tok{i}{vocab_salt}" for i in range(vocab)], recurrent_array=recurrent_array,
                   name=name, file_type=file_type, extra_kv=extra_kv or {})
    kv = {k: v for k, v in kv.items() if k not in drop_keys}

    def keys(w: gguf.GGUFWriter) -> None:
        for key, (vtype, value) in kv.items():
            if vtype == V.ARRAY:
                w.add_array(key, value)  # type: ignore[arg-type]  (skips an empty one, as gguf-py's helpers do)
            else:
                w.add_key_value(key, value, vtype)

    dims = small_dims(n_embd=n_embd, n_ff=n_ff, vocab=vocab)
    tensors = _random_tensors(arch, trunk=trunk, layout=layout, dims=dims, wtype=wtype, seed=seed,
                              mtp_seed=seed + 1000 if mtp_seed is None else mtp_seed)
    write_model(path, arch_name or arch, keys, tensors, alignment=alignment, shards=shards)
    return path


def _model_kv(arch: str, key_arch: str, *, trunk: int, n_mtp: int, wtype: gguf.GGMLQuantizationType, n_embd: int, n_ff: int,
              vocab: list[str], recurrent_array: bool, name: str, file_type: int | None,
              extra_kv: dict[str, str | int]) -> dict[str, tuple[gguf.GGUFValueType, object]]:
    """make_model's keys in the order they are written: {key: (value type, value)}."""
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFValueType as V
    from gguf import LlamaFileType as F

    u32, a = V.UINT32, key_arch  # gguf-py's named keys take the file's architecture, the others `arch`
    kv: dict[str, tuple[V, object]] = {
        "general.name": (V.STRING, name), f"{a}.block_count": (u32, trunk + n_mtp),
        f"{a}.context_length": (u32, 256), f"{a}.embedding_length": (u32, n_embd),
        f"{a}.feed_forward_length": (u32, n_ff), f"{a}.attention.head_count": (u32, 2),
        f"{a}.attention.head_count_kv": (u32, 1), f"{a}.attention.key_length": (u32, 32),
        f"{a}.attention.value_length": (u32, 32), f"{a}.attention.layer_norm_rms_epsilon": (V.FLOAT32, 1e-6)}
    if n_mtp:
        kv[f"{arch}.nextn_predict_layers"] = (u32, n_mtp)
    if recurrent_array:
        kv[f"{arch}.attention.recurrent_layers"] = (V.ARRAY, [(i % 4) != 3 for i in range(trunk)] + [False] * n_mtp)
    kv[f"{arch}.rope.dimension_sections"] = (V.ARRAY, [3, 3, 2, 0])
    if arch == "qwen35moe":
        kv |= {f"{a}.expert_count": (u32, 4), f"{a}.expert_used_count": (u32, 2)}
    if file_type is None:
        file_type = {Q.F32: F.ALL_F32, Q.F16: F.MOSTLY_F16, Q.BF16: F.MOSTLY_BF16, Q.Q8_0: F.MOSTLY_Q8_0,
                     Q.Q4_0: F.MOSTLY_Q4_0}[wtype]
    kv["general.file_type"] = (u32, int(file_type))
    kv |= {k: (V.STRING, v) if isinstance(v, str) else (u32, v) for k, v in extra_kv.items()}
    kv |= {"tokenizer.ggml.model": (V.STRING, "gpt2"), "tokenizer.ggml.tokens": (V.ARRAY, vocab)}
    return kv


def _random_tensors(arch: str, *, trunk: int, layout: str, dims: Dims, wtype: gguf.GGMLQuantizationType,
                    seed: int, mtp_seed: int) -> list[tuple[str, np.ndarray, gguf.GGMLQuantizationType]]:
    """The tensors of `layout`, N(0, 0.02) in float32. Every layout draws the full layout's streams (the
    MTP block from `mtp_seed`, everything else from `seed`, in order), so layouts share their bytes."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    rng_trunk, rng_mtp = np.random.default_rng(seed), np.random.default_rng(mtp_seed)
    keep = {n for n, _ in qwen35_specs(arch, trunk=trunk, layout=layout, dims=dims, order="blocks")}
    out = []
    for name, ne in qwen35_specs(arch, trunk=trunk, layout="full", dims=dims, order="blocks"):
        rng = rng_mtp if name.startswith(f"blk.{trunk}.") else rng_trunk
        data = rng.standard_normal(tuple(reversed(ne))).astype(np.float32) * 0.02  # numpy: ne reversed
        if name in keep:
            out.append((name, data, Q.F32 if len(ne) == 1 or ne[0] % 32 else wtype))
    return out


# ---------------------------------------------------------------------------------------------
# split sets and rewritten copies of any GGUF


def split_model(path: Path, parts: int) -> list[Path]:
    """Split a GGUF the way llama-gguf-split does: the first shard keeps every key plus split.*,
    the others hold only split.* keys; tensors are divided in order."""
    m = GGUFModel(path)
    refs = m.refs
    per = -(-len(refs) // parts)
    stem = path.name[:-5]
    out = []
    for i in range(parts):
        chunk = refs[i * per:(i + 1) * per]
        kvs = list(m.kv.values()) if i == 0 else []
        kvs = kvs + [encode_kv("split.no", GGUFValueType.UINT16, i),
                     encode_kv("split.count", GGUFValueType.UINT16, parts),
                     encode_kv("split.tensors.count", GGUFValueType.INT32, len(refs))]
        p = path.with_name(f"{stem}-{i + 1:05d}-of-{parts:05d}.gguf")
        ts = [OutTensor(r.name, r.info.ne, r.info.ggml_type, r.info.nbytes, r.path, r.abs_offset) for r in chunk]
        with open(p, "wb") as fh:
            write_gguf(fh, kvs, ts, alignment=m.alignment, layout=CONVERTER)
        out.append(p)
    return out


def rewrite(path: Path, out: Path, *, drop_keys=(), set_kv=None, drop_tensors=(),
            kv: Callable[[list[KV]], list[KV]] | None = None,
            tensors: Callable[[list[OutTensor]], list[OutTensor]] | None = None,
            alignment: int | None = None, layout: Layout | None = None) -> Path:
    """Copy a GGUF with keys dropped or changed ({key: (vtype, value, item_type)}) and tensors dropped:
    the broken grafts people publish. `kv` and `tensors` edit the lists freely (after the drops);
    `alignment` (default: the file's) and `layout` (default: the converter's) say how it is written."""
    m = GGUFFile(path)  # one file, even a shard of a split set
    kvs = [k for k in m.kv.values() if k.key not in drop_keys]
    for key, (vt, val, it) in (set_kv or {}).items():
        kvs = [encode_kv(key, vt, val, it) if k.key == key else k for k in kvs]
    ts = [OutTensor(t.name, t.ne, t.ggml_type, t.nbytes, m.path, m.data_offset + t.offset)
          for t in m.tensors if t.name not in drop_tensors]
    with open(out, "wb") as fh:
        write_gguf(fh, kv(kvs) if kv else kvs, tensors(ts) if tensors else ts, alignment=alignment or m.alignment,
                   layout=CONVERTER if layout is None else layout)
    return out
