"""Hostile GGUFs made from the tiny test models, and a runner that holds every command to the
README's promises on them (one-line errors, no traceback, no hang, inputs unchanged, no partial file).

`variants(seeds, rng)` yields (class, name, writer) triples: each writer makes one corrupted file.
`run_case` runs one command on it, in process (CliRunner) or as a subprocess, and returns a RunRecord.
tests/test_fuzz.py runs a fixed seeded subset; scripts/fuzz.py runs the full corpus and prints figures.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGUFValueType as V

from mtpgraft import errors as _errors
from mtpgraft.gguf_io import KV, REFLINK, GGUFFile, OutTensor
from mtpgraft.testmodels.synthetic import rewrite

ARCH = "qwen35"
# The README's codes (mtpgraft.errors.EXIT_CODES) but the signal ones: nothing here is interrupted.
EXIT_CODES = {c for kind, c in _errors.EXIT_CODES.items() if not kind.startswith("interrupted")}
HANG_S = 10.0
TEMP_MARKERS = (".mtpgraft-tmp", ".partial", ".mtpgraft-q-")

Writer = Callable[[Path], None]


# --------------------------------------------------------------------------- raw building blocks


def raw_kv(key: str | bytes, vtype: int, payload: bytes, *, item_type: int | None = None, count: int = 1) -> KV:
    """A metadata entry written as given: no check of key, type or value (a hostile writer)."""
    kb = key.encode() if isinstance(key, str) else key
    raw = struct.pack("<Q", len(kb)) + kb + struct.pack("<I", vtype)
    if vtype == V.ARRAY:
        raw += struct.pack("<IQ", item_type, count)
    raw += payload
    known = vtype in V._value2member_map_
    return KV(key=kb.decode("utf-8", "replace"), vtype=V(vtype) if known else V.UINT8, raw=raw,
              item_type=V(item_type) if item_type is not None else None, count=count)


def scalar(key: str, vtype: V, value: object) -> KV:
    fmt = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
           V.FLOAT32: "<f", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d", V.BOOL: "<?"}
    if vtype == V.STRING:
        b = str(value).encode()
        return raw_kv(key, vtype, struct.pack("<Q", len(b)) + b)
    return raw_kv(key, vtype, struct.pack(fmt[vtype], value))


def array(key: str, item: V, values: list[object]) -> KV:
    if item == V.STRING:
        payload = b"".join(struct.pack("<Q", len(s.encode())) + s.encode() for s in map(str, values))
    else:
        fmt = {V.UINT8: "B", V.INT8: "b", V.UINT16: "H", V.INT16: "h", V.UINT32: "I", V.INT32: "i",
               V.FLOAT32: "f", V.UINT64: "Q", V.INT64: "q", V.FLOAT64: "d", V.BOOL: "?"}[item]
        payload = struct.pack(f"<{len(values)}{fmt}", *values)
    return raw_kv(key, V.ARRAY, payload, item_type=item, count=len(values))


def rebuild(src: Path, out: Path, *, kv: Callable[[list[KV]], list[KV]] | None = None,
            tensors: Callable[[list[OutTensor]], list[OutTensor]] | None = None, alignment: int | None = None) -> None:
    """Copy a GGUF with its key list and tensor list passed through the given edits (mtpgraft's own layout)."""
    rewrite(src, out, kv=kv, tensors=tensors, alignment=alignment, layout=REFLINK)


def zeros(n: int) -> Callable[[], Iterator[bytes]]:
    return lambda: iter([b"\0" * n])


def with_kv(key: str, new: KV | None) -> Callable[[list[KV]], list[KV]]:
    """Replace (or drop, when `new` is None) key `key`; add `new` at the end if the key is absent."""

    def edit(kvs: list[KV]) -> list[KV]:
        out = [k for k in kvs if k.key != key]
        if new is not None:
            i = next((j for j, k in enumerate(kvs) if k.key == key), len(out))
            out.insert(min(i, len(out)), new)
        return out

    return edit


def retype(name_part: str, type_id: int, type_bytes: Callable[[tuple[int, ...]], int]) -> Callable[[list[OutTensor]], list[OutTensor]]:
    """Give every tensor whose name contains `name_part` another ggml type (zero data of the right size)."""

    def edit(ts: list[OutTensor]) -> list[OutTensor]:
        out = []
        for t in ts:
            if name_part in t.name and len(t.ne) >= 1:
                n = type_bytes(t.ne)
                out.append(OutTensor(t.name, t.ne, type_id, n, produce=zeros(n)))
            else:
                out.append(t)
        return out

    return edit


# --------------------------------------------------------------------------- the variant classes


BAD_VALUES: list[tuple[str, Callable[[str], KV]]] = [
    ("f32-nan", lambda k: scalar(k, V.FLOAT32, float("nan"))),
    ("f32-inf", lambda k: scalar(k, V.FLOAT32, float("inf"))),
    ("f64", lambda k: scalar(k, V.FLOAT64, 4.0)),
    ("string", lambda k: scalar(k, V.STRING, "four")),
    ("array-u32", lambda k: array(k, V.UINT32, [4, 5])),
    ("array-str", lambda k: array(k, V.STRING, ["a", "b"])),
    ("i32-neg", lambda k: scalar(k, V.INT32, -1)),
    ("u64-huge", lambda k: scalar(k, V.UINT64, 2**40)),
    ("bool", lambda k: scalar(k, V.BOOL, True)),
    ("u8", lambda k: scalar(k, V.UINT8, 4)),
]
TYPED_KEYS = ["general.alignment", "split.count", "split.no", f"{ARCH}.block_count",
              f"{ARCH}.nextn_predict_layers", f"{ARCH}.embedding_length", "general.file_type",
              "general.architecture", "split.tensors.count", "tokenizer.ggml.tokens"]
HUGE = [0, 1, 3, 513, 2**16, 2**31 - 1, 2**31, 2**32 - 1]


def _typed_variants() -> Iterator[tuple[str, str, Writer]]:
    for key in TYPED_KEYS:
        for label, make in BAD_VALUES:
            yield "wrong-type", f"{key}={label}", lambda o, s, k=key, m=make: rebuild(s, o, kv=with_kv(k, m(k)))


def _count_variants() -> Iterator[tuple[str, str, Writer]]:
    for key in (f"{ARCH}.block_count", f"{ARCH}.nextn_predict_layers"):
        for n in HUGE:
            yield "huge-count", f"{key}={n}", lambda o, s, k=key, n=n: rebuild(s, o, kv=with_kv(k, scalar(k, V.UINT32, n)))
        yield "huge-count", f"{key}=u64-2^32", lambda o, s, k=key: rebuild(s, o, kv=with_kv(k, scalar(k, V.UINT64, 2**32)))
    for key in (f"{ARCH}.block_count", "general.architecture", f"{ARCH}.nextn_predict_layers",
                f"{ARCH}.embedding_length", "tokenizer.ggml.tokens", "general.file_type"):
        yield "missing-key", key, lambda o, s, k=key: rebuild(s, o, kv=with_kv(k, None))


def _tensor_type_variants() -> Iterator[tuple[str, str, Writer]]:
    kinds = [("I8", 24, 1, 1), ("I16", 25, 1, 2), ("I32", 26, 1, 4), ("I64", 27, 1, 8), ("F64", 28, 1, 8),
             ("Q8_1", 9, 32, 36), ("Q8_K", 15, 256, 292), ("Q1_0", 41, 128, 18), ("Q2_0", 42, 64, 18),
             ("type99", 99, 1, 1)]
    for part in ("nextn.eh_proj", "blk.4.attn_q.weight", "blk.4.attn_norm", "blk.4.ffn_down"):
        for name, tid, block, size in kinds:
            def nbytes(ne: tuple[int, ...], b: int = block, sz: int = size) -> int:
                n = 1
                for d in ne:
                    n *= d
                return n // b * sz

            yield "source-type", f"{part}:{name}", lambda o, s, p=part, t=tid, nb=nbytes: rebuild(s, o, tensors=retype(p, t, nb))


def _array_variants() -> Iterator[tuple[str, str, Writer]]:
    rec, ffn = f"{ARCH}.attention.recurrent_layers", f"{ARCH}.feed_forward_length"
    cases: list[tuple[str, KV]] = [
        ("rec-i8", array(rec, V.INT8, [1, 1, 1, 0, 0])), ("rec-u8", array(rec, V.UINT8, [1, 1, 1, 0, 0])),
        ("rec-str", array(rec, V.STRING, ["a"] * 5)), ("rec-f64", array(rec, V.FLOAT64, [1.0] * 5)),
        ("rec-empty", array(rec, V.BOOL, [])), ("rec-short", array(rec, V.BOOL, [True])),
        ("rec-long", array(rec, V.BOOL, [True] * 300)), ("rec-u32", array(rec, V.UINT32, [1, 1, 1, 0, 0])),
        ("ffn-i8", array(ffn, V.INT8, [127] * 5)), ("ffn-i16-neg", array(ffn, V.INT16, [-1] * 5)),
        ("ffn-f32", array(ffn, V.FLOAT32, [512.5] * 5)), ("ffn-u64", array(ffn, V.UINT64, [2**40] * 5)),
        ("ffn-empty", array(ffn, V.UINT32, [])), ("ffn-str", array(ffn, V.STRING, ["x"] * 5)),
    ]
    for label, kv in cases:
        yield "layer-array", label, lambda o, s, kv=kv: rebuild(s, o, kv=with_kv(kv.key, kv))


def _encoder_variants() -> Iterator[tuple[str, str, Writer]]:
    for key, kv in [("mtpgraft.version", scalar("mtpgraft.version", V.UINT32, 7)),
                    ("mtpgraft.mtp.source", array("mtpgraft.mtp.source", V.INT8, [1, 2])),
                    ("mtpgraft.mtp.type_policy", scalar("mtpgraft.mtp.type_policy", V.FLOAT32, 1.0)),
                    (f"{ARCH}.nextn_predict_layers", scalar(f"{ARCH}.nextn_predict_layers", V.UINT32, 7)),
                    (f"{ARCH}.block_count", scalar(f"{ARCH}.block_count", V.UINT8, 255))]:
        yield "encoder", key, lambda o, s, k=key, kv=kv: rebuild(s, o, kv=with_kv(k, kv))
    for n in (99, 4294967296, 10**20):
        def rename(ts: list[OutTensor], n: int = n) -> list[OutTensor]:
            return [OutTensor(t.name.replace("blk.4.", f"blk.{n}."), t.ne, t.ggml_type, t.nbytes, t.src_path,
                              t.src_offset, t.produce) for t in ts]

        yield "encoder", f"blk.{n}", lambda o, s, r=rename: rebuild(s, o, tensors=r)


def _name_variants() -> Iterator[tuple[str, str, Writer]]:
    nasty = ["a\nb", "\0" * 200_000, "x\x1b[31mred", "\r\n" * 50, "é" * 100, "k" * 70_000]
    for i, key in enumerate(nasty):
        yield "names", f"key{i}", lambda o, s, k=key: rebuild(s, o, kv=lambda kvs, k=k: kvs + [raw_kv(k, 99, b"")])
        yield "names", f"keydup{i}", lambda o, s, k=key: rebuild(
            s, o, kv=lambda kvs, k=k: kvs + [scalar(k, V.UINT32, 1), scalar(k, V.UINT32, 2)])

        def rename(ts: list[OutTensor], k: str = key) -> list[OutTensor]:
            t = ts[-1]
            return ts[:-1] + [OutTensor(k, t.ne, t.ggml_type, t.nbytes, t.src_path, t.src_offset)]

        yield "names", f"tensor{i}", lambda o, s, r=rename: rebuild(s, o, tensors=r)
        yield "names", f"mtp-tensor{i}", lambda o, s, k=key: rebuild(s, o, tensors=lambda ts, k=k: [
            OutTensor(t.name.replace("nextn.enorm", k), t.ne, t.ggml_type, t.nbytes, t.src_path, t.src_offset)
            for t in ts])


def _loader_variants() -> Iterator[tuple[str, str, Writer]]:
    def dup(ts: list[OutTensor]) -> list[OutTensor]:
        return ts + [ts[-1]]

    def dup_mtp(ts: list[OutTensor]) -> list[OutTensor]:
        mtp = next(t for t in ts if "nextn.eh_proj" in t.name)
        return ts + [mtp]

    def zero_dim(part: str) -> Callable[[list[OutTensor]], list[OutTensor]]:
        def edit(ts: list[OutTensor]) -> list[OutTensor]:
            return [OutTensor(t.name, (t.ne[0], 0) + t.ne[2:] if len(t.ne) > 1 else (0,), t.ggml_type, 0,
                              produce=zeros(0)) if part in t.name else t for t in ts]
        return edit

    yield "loader", "dup-tensor", lambda o, s: rebuild(s, o, tensors=dup)
    yield "loader", "dup-mtp-tensor", lambda o, s: rebuild(s, o, tensors=dup_mtp)
    for part in ("token_embd", "blk.4.attn_q.weight", "nextn.eh_proj", "blk.0.attn_norm", "output.weight"):
        yield "loader", f"zero-dim:{part}", lambda o, s, p=part: rebuild(s, o, tensors=zero_dim(p))
    for a in (0, 3, 48, 100, 2**31 + 1):
        yield "loader", f"align-u32-{a}", lambda o, s, a=a: rebuild(s, o, kv=with_kv("general.alignment", scalar("general.alignment", V.UINT32, a)))
    yield "loader", "align-64", lambda o, s: rebuild(s, o, alignment=64,
                                                     kv=with_kv("general.alignment", scalar("general.alignment", V.UINT32, 64)))
    yield "loader", "dup-key", lambda o, s: rebuild(s, o, kv=lambda kvs: kvs + [kvs[1]])
    yield "loader", "long-name", lambda o, s: rebuild(s, o, tensors=lambda ts: ts[:-1] + [
        OutTensor("o" * 80, ts[-1].ne, ts[-1].ggml_type, ts[-1].nbytes, ts[-1].src_path, ts[-1].src_offset)])


def _special_variants() -> Iterator[tuple[str, str, Writer]]:
    def fifo(o: Path, s: Path) -> None:
        os.mkfifo(o)

    def sock(o: Path, s: Path) -> None:
        sk = socket.socket(socket.AF_UNIX)
        sk.bind(str(o))
        sk.close()

    def dirr(o: Path, s: Path) -> None:
        o.mkdir()

    def devnull(o: Path, s: Path) -> None:
        o.symlink_to("/dev/null")

    def dangling(o: Path, s: Path) -> None:
        o.symlink_to(o.with_name("nowhere.gguf"))

    def empty(o: Path, s: Path) -> None:
        o.write_bytes(b"")

    for label, w in (("fifo", fifo), ("socket", sock), ("directory", dirr), ("dev-null", devnull),
                     ("dangling-link", dangling), ("empty", empty)):
        yield "special", label, w


def _byte_variants(rng: random.Random, n_flips: int, n_truncs: int, header: int, size: int) -> Iterator[tuple[str, str, Writer]]:
    def flipped(o: Path, s: Path, pos: int, val: int) -> None:
        data = bytearray(s.read_bytes())
        data[pos] = val
        o.write_bytes(bytes(data))

    def truncated(o: Path, s: Path, n: int) -> None:
        with open(s, "rb") as f:
            o.write_bytes(f.read(n))

    for _ in range(n_flips):
        pos, val = rng.randrange(header), rng.randrange(256)
        yield "flip", f"@{pos}={val}", lambda o, s, p=pos, v=val: flipped(o, s, p, v)
    for _ in range(n_truncs):
        n = rng.randrange(header) if rng.random() < 0.6 else rng.randrange(size)
        yield "truncate", f"@{n}", lambda o, s, n=n: truncated(o, s, n)


def variants(seed_file: Path, rng: random.Random, *, n_flips: int = 400, n_truncs: int = 150) -> list[tuple[str, str, Writer]]:
    """Every structured variant of the classes above, then seeded byte flips and truncations."""
    f = GGUFFile(seed_file)
    out: list[tuple[str, str, Writer]] = []
    for gen in (_typed_variants, _count_variants, _tensor_type_variants, _array_variants, _encoder_variants,
                _name_variants, _loader_variants, _special_variants):
        out += list(gen())
    out += list(_byte_variants(rng, n_flips, n_truncs, f.header_size, f.file_size))
    return out


# --------------------------------------------------------------------------- running


@dataclass
class RunRecord:
    cls: str
    variant: str
    command: str
    mode: str
    code: int | None
    seconds: float
    traceback: bool = False
    multiline: bool = False
    hang: bool = False
    partial: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    bad_output: str = ""  # an exit-0 output that inspect does not call consistent
    stderr: str = ""


def _digest(p: Path) -> str:
    if not p.is_file() or p.is_symlink():
        return f"special:{p.is_symlink()}:{p.exists()}"
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Timeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout()


def _in_process(args: list[str]) -> tuple[int | None, str, bool, bool]:
    """(exit code, stderr, traceback?, hang?) of one CLI call in this process."""
    from click.testing import CliRunner

    from mtpgraft import commands  # noqa: F401  (registers the commands)
    from mtpgraft.cli import STATE, cli

    STATE.debug = STATE.quiet = False
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_S)
    try:
        res = CliRunner().invoke(cli, args, catch_exceptions=True)
    except _Timeout:
        return None, "", False, True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if isinstance(res.exception, _Timeout):
        return None, res.stderr, False, True
    crashed = res.exception is not None and not isinstance(res.exception, SystemExit)
    return res.exit_code, res.stderr + (f"\nTraceback: {res.exception!r}" if crashed else ""), crashed, False


