"""Shared pieces of the benchmark scripts (each script's own folder is on sys.path when it runs)."""

from __future__ import annotations

from collections.abc import Callable, Iterator


def repeated(blob: bytes, nbytes: int) -> Callable[[], Iterator[bytes]]:
    """A gguf_io.OutTensor producer: `nbytes` bytes made of `blob` repeated (cheap synthetic weights)."""

    def gen() -> Iterator[bytes]:
        left = nbytes
        while left:
            n = min(left, len(blob))
            yield blob[:n]
            left -= n

    return gen
