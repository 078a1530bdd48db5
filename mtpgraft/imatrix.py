"""Compute an importance matrix with the real llama-imatrix, and record what it was computed on.

llama-imatrix records the calibration file's path (`imatrix.datasets`), which llama-quantize copies
into every quant as `quantize.imatrix.dataset`. mtpgraft runs it from the calibration file's folder
so that only the file NAME is recorded (no local path in published files), then adds
`mtpgraft.imatrix.dataset_sha256` (and the model's name) to the imatrix GGUF; `mtpgraft quantize`
carries that hash into every output. The imatrix never has entries for the MTP block: llama-imatrix
does not run the MTP graph (that is what the quantize step's MTP rules are for).
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .arch import rule_for
from .errors import GGUFFormatError, QuantizeError, QuantizeOptionError, Setting, ToolFailedError
from .gguf_io import GGUFFile, GGUFModel, GGUFValueType, OutTensor, encode_kv, write_gguf
from .hashing import sha256_file
from .outputs import PendingOutput, atomic_write, check_outputs, disk_full, no_space_error
from .runtimes import MAINLINE
from .tools import find_tool, format_cmd, run_tool

KEY_SHA = "mtpgraft.imatrix.dataset_sha256"
KEY_NAME = "mtpgraft.imatrix.dataset"
KEY_MODEL = "mtpgraft.imatrix.model"
KEY_VERSION = "mtpgraft.version"
# llama-imatrix's default context (tools/imatrix/imatrix.cpp), and the bytes of text kept per token it
# needs: natural text is ~4 bytes a token, so 16 leaves every chunk its text with room to spare.
IMATRIX_DEFAULT_CTX = 512
BYTES_PER_TOKEN = 16
# Without `chunks` llama-imatrix tokenizes and runs the whole text; more than this is refused (256 MB
# is ~60M tokens, days of compute), as a file it could not hold in memory would crash it.
MAX_CALIBRATION = 256 << 20


@dataclass(frozen=True)
class ImatrixPlan:
    model: str
    calibration: str
    calibration_name: str
    calibration_sha256: str
    calibration_bytes: int
    output: str
    tmp_output: str
    command: tuple[str, ...]
    cwd: str
    force: bool
    calibration_used: int | None = None  # llama-imatrix gets the first this many bytes (None: all)
    runtime: str = MAINLINE  # ik_llama.cpp's writes the legacy .dat format: no provenance keys

    def shell(self) -> str:
        return f"cd {format_cmd([self.cwd])} && {format_cmd(list(self.command))}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shell": self.shell()}


@dataclass(frozen=True)
class ImatrixInfo:
    path: str
    datasets: tuple[str, ...]
    chunk_count: int | None
    chunk_size: int | None
    entries: int
    dataset_sha256: str | None
    model: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ImatrixResult:
    plan: ImatrixPlan
    info: ImatrixInfo
    seconds: float
    log: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "imatrix": self.info.to_dict(), "seconds": round(self.seconds, 3),
                "log": self.log, "mtpgraft_version": __version__}


def plan_imatrix(model: str | os.PathLike[str], calibration: str | os.PathLike[str],
                 output: str | os.PathLike[str], *, ctx: int | None = None, chunks: int | None = None,
                 batch: int | None = None, threads: int | None = None, ppl: bool = False,
                 extra_args: tuple[str, ...] | list[str] = (), force: bool = False,
                 llama_cpp: str | os.PathLike[str] | None = None, runtime: str = MAINLINE) -> ImatrixPlan:
    """Check the inputs and return `runtime`'s llama-imatrix command. Reads the calibration file once
    (sha256)."""

    m = Path(model)
    _check_model(m)
    cal = Path(calibration)
    size = _check_calibration(cal)
    out = Path(output).absolute()
    check_outputs([out], [m, cal], force=force)
    for name, v, hi in (("ctx", ctx, 1 << 22), ("chunks", chunks, 1 << 20), ("batch", batch, 1 << 22),
                        ("threads", threads, 4096)):  # the bounds a recipe has (recipe.schema.INT_MAX)
        if v is not None and v < 1:
            raise QuantizeOptionError(Setting(name), f" must be >= 1, got {v}")
        if v is not None and v > hi:
            raise QuantizeOptionError(Setting(name), f" must be <= {hi:,}, got {v:,}")
    _check_calibration_length(cal, size, ctx)
    used = _calibration_needed(size, ctx, chunks, extra_args)
    tool = str(find_tool("llama-imatrix", llama_cpp, runtime))
    tmp = out.with_name(f".{out.name}.partial.gguf")
    cmd = [tool, "-m", str(m.resolve()), "-f", cal.name, "-o", str(tmp)]
    for flag, v in (("-c", ctx), ("-b", batch), ("--chunks", chunks), ("-t", threads)):
        if v is not None:
            cmd += [flag, str(v)]
    if not ppl:
        cmd.append("--no-ppl")
    cmd += list(extra_args)
    return ImatrixPlan(model=str(m), calibration=str(cal), calibration_name=cal.name,
                       calibration_sha256=sha256_file(cal, use_cache=False), calibration_bytes=size,
                       output=str(out), tmp_output=str(tmp), command=tuple(cmd),
                       cwd=str(cal.resolve().parent), force=force, calibration_used=used, runtime=runtime)


def _calibration_needed(size: int, ctx: int | None, chunks: int | None, extra_args: Any) -> int | None:
    """How many bytes of the calibration text llama-imatrix gets: ctx x chunks tokens at BYTES_PER_TOKEN
    (it needs at least two contexts), or None for all of it; a whole text over MAX_CALIBRATION is refused."""
    if chunks is None or any(a in ("-c", "--ctx-size", "--chunks") or a.startswith("--chunks=")
                             for a in extra_args):
        if size > MAX_CALIBRATION:
            raise QuantizeError(f"the calibration file is {size / 1e6:,.0f} MB; llama-imatrix would read all "
                                f"of it (at most {MAX_CALIBRATION >> 20} MB): set ", Setting("chunks"),
                                " and mtpgraft gives it only the part those chunks need")
        return None
    need = max(chunks, 2) * (ctx or IMATRIX_DEFAULT_CTX) * BYTES_PER_TOKEN
    return need if need < size else None


def _check_model(m: Path) -> None:
    """A readable GGUF that llama-imatrix can run on its own."""
    try:
        arch = GGUFModel(m).arch
    except GGUFFormatError as e:
        raise QuantizeError(f"cannot compute an imatrix: {e}") from e
    rule = rule_for(arch)
    if rule is not None and not rule.imatrix_runs:
        raise QuantizeError(f"llama-imatrix cannot run {m.name}: a {arch} only runs next to "
                            f"its {rule.target_arch} target (-md), so it has no imatrix of its own; quantize it "
                            "without one (Q8_0, Q6_K, Q4_K_M, IQ4_XS)")


def _check_calibration(cal: Path) -> int:
    """A non-empty text file; its size."""
    if not cal.is_file():
        raise QuantizeError(f"calibration file not found: {cal}")
    size = cal.stat().st_size
    if size == 0:
        raise QuantizeError(f"calibration file {cal} is empty")
    with open(cal, "rb") as f:
        head = f.read(65536)
    if b"\0" in head:
        raise QuantizeError(f"calibration file {cal} is not text (it holds NUL bytes)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not a character cut in two at the end of the 64 KB
            raise QuantizeError(f"calibration file {cal} is not UTF-8 text (byte {e.start}); save it as "
                                "UTF-8") from None
    return size


def read_imatrix(path: str | os.PathLike[str]) -> ImatrixInfo:
    try:
        g = GGUFFile(path)
    except GGUFFormatError as e:
        raise QuantizeError(f"not a GGUF imatrix: {e}") from e
    if g.get("general.type") != "imatrix":
        raise QuantizeError(f"{path} is not an imatrix (general.type is {g.get('general.type')!r})")
    ds = g.get("imatrix.datasets") or []
    entries = sum(1 for t in g.tensors if t.name.endswith(".in_sum2"))
    cc, cs = g.get("imatrix.chunk_count"), g.get("imatrix.chunk_size")
    return ImatrixInfo(path=str(path), datasets=tuple(str(x) for x in ds),
                       chunk_count=int(cc) if cc is not None else None,
                       chunk_size=int(cs) if cs is not None else None, entries=entries,
                       dataset_sha256=g.get(KEY_SHA), model=g.get(KEY_MODEL))


def read_dat_imatrix(path: str | os.PathLike[str]) -> ImatrixInfo:
    """An imatrix in the legacy .dat format ik_llama.cpp's llama-imatrix writes (examples/imatrix
    save_imatrix): n_entries, then per entry its name, ncall and values, then the last chunk count and
    the dataset's name. QuantizeError when it is not one."""
    data = Path(path).read_bytes()
    pos, names = 4, []
    try:
        (n,) = struct.unpack_from("<i", data, 0)
        for _ in range(n):
            (k,) = struct.unpack_from("<i", data, pos)
            names.append(data[pos + 4:pos + 4 + k].decode("utf-8", "replace"))
            _, nval = struct.unpack_from("<ii", data, pos + 4 + k)
            pos += 12 + k + 4 * nval
        chunks, k = struct.unpack_from("<ii", data, pos) if len(data) >= pos + 8 else (None, 0)
        dataset = data[pos + 8:pos + 8 + k].decode("utf-8", "replace")
    except (struct.error, ValueError) as e:
        raise QuantizeError(f"{path} is not an imatrix in the .dat format ({e})") from e
    if not 0 < n == len(names) or pos > len(data):
        raise QuantizeError(f"{path} is not an imatrix in the .dat format")
    return ImatrixInfo(path=str(path), datasets=(dataset,) if dataset else (), chunk_count=chunks,
                       chunk_size=None, entries=n, dataset_sha256=None, model=None)