def _subprocess(args: list[str]) -> tuple[int | None, str, bool, bool]:
    try:
        p = subprocess.run([sys.executable, "-m", "mtpgraft", *args], capture_output=True, text=True,
                           timeout=HANG_S, errors="replace")
    except subprocess.TimeoutExpired as e:
        return None, str(e.stderr or ""), False, True
    return p.returncode, p.stderr, "Traceback" in p.stderr, False


def run_case(cls: str, variant: str, command: str, args: list[str], inputs: list[Path], out_dir: Path,
             *, mode: str = "inproc", outputs: list[Path] = ()) -> RunRecord:
    """Run one command and check the promises: exit code, one line, no hang, inputs, partial files."""
    before = {p: _digest(p) for p in inputs}
    existing = set(os.listdir(out_dir))
    t0 = time.perf_counter()
    code, err, tb, hang = (_subprocess if mode == "subprocess" else _in_process)(args)
    rec = RunRecord(cls, variant, command, mode, code, time.perf_counter() - t0, hang=hang, stderr=err[-400:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if not ln.startswith("mtpgraft: warning:") and not ln.startswith("mtpgraft: ")
              or ln.startswith("mtpgraft: error:")]
    rec.traceback = tb or "Traceback" in err or (code is not None and code not in EXIT_CODES)
    if code not in (0, None):
        rec.multiline = len(errors) != 1 or not errors[0].startswith("mtpgraft: error: ")
    rec.modified = [str(p) for p, d in before.items() if _digest(p) != d]
    new = set(os.listdir(out_dir)) - existing
    rec.partial = sorted(n for n in new if any(m in n for m in TEMP_MARKERS)
                         or (code != 0 and Path(out_dir, n) in outputs))
    if code == 0:
        rec.bad_output = _check_outputs([p for p in outputs if p.exists()])
    return rec


def _check_outputs(paths: list[Path]) -> str:
    from mtpgraft.errors import MtpgraftError
    from mtpgraft.inspection import inspect_model

    for p in paths:
        if p.suffix != ".gguf" or p.name.endswith(("-of-00002.gguf", ".imatrix.gguf")):  # not a model
            continue
        try:
            rep = inspect_model(p)
        except MtpgraftError as e:
            return f"{p.name}: {e}"
        if not rep.consistent:
            return f"{p.name}: {rep.problems[0]}"
    return ""


def peak_rss_mb() -> tuple[float, float]:
    """Peak RSS of this process and of its largest child so far, in MB (Linux reports KiB)."""
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)


