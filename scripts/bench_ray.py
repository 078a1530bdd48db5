#!/usr/bin/env python3
"""Benchmark the Ray executor against the local one, one run each, on a local Ray cluster.

1. Scheduling overhead: recipes/tiny.toml (graft, imatrix, 4 quants, the check, dry-run push) run by
   the local executor, then by the Ray executor on a cluster of 1 one-CPU worker node (steps one at a
   time, as locally: the difference is Ray's cost, joining the cluster included) and of 2 (independent
   steps at once).
2. Scaling: a batch of quant types of a bigger qwen35-shaped model (scripts/bench_quantize_overhead.py's
   generator, --layers/--scale), graft and imatrix already done, run with the Ray executor on clusters
   of 1, 2 and 4 one-CPU worker nodes (each node its own raylet and worker processes; quantize asks
   for 1 CPU and runs llama-quantize with 1 thread), and by the local executor with the same threads
   (jobs 1 and 2) for reference. Prints the wall time per cluster size and the speedup over 1 worker.

    python scripts/bench_ray.py [--dir /tmp/mtpgraft-raybench] [--layers 4 --scale 4]

On a machine with C cores the batch cannot scale past C workers: llama-quantize is CPU-bound.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray process on 127.0.0.1
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")  # the tiny recipe's dry-run push stays offline

ROOT = Path(__file__).resolve().parents[1]
TYPES = ["Q2_K", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q5_0"]


def cluster(workers: int):  # noqa: ANN201
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(workers):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    return c


def timed_run(recipe: Path, work: Path, **kw) -> tuple[float, float]:  # noqa: ANN003
    """(wall seconds, wall minus the seconds the steps themselves took: the executor's own cost)."""
    import ray

    from mtpgraft.recipe import load_recipe, run_recipe

    t0 = time.perf_counter()
    res = run_recipe(load_recipe(recipe, work_dir=work), **kw)
    wall = time.perf_counter() - t0
    if not res.ok:
        raise SystemExit(f"run failed: {[(s.step, s.message) for s in res.failed]}")
    if ray.is_initialized():
        ray.shutdown()
    return wall, wall - sum(s.seconds for s in res.steps)


def round_trip(address: str, n: int = 50) -> float:
    """Median seconds from submitting an empty task to having its result, on a joined cluster."""
    import statistics

    import ray

    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    f = ray.remote(lambda: None)
    ray.get(f.remote())  # a worker started
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        ray.get(f.remote())
        times.append(time.perf_counter() - t0)
    ray.shutdown()
    return statistics.median(times)


def overhead(d: Path) -> None:
    tiny = ROOT / "recipes" / "tiny.toml"
    local, local_own = timed_run(tiny, d / "tiny-local")
    c = cluster(1)
    try:
        rtt = round_trip(c.address)
        on_ray, ray_own = timed_run(tiny, d / "tiny-ray1", executor="ray", address=c.address)
    finally:
        c.shutdown()
    c = cluster(2)
    try:
        on_ray2, _ = timed_run(tiny, d / "tiny-ray2", executor="ray", address=c.address)
    finally:
        c.shutdown()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    from mtpgraft.recipe import load_recipe

    n = len(load_recipe(tiny).steps())
    print(f"tiny recipe, {n} steps: local {local:.2f} s (executor's own time {local_own:.2f} s); ray on 1 "
          f"one-CPU worker (steps one at a time, as locally) {on_ray:.2f} s (executor's own time "
          f"{ray_own:.2f} s, joining the cluster included: {(ray_own - local_own) / n:+.2f} s per step "
          f"over local); ray on 2 workers {on_ray2:.2f} s; an empty task's round trip {rtt * 1e3:.1f} ms")


def scaling(d: Path, layers: int, scale: int) -> None:
    import bench_quantize_overhead as bq
    import numpy as np

    from mtpgraft.testmodels import build_tiny_model

    bq.BLOB = (np.random.default_rng(0).standard_normal(4 << 20, dtype=np.float32) * 0.02).astype(np.float16).tobytes()
    tiny = build_tiny_model(d / "tiny.gguf", dtype="f16", layout="full", head="aligned")
    model = d / "big-F16.gguf"
    nbytes, _ = bq.build_model(tiny, model, layers=layers, scale=scale)
    text = f'[model]\nname = "big"\nbase = "{model}"\n\n[quantize]\ntypes = {TYPES!r}\nthreads = 1\n'
    recipes = {jobs: d / f"batch-jobs{jobs}.toml" for jobs in (1, 2)}
    for jobs, p in recipes.items():
        p.write_text(text.replace("'", '"') + f"jobs = {jobs}\n")
    base = d / "batch-base"
    timed_run(recipes[1], base, only=["graft"])
    print(f"quantize batch: {len(TYPES)} types of a {nbytes / 1e9:.2f} GB F16 model, 1 thread each")
    walls: dict[str | int, float] = {}
    for jobs, p in recipes.items():
        shutil.copytree(base, d / f"batch-local{jobs}")
        walls[f"local, jobs {jobs}"] = timed_run(p, d / f"batch-local{jobs}", resume=True)[0]
        print(f"  local, jobs {jobs}    {walls[f'local, jobs {jobs}']:7.2f} s")
    recipe = recipes[1]
    for n in (1, 2, 4):
        work = d / f"batch-ray{n}"
        shutil.copytree(base, work)
        c = cluster(n)
        try:
            walls[n] = timed_run(recipe, work, resume=True, executor="ray", address=c.address)[0]
        finally:
            c.shutdown()
        print(f"  ray, {n} worker{'s' if n > 1 else ' '}    {walls[n]:7.2f} s   speedup over 1 worker "
              f"{walls[1] / walls[n]:.2f}x   vs local jobs 1 {walls['local, jobs 1'] / walls[n]:.2f}x")
    print(f"  (this machine has {os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mtpgraft-raybench"))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--skip-overhead", action="store_true")
    a = ap.parse_args()
    shutil.rmtree(a.dir, ignore_errors=True)
    a.dir.mkdir(parents=True)
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        if not a.skip_overhead:
            overhead(a.dir)
        scaling(a.dir, a.layers, a.scale)
    finally:
        shutil.rmtree(a.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