def _add_provenance(src: Path, dst: Path, plan: ImatrixPlan) -> None:
    """Rewrite llama-imatrix's file with the calibration hash added (tensors copied verbatim)."""
    g = GGUFFile(src)
    extra = {KEY_NAME: plan.calibration_name, KEY_SHA: plan.calibration_sha256,
             KEY_MODEL: Path(plan.model).name, KEY_VERSION: __version__}
    kvs = [kv for kv in g.kv.values() if kv.key not in extra]
    kvs += [encode_kv(k, GGUFValueType.STRING, v) for k, v in extra.items()]
    tensors = [OutTensor(t.name, t.ne, t.ggml_type, t.nbytes, src, g.data_offset + t.offset) for t in g.tensors]
    with atomic_write(dst, force=plan.force, size=sum(t.nbytes for t in tensors)) as fh:
        write_gguf(fh, kvs, tensors, alignment=g.alignment)


def execute_imatrix(plan: ImatrixPlan, *, log_path: str | os.PathLike[str] | None = None,
                timeout: float | None = None) -> ImatrixResult:
    """Run llama-imatrix into a temporary file, add the provenance keys (mainline: ik writes the .dat
    format, installed as written), rename into place."""
    out = Path(plan.output)
    check_outputs([out], force=plan.force)  # it may have appeared since planning
    t0 = time.perf_counter()
    with PendingOutput(out, tmp=plan.tmp_output) as tmp, _calibration_folder(plan) as cwd:
        try:
            proc = run_tool(list(plan.command), cwd=cwd, timeout=timeout, tail_lines=40)
            text = proc.stdout
        except ToolFailedError as e:
            if log_path is not None:
                Path(log_path).write_text(e.output_tail, encoding="utf-8")
            if disk_full(out.parent):
                raise no_space_error(out) from e
            e.args = (f"llama-imatrix failed: {_imatrix_reason(e.output_tail) or e}",)
            raise
        if log_path is not None:
            Path(log_path).write_text(text, encoding="utf-8")
        if not tmp.path.is_file() or tmp.path.stat().st_size == 0:
            raise QuantizeError("llama-imatrix exited 0 but wrote no imatrix file")
        if plan.runtime == MAINLINE:
            _add_provenance(tmp.path, out, plan)
        else:  # the legacy .dat format (ik_llama.cpp) has no place for keys: installed as written
            read_dat_imatrix(tmp.path)
            tmp.install(force=plan.force)
    info = read_imatrix(out) if plan.runtime == MAINLINE else read_dat_imatrix(out)
    if info.entries == 0:
        out.unlink(missing_ok=True)
        raise QuantizeError("llama-imatrix wrote an imatrix without entries; removed it")
    return ImatrixResult(plan, info, time.perf_counter() - t0, str(log_path) if log_path else None)