# --------------------------------------------------------------------------- the corpus


def seed_models(work: Path) -> dict[str, Path]:
    from mtpgraft.testmodels import build_tiny_model

    return {layout: build_tiny_model(work / f"seed-{layout}.gguf", layout=layout, dtype="f16")
            for layout in ("full", "base", "mtp-only")}


def _commands(v: Path, seeds: dict[str, Path], out: Path) -> list[tuple[str, list[str], list[Path]]]:
    """(name, argv, inputs) for every command a variant goes through."""
    return [
        ("inspect", ["inspect", str(v), "--json"], [v]),
        ("attach-base", ["attach", str(v), "--mtp-from", str(seeds["full"]), "-o", str(out), "--replace"], [v, seeds["full"]]),
        ("attach-source", ["attach", str(seeds["base"]), "--mtp-from", str(v), "-o", str(out)], [v, seeds["base"]]),
        ("detach", ["detach", str(v), "-o", str(out)], [v]),
        ("extract", ["extract", str(v), "-o", str(out)], [v]),
    ]


def corpus_runs(work: Path, *, seed: int = 0, limit: int | None = None, subprocess_every: int = 10,
                quantize_every: int = 40, every: int = 1) -> tuple[list[RunRecord], int]:
    """Make every variant of the seed models (`every`-th only, for a subset) and run every command."""
    seeds = seed_models(work)
    rng = random.Random(seed)
    cases = [(layout, *c) for layout in ("full", "base", "mtp-only")
             for c in variants(seeds[layout], rng, n_flips=200 if layout == "full" else 60,
                               n_truncs=80 if layout == "full" else 30)]
    cases = cases[::every][:limit]
    records: list[RunRecord] = []
    run_no = 0
    for k, (layout, cls, name, write) in enumerate(cases):
        case_dir = work / f"case{k}"
        case_dir.mkdir()
        v = case_dir / "variant.gguf"
        try:
            write(v, seeds[layout])
        except Exception as e:  # a variant the builder cannot make (e.g. no mkfifo): not a finding
            records.append(RunRecord(cls, f"{layout}:{name}", "build", "skip", None, 0.0, stderr=repr(e)))
            _clean(case_dir)
            continue
        out = case_dir / "out.gguf"
        cmds = _commands(v, seeds, out)
        if quantize_every and k % quantize_every == 0:
            cmds.append(("quantize", ["quantize", str(v), "--types", "Q8_0", "--out-dir", str(case_dir / "q"),
                                      "--name", "fz"], [v]))
        for cmd, args, inputs in cmds:
            run_no += 1
            mode = "subprocess" if cmd == "quantize" or (subprocess_every and run_no % subprocess_every == 0) else "inproc"
            outputs = [out] if cmd != "quantize" else [case_dir / "q" / "fz-Q8_0.gguf"]
            watch = case_dir if cmd != "quantize" else _mkdir(case_dir / "q")
            records.append(run_case(cls, f"{layout}:{name}", cmd, args, inputs, watch, mode=mode, outputs=outputs))
            for p in (out, case_dir / "q" / "fz-Q8_0.gguf"):
                if p.exists():
                    p.unlink()
        _clean(case_dir)
    return records, len(cases)


