#!/usr/bin/env python3
"""Benchmark `mtpgraft attach --mtp-from hf://... --heads K` on the loopback Hub: bytes fetched
against the bytes needed (the header and the first K heads' tensors) for a three-head donor.

Writes the tiny Step-3.5 family (mtpgraft.testmodels: three chained MTP heads, F32 so the heads weigh
more than the header) as the donor and its trunk-only file as the base, serves the donor from
tests/fakehub.py (which counts the bytes it sends) and runs `mtpgraft attach ... --heads K` for K = 1, 2, 3
as new processes, each with an empty mtpgraft cache. Prints, per K, the bytes fetched, the bytes needed
and their ratio, and the fetched share of the donor.

    .venv/bin/python scripts/bench_heads_remote.py --dir /tmp/mtpgraft-bench-heads
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from mtpgraft.gguf_io import GGUFModel
from mtpgraft.inspection import layer_of
from mtpgraft.testmodels import family
from mtpgraft.testmodels.families import SPECS

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the loopback Hub is a test helper
from fakehub import FakeHub  # noqa: E402

REPO, ARCH = "bench/Chain-GGUF", "step35"


def needed(donor: Path, k: int) -> tuple[int, int]:
    """(header bytes, bytes of the first k heads' tensors) of the donor."""
    m = GGUFModel(donor)
    trunk = m.get(f"{ARCH}.block_count") - m.get(f"{ARCH}.nextn_predict_layers")
    heads = sum(r.info.nbytes for r in m.refs if (lo := layer_of(r.name)) and trunk <= lo[0] < trunk + k)
    return m.shards[0].data_offset, heads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mtpgraft-bench-heads"))
    d = ap.parse_args().dir
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    spec = SPECS[ARCH]
    donor = family.build(spec, d / "Chain-F32.gguf", layout="full", dtype="f32")
    base = family.build(spec, d / "base.gguf", layout="base", dtype="f32")
    hub = FakeHub(d / "cas").start()
    try:
        hub.put_files(REPO, {donor.name: donor.read_bytes()})
        print(f"donor: {donor.stat().st_size:,} bytes, {spec.nextn} heads after a {spec.trunk_layers}-layer trunk")
        print(f"{'K':>2} {'fetched':>10} {'needed':>10} {'fetched/needed':>15} {'fetched/donor':>14} {'wall s':>7}")
        for k in range(1, spec.nextn + 1):
            env = {**os.environ, "HF_HOME": str(d / f"hf{k}"), "MTPGRAFT_CACHE_DIR": str(d / f"cache{k}"),
                   "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
            env.pop("HF_TOKEN", None)
            sent, t0 = hub.bytes_sent, time.perf_counter()
            subprocess.run([sys.executable, "-m", "mtpgraft", "-q", "attach", str(base), "--mtp-from",
                            f"hf://{REPO}/{donor.name}", "--heads", str(k), "-o", str(d / f"out{k}.gguf"),
                            "--endpoint", hub.url], env=env, check=True, stdout=subprocess.DEVNULL)
            wall, fetched = time.perf_counter() - t0, hub.bytes_sent - sent
            header, heads = needed(donor, k)
            print(f"{k:>2} {fetched:>10,} {header + heads:>10,} {fetched / (header + heads):>15.4f} "
                  f"{fetched / donor.stat().st_size:>14.4f} {wall:>7.2f}")
    finally:
        hub.stop()


if __name__ == "__main__":
    main()