@contextmanager
def _calibration_folder(plan: ImatrixPlan) -> Iterator[str]:
    """The folder llama-imatrix runs in, holding the calibration text under its own name (the name
    is what it records): the file's folder, or a temporary one with the first `calibration_used`
    bytes (cut at a line end), removed afterwards."""
    if plan.calibration_used is None:
        yield plan.cwd
        return
    with open(plan.calibration, "rb") as f:
        data = f.read(plan.calibration_used)
    end = data.rfind(b"\n")
    data = data[:end + 1] if end > len(data) // 2 else data.decode("utf-8", "ignore").encode("utf-8")
    with tempfile.TemporaryDirectory(prefix="mtpgraft-calibration-") as d:
        Path(d, plan.calibration_name).write_bytes(data)
        yield d


def _check_calibration_length(cal: Path, size: int, ctx: int | None) -> None:
    """Refuse a text that cannot fill two contexts before llama-imatrix runs: it needs 2 x ctx tokens,
    and no tokenizer makes more than one token per byte plus BOS/EOS. (llama-imatrix's own message
    is printed by an asynchronous logger that exit() can cut off, so it cannot be relied on.)"""
    if ctx is None:
        return
    at_most = size + 2
    if at_most < 2 * ctx:
        raise QuantizeError(f"calibration file {cal.name} is too short: you need at least {2 * ctx} "
                            f"tokens for a context of {ctx} tokens, and its {size} bytes give at most "
                            f"{at_most}; use a longer text or a smaller ", Setting("ctx"))


def _imatrix_reason(tail: str) -> str:
    keys = ("you need at least", "tokenizes to only", "non-finite", "failed", "error")
    hits = [x.strip() for x in tail.splitlines() if any(k in x for k in keys)]
    # drop the timestamp and level llama.cpp's logger puts first ("0.00.318.692 E ")
    return " ".join(h.split(" ", 2)[-1] if h[:1].isdigit() else h for h in hits[-2:])[:400]