def _mkdir(p: Path) -> Path:
    p.mkdir(exist_ok=True)
    return p


def _clean(d: Path) -> None:
    import shutil

    shutil.rmtree(d, ignore_errors=True)


def summarize(records: list[RunRecord], n_variants: int) -> dict[str, object]:
    runs = [r for r in records if r.mode != "skip"]
    fails = [r for r in runs if r.traceback or r.multiline or r.hang or r.partial or r.modified or r.bad_output]
    return {
        "variants": n_variants,
        "runs": len(runs),
        "runs_subprocess": sum(r.mode == "subprocess" for r in runs),
        "runs_quantize": sum(r.command == "quantize" for r in runs),
        "variants_not_built": sum(r.mode == "skip" for r in records),
        "exit_0": sum(r.code == 0 for r in runs),
        "tracebacks": sum(r.traceback for r in runs),
        "multi_line_errors": sum(r.multiline for r in runs),
        "hangs_over_10s": sum(r.hang for r in runs),
        "partial_files": sum(bool(r.partial) for r in runs),
        "modified_inputs": sum(bool(r.modified) for r in runs),
        "inconsistent_outputs": sum(bool(r.bad_output) for r in runs),
        "slowest_run_s": round(max((r.seconds for r in runs), default=0.0), 2),
        "failures": [f"{r.cls} {r.variant} {r.command} ({r.mode}): code {r.code} tb={r.traceback} "
                     f"multi={r.multiline} hang={r.hang} partial={r.partial} modified={r.modified} "
                     f"out={r.bad_output!r} :: {r.stderr[-300:]!r}" for r in fails],
    }


