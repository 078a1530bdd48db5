#!/usr/bin/env python3
"""Benchmark `mtpgraft quantize` against running the same llama-quantize commands directly, one run.

Generates a qwen35-shaped F16 model with an MTP block (the tiny test model's metadata and tensor
names, every width scaled by --scale, --layers trunk layers) and an importance matrix for its trunk,
then quantizes the same batch twice:

  direct:   the exact llama-quantize commands of `mtpgraft quantize --dry-run`, run one after the
            other with subprocess (what a shell script would do), outputs written straight to disk;
  mtpgraft: `python -m mtpgraft quantize MODEL --types ... --imatrix ...` as a fresh process (Python
            start-up, planning, verification of every output, renames included).

and prints both wall times, their ratio, and mtpgraft's own seconds (its wall time minus the time
inside llama-quantize, which other processes on the machine cannot inflate).

    python scripts/bench_quantize_overhead.py --dir /tmp/mtpgraft-qbench

With --rules-table it instead runs every llama-quantize type on the tiny test model with an imatrix,
with and without mtpgraft's MTP rules, and prints which types abort without them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import repeated
from gguf import GGUFValueType as V

from mtpgraft.gguf_io import GGUFFile, OutTensor, encode_kv, tensor_nbytes, write_gguf

BLOB = b""  # a few MB of real F16 values (no NaN/Inf: llama-quantize validates rows), repeated


def _scaled(ne: tuple[int, ...], name: str, k: int) -> tuple[int, ...]:
    if name in ("token_embd.weight", "output.weight"):
        return (ne[0] * k,) + ne[1:]  # the vocabulary stays the tokenizer's
    return tuple(d * k if d % 64 == 0 else d for d in ne)


def build_model(tiny: Path, out: Path, *, layers: int, scale: int) -> tuple[int, list[str]]:
    """Write the big model; return (bytes of tensor data, names of trunk weights for the imatrix)."""
    g = GGUFFile(tiny)
    trunk = int(g.get("qwen35.block_count")) - 1
    by_layer: dict[int, list] = {}
    shared = []
    for t in g.tensors:
        if t.name.startswith("blk."):
            by_layer.setdefault(int(t.name.split(".")[1]), []).append(t)
        else:
            shared.append(t)
    tensors: list[OutTensor] = []
    weights: list[str] = []

    def add(name: str, ne: tuple[int, ...], gtype: int) -> None:
        ne = _scaled(ne, name, scale)
        tensors.append(OutTensor(name, ne, gtype, tensor_nbytes(gtype, ne), produce=repeated(BLOB, tensor_nbytes(gtype, ne))))

    for t in shared:
        add(t.name, t.ne, t.ggml_type)
    for i in range(layers):
        src = i % trunk if i < layers - 1 else trunk - 1  # keep the full-attention layer last
        for t in by_layer[src]:
            name = f"blk.{i}." + t.name.split(".", 2)[2]
            add(name, t.ne, t.ggml_type)
            if len(t.ne) >= 2 and name.endswith("weight") and "_norm" not in name and "conv1d" not in name:
                weights.append(name)
    for t in by_layer[trunk]:  # the MTP block, renumbered after the trunk
        add(f"blk.{layers}." + t.name.split(".", 2)[2], t.ne, t.ggml_type)
    if "token_embd.weight" in {t.name for t in shared}:
        weights.append("output.weight")
    rec = [True] * layers
    for i in range(3, layers, 4):
        rec[i] = False
    rec[layers - 1] = False
    kvs = []
    for kv in g.kv.values():
        if kv.key == "qwen35.block_count":
            kv = encode_kv(kv.key, V.UINT32, layers + 1)
        elif kv.key == "qwen35.attention.recurrent_layers":
            kv = encode_kv(kv.key, V.ARRAY, rec + [False], V.BOOL)
        elif kv.key == "qwen35.full_attention_interval":
            continue  # the explicit array above decides
        kvs.append(kv)
    with open(out, "wb") as f:
        write_gguf(f, kvs, tensors, alignment=32)
    return sum(t.nbytes for t in tensors), weights


def build_imatrix(model: Path, out: Path, weights: list[str]) -> None:
    """An imatrix like llama-imatrix's: entries for the trunk's weights, none for the MTP block."""
    import gguf

    m = GGUFFile(model)
    ne0 = {t.name: t.ne[0] for t in m.tensors}
    w = gguf.GGUFWriter(out, arch=None)  # type: ignore[arg-type]
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", ["bench.txt"])
    w.add_uint32("imatrix.chunk_count", 10)
    w.add_uint32("imatrix.chunk_size", 512)
    rng = np.random.default_rng(1)
    for name in weights:
        w.add_tensor(f"{name}.in_sum2", (rng.random(ne0[name], dtype=np.float32) + 0.5) * 10)
        w.add_tensor(f"{name}.counts", np.array([10.0], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # includes grandchildren the child waited for
    return r.ru_utime + r.ru_stime


def rules_table(work: Path) -> int:
    """Which llama-quantize types abort on the MTP block without mtpgraft's --tensor-type rules."""
    from mtpgraft.errors import ToolFailedError
    from mtpgraft.ggml_types import FILE_TYPES as FTYPES
    from mtpgraft.ggml_types import FLOAT_FILE_TYPES as FLOAT_FTYPES
    from mtpgraft.imatrix import execute_imatrix, plan_imatrix
    from mtpgraft.quantize import plan_quantize
    from mtpgraft.testmodels import build_tiny_model
    from mtpgraft.tools import run_tool

    cal = Path(__file__).resolve().parents[1] / "mtpgraft" / "data" / "calibration-tiny.txt"
    model = build_tiny_model(work / "tiny-F16.gguf", dtype="f16", layout="full", head="aligned")
    imx = work / "tiny.imatrix.gguf"
    imx.unlink(missing_ok=True)
    execute_imatrix(plan_imatrix(model, cal, imx, ctx=128, chunks=8, batch=128))
    print("| type | without the MTP rules | with them |")
    print("|---|---|---|")
    for t in (t for t in FTYPES if t not in FLOAT_FTYPES):
        job = plan_quantize(model, t, imatrix=imx, out_dir=work, name="r").jobs[0]
        outcomes = []
        for with_rules in (False, True):
            cmd = list(job.command)
            if not with_rules:
                i = cmd.index("--tensor-type")
                del cmd[i:i + 2]
            try:
                run_tool(cmd, cwd=job.cwd)
                outcomes.append("ok")
            except ToolFailedError as e:
                lines = [x for x in e.output_tail.splitlines() if "failed to quantize:" in x]
                outcomes.append("**abort**: " + (lines[-1].split("failed to quantize: ", 1)[1] if lines else str(e)))
            Path(job.tmp_path).unlink(missing_ok=True)
        print(f"| {t} | {outcomes[0]} | {outcomes[1]} |")
    return 0


