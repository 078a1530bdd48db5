"""The sha256 of the MTP source's bytes, computed in a thread while the graft's output is written."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable

from ..errors import MtpgraftError
from ..gguf_io import TensorRef

CHUNK_BYTES = 16 << 20


def hash_refs(refs: Iterable[TensorRef], stop: threading.Event) -> str | None:
    """sha256 of the tensors' bytes in order; None when `stop` is set first."""
    h = hashlib.sha256()
    buf = memoryview(bytearray(CHUNK_BYTES))
    for r in refs:
        with open(r.path, "rb", buffering=0) as f:
            f.seek(r.abs_offset)
            left = r.info.nbytes
            while left:
                if stop.is_set():
                    return None
                n = f.readinto(buf[:min(left, CHUNK_BYTES)])
                if not n:
                    raise MtpgraftError(f"{r.path}: unexpected end of file reading {r.name}")
                h.update(buf[:n])
                left -= n
    return h.hexdigest()


class Digest:
    """The sha256 of the MTP source's bytes, computed in a thread while the output is written: the
    body's copy runs in the kernel, so the pass costs no time of its own, and it brings the MTP
    bytes into the page cache before their copy (after the body) reads them. Leaving the block
    stops the thread and waits for it."""

    def __init__(self, refs: Iterable[TensorRef]) -> None:
        self._stop = threading.Event()
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(list(refs),), name="mtpgraft-digest", daemon=True)

    def _run(self, refs: list[TensorRef]) -> None:
        try:
            self._digest = hash_refs(refs, self._stop)
        except BaseException as e:  # handed to the main thread by result()
            self._error = e

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._digest is not None
        return self._digest

    def __enter__(self) -> Digest:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