# --------------------------------------------------------------------------- the input corpus (issue 27)
# Hostile inputs that are not GGUF files: a checkpoint's config.json, its safetensors headers and index,
# and local text inputs (check's prompts, a recipe, an imatrix calibration text). Each case is made in
# its own folder from pristine seeds and run through the command that reads it.

DEEP = "[" * 10_000 + "]" * 10_000
_RAW = {"<DEEP>": DEEP, "<NAN>": "NaN", "<INF>": "Infinity"}  # values json.dumps cannot write
BAD_JSON: list[tuple[str, object]] = [
    ("str", "abc"), ("neg", -1), ("1e9", 10**9), ("2^63", 2**63), ("2^64", 2**64), ("bool", True), ("float", 1.5),
    ("null", None), ("list", []), ("dict", {}), ("list-dict", [{}]), ("deep", "<DEEP>"), ("nan", "<NAN>"),
    ("inf", "<INF>"), ("empty", ""), ("zero", 0)]
CONFIG_KEYS = ("architectures", "text_config", "num_hidden_layers", "mtp_num_hidden_layers", "hidden_size",
               "vocab_size", "num_attention_heads", "num_key_value_heads", "head_dim", "intermediate_size",
               "layer_types", "full_attention_interval", "max_position_embeddings")
BAD_FILES: list[tuple[str, bytes]] = [
    ("empty", b""), ("not-json", b"{not json"), ("binary", bytes(range(256)) * 4), ("latin1", b'{"a": "\xe9"}'),
    ("array", b"[]"), ("null", b"null"), ("deep", DEEP.encode()), ("nul", b"\0" * 64), ("big", b" " * (17 << 20))]