def main() -> int:
    global BLOB
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=None, help="Work directory (default: a temporary one).")
    ap.add_argument("--types", default="Q8_0,Q4_K_M,IQ4_XS,IQ2_XXS")
    ap.add_argument("--layers", type=int, default=16, help="Trunk layers (the MTP block comes on top).")
    ap.add_argument("--scale", type=int, default=8, help="Width multiplier over the tiny model (256 -> 2048).")
    ap.add_argument("--keep", action="store_true", help="Keep the generated files.")
    ap.add_argument("--rules-table", action="store_true",
                    help="Print which types abort without the MTP rules, and stop.")
    args = ap.parse_args()
    if args.rules_table:
        with tempfile.TemporaryDirectory(prefix="mtpgraft-rules-") as d:
            return rules_table(Path(args.dir or d))

    from mtpgraft.quantize import plan_quantize
    from mtpgraft.testmodels import build_tiny_model

    work = args.dir or Path(tempfile.mkdtemp(prefix="mtpgraft-qbench-"))
    work.mkdir(parents=True, exist_ok=True)
    tiny = build_tiny_model(work / "tiny.gguf", dtype="f16", layout="full", head="aligned")
    BLOB = (np.random.default_rng(0).standard_normal(4 << 20, dtype=np.float32) * 0.02).astype(np.float16).tobytes()
    model = work / "bench-F16.gguf"
    t0 = time.perf_counter()
    nbytes, weights = build_model(tiny, model, layers=args.layers, scale=args.scale)
    imatrix = work / "bench.imatrix.gguf"
    build_imatrix(model, imatrix, weights)
    print(f"model: {model} ({nbytes / 1e9:.2f} GB of F16 tensors, {args.layers} + 1 MTP layers; "
          f"built in {time.perf_counter() - t0:.1f}s)")

    direct_dir, mtp_dir = work / "direct", work / "mtpgraft"
    for d in (direct_dir, mtp_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
    plan = plan_quantize(model, args.types, imatrix=imatrix, out_dir=mtp_dir, name="bench")
    # 1. the same commands, run directly
    c0 = _child_cpu()
    t0 = time.perf_counter()
    for j in plan.jobs:
        cmd = [direct_dir / f"bench-{j.quant_type}.gguf" if c == j.tmp_path else c for c in j.command]
        subprocess.run([str(c) for c in cmd], cwd=j.cwd, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    direct = time.perf_counter() - t0
    direct_cpu = _child_cpu() - c0
    # 2. mtpgraft quantize, a fresh process
    c0 = _child_cpu()
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "mtpgraft", "-q", "quantize", str(model), "--types", args.types,
                        "--imatrix", str(imatrix), "--out-dir", str(mtp_dir), "--name", "bench", "--json"],
                       check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    mtp_cpu = _child_cpu() - c0
    res = json.loads(p.stdout)
    assert all(o["status"] == "done" for o in res["outputs"]), res["outputs"]
    own = wall - res["tool_s"]
    sizes = {o["quant_type"]: o["bytes"] for o in res["outputs"]}
    direct_sizes = {j.quant_type: (direct_dir / f"bench-{j.quant_type}.gguf").stat().st_size for j in plan.jobs}
    assert sizes == direct_sizes, (sizes, direct_sizes)  # the same bytes come out either way

    print(f"batch: {args.types} on {os.cpu_count()} CPUs")
    print(f"llama-quantize directly:  {direct:8.2f} s")
    print(f"mtpgraft quantize:        {wall:8.2f} s  (of which inside llama-quantize {res['tool_s']:.2f} s)")
    print(f"ratio mtpgraft / direct:  {wall / direct:8.4f}  ({(wall / direct - 1) * 100:+.2f}%)  wall time")
    print(f"CPU time (user+sys):      direct {direct_cpu:.2f} s, mtpgraft {mtp_cpu:.2f} s, ratio "
          f"{mtp_cpu / direct_cpu:.4f} ({(mtp_cpu / direct_cpu - 1) * 100:+.2f}%): what contention on a shared "
          "machine moves least")
    print(f"mtpgraft's own time:      {own:8.2f} s  ({own / res['tool_s'] * 100:.2f}% of the tool time: "
          "start-up, planning, verifying 4 outputs, renames)")
    if not args.keep and args.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
