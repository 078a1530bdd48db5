"""Running a quantize plan: each job's llama-quantize into a temporary name, verified, split when
large, installed; a failed type does not stop the others."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import (
    OutputExistsError,
    OutputWriteError,
    QuantizeError,
    Setting,
    Text,
    ToolFailedError,
)
from ..outputs import PendingOutput, disk_full, no_space_error
from ..tools import error_line, run_tool
from .plan import QuantizeJob, QuantizePlan
from .verify import Verification, existing_output, verify_output

Event = Callable[[str, str], None]  # (quant type, message)

@dataclass(frozen=True)
class OutputResult:
    quant_type: str
    status: str  # "done", "skipped" (existed and verified), "failed"
    path: str | None  # the file llama-server gets (first shard of a split set)
    files: tuple[str, ...] = ()
    bytes: int = 0
    seconds: float = 0.0
    split: bool = False
    reason: str = ""
    problems: tuple[str, ...] = ()
    mtp_types: tuple[tuple[str, str], ...] = ()
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")


@dataclass(frozen=True)
class QuantizeResult:
    plan: QuantizePlan
    outputs: tuple[OutputResult, ...]
    wall_s: float
    tool_s: float  # time inside llama-quantize / llama-gguf-split

    @property
    def failed(self) -> tuple[OutputResult, ...]:
        return tuple(o for o in self.outputs if not o.ok)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "outputs": [asdict(o) for o in self.outputs],
                "wall_s": round(self.wall_s, 3), "tool_s": round(self.tool_s, 3), "ok": self.ok,
                "mtpgraft_version": __version__}


def _rm(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


class _Runner:
    def __init__(self, plan: QuantizePlan, on_event: Event | None, log_dir: Path | None) -> None:
        self.plan = plan
        self.emit = on_event or (lambda t, m: None)
        self.log_dir = log_dir
        self.tool_s = 0.0

    def _tool(self, cmd: Sequence[str], cwd: str | None, log_name: str) -> str:
        t0 = time.perf_counter()
        try:
            proc = run_tool(list(cmd), cwd=cwd, tail_lines=40)
            output = proc.stdout
        except ToolFailedError as e:
            self._write_log(log_name, e.output_tail)
            raise
        finally:
            self.tool_s += time.perf_counter() - t0
        self._write_log(log_name, output)
        return output

    def _write_log(self, name: str, text: str) -> None:
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / name).write_text(text, encoding="utf-8", errors="replace")

    def run(self, job: QuantizeJob) -> OutputResult:
        t0 = time.perf_counter()
        qt, plan = job.quant_type, self.plan
        log_name = f"{plan.name}-{qt}.log"
        log_path = str(self.log_dir / log_name) if self.log_dir is not None else None
        existing = existing_output(job, plan.name)
        if existing is not None and not plan.force:
            return self._existing(job, existing, t0)
        try:
            Path(plan.out_dir).mkdir(parents=True, exist_ok=True)
            with PendingOutput(job.single_path, tmp=job.tmp_path) as tmp:
                self.emit(qt, "quantizing")
                try:
                    self._tool(job.command, job.cwd, log_name)
                except ToolFailedError as e:
                    return self._tool_failed(job, e, tmp.path, t0, log_path)
                v = verify_output(tmp.path, job.expect)
                if not v.ok:
                    self.emit(qt, f"FAILED verification: {'; '.join(v.problems)}")
                    return OutputResult(qt, "failed", None, reason="bad output removed: " + "; ".join(v.problems),
                                        problems=v.problems, seconds=time.perf_counter() - t0, log=log_path)
                if plan.split_max_bytes is not None and tmp.path.stat().st_size > plan.split_max_bytes:
                    final = self._split(job, log_name)
                    if final is not None:
                        v = verify_output(final, job.expect)
                        return self._result(job, "done", v, t0, split=True, log=log_path)
                self._claim(Path(job.split_dir))
                tmp.install(force=plan.force)
            v = verify_output(job.single_path, job.expect)
            return self._result(job, "done", v, t0, log=log_path)
        except (ToolFailedError, QuantizeError, OutputExistsError, OutputWriteError) as e:
            self.emit(qt, "FAILED: " + e.text)
            return OutputResult(qt, "failed", None, reason=e.text, seconds=time.perf_counter() - t0,
                                log=log_path)

    def _existing(self, job: QuantizeJob, existing: Path, t0: float) -> OutputResult:
        """An output already in place (no force): skipped when it verifies, else a failure."""
        qt = job.quant_type
        v = verify_output(existing, job.expect) if existing.is_file() else Verification(
            str(existing), False, ("a folder without a first shard",))
        if v.ok:
            self.emit(qt, f"exists and verifies: {_rel(existing)} (skipped)")
            return self._result(job, "skipped", v, t0, split=existing.parent == Path(job.split_dir))
        msg = Text(f"{existing} exists but fails verification ({'; '.join(v.problems)}); pass ",
                   Setting("force", True), " to redo it")
        self.emit(qt, "FAILED: " + msg)
        return OutputResult(qt, "failed", None, reason=msg, problems=v.problems, seconds=time.perf_counter() - t0)

    def _tool_failed(self, job: QuantizeJob, e: ToolFailedError, tmp: Path, t0: float,
                     log_path: str | None) -> OutputResult:
        """llama-quantize failed: its own reason, or that the disk is full."""
        reason = f"llama-quantize: {error_line(e.output_tail) or e}"
        if disk_full(self.plan.out_dir):
            reason = str(no_space_error(job.single_path, tmp.stat().st_size if tmp.is_file() else None))
        self.emit(job.quant_type, f"FAILED: {reason}")
        return OutputResult(job.quant_type, "failed", None, reason=reason, seconds=time.perf_counter() - t0,
                            log=log_path)

    def _split(self, job: QuantizeJob, log_name: str) -> Path | None:
        plan = self.plan
        dest = Path(job.split_dir)
        with PendingOutput(dest, tmp=Path(plan.out_dir) / f".{job.quant_type}.partial", folder=True) as st:
            self.emit(job.quant_type, f"splitting at {plan.split_max_size}")
            self._tool(job.split_command(plan, str(st.path)), None, log_name.replace(".log", "-split.log"))
            shards = sorted(st.path.glob("*.gguf"))
            if len(shards) <= 1:  # llama-gguf-split counts tensor bytes only: it may not need to split
                return None
            v = verify_output(shards[0], job.expect)
            if not v.ok:
                raise QuantizeError(f"the split set is bad ({'; '.join(v.problems)}); removed")
            if len(v.files) != len(shards):
                raise QuantizeError(f"llama-gguf-split wrote {len(shards)} files but the set has {len(v.files)}")
            self._claim(Path(job.single_path))
            st.install(force=plan.force)
        return dest / shards[0].name

    def _claim(self, other: Path) -> None:
        """One type has one output: a single file or a split folder. Installing one removes the
        other with --force and is refused without it (the target itself is guarded by install())."""
        if other.exists() and not self.plan.force:
            raise OutputExistsError(f"{other} appeared meanwhile; pass ", Setting("force", True))
        _rm(other)

    def _result(self, job: QuantizeJob, status: str, v: Verification, t0: float, *, split: bool = False,
                log: str | None = None) -> OutputResult:
        if not v.ok:  # an installed output that no longer verifies: never count it
            return OutputResult(job.quant_type, "failed", None, reason="; ".join(v.problems),
                                problems=v.problems, seconds=time.perf_counter() - t0, log=log)
        res = OutputResult(job.quant_type, status, v.files[0], v.files, v.bytes, time.perf_counter() - t0,
                           split, mtp_types=v.mtp_types, log=log)
        if status == "done":
            where = _rel(Path(v.files[0])) + (f" (+{len(v.files) - 1} shards)" if len(v.files) > 1 else "")
            self.emit(job.quant_type, f"done: {where}, {v.bytes / 1e6:.1f} MB, {res.seconds:.1f}s")
        return res


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def execute_quantize(plan: QuantizePlan, *, on_event: Event | None = None,
                 on_result: Callable[[OutputResult], None] | None = None,
                 log_dir: str | os.PathLike[str] | None = None) -> QuantizeResult:
    """Run every job of the plan (plan.jobs_n at a time); a failed type does not stop the others.

    Returns every type's result; the caller decides what a failure means (the CLI exits 1)."""
    t0 = time.perf_counter()
    runner = _Runner(plan, on_event, Path(log_dir) if log_dir is not None else None)

    def one(job: QuantizeJob) -> OutputResult:
        r = runner.run(job)
        if on_result is not None:
            on_result(r)
        return r

    if plan.jobs_n <= 1 or len(plan.jobs) <= 1:
        results = [one(j) for j in plan.jobs]
    else:
        with ThreadPoolExecutor(max_workers=plan.jobs_n, thread_name_prefix="quantize") as ex:
            results = list(ex.map(one, plan.jobs))
    return QuantizeResult(plan, tuple(results), time.perf_counter() - t0, runner.tool_s)
