"""mtpgraft.requant: gguf-py's bytes, converted on threads, in order."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants

from mtpgraft import requant


@pytest.mark.parametrize("to", [Q.Q8_0, Q.F16, Q.BF16, Q.Q4_0, Q.F32])
@pytest.mark.parametrize("src", [Q.F32, Q.F16, Q.BF16, Q.Q8_0])
def test_convert_matches_gguf_py(src, to):
    rng = np.random.default_rng(3)
    f = rng.standard_normal((16, 64)).astype(np.float32)
    raw = np.ascontiguousarray(quants.quantize(f, src)).view(np.uint8).reshape(16, -1)
    ref = quants.dequantize(raw, src).reshape(16, 64).astype(np.float32)
    want = np.ascontiguousarray(ref if to == Q.F32 else quants.quantize(ref, to)).tobytes()
    assert requant.convert(raw, src, to, 64) == want


def test_ordered_map_keeps_order_and_bounds_what_is_in_flight():
    started: list[int] = []
    lock = threading.Lock()
    gate = threading.Event()

    def items():
        for i in range(50):
            with lock:
                started.append(i)
            yield i

    def slow(i: int) -> int:
        if i == 0:
            gate.wait(5)  # the first result comes last: order must still hold
        return i * i

    it = requant.ordered_map(slow, items(), 3)
    first = []
    t = threading.Thread(target=lambda: first.append(next(it)))
    t.start()
    t.join(0.5)
    assert len(started) <= 3 + 1  # no more than n_workers + 1 read ahead while the first waits
    gate.set()
    t.join(5)
    assert first == [0]
    assert list(it) == [i * i for i in range(1, 50)]


def test_ordered_map_passes_errors_and_stops_early():
    def fail_at_7(i: int) -> int:
        if i == 7:
            raise ValueError("boom")
        return i

    with pytest.raises(ValueError, match="boom"):
        list(requant.ordered_map(fail_at_7, range(100), 2))
    it = requant.ordered_map(lambda i: i, range(10 ** 9), 2)  # leaving early does not read everything
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    it.close()