HEADER_FIELDS: list[tuple[str, list[object]]] = [
    ("shape", [[-1, 64], [2**63, 2], [2**64], [1.5], ["a"], [], [0], "<DEEP>", None, [1] * 40]),
    ("data_offsets", [[0], [5, 2], [-1, 2], [0, 2**64], [0, 10**15], "x", None, [0, 2.5]]),
    ("dtype", ["F64", "", 5, None, ["BF16"]])]


def _dumps(obj: object) -> str:
    text = json.dumps(obj)
    for mark, raw in _RAW.items():
        text = text.replace(json.dumps(mark), raw)
    return text


def _edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    path.write_text(_dumps(edit(json.loads(path.read_text()))))


def _set(obj: dict, key: str, value: object) -> dict:
    (obj if key in ("architectures", "text_config") else obj["text_config"])[key] = value
    return obj


def _config_variants() -> Iterator[tuple[str, str, Callable[[Path], None]]]:
    for key in CONFIG_KEYS:
        for vname, value in BAD_JSON:
            yield "config", f"{key}={vname}", lambda ck, k=key, v=value: _edit_json(ck / "config.json", lambda o: _set(o, k, v))
    for fname, data in BAD_FILES:
        yield "config", f"file-{fname}", lambda ck, d=data: (ck / "config.json").write_bytes(d)
    yield "config", "unchanged", lambda ck: None


def _mtp_shard(ck: Path) -> Path:
    return sorted(ck.glob("model*.safetensors"))[-1]


def _edit_header(path: Path, edit: Callable[[dict], object] | None = None, *, raw: bytes | None = None,
                 length: int | None = None) -> None:
    data = path.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    head = raw if raw is not None else _dumps(edit(json.loads(data[8:8 + n]))).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head) if length is None else length) + head + data[8 + n:])


def _entry_set(head: dict, field_: str, value: object) -> dict:
    head[next(k for k in head if k.startswith("mtp."))][field_] = value
    return head


def _header_variants(rng: random.Random, n_flips: int) -> Iterator[tuple[str, str, Callable[[Path], None]]]:
    for field_, values in HEADER_FIELDS:
        for i, value in enumerate(values):
            yield "st-header", f"{field_}#{i}", lambda ck, f=field_, v=value: _edit_header(_mtp_shard(ck), lambda h: _entry_set(h, f, v))
    for name, entry in (("entry-list", []), ("entry-str", "x"), ("entry-empty", {}), ("metadata-deep", "<DEEP>")):
        key = "__metadata__" if name.startswith("metadata") else None
        yield "st-header", name, lambda ck, e=entry, k=key: _edit_header(
            _mtp_shard(ck), lambda h: {**h, (k or next(x for x in h if x.startswith("mtp."))): e})
    for name, length in (("len-0", 0), ("len-2^63", 2**63), ("len-past-file", 1 << 30), ("len-7", 7)):
        yield "st-header", name, lambda ck, n=length: _edit_header(_mtp_shard(ck), lambda h: h, length=n)
    for fname, data in BAD_FILES[:-1]:
        yield "st-header", f"json-{fname}", lambda ck, d=data: _edit_header(_mtp_shard(ck), raw=d)
    for i in range(n_flips):
        seed = rng.randrange(1 << 30)
        yield "st-header", f"flip#{i}", lambda ck, s=seed: _flip_header(_mtp_shard(ck), s)


