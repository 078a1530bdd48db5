#!/usr/bin/env python3
"""Benchmark `mtpgraft attach` against `cp --reflink=auto` of the same output bytes, and gguf's own
gguf_new_metadata.py rewriting the same base, in one run.

Generates a Q8_0 base (trunk only) in the tensor layout of the tiny qwen35 test models
(mtpgraft.testmodels.synthetic) at Qwen3.6-27B-like sizes of --size-gb and a donor holding the MTP block,
then for each tool runs it --reps times (alternating) and prints median wall time, the ratio to
cp, peak RSS (GNU time's %M: resident pages, memory-mapped file pages included), the new disk
space each output took (statvfs of --dir before and after, synced) and, for attach, how much of
the body shares the base's blocks (FIEMAP). With --sync every timed run ends with `sync FILE` of
its output, so writeback is paid inside the timing by every tool.

    python scripts/bench_attach.py --size-gb 4 --dir /tmp/mtpgraft-bench
    python scripts/bench_attach.py --size-gb 12 --btrfs 14 --dir /tmp/mtpgraft-btrfs   # root: loop-mounted btrfs
    python scripts/bench_attach.py --size-gb 12 --xfs 14 --dir /tmp/mtpgraft-xfs       # root: XFS, reflink=1
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from benchlib import repeated
from gguf import GGMLQuantizationType as Q
from gguf import GGUFValueType as V

from mtpgraft.gguf_io import OutTensor, encode_kv, tensor_nbytes, write_gguf
from mtpgraft.testmodels.synthetic import Dims, qwen35_specs

N_EMBD = 4096
N_FF = 12288
VOCAB = 248320  # Qwen3.6's vocabulary: token_embd/output are sized by it, and the header holds as many
N_MERGES = 247587  # tokens, and BPE merges, as the real tokenizer (parsing them is part of every run)


def _blob() -> bytes:
    # Random Q8_0-like bytes, repeated: incompressible and cheap to produce.
    return np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()


BLOB = b""
COLD = ""  # "inputs": evict the model files from the page cache before each run; "all": drop every cache
EVICT: list[Path] = []


# Qwen3.6-27B-like sizes in the tensor layout of the tiny test models (mtpgraft.testmodels.synthetic).
DIMS = Dims(n_embd=N_EMBD, n_ff=N_FF, n_head=32, n_head_kv=8, head_dim=128, ssm_state=128, ssm_groups=16,
            ssm_rank=48, vocab=VOCAB)


def _specs(trunk: int, layout: str) -> list[tuple[str, tuple[int, ...], Q]]:
    """Q8_0 weights, F32 norms / 1-D tensors / rows llama.cpp keeps in F32 (ssm_conv1d)."""
    return [(n, ne, Q.Q8_0 if len(ne) > 1 and ne[0] % 32 == 0 else Q.F32)
            for n, ne in qwen35_specs("qwen35", trunk=trunk, layout=layout, dims=DIMS)]


def make(path: Path, trunk: int, with_mtp: bool, only_mtp: bool = False) -> None:
    bc = trunk + (1 if with_mtp else 0)
    kvs = [encode_kv("general.architecture", V.STRING, "qwen35"),
           encode_kv("general.name", V.STRING, "bench"),
           encode_kv("qwen35.block_count", V.UINT32, bc),
           encode_kv("qwen35.embedding_length", V.UINT32, N_EMBD),
           encode_kv("general.file_type", V.UINT32, 7),
           encode_kv("tokenizer.ggml.model", V.STRING, "gpt2"),
           encode_kv("tokenizer.ggml.tokens", V.ARRAY, [f"t{i}" for i in range(VOCAB)], V.STRING),
           encode_kv("tokenizer.ggml.merges", V.ARRAY, [f"t{i} t{i + 1}" for i in range(N_MERGES)], V.STRING)]
    if with_mtp:
        kvs.insert(3, encode_kv("qwen35.nextn_predict_layers", V.UINT32, 1))
    specs = _specs(trunk, "mtp-only" if only_mtp else ("full" if with_mtp else "base"))
    tensors = [OutTensor(n, ne, int(t), tensor_nbytes(t, ne), produce=repeated(BLOB, tensor_nbytes(t, ne)))
               for n, ne, t in specs]
    with open(path, "wb") as fh:
        write_gguf(fh, kvs, tensors, alignment=32)


SYNC = False
# Python's compiled modules are cached as in any installed package, whatever this shell says.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


SETTLE = False  # the benchmark's own mount: freeze and thaw it before reading its space
_FIFREEZE, _FITHAW = 0xC0045877, 0xC0045878  # linux/fs.h: _IOWR('X', 119 / 120, int)


def _used(d: Path) -> int:
    """Bytes in use on d's filesystem once its pending work is done. On the benchmark's own mount
    a freeze and thaw waits for all of it (btrfs commits, XFS finishes freeing deleted files in the
    background, which a sync does not wait for); a shared filesystem is only synced."""
    os.sync()
    fd = os.open(d, os.O_RDONLY)
    try:
        if SETTLE:
            fcntl.ioctl(fd, _FIFREEZE, 0)
            fcntl.ioctl(fd, _FITHAW, 0)
        st = os.fstatvfs(fd)
    finally:
        os.close(fd)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@dataclass(frozen=True)
class Run:
    wall: float  # seconds, `sync OUTPUT` included with --sync
    rss: int  # peak resident bytes
    new: int  # new disk space (statvfs, after sync)
    alloc: int  # the output's allocated bytes (st_blocks)
    stdout: str
    read: int  # bytes the tool read from storage (getrusage ru_inblock: page-cache misses)
    written: int  # bytes the tool dirtied for storage (ru_oublock: shared blocks are not written)
    cpu: float  # user + system seconds


def timed(cmd: list[str], out: Path | None = None) -> Run:
    """Run `cmd` once, measured (see Run). RSS, I/O and CPU come from GNU time's child: a
    child forked straight from this (large) Python process would inherit its high-water mark."""
    gnu_time = shutil.which("time") or "/usr/bin/time"
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-time-{os.getpid()}.txt"
    # Flush the previous run's dirty pages first (untimed), so no tool pays for another's writeback,
    # and with --cache cold every run finds the model files out of the page cache: each tool reads its inputs from disk,
    # as it does for a 16-60 GB model that never fits in memory.
    before = _used(out.parent) if out is not None else 0
    if COLD == "all":
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    elif COLD == "inputs":
        evict(EVICT)
    t0 = time.perf_counter()
    p = subprocess.run([gnu_time, "-o", str(report), "-f", "%M %I %O %U %S", *cmd], capture_output=True,
                       text=True, env=ENV)
    if SYNC and out is not None and p.returncode == 0:
        subprocess.run(["sync", str(out)], check=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed: {p.stderr[-2000:]}")
    kb, blocks_in, blocks_out, user, system = report.read_text().split()[-5:]
    report.unlink()
    new = _used(out.parent) - before if out is not None else 0
    alloc = out.stat().st_blocks * 512 if out is not None else 0
    return Run(dt, int(kb) * 1024, new, alloc, p.stdout, int(blocks_in) * 512, int(blocks_out) * 512,
               float(user) + float(system))


_CACHE_WORDS = {"inputs": "model files evicted from the page cache before each run",
                "all": "whole page cache dropped before each run", "": "warm page cache"}


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (they are clean: _used synced them), so each tool
    reads the model from disk while its own program files stay as cached as on any machine."""
    for p in paths:
        if p.exists():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _fs_type(d: Path) -> str:
    r = subprocess.run(["stat", "-f", "-c", "%T", str(d)], capture_output=True, text=True)
    return r.stdout.strip() or "?"


