"""Tensor type conversion in numpy for the MTP block, bit for bit what gguf-py (and so
convert_hf_to_gguf.py) writes: gguf.quants' own maths, a bounded chunk of rows at a time, on a few
threads (numpy releases the GIL in its loops, so chunks convert in parallel).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf import quants

T = TypeVar("T")
R = TypeVar("R")


def convert(raw: np.ndarray, src: Q, to: Q, ne0: int) -> bytes:
    """Rows of a tensor's raw bytes (uint8, one row a line) from type `src` to type `to`."""
    if src == Q.F32:
        f32 = raw.view(np.float32).reshape(raw.shape[0], ne0)
    else:
        f32 = quants.dequantize(raw, src).reshape(raw.shape[0], ne0).astype(np.float32, copy=False)
    out = f32 if to == Q.F32 else quants.quantize(f32, to)
    return np.ascontiguousarray(out).tobytes()


def workers() -> int:
    """Threads for conversion: the cores this process may use, at most 4 (memory stays bounded:
    each holds one chunk and its temporaries)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(4, n))


def ordered_map(fn: Callable[[T], R], items: Iterable[T], n_workers: int) -> Iterator[R]:
    """fn over items on `n_workers` threads, results in order, at most n_workers + 1 in flight
    (the input is read lazily). Leaving early cancels what has not started and waits for the rest."""
    if n_workers <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(n_workers, thread_name_prefix="mtpgraft-convert")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > n_workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
