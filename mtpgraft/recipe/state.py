"""What a work dir remembers: one JSON record per finished (or failed) step, a lock file per step,
and the content key that says whether a record still holds.

A step's key is a sha256 over its settings and the sha256 of every input file. A step is finished
when its record's key equals the key computed now and its output files still hash the same, so an
interrupted run resumes where it stopped, an edited recipe redoes exactly the steps it affects, and
separate processes or cluster tasks can share one work dir."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..hashing import sha256_file
from ..outputs import write_text


@dataclass(frozen=True)
class StepRecord:
    step: str
    key: str
    status: str  # "done" or "failed"
    finished: str
    seconds: float
    outputs: dict[str, str]  # path (relative to the work dir when inside it) -> sha256
    detail: dict[str, Any] = field(default_factory=dict)
    started: str = ""  # when the step began (after taking its lock), to the microsecond


def content_key(step: str, params: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    """The key of a step: its id, its settings and the sha256 of each input (by a stable name)."""
    blob = json.dumps({"step": step, "params": params, "inputs": dict(sorted(inputs.items()))},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def hash_files(files: Sequence[str | Path]) -> dict[str, str]:
    return {str(f): sha256_file(f) for f in files}


def now_iso(timespec: str = "seconds") -> str:
    return datetime.now(UTC).isoformat(timespec=timespec)


class State:
    """One JSON record per step under WORK/state, written atomically; one lock file per step."""

    def __init__(self, work_dir: Path) -> None:
        self.work = Path(work_dir)
        self.dir = self.work / "state"

    def file(self, step: str, suffix: str = ".json") -> Path:
        """The step's file in WORK/state: its record (.json), lock (.lock), in-flight marker (.running)."""
        return self.dir / (step.replace(":", "-") + suffix)

    def records(self) -> list[StepRecord]:
        files = sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []
        return [r for r in map(self._read, files) if r is not None]

    def _read(self, f: Path) -> StepRecord | None:
        try:
            d = json.loads(f.read_text())
            return StepRecord(**{k: d[k] for k in StepRecord.__dataclass_fields__ if k in d})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def get(self, step: str) -> StepRecord | None:
        return self._read(self.file(step))

    def put(self, rec: StepRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        f = self.file(rec.step)
        write_text(f, json.dumps(asdict(rec), indent=2, sort_keys=True) + "\n")

    def record(self, step: str, key: str, started: str, seconds: float, outputs: Sequence[Path],
               detail: Mapping[str, Any], *, status: str = "done") -> StepRecord:
        hashes = hash_files(outputs) if status == "done" else {}
        rec = StepRecord(step=step, key=key, status=status, finished=now_iso(), seconds=round(seconds, 3),
                         outputs={self.rel(k): v for k, v in hashes.items()}, detail=dict(detail),
                         started=started)
        self.put(rec)
        return rec

    def finished(self, step: str, key: str) -> StepRecord | None:
        """The step's record if it is done under this key and its outputs still hash the same."""
        rec = self.get(step)
        if rec is None or rec.status != "done" or rec.key != key:
            return None
        try:
            now = hash_files([self.abs(p) for p in rec.outputs])
        except OSError:
            return None  # an output is gone: redo the step
        return rec if {self.rel(k): v for k, v in now.items()} == rec.outputs else None

    def clear(self) -> None:
        for f in self.dir.glob("*.json") if self.dir.is_dir() else []:
            f.unlink(missing_ok=True)

    def rel(self, p: str | Path) -> str:
        p = Path(p).absolute()
        try:
            return p.relative_to(self.work).as_posix()
        except ValueError:
            return str(p)

    def abs(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.work / q

    @contextlib.contextmanager
    def lock(self, step: str, on_wait: Callable[[], None]) -> Iterator[None]:
        """Hold the step's lock file; if another process holds it, call on_wait and wait for it."""
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.file(step, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock
