"""Small qwen35 / qwen35moe-shaped GGUFs for fast offline graft tests: the tensor layout of the runnable
tiny models (mtpgraft.testmodels.synthetic) at a smaller size, with random weights (not meant to run
in llama.cpp)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, quants

from mtpgraft.testmodels.synthetic import Dims, qwen35_specs

Q = GGMLQuantizationType
N_EMBD = 64
N_FF = 128
N_HEAD, N_HEAD_KV, HEAD_DIM = 2, 1, 32


def dims(n_embd: int = N_EMBD, n_ff: int = N_FF, n_exp: int = 4, vocab: int = 32) -> Dims:
    """The small sizes of these graft-test models (the layout is the runnable test models')."""
    return Dims(n_embd=n_embd, n_ff=n_ff, n_head=N_HEAD, n_head_kv=N_HEAD_KV, head_dim=HEAD_DIM,
                ssm_state=32, ssm_groups=2, ssm_rank=2, n_expert=n_exp, n_ff_exp=n_ff, n_ff_shexp=n_ff,
                vocab=vocab)


def make_model(path: Path, *, arch: str = "qwen35", trunk: int = 4, layout: str = "full",
               wtype: Q = Q.F16, seed: int = 0, mtp_seed: int | None = None, n_embd: int = N_EMBD,
               vocab: int = 32, vocab_salt: str = "", recurrent_array: bool = True,
               alignment: int | None = None, n_ff: int = N_FF, arch_name: str | None = None) -> Path:
    """layout: full | base | mtp-only. Trunk weights depend only on `seed`, MTP weights on `mtp_seed`."""
    n_mtp = 0 if layout == "base" else 1
    bc = trunk + n_mtp
    w = GGUFWriter(str(path), arch_name or arch)
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_name("Tiny Test")
    w.add_block_count(bc)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_layer_norm_rms_eps(1e-6)
    if n_mtp:
        w.add_uint32(f"{arch}.nextn_predict_layers", n_mtp)
    if recurrent_array:
        rec = [(i % 4) != 3 for i in range(trunk)] + [False] * n_mtp
        w.add_array(f"{arch}.attention.recurrent_layers", rec)
    w.add_array(f"{arch}.rope.dimension_sections", [3, 3, 2, 0])
    if arch == "qwen35moe":
        w.add_expert_count(4)
        w.add_expert_used_count(2)
    ftype = {Q.F32: LlamaFileType.ALL_F32, Q.F16: LlamaFileType.MOSTLY_F16,
             Q.BF16: LlamaFileType.MOSTLY_BF16, Q.Q8_0: LlamaFileType.MOSTLY_Q8_0,
             Q.Q4_0: LlamaFileType.MOSTLY_Q4_0}[wtype]
    w.add_file_type(int(ftype))
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"tok{i}{vocab_salt}" for i in range(vocab)])

    rng_t = np.random.default_rng(seed)
    rng_m = np.random.default_rng(seed + 1000 if mtp_seed is None else mtp_seed)

    def add(name: str, shape: tuple[int, ...], data: np.ndarray) -> None:
        if len(shape) == 1 or shape[0] % 32:  # like the converter: odd rows stay F32
            w.add_tensor(name, data)
        elif wtype == Q.F32:
            w.add_tensor(name, data)
        elif wtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            qd = quants.quantize(data, wtype)
            w.add_tensor(name, qd, raw_shape=qd.shape, raw_dtype=wtype)

    # Every layout draws the same streams over the full layout (trunk and shared tensors from `seed`,
    # the MTP block from `mtp_seed`), so base + MTP block of full is full, byte for byte.
    d = dims(n_embd, n_ff, vocab=vocab)
    keep = {name for name, _ in qwen35_specs(arch, trunk=trunk, layout=layout, dims=d)}
    for name, shape in qwen35_specs(arch, trunk=trunk, layout="full", dims=d):
        rng = rng_m if name.startswith(f"blk.{trunk}.") else rng_t
        data = rng.standard_normal(tuple(reversed(shape))).astype(np.float32) * 0.02  # numpy: ne reversed
        if name in keep:
            add(name, shape, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def split_model(path: Path, parts: int) -> list[Path]:
    """Split a GGUF the way llama-gguf-split does: the first shard keeps every key plus split.*,
    the others hold only split.* keys; tensors are divided in order."""
    from gguf import GGUFValueType

    from mtpgraft.gguf_io import CONVERTER, GGUFModel, OutTensor, encode_kv, write_gguf

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


def rewrite(path: Path, out: Path, *, drop_keys=(), set_kv=None, drop_tensors=()) -> Path:
    """Copy a GGUF with keys dropped or changed ({key: (vtype, value, item_type)}) and tensors dropped:
    the broken grafts people publish."""
    from mtpgraft.gguf_io import CONVERTER, GGUFFile, OutTensor, encode_kv, write_gguf

    m = GGUFFile(path)  # one file, even a shard of a split set
    kvs = [kv for kv in m.kv.values() if kv.key not in drop_keys]
    for key, (vt, val, it) in (set_kv or {}).items():
        kvs = [encode_kv(key, vt, val, it) if kv.key == key else kv for kv in kvs]
    ts = [OutTensor(t.name, t.ne, t.ggml_type, t.nbytes, m.path, m.data_offset + t.offset)
          for t in m.tensors if t.name not in drop_tensors]
    with open(out, "wb") as fh:
        write_gguf(fh, kvs, ts, alignment=m.alignment, layout=CONVERTER)
    return out
