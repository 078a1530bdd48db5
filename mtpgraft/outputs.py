"""How every stage writes a file: checked before, written beside the target, installed atomically.

check_outputs() applies the rules before any work starts. A PendingOutput is the temporary file (or
folder) beside its target that a stage, or a tool it runs, writes; install() fsyncs it and renames
it onto the target with a rename that refuses to replace an existing file unless forced (so two
runs racing for one output cannot both win), and it is removed on every other way out: an error,
an exception, SIGINT/SIGTERM/SIGHUP (which the CLI turns into exceptions; remove_pending() sweeps
whatever a thread had not cleaned yet). Only SIGKILL can leave a `.NAME.*.mtpgraft-tmp` behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import (
    OutputExistsError,
    OutputWriteError,
    Setting,
    Text,
    UsageError,
    redact,
    signals_held,
)

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def check_outputs(outputs: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str]] = (),
                  *, force: bool) -> None:
    """Refuse an output that is one of the inputs (always), a directory, an existing file unless
    `force`, or one whose directory does not exist."""
    ins = [Path(i) for i in inputs]
    for o in map(Path, outputs):
        for i in ins:
            if o.resolve() == i.resolve() or (o.exists() and i.exists() and os.path.samefile(o, i)):
                raise OutputExistsError(f"output {o} is one of the inputs; write to a new file")
        if o.is_dir():
            raise OutputExistsError(f"output {o} is a directory")
        if o.exists() and not force:
            raise OutputExistsError(_exists(o))
        if not o.parent.is_dir():
            raise UsageError(f"output directory {o.parent} does not exist")


def _exists(target: Path) -> Text:
    return Text(f"{target} exists; pass ", Setting("force", True), " to overwrite it")


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still use on the file system holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def ensure_space(target: str | os.PathLike[str], need: int) -> None:
    """Refuse a write of `need` bytes to `target` that cannot fit, before it starts."""
    target = Path(target)
    free = free_bytes(target.parent)
    if need > free:
        raise OutputWriteError(f"not enough space for {target}: needs {need:,} bytes ({_mb(need)}), "
                               f"{free:,} bytes ({_mb(free)}) free on {target.parent}")


def no_space_error(target: str | os.PathLike[str], written: int | None = None) -> OutputWriteError:
    """The one-line error for a write to `target` that ran out of space."""
    target = Path(target)
    try:
        free = free_bytes(target.parent)
    except OSError:
        free = 0
    need = f"needs more than {written:,} bytes, " if written else ""
    return OutputWriteError(f"no space left on the device writing {target} ({need}{free:,} bytes free "
                            f"on {target.parent})")


def disk_full(path: str | os.PathLike[str], slack: int = 1 << 20) -> bool:
    """Whether the file system holding `path` is (nearly) full: what a tool's write error means."""
    try:
        return free_bytes(path) < slack
    except OSError:
        return False


# ---- rename that refuses to replace -------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc: ctypes.CDLL | None = None


def _renameat2(src: str, dst: str) -> bool:
    """renameat2(RENAME_NOREPLACE); False where the kernel, libc or file system lacks it."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return False
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), dst)


def install(tmp: str | os.PathLike[str], target: str | os.PathLike[str], *, force: bool) -> None:
    """Rename `tmp` onto `target`. Without force an existing target is never replaced, even one that
    appeared a moment ago (OutputExistsError): renameat2 RENAME_NOREPLACE, else link() + unlink()
    for files (link fails if the name exists), else for folders a rename (which cannot replace a
    non-empty folder)."""
    tmp, target = os.fspath(tmp), os.fspath(target)
    if force:
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        os.replace(tmp, target)
        return
    try:
        if _renameat2(tmp, target):
            return
        if os.path.isdir(tmp):
            if os.path.lexists(target) and not os.path.isdir(target):
                raise FileExistsError(errno.EEXIST, "exists", target)
            os.rename(tmp, target)
        else:
            os.link(tmp, target)
            os.unlink(tmp)
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as e:
        raise OutputExistsError(_exists(Path(target))) from e
    except OSError as e:
        if e.errno == errno.ENOTEMPTY:
            raise OutputExistsError(_exists(Path(target))) from e
        raise


def _fsync(path: str | os.PathLike[str]) -> None:
    if os.path.isdir(path):
        for p in Path(path).iterdir():
            _fsync(p)
    else:
        with open(path, "rb+") as f:
            os.fsync(f.fileno())


# ---- pending outputs ----------------------------------------------------------------------------

_pending: set[PendingOutput] = set()
_pending_lock = threading.Lock()


class PendingOutput:
    """A temporary file (or folder, `folder=True`) beside `target`, removed unless installed.

    `tmp` fixes its name (a tool's command line names it); by default it is a fresh
    `.TARGET.XXXX.mtpgraft-tmp`. Use as a context manager: leaving without install() removes it."""

    def __init__(self, target: str | os.PathLike[str], *, tmp: str | os.PathLike[str] | None = None,
                 folder: bool = False) -> None:
        self.target = Path(target)
        self.folder = folder
        self.installed = False
        with signals_held():  # a signal must not fall between making the file and registering it
            self.path = self._make(Path(tmp) if tmp is not None else None)
            with _pending_lock:
                _pending.add(self)

    def _make(self, tmp: Path | None) -> Path:
        if tmp is not None:
            _remove(tmp)  # a stale one from an interrupted run is ours to replace
            if self.folder:
                tmp.mkdir(parents=True)
            return tmp
        kw = {"prefix": f".{self.target.name}.", "suffix": ".mtpgraft-tmp", "dir": self.target.parent}
        if self.folder:
            return Path(tempfile.mkdtemp(**kw))
        fd, name = tempfile.mkstemp(**kw)
        os.close(fd)
        return Path(name)

    def install(self, *, force: bool) -> Path:
        """fsync, make it world-readable like a normal output, rename onto the target."""
        if not self.folder:
            os.chmod(self.path, 0o644)
        try:
            _fsync(self.path)
        except OSError as e:
            if e.errno in _NO_SPACE:
                raise no_space_error(self.target) from e
            raise
        install(self.path, self.target, force=force)
        self.installed = True
        self._forget()
        return self.target

    def discard(self) -> None:
        if not self.installed:
            _remove(self.path)
        self._forget()

    def _forget(self) -> None:
        with _pending_lock:
            _pending.discard(self)

    def __enter__(self) -> PendingOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def remove_pending() -> None:
    """Remove every temporary output not installed yet (the CLI calls it when a signal arrives)."""
    with _pending_lock:
        left = list(_pending)
    for p in left:
        with contextlib.suppress(OSError):
            p.discard()


@contextlib.contextmanager
def writing(target: str | os.PathLike[str]) -> Iterator[None]:
    """Turn "no space left on device" while writing `target` into one line that names it."""
    try:
        yield
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise no_space_error(target) from e
        raise


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike[str], *, force: bool, size: int | None = None,
                 ) -> Iterator[BinaryIO]:
    """Open a temporary file beside `target` for writing; install it when the block ends cleanly.
    `size`, when known, is checked against the free space first."""
    if size is not None:
        ensure_space(target, size)
    with PendingOutput(target) as p:
        with writing(target), open(p.path, "wb") as fh:
            yield fh
        p.install(force=force)


def write_text(target: str | os.PathLike[str], text: str, *, force: bool = True) -> Path:
    """A small text file (state, cache, report) written whole or not at all, known tokens redacted."""
    with atomic_write(target, force=force) as fh:
        fh.write(redact(text, shapes=False).encode("utf-8"))
    return Path(target)
