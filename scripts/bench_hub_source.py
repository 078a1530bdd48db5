#!/usr/bin/env python3
"""Benchmark `mtpgraft attach --mtp-from hf://...` on the loopback Hub against the same graft from a
local donor, and against what users do today: download the whole donor, then graft.

Generates a Q8_0 qwen35-shaped donor with an MTP block (default ~360 MB) and the same model without
it as the base, serves the donor from tests/fakehub.py (the Hub's resolve with Range and the CDN
redirect, counting the bytes it sends), and runs each way as a separate `mtpgraft` process:

- hf:// cold: empty mtpgraft cache (headers + MTP tensors travel);
- hf:// again: the same command with the cache kept (nothing should travel);
- local donor: the donor file already on disk;
- download + local: hf_hub_download of the whole donor into a fresh HF cache, then the local graft.

Prints bytes fetched, wall time, and the ratios (fetched / donor size, fetched / (MTP + header)).

    .venv/bin/python scripts/bench_hub_source.py --dir /tmp/mtpgraft-bench-hub
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import repeated
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from mtpgraft.gguf_io import GGUFModel, OutTensor, encode_kv, tensor_nbytes, write_gguf

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the loopback Hub is a test helper
from fakehub import FakeHub  # noqa: E402

N_EMBD, N_FF, VOCAB = 2048, 6144, 16384
BLOB = np.random.default_rng(0).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes()


def _layer(i: int, mtp: bool) -> list[tuple[str, tuple[int, ...], Q]]:
    p = f"blk.{i}."
    t = [(p + "attn_norm.weight", (N_EMBD,), Q.F32), (p + "attn_q.weight", (N_EMBD, 2 * N_EMBD), Q.Q8_0),
         (p + "attn_k.weight", (N_EMBD, 512), Q.Q8_0), (p + "attn_v.weight", (N_EMBD, 512), Q.Q8_0),
         (p + "attn_output.weight", (N_EMBD, N_EMBD), Q.Q8_0), (p + "post_attention_norm.weight", (N_EMBD,), Q.F32),
         (p + "ffn_gate.weight", (N_EMBD, N_FF), Q.Q8_0), (p + "ffn_up.weight", (N_EMBD, N_FF), Q.Q8_0),
         (p + "ffn_down.weight", (N_FF, N_EMBD), Q.Q8_0)]
    if mtp:
        t += [(p + "nextn.eh_proj.weight", (2 * N_EMBD, N_EMBD), Q.Q8_0), (p + "nextn.enorm.weight", (N_EMBD,), Q.F32),
              (p + "nextn.hnorm.weight", (N_EMBD,), Q.F32), (p + "nextn.shared_head_norm.weight", (N_EMBD,), Q.F32)]
    return t


def make(path: Path, trunk: int, with_mtp: bool) -> None:
    kvs = [encode_kv("general.architecture", V.STRING, "qwen35"), encode_kv("general.name", V.STRING, "bench"),
           encode_kv("qwen35.block_count", V.UINT32, trunk + with_mtp),
           encode_kv("qwen35.embedding_length", V.UINT32, N_EMBD), encode_kv("general.file_type", V.UINT32, 7),
           encode_kv("tokenizer.ggml.model", V.STRING, "gpt2"),
           encode_kv("tokenizer.ggml.tokens", V.ARRAY, [f"tok{i}" for i in range(VOCAB)], V.STRING)]
    if with_mtp:
        kvs.insert(3, encode_kv("qwen35.nextn_predict_layers", V.UINT32, 1))
    specs: list[tuple[str, tuple[int, ...], Q]] = [("output.weight", (N_EMBD, VOCAB), Q.Q8_0),
                                                   ("token_embd.weight", (N_EMBD, VOCAB), Q.Q8_0)]
    for i in range(trunk):
        specs += _layer(i, False)
    specs.append(("output_norm.weight", (N_EMBD,), Q.F32))
    if with_mtp:
        specs += _layer(trunk, True)
    tensors = [OutTensor(n, ne, int(t), tensor_nbytes(t, ne), produce=repeated(BLOB, tensor_nbytes(t, ne)))
               for n, ne, t in specs]
    with open(path, "wb") as fh:
        write_gguf(fh, kvs, tensors, alignment=32)


def run(cmd: list[str], env: dict[str, str]) -> float:
    os.sync()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed: {p.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mtpgraft-bench-hub"))
    ap.add_argument("--trunk", type=int, default=4, help="trunk layers (~56 MB each)")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    d = args.dir
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    donor, base = d / "Bench-Q8_0.gguf", d / "Bench-base-Q8_0.gguf"
    make(donor, args.trunk, True)
    make(base, args.trunk, False)
    m = GGUFModel(donor)
    mtp = sum(r.info.nbytes for r in m.refs if r.name.startswith(f"blk.{args.trunk}."))
    header = m.shards[0].data_offset
    size = donor.stat().st_size
    hub = FakeHub(d / "cas").start()
    try:
        hub.put_files("bench/Bench-GGUF", {donor.name: donor.read_bytes()})
        env = {**os.environ, "HF_HOME": str(d / "hf_home"), "MTPGRAFT_CACHE_DIR": str(d / "mtpgraft_cache"),
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        env.pop("HF_TOKEN", None)
        mg = [sys.executable, "-m", "mtpgraft", "-q", "attach", str(base), "--mtp-type", "keep", "--force"]
        rows = []
        for name, extra in (("hf:// cold", True), ("hf:// again", False)):
            sent = hub.bytes_sent
            if extra:
                shutil.rmtree(d / "mtpgraft_cache", ignore_errors=True)
            t = run(mg + ["--mtp-from", f"hf://bench/Bench-GGUF/{donor.name}", "--endpoint", hub.url,
                          "-o", str(d / "out-hf.gguf")], env)
            rows.append((name, hub.bytes_sent - sent, t))
        t = run(mg + ["--mtp-from", str(donor), "-o", str(d / "out-local.gguf")], env)
        rows.append(("local donor", 0, t))
        sent = hub.bytes_sent
        dl = [sys.executable, "-c", "import sys; from huggingface_hub import hf_hub_download as d; "
              "print(d('bench/Bench-GGUF', sys.argv[1], endpoint=sys.argv[2]))", donor.name, hub.url]
        env_dl = {**env, "HF_HOME": str(d / "hf_home_dl")}
        t_dl = run(dl, env_dl)
        t_local2 = run(mg + ["--mtp-from", str(donor), "-o", str(d / "out-local2.gguf")], env)
        rows.append(("download + local", hub.bytes_sent - sent, t_dl + t_local2))
    finally:
        hub.stop()
    print(f"donor {size / 1e6:.1f} MB: MTP tensors {mtp / 1e6:.2f} MB, header {header / 1e3:.1f} kB")
    print(f"{'run':<18} {'fetched':>14} {'wall s':>8}")
    for name, b, t in rows:
        print(f"{name:<18} {b:>14,} {t:>8.2f}")
    cold = rows[0][1]
    print(f"fetched / donor size       {cold / size:.4f}")
    print(f"fetched / (MTP + header)   {cold / (mtp + header):.4f}")
    print(f"time hf:// cold / local    {rows[0][2] / rows[2][2]:.2f}")
    print(f"time hf:// cold / download + local  {rows[0][2] / rows[3][2]:.2f}")
    a, b = (d / "out-hf.gguf").stat().st_size, (d / "out-local.gguf").stat().st_size
    print(f"output sizes: hf:// {a:,}, local {b:,} (tests/test_sources_hub.py: only the source label differs)")
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