_MKFS = {"btrfs": ["mkfs.btrfs", "-q", "-f"], "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]}


def _mount_cow(d: Path, fs: str, size_gb: float) -> tuple[Path, Path]:
    """A sparse image in `d` holding a fresh btrfs or XFS (reflink=1), loop-mounted at d/mnt (root only)."""
    d.mkdir(parents=True, exist_ok=True)
    img, mnt = d / f"{fs}.img", d / "mnt"
    mnt.mkdir(exist_ok=True)
    with open(img, "wb") as f:
        f.truncate(int(size_gb * 1e9))
    try:
        subprocess.run([*_MKFS[fs], str(img)], check=True)
        subprocess.run(["mount", "-t", fs, "-o", "loop", str(img), str(mnt)], check=True)
    except BaseException:
        img.unlink()
        raise
    return img, mnt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size-gb", type=float, default=4.0)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/mtpgraft-bench"),
                    help="where the files go (put it on btrfs/XFS to see reflinks)")
    ap.add_argument("--btrfs", type=float, default=None, metavar="GB",
                    help="make a loop-mounted btrfs of GB in --dir and run there (root; removed afterwards)")
    ap.add_argument("--xfs", type=float, default=None, metavar="GB",
                    help="the same with XFS, reflink=1 (mkfs.xfs wants at least 0.3 GB)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-new-metadata", action="store_true", help="skip gguf_new_metadata.py")
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--sync", action="store_true", help="end every timed run with `sync OUTPUT`")
    ap.add_argument("--cache", choices=("cold", "cold-all", "warm"), default="cold",
                    help="cold: evict the model files (inputs and outputs) from the page cache before every "
                         "run; cold-all: drop the whole page cache, Python's own files too (needs root); "
                         "warm: keep it")
    args = ap.parse_args()
    if args.btrfs and args.xfs:
        ap.error("--btrfs and --xfs: one filesystem at a time")

    global BLOB, COLD, SYNC, SETTLE
    COLD, SYNC = {"cold": "inputs", "cold-all": "all", "warm": ""}[args.cache], args.sync
    if COLD == "all" and not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        print("cannot drop the page cache (not root?): evicting the model files only", file=sys.stderr)
        COLD = "inputs"
    img = None
    if args.btrfs or args.xfs:
        img, d = _mount_cow(args.dir, "btrfs" if args.btrfs else "xfs", args.btrfs or args.xfs)
        SETTLE = True
    else:
        d = args.dir
        d.mkdir(parents=True, exist_ok=True)
    try:
        run_bench(d, args)
    finally:
        if img is not None:
            subprocess.run(["umount", str(d)], check=False)
            img.unlink(missing_ok=True)