def _flip_header(path: Path, seed: int) -> None:
    r = random.Random(seed)
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    for _ in range(r.randint(1, 4)):
        data[r.randrange(8, 8 + n)] = r.randrange(256)
    path.write_bytes(bytes(data))


def _index_variants() -> Iterator[tuple[str, str, Callable[[Path], None]]]:
    index = "model.safetensors.index.json"
    for name, wm in (("list", []), ("int-values", {"a": 1}), ("deep", "<DEEP>"), ("missing-shard", None),
                     ("traversal", "../../../etc/passwd"), ("absolute", "/etc/passwd"), ("newline", "a\nb.safetensors")):
        def edit(o: dict, n: str = name, w: object = wm) -> dict:
            if isinstance(w, str) and n in ("traversal", "absolute", "newline"):
                return {**o, "weight_map": {k: w for k in o["weight_map"]}}
            if n == "missing-shard":
                return {**o, "weight_map": {k: "nope.safetensors" for k in o["weight_map"]}}
            return {**o, "weight_map": w}
        yield "st-index", name, lambda ck, e=edit: _edit_json(ck / index, e)
    for fname, data in BAD_FILES:
        yield "st-index", f"file-{fname}", lambda ck, d=data: (ck / index).write_bytes(d)


PROMPT_OK = b'{"category": "code", "prompt": "def f():\\n"}\n'
PROMPT_FILES: list[tuple[str, bytes]] = [
    ("ok", PROMPT_OK), ("empty", b""), ("binary", bytes(range(256)) * 64), ("latin1", b'{"category": "code", "prompt": "\xe9"}\n'),
    ("deep", b'{"category": "code", "prompt": ' + DEEP.encode() + b"}\n"), ("not-object", b"[1, 2]\n"),
    ("no-category", b'{"prompt": "x"}\n'), ("prompt-int", b'{"category": "code", "prompt": 5}\n'),
    ("nan", b'{"category": "code", "prompt": "x", "id": NaN}\n'), ("huge", PROMPT_OK + b" " * (17 << 20)),
    ("control-category", b'{"category": "co\\nde\\u001b[2K", "prompt": "x"}\n'), ("nul", b"\0" * 100)]
RECIPE_OK = '[model]\nname = "M"\nbase = "b.gguf"\n[quantize]\ntypes = ["Q8_0"]\n'
RECIPE_NUMBERS = [("check", "reps"), ("check", "n_predict"), ("check", "ctx"), ("check", "context_depth"),
                  ("check", "per_category"), ("check", "n_max"), ("check", "temperature"), ("check", "min_speedup"),
                  ("check", "seed"), ("imatrix", "chunks"), ("imatrix", "ctx"), ("quantize", "jobs"),
                  ("quality", "ctx"), ("quality", "chunks")]
RECIPE_VALUES = ["0", "-1", "100000000000000000", "9223372036854775807", "1e20", "1e300", "inf", "nan", '"x"',
                 "true", "[1e400]", "[]"]


def _recipe_text(table: str, key: str, value: str) -> str:
    extra = {"imatrix": 'calibration = "c.txt"\n'}.get(table, "")
    return RECIPE_OK.replace("[quantize]\n", "[quantize]\n" + (f"{key} = {value}\n" if table == "quantize" else "")) \
        + ("" if table == "quantize" else f"[{table}]\n{extra}{key} = {value}\n")


def _recipe_files() -> Iterator[tuple[str, bytes]]:
    yield "ok", RECIPE_OK.encode()
    for table, key in RECIPE_NUMBERS:
        for value in RECIPE_VALUES:
            yield f"{table}.{key}={value}", _recipe_text(table, key, value).encode()
    for name in ("M\\nmtpgraft: error: x", "M\\u0000", "../M", "M/..", "a" * 300):
        yield f"name={name[:12]!r}", RECIPE_OK.replace('"M"', f'"{name}"').encode()
    yield "binary", bytes(range(256)) * 16
    yield "latin1", RECIPE_OK.encode().replace(b'"M"', b'"\xe9"')


CALIBRATION_TEXT = b"The quick brown fox jumps over the lazy dog. " * 200


def _calibration_files() -> Iterator[tuple[str, Callable[[Path], None]]]:
    yield "ok", lambda p: p.write_bytes(CALIBRATION_TEXT)
    yield "empty", lambda p: p.write_bytes(b"")
    yield "nul", lambda p: p.write_bytes(b"\0" * 4096)
    yield "latin1", lambda p: p.write_bytes(CALIBRATION_TEXT + b"caf\xe9 " * 10)
    yield "huge-sparse", lambda p: (p.write_bytes(CALIBRATION_TEXT), os.truncate(p, 300 << 20))


# (command, argv, inputs, outputs) of one local-input case made in its folder
InputCase = tuple[str, list[str], list[Path], list[Path]]


