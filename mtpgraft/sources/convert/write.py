"""The head written: each tensor streamed from its safetensors bytes in bounded chunks, converted in
numpy as the converter does (cast, +1 norms, F16/BF16/Q8_0), into a GGUF with the plan's keys."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import SourceError
from ...ggml_types import BY_NAME
from ...gguf_io import CONVERTER, KV, GGUFValueType, OutTensor, encode_kv, write_gguf
from ..safetensors import DTYPE_SIZE
from .head import HeadPlan, HeadTensor, Piece

if TYPE_CHECKING:  # numpy and gguf-py: loaded when a head is written, not when one is planned
    import numpy as np

V = GGUFValueType
CHUNK_BYTES = 16 << 20


def encode_head_kvs(plan: HeadPlan) -> list[KV]:
    out = []
    for key, vtype, value in plan.kvs:
        if vtype == "ARRAY":  # a per-layer list, its item type as gguf-py gives it
            out.append(encode_kv(key, V.ARRAY, value, _item_type(value)))
        else:
            out.append(encode_kv(key, V[vtype], value))
    return out


def _item_type(values: Sequence[object]) -> GGUFValueType:
    """gguf-py's writer types a list by its first item (GGUFValueType.get_type): bool BOOL, float
    FLOAT32, int INT32. A plan's per-layer lists hold one kind of item, never none."""
    first = values[0]
    return V.BOOL if isinstance(first, bool) else V.FLOAT32 if isinstance(first, float) else V.INT32


Locate = Callable[[Piece], tuple[Path, int]]  # where a piece's source tensor starts (file, offset)


def _decode(raw: bytes, dtype: str) -> np.ndarray:
    """The converter's dtype rule: F16 and F32 stay, everything else becomes float32."""
    import numpy as np

    if dtype == "F16":
        return np.frombuffer(raw, dtype=np.float16)
    if dtype == "F32":
        return np.frombuffer(raw, dtype=np.float32)
    bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)


def _encode(x: np.ndarray, target: str, cols: int) -> bytes:
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    x = x.reshape(-1, cols)
    if target == "F32":
        return x.astype(np.float32, copy=False).tobytes()
    if target == "F16":
        return x.astype(np.float16, copy=False).tobytes()
    return np.ascontiguousarray(quants.quantize(x, GGMLQuantizationType[target])).tobytes()


def _piece_chunks(p: Piece, fd: int, base: int) -> Iterator[tuple[bytes, int]]:
    """Raw bytes of a piece in bounded chunks, with the row length in elements."""
    es = DTYPE_SIZE[p.src.dtype]
    row = p.cols * es
    if p.transposed:
        yield from _transposed_blocks(p, fd, base, es)
        return
    if p.interleaved:
        yield from _interleaved_rows(p, fd, base, row)
        return
    step = max(1, CHUNK_BYTES // max(1, row))
    for o in range(p.outer):
        for r in range(p.r0, p.r1, step):
            n = min(step, p.r1 - r)
            off = base + (o * p.rows + r) * row
            data = os.pread(fd, n * row, off)
            if len(data) != n * row:
                raise SourceError(f"{p.file}: unexpected end of data reading {p.src.name}")
            yield data, p.cols


def _transposed_blocks(p: Piece, fd: int, base: int, es: int) -> Iterator[tuple[bytes, int]]:
    """Each block's rows [r0, r1) read whole and transposed (a head's slab: rank x head_dim elements)."""
    import numpy as np

    n, row = p.r1 - p.r0, p.cols * es
    for o in range(p.outer):
        data = os.pread(fd, n * row, base + (o * p.rows + p.r0) * row)
        if len(data) != n * row:
            raise SourceError(f"{p.file}: unexpected end of data reading {p.src.name}")
        yield np.frombuffer(data, dtype=f"u{es}").reshape(n, p.cols).T.tobytes(), n


def _interleaved_rows(p: Piece, fd: int, base: int, row: int) -> Iterator[tuple[bytes, int]]:
    """Rows [r0, r1) with row i of the second half after row i of the first, in bounded chunks."""
    import numpy as np

    half = (p.r1 - p.r0) // 2
    step = max(1, CHUNK_BYTES // (2 * row))
    for i in range(0, half, step):
        n = min(step, half - i)
        a, b = (os.pread(fd, n * row, base + (p.r0 + h * half + i) * row) for h in (0, 1))
        if len(a) != n * row or len(b) != n * row:
            raise SourceError(f"{p.file}: unexpected end of data reading {p.src.name}")
        both = np.stack([np.frombuffer(a, np.uint8).reshape(n, row), np.frombuffer(b, np.uint8).reshape(n, row)], 1)
        yield both.tobytes(), p.cols


def tensor_producer(t: HeadTensor, locate: Locate) -> Callable[[], Iterator[bytes]]:
    target = t.ggml_type

    def gen() -> Iterator[bytes]:
        for p in t.pieces:
            path, base = locate(p)
            fd = os.open(path, os.O_RDONLY)
            try:
                for raw, cols in _piece_chunks(p, fd, base):
                    x = _decode(raw, p.src.dtype)
                    if t.plus_one:
                        x = x + x.dtype.type(1)
                    yield _encode(x, target, cols)
            finally:
                os.close(fd)

    return gen


def write_head(plan: HeadPlan, locate: Locate | None, out: Path, *, extra_kvs: Sequence[KV] = (),
               progress: Callable[[int], None] = lambda n: None) -> None:
    """Write the head as a GGUF holding the plan's keys (+ extra_kvs) and only the MTP tensors
    (locate None: the header only, the data left a hole, for planning)."""
    tensors = [OutTensor(t.name, t.ne, BY_NAME[t.ggml_type].id, t.nbytes,
                         produce=tensor_producer(t, locate) if locate is not None else None)
               for t in plan.tensors]
    with open(out, "wb") as fh:
        write_gguf(fh, encode_head_kvs(plan) + list(extra_kvs), tensors, alignment=32, progress=progress,
                   header_only=locate is None, layout=CONVERTER)  # as its header-only twin