def run_bench(d: Path, args: argparse.Namespace) -> None:
    global BLOB
    BLOB = _blob()
    four = sum(tensor_nbytes(t, ne) for n, ne, t in _specs(4, "base") if n.startswith("blk."))
    layer_bytes = four // 4  # three linear-attention layers and one full-attention layer
    rest = sum(tensor_nbytes(t, ne) for n, ne, t in _specs(4, "base") if not n.startswith("blk."))
    trunk = max(2, int((args.size_gb * 1e9 - rest) // layer_bytes))  # embeddings + output: ~2 GB of it
    base, donor = d / "base.gguf", d / "donor.gguf"
    print(f"generating base ({trunk} layers) and MTP donor in {d} ...", file=sys.stderr)
    make(base, trunk, with_mtp=False)
    make(donor, trunk, with_mtp=True, only_mtp=True)
    out, cp_out, nm_out = d / "out.gguf", d / "cp.gguf", d / "newmeta.gguf"
    mtpgraft = [sys.executable, "-m", "mtpgraft", "-q", "attach", str(base), "--mtp-from", str(donor),
                "-o", str(out), "--mtp-type", "keep", "--json"]
    timed(mtpgraft)  # warm the page cache and produce the bytes cp will copy
    ref = d / "ref.gguf"
    out.replace(ref)
    EVICT[:] = [base, donor, ref]
    size = ref.stat().st_size
    body = size_of_tensors(base)
    rows: dict[str, list[Run]] = {"cp --reflink=auto": [], "mtpgraft attach": []}
    newmeta = shutil.which("gguf-new-metadata")
    if newmeta and not args.no_new_metadata:
        rows["gguf_new_metadata.py"] = []
    cmds = {"cp --reflink=auto": (["cp", "--reflink=auto", str(ref), str(cp_out)], cp_out),
            "mtpgraft attach": (mtpgraft, out)}
    if "gguf_new_metadata.py" in rows:
        cmds["gguf_new_metadata.py"] = ([newmeta, str(base), str(nm_out), "--force", "--general-name", "bench2"],
                                        nm_out)
    for rep in range(args.reps):
        # Every tool writes a new file: deleting a 12 GB output is not part of anyone's time. The
        # order alternates (ABBA...) so that no tool always runs right after the same other one.
        for name in (list(cmds) if rep % 2 == 0 else list(reversed(cmds))):
            cmd, dst = cmds[name]
            rows[name].append(timed(cmd, dst))
            dst.unlink()
    shared = [json.loads(r.stdout).get("body_shared_bytes") for r in rows["mtpgraft attach"]]
    cp_t = statistics.median(r.wall for r in rows["cp --reflink=auto"])
    print(f"output: {size / 1e9:.2f} GB ({trunk} trunk layers + MTP block, body {body / 1e9:.2f} GB) on "
          f"{_fs_type(d)}, {args.reps} reps (order alternating), median wall time, {_CACHE_WORDS[COLD]}"
          + (", each run ends with sync OUTPUT" if SYNC else ""))
    # statvfs: what the filesystem lost (the truth on a private btrfs, noisy on a shared root fs);
    # st_blocks: the output's allocation (exact where nothing is shared, the full size where it is);
    # read / written: what the tool itself made the storage do (getrusage), the same on any disk
    print(f"{'tool':<24} {'wall s':>8} {'x cp':>7} {'CPU s':>6} {'peak RSS MB':>12} {'read MB':>8} "
          f"{'written MB':>10} {'fs used MB':>11} {'st_blocks MB':>13}   runs (s)")
    for name, rs in rows.items():
        t, cpu, read, written, new, alloc = (statistics.median(getattr(x, k) for x in rs)
                                             for k in ("wall", "cpu", "read", "written", "new", "alloc"))
        print(f"{name:<24} {t:>8.3f} {t / cp_t:>7.3f} {cpu:>6.2f} {max(x.rss for x in rs) / 1e6:>12.1f} "
              f"{read / 1e6:>8.1f} {written / 1e6:>10.1f} {new / 1e6:>11.1f} {alloc / 1e6:>13.1f}   "
              + " ".join(f"{x.wall:.3f}" for x in rs))
    att = rows["mtpgraft attach"]
    if shared and shared[0] is not None:
        new_space = statistics.median(x.new for x in att)
        print(f"attach: body blocks shared with the base (FIEMAP) {min(shared) / body:.2%} "
              f"({min(shared) / 1e9:.2f} of {body / 1e9:.2f} GB); new disk space {new_space / 1e6:.1f} MB, "
              f"of which the header and MTP block are {(size - body) / 1e6:.1f} MB: the body's own bytes written again "
              f"<= {max(0.0, new_space - (size - body)) / body:.3%} of the body")
    pairs = [a.wall / c.wall for a, c in zip(att, rows["cp --reflink=auto"], strict=True)]
    print(f"attach / cp, run by run (each pair back to back): median {statistics.median(pairs):.3f}, "
          f"best {min(pairs):.3f}, worst {max(pairs):.3f}; attach - cp, median "
          f"{statistics.median(a.wall - c.wall for a, c in zip(att, rows['cp --reflink=auto'], strict=True)):+.3f} s")
    fixed = statistics.median(timed([*mtpgraft, "--dry-run"]).wall for _ in range(3))
    print(f"attach's fixed part (start-up, both headers, the plan: --dry-run, model headers cached): {fixed:.3f} s")
    if not args.keep:
        for p in (base, donor, ref):
            p.unlink(missing_ok=True)


def size_of_tensors(path: Path) -> int:
    from mtpgraft.gguf_io import GGUFModel

    return GGUFModel(path).tensor_bytes_total()


if __name__ == "__main__":
    main()
