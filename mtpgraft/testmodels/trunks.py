"""The converter's `--no-mtp` trunk of a tiny checkpoint, rebuilt from the checkpoint by a recipe.

scripts/make_convert_reference.py runs llama.cpp's real convert_hf_to_gguf.py (which needs torch)
and records, for each tensor of the trunk it wrote, which checkpoint tensor(s) and which one-line
operation give those exact bytes (`derive`), with the file's metadata and fingerprint. The tests
rebuild the trunk from the same seeded checkpoint (`rebuild`) and check it against that
fingerprint, so what they graft onto is byte for byte the converter's file, with no GGUF committed.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..gguf_io import CONVERTER, GGUFModel, GGUFValueType, OutTensor, encode_kv, write_gguf
from ..sources.safetensors import read_local_header
from .fingerprint import fingerprint

# The largest tensor a recipe may hold as its bytes: Nemotron-H's ssm_a, -exp(A_log) by torch, whose
# float32 exp is an ulp off the correctly rounded one numpy gives for some inputs (one value per head).
MAX_LITERAL = 64
_EXPERT = re.compile(r"\.experts\.(\d+)\.")


def _f32(raw: bytes, dtype: str) -> np.ndarray:
    if dtype == "BF16":
        return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
    if dtype == "F16":
        return np.frombuffer(raw, np.float16).astype(np.float32)
    return np.frombuffer(raw, np.float32)


def _apply(op: str, sources: list[tuple[str, tuple[int, ...], bytes]]) -> bytes:
    """One recipe step: the bytes `op` makes of the checkpoint tensors `sources` (dtype, shape, raw)."""
    if op.startswith("hex:"):  # the bytes themselves (a tiny tensor no numpy step reproduces, see derive)
        return bytes.fromhex(op[4:])
    dtype, shape, raw = sources[0]
    if op == "raw":
        return raw
    if op == "stack":  # per-expert tensors, in expert order
        return b"".join(s[2] for s in sources)
    x = _f32(raw, dtype)
    if op == "f32":
        return x.tobytes()
    if op == "plus1":  # norms the converter stores as 1 + w
        return (x + np.float32(1)).tobytes()
    if op == "negexp":  # A = -exp(A_log)
        return (-np.exp(x)).tobytes()
    m = re.fullmatch(r"half(\d)\.(\d)", op)  # a fused tensor's half along an axis (gate_up_proj)
    if m:
        arr = np.frombuffer(raw, np.uint8).reshape(*shape[:-1], -1)
        return np.ascontiguousarray(np.split(arr, 2, axis=int(m[1]))[int(m[2])]).tobytes()
    m = re.fullmatch(r"(kb|vb)\.(\d+)\.(\d+)", op)  # MLA's kv_b_proj: per head, k rows transposed / v rows
    if m:
        es = 4 if dtype == "F32" else 2
        arr = np.frombuffer(raw, f"u{es}").reshape(int(m[2]), -1, shape[-1])
        part = arr[:, :int(m[3]), :].transpose(0, 2, 1) if m[1] == "kb" else arr[:, int(m[3]):, :]
        return np.ascontiguousarray(part).tobytes()
    m = re.fullmatch(r"perm(\d+)", op)  # LlamaModel.permute by that many heads (Granite's q and k)
    if m:
        arr = np.frombuffer(raw, np.uint8).reshape(shape[0], -1)
        return np.ascontiguousarray(arr.reshape(int(m[1]), 2, -1, arr.shape[1]).swapaxes(1, 2)).tobytes()
    m = re.fullmatch(r"bytes(\d+):(\d+)", op)  # a run of rows of a fused tensor (Qwen3-Next's in_proj_qkvz)
    if m:
        return raw[int(m[1]):int(m[2])]
    raise ValueError(f"unknown recipe step {op!r}")


def _checkpoint(ckpt: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        h = read_local_header(f)
        with open(f, "rb") as fh:
            for t in h.tensors.values():
                fh.seek(t.start)
                out[t.name] = (t.dtype, t.shape, fh.read(t.nbytes))
    return out


def _candidates(tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> list[tuple[list[str], str]]:
    ops = ["raw", "f32", "plus1", "negexp", "half0.0", "half0.1", "half1.0", "half1.1"]
    single = [([n], op) for n in tensors for op in ops]
    groups: dict[str, list[tuple[int, str]]] = {}
    for n in tensors:
        m = _EXPERT.search(n)
        if m:
            groups.setdefault(_EXPERT.sub(".experts.*.", n), []).append((int(m[1]), n))
    mla = [([n], f"{w}.{h}.{k}") for n, (_, shape, _) in tensors.items() if n.endswith("kv_b_proj.weight")
           for h in range(1, shape[0] + 1) if shape[0] % h == 0 for k in range(1, shape[0] // h) for w in ("kb", "vb")]
    perm = [([n], f"perm{h}") for n, (_, shape, _) in tensors.items() if n.endswith(("q_proj.weight", "k_proj.weight"))
            for h in range(1, shape[0] // 2 + 1) if shape[0] % (2 * h) == 0]
    return single + [([n for _, n in sorted(g)], "stack") for g in groups.values()] + mla + perm


def _slice_of(tensors: dict[str, tuple[str, tuple[int, ...], bytes]], want: bytes, message: str) -> tuple[list[str], str]:
    """The one checkpoint tensor whose raw bytes hold `want` whole, as a bytesA:B step."""
    for n, (_, _, raw) in tensors.items():
        at = raw.find(want)
        if at >= 0 and len(want) >= 64:  # long enough that a chance match is impossible
            return [n], f"bytes{at}:{at + len(want)}"
    if len(want) <= MAX_LITERAL:
        return [], "hex:" + want.hex()
    raise ValueError(message)


def derive(trunk: Path, ckpt: Path) -> dict[str, Any]:
    """The recipe of the converter's trunk file `trunk`, from the checkpoint folder `ckpt`."""
    m = GGUFModel(trunk)
    tensors = _checkpoint(ckpt)
    cands = _candidates(tensors)
    steps = []
    with open(trunk, "rb") as fh:
        for r in m.refs:
            fh.seek(r.abs_offset)
            want = fh.read(r.info.nbytes)
            for names, op in cands:
                try:
                    if _apply(op, [tensors[n] for n in names]) == want:
                        break
                except (ValueError, IndexError):  # the step does not fit that tensor's shape
                    continue
            else:
                names, op = _slice_of(tensors, want, f"{trunk.name}: no recipe step makes {r.name}")
            steps.append({"name": r.name, "ne": list(r.info.ne), "type": r.info.ggml_type, "from": names, "op": op})
    kvs = [[k, int(kv.vtype), None if kv.item_type is None else int(kv.item_type), m.get(k)] for k, kv in m.kv.items()]
    return {"alignment": m.alignment, "kvs": kvs, "tensors": steps, "fingerprint": fingerprint(trunk),
            "sha256": hashlib.sha256(trunk.read_bytes()).hexdigest()}


def rebuild(recipe: dict[str, Any], ckpt: Path, out: Path) -> Path:
    """Write the trunk the recipe describes, from the checkpoint folder `ckpt`, to `out`."""
    tensors = _checkpoint(ckpt)
    kvs = [encode_kv(k, GGUFValueType(vt), v, None if it is None else GGUFValueType(it))
           for k, vt, it, v in recipe["kvs"]]
    outs = []
    for s in recipe["tensors"]:
        data = _apply(s["op"], [tensors[n] for n in s["from"]])
        outs.append(OutTensor(s["name"], tuple(s["ne"]), s["type"], len(data), produce=lambda d=data: iter([d])))
    with open(out, "wb") as fh:
        write_gguf(fh, kvs, outs, alignment=recipe["alignment"], layout=CONVERTER)
    return out