def _prompts_case(d: Path, seeds: dict[str, Path], data: bytes) -> InputCase:
    f = d / "p.jsonl"
    f.write_bytes(data)
    return "check", ["check", str(seeds["model"]), "--prompts", str(f), "--dry-run"], [f], []


def _recipe_case(d: Path, seeds: dict[str, Path], data: bytes) -> InputCase:
    f = d / "r.toml"
    f.write_bytes(data)
    return "run", ["run", str(f), "--dry-run", "--work-dir", str(d / "w")], [f], [d / "w"]


def _calibration_case(d: Path, seeds: dict[str, Path], write: Callable[[Path], None]) -> InputCase:
    f, out = d / "cal.txt", d / "out.imatrix.gguf"
    write(f)
    chunks = ["--chunks", "2", "-c", "64"] if f.stat().st_size < (1 << 20) else []
    return "imatrix", ["imatrix", str(seeds["model"]), "-f", str(f), "-o", str(out), *chunks], [f], [out]


def _local_cases(server: bool) -> Iterator[tuple[str, str, Callable[[Path, dict[str, Path]], InputCase]]]:
    """check's prompt files (only where llama-server is found: check looks it up first), recipes and
    calibration texts."""
    if server:
        for name, data in PROMPT_FILES:
            yield "prompts", name, lambda d, s, b=data: _prompts_case(d, s, b)
    for name, data in _recipe_files():
        yield "recipe", name, lambda d, s, b=data: _recipe_case(d, s, b)
    for name, write in _calibration_files():
        yield "calibration", name, lambda d, s, w=write: _calibration_case(d, s, w)


def input_seeds(work: Path) -> dict[str, Path]:
    """A tiny checkpoint, a trunk-only base it fits, and a tiny model llama-imatrix / llama-server run."""
    from mtpgraft.testmodels import build_tiny_model
    from mtpgraft.testmodels.checkpoints import build_checkpoint
    from mtpgraft.testmodels.synthetic import make_model

    return {"ckpt": build_checkpoint(work / "seed-ck", "dense-bf16"),
            "base": make_model(work / "seed-base.gguf", arch=ARCH, trunk=2, layout="base", n_embd=64, vocab=320, n_ff=128),
            "model": build_tiny_model(work / "seed-model.gguf", dtype="f16")}


def _checkpoint_case(d: Path, seeds: dict[str, Path], edit: Callable[[Path], None]) -> InputCase:
    import shutil

    ck = Path(shutil.copytree(seeds["ckpt"], d / "ck"))
    edit(ck)
    out = d / "out.gguf"
    return ("attach", ["attach", str(seeds["base"]), "--mtp-from", str(ck), "-o", str(out)],
            sorted(ck.iterdir()), [out])


def _has_server() -> bool:
    from mtpgraft.errors import ToolNotFoundError
    from mtpgraft.tools import find_tool

    try:
        return bool(find_tool("llama-server"))
    except ToolNotFoundError:
        return False


def input_cases(work: Path, seeds: dict[str, Path], rng: random.Random, *, n_flips: int = 40,
                server: bool = False) -> list[tuple[str, str, Callable[[Path], InputCase]]]:
    """Every case of the input corpus: (class, variant, make(case folder) -> InputCase)."""
    cases: list[tuple[str, str, Callable[[Path], InputCase]]] = [
        (cls, name, lambda d, e=edit: _checkpoint_case(d, seeds, e))
        for cls, name, edit in (*_config_variants(), *_header_variants(rng, n_flips), *_index_variants())]
    cases += [(cls, name, lambda d, m=make: m(d, seeds)) for cls, name, make in _local_cases(server)]
    return cases


def input_corpus_runs(work: Path, *, seed: int = 0, every: int = 1, subprocess_every: int = 10,
                      n_flips: int = 40) -> tuple[list[RunRecord], int]:
    """Make every input case (`every`-th only, for a subset) and run the command that reads it."""
    old_cache = os.environ.get("MTPGRAFT_CACHE_DIR")
    os.environ["MTPGRAFT_CACHE_DIR"] = str(work / "cache")
    try:
        seeds = input_seeds(work)
        cases = input_cases(work, seeds, random.Random(seed), n_flips=n_flips, server=_has_server())[::every]
        records = [_run_input_case(work / f"in{k}", cls, name, make, subprocess_every and k % subprocess_every == 0)
                   for k, (cls, name, make) in enumerate(cases)]
    finally:
        if old_cache is None:
            os.environ.pop("MTPGRAFT_CACHE_DIR", None)
        else:
            os.environ["MTPGRAFT_CACHE_DIR"] = old_cache
    return records, len(cases)


def _run_input_case(d: Path, cls: str, name: str, make: Callable[[Path], InputCase], as_subprocess: bool) -> RunRecord:
    d.mkdir()
    try:
        command, args, inputs, outputs = make(d)
        return run_case(cls, name, command, args, inputs, d, mode="subprocess" if as_subprocess else "inproc",
                        outputs=outputs)
    finally:
        _clean(d)
