"""Small qwen35 / qwen35moe-shaped GGUFs for fast offline graft tests (not meant to run in llama.cpp;
the runnable tiny models are in mtpgraft.testmodels)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType, quants

Q = GGMLQuantizationType
N_EMBD = 64
N_FF = 128
N_HEAD, N_HEAD_KV, HEAD_DIM = 2, 1, 32


def _tensor_specs(arch: str, layer: int, full_attn: bool, mtp: bool, n_embd: int, n_exp: int = 4,
                  n_ff: int = N_FF):
    e = n_embd
    p = f"blk.{layer}."
    specs = [(p + "attn_norm.weight", (e,))]
    if full_attn or mtp:
        specs += [
            (p + "attn_q.weight", (e, 2 * N_HEAD * HEAD_DIM)),
            (p + "attn_k.weight", (e, N_HEAD_KV * HEAD_DIM)),
            (p + "attn_v.weight", (e, N_HEAD_KV * HEAD_DIM)),
            (p + "attn_output.weight", (N_HEAD * HEAD_DIM, e)),
            (p + "attn_q_norm.weight", (HEAD_DIM,)),
            (p + "attn_k_norm.weight", (HEAD_DIM,)),
        ]
    else:
        specs += [
            (p + "attn_qkv.weight", (e, 3 * 64)),
            (p + "attn_gate.weight", (e, 64)),
            (p + "ssm_conv1d.weight", (4, 3 * 64)),
            (p + "ssm_dt.bias", (2,)),
            (p + "ssm_a", (2,)),
            (p + "ssm_beta.weight", (e, 2)),
            (p + "ssm_alpha.weight", (e, 2)),
            (p + "ssm_norm.weight", (32,)),
            (p + "ssm_out.weight", (64, e)),
        ]
    specs.append((p + "post_attention_norm.weight", (e,)))
    if arch == "qwen35moe":
        specs += [
            (p + "ffn_gate_inp.weight", (e, n_exp)),
            (p + "ffn_gate_exps.weight", (e, n_ff, n_exp)),
            (p + "ffn_up_exps.weight", (e, n_ff, n_exp)),
            (p + "ffn_down_exps.weight", (n_ff, e, n_exp)),
            (p + "ffn_gate_inp_shexp.weight", (e,)),
            (p + "ffn_gate_shexp.weight", (e, n_ff)),
            (p + "ffn_up_shexp.weight", (e, n_ff)),
            (p + "ffn_down_shexp.weight", (n_ff, e)),
        ]
    else:
        specs += [
            (p + "ffn_gate.weight", (e, n_ff)),
            (p + "ffn_up.weight", (e, n_ff)),
            (p + "ffn_down.weight", (n_ff, e)),
        ]
    if mtp:
        specs += [
            (p + "nextn.eh_proj.weight", (2 * e, e)),
            (p + "nextn.enorm.weight", (e,)),
            (p + "nextn.hnorm.weight", (e,)),
            (p + "nextn.shared_head_norm.weight", (e,)),
        ]
    return specs


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

    def add(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> None:
        # shape is ggml order (ne0 first); numpy wants it reversed
        data = rng.standard_normal(tuple(reversed(shape))).astype(np.float32) * 0.02
        if len(shape) == 1 or shape[0] % 32:  # like the converter: odd rows stay F32
            w.add_tensor(name, data)
            return
        if wtype == Q.F32:
            w.add_tensor(name, data)
        elif wtype == Q.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            qd = quants.quantize(data, wtype)
            w.add_tensor(name, qd, raw_shape=qd.shape, raw_dtype=wtype)

    tensors = []
    if layout != "mtp-only":
        tensors.append(("token_embd.weight", (n_embd, vocab), rng_t))
    # consume the same random stream for trunk tensors in every layout
    trunk_specs = []
    for i in range(trunk):
        trunk_specs += _tensor_specs(arch, i, (i % 4) == 3, False, n_embd, n_ff=n_ff)
    mtp_specs = _tensor_specs(arch, trunk, True, True, n_embd, n_ff=n_ff) if n_mtp else []
    emb = ("token_embd.weight", (n_embd, vocab))
    if layout == "mtp-only":
        w_rng = np.random.default_rng(seed)
        add(*emb, w_rng)
        for _name, shape in trunk_specs:  # advance the stream identically, write nothing
            w_rng.standard_normal(tuple(reversed(shape)))
        for name, shape in mtp_specs:
            add(name, shape, rng_m)
        add("output_norm.weight", (n_embd,), w_rng)
        add("output.weight", (n_embd, vocab), w_rng)
    else:
        for name, shape, rng in tensors:
            add(name, shape, rng)
        for name, shape in trunk_specs:
            add(name, shape, rng_t)
        for name, shape in mtp_specs:
            add(name, shape, rng_m)
        add("output_norm.weight", (n_embd,), rng_t)
        add("output.weight", (n_embd, vocab), rng_t)
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
