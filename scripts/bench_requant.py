#!/usr/bin/env python3
"""Benchmark the MTP block's numpy type conversion (`attach --mtp-type q8_0` of a BF16/F16/F32 head)
as attach ran it before and as it runs it now, in one run.

For a Qwen3.6-27B-sized MTP block (about 0.42 G parameters by default) in BF16, converts it to
Q8_0 three ways and prints wall time, parameters per second and the ratio to the first: as attach
converted before (16 MB chunks on one thread), in attach's chunks now on one thread, and on
requant.workers() threads as attach runs it now. The bytes of every way are compared.

    python scripts/bench_requant.py --params 0.42

(Qwen3.6-27B: 0.42 G; GLM-4.5-Air's MTP layer, with its experts: several G.)
"""

from __future__ import annotations

import argparse
import hashlib
import time

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

from mtpgraft import requant
from mtpgraft.graft import CONVERT_CHUNK_BYTES

NE0 = 5120  # Qwen3.6-27B's hidden size: the MTP block's rows


def chunks(n_params: int, chunk_bytes: int) -> list[np.ndarray]:
    """BF16 rows as read from the source file, `chunk_bytes` of f32 a chunk (random: nothing repeats)."""
    rng = np.random.default_rng(0)
    rows, n_rows = max(1, chunk_bytes // (NE0 * 4)), n_params // NE0
    out = []
    for r0 in range(0, n_rows, rows):
        f = rng.standard_normal((min(rows, n_rows - r0), NE0), dtype=np.float32)
        out.append(np.ascontiguousarray(quants.quantize(f, Q.BF16)).view(np.uint8))
    return out


def run(data: list[np.ndarray], workers: int) -> tuple[float, str]:
    h = hashlib.sha256()
    t0 = time.perf_counter()
    for b in requant.ordered_map(lambda raw: requant.convert(raw, Q.BF16, Q.Q8_0, NE0), data, workers):
        h.update(b)
    return time.perf_counter() - t0, h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=0.42, help="MTP block size in billions of parameters")
    args = ap.parse_args()
    n_params = int(args.params * 1e9)
    ways = [("before: 16 MB chunks, 1 thread", 16 << 20, 1), ("4 MB chunks, 1 thread", CONVERT_CHUNK_BYTES, 1),
            (f"now: 4 MB chunks, {requant.workers()} threads", CONVERT_CHUNK_BYTES, requant.workers())]
    n = n_params // NE0 * NE0
    print(f"BF16 -> Q8_0 of {n / 1e9:.3f} G parameters ({n * 2 / 1e9:.2f} GB in, rows of {NE0}), gguf.quants' maths")
    print(f"{'way':<36} {'wall s':>8} {'M params/s':>11} {'x before':>9}  bytes")
    first_t, first_h = None, None
    for name, size, w in ways:
        t, h = run(chunks(n_params, size), w)
        first_t, first_h = (t, h) if first_t is None else (first_t, first_h)
        print(f"{name:<36} {t:>8.3f} {n / t / 1e6:>11.1f} {first_t / t:>9.2f}  "
              f"{'identical' if h == first_h else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
