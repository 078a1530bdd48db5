"""The safetensors container: an 8-byte little-endian header length, a JSON header (dtype, shape,
data_offsets relative to the end of the header), then the data. Any tensor is one byte range.

Only the header is parsed here; tensor bytes are read by whoever holds the file (local or remote).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ..parsing import load_json, plain_name

# safetensors dtype -> bytes per element (the float types the converter handles without torch tricks)
DTYPE_SIZE = {"BF16": 2, "F16": 2, "F32": 4}
MAX_HEADER = 100 << 20  # the safetensors library's own limit
MAX_DIMS = 8  # torch and ggml both stop well before this
MAX_OFFSET = 1 << 62  # no file is this large; bounds every offset and size before it is used


@dataclass(frozen=True)
class STensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset of the first byte
    end: int  # absolute file offset after the last byte

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class STHeader:
    file: str  # the file's name (in the repo or the snapshot folder)
    header_size: int  # 8 + JSON length: the bytes before the first tensor
    tensors: dict[str, STensor]  # in the header's JSON order


def header_length(first8: bytes, file: str) -> int:
    if len(first8) < 8:
        raise SourceError(f"{file}: not a safetensors file (only {len(first8)} bytes)")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_HEADER:
        raise SourceError(f"{file}: not a safetensors file (header length {n})")
    return n


def parse_header(data: bytes, file: str, *, file_size: int | None = None) -> STHeader:
    """Parse `data` = the first 8 + N bytes of a safetensors file."""
    n = header_length(data, file)
    if len(data) < 8 + n:
        raise SourceError(f"{file}: truncated safetensors header")
    meta = load_json(data[8:8 + n], f"{file}: safetensors header", max_bytes=MAX_HEADER)
    if not isinstance(meta, dict):
        raise SourceError(f"{file}: bad safetensors header (not a JSON object)")
    base = 8 + n
    tensors: dict[str, STensor] = {}
    for name, m in meta.items():
        if name != "__metadata__":
            tensors[name] = _entry(file, name, m, base, file_size)
    return STHeader(file, base, tensors)


def _count(x: Any) -> bool:
    """A dimension or an offset: a JSON integer (not a bool or a float) in [0, MAX_OFFSET]."""
    return type(x) is int and 0 <= x <= MAX_OFFSET


def _entry(file: str, name: str, m: Any, base: int, file_size: int | None) -> STensor:
    """One header entry, every number range-checked before anything is sized by it."""
    shown = name.encode("unicode_escape").decode("ascii")[:120]
    if not isinstance(m, dict) or not isinstance(m.get("dtype"), str) or not isinstance(m.get("shape"), list) \
            or not isinstance(m.get("data_offsets"), list) or len(m["data_offsets"]) != 2:
        raise SourceError(f"{file}: bad header entry for {shown} (needs dtype, shape and two data_offsets)")
    shape, offsets = m["shape"], m["data_offsets"]
    if len(shape) > MAX_DIMS or not all(map(_count, shape)):
        raise SourceError(f"{file}: tensor {shown} has a bad shape {str(shape)[:80]} (at most {MAX_DIMS} "
                          "dimensions, each a non-negative integer)")
    if not all(map(_count, offsets)):
        raise SourceError(f"{file}: tensor {shown} has bad data_offsets {str(offsets)[:80]}")
    begin, end = (int(x) for x in offsets)
    t = STensor(name, m["dtype"], tuple(int(d) for d in shape), base + begin, base + end)
    if t.end < t.start or (file_size is not None and t.end > file_size):
        raise SourceError(f"{file}: tensor {shown} lies outside the file")
    size = DTYPE_SIZE.get(t.dtype)
    if size is not None and math.prod(t.shape) * size != t.nbytes:
        raise SourceError(f"{file}: tensor {shown} is {t.dtype} {list(t.shape)} but its data_offsets hold "
                          f"{t.nbytes:,} bytes")
    return t


def read_local_header(path: Path) -> STHeader:
    with open(path, "rb") as f:
        first = f.read(8)
        n = header_length(first, path.name)
        data = first + f.read(n)
    return parse_header(data, path.name, file_size=path.stat().st_size)


def weight_map(index_json: bytes, file: str) -> dict[str, str]:
    """tensor name -> shard file, from model.safetensors.index.json."""
    index = load_json(index_json, file)
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if wm is None:
        raise SourceError(f"{file}: not a safetensors index (no weight_map)")
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise SourceError(f"{file}: weight_map is not an object of tensor name -> file name")
    for shard in set(wm.values()):  # a file beside the index: never a path out of its folder
        plain_name(shard, f"{file}: weight_map names shard")
    return dict(wm)


def write_safetensors(path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]) -> None:
    """Write tensors (name -> (dtype, shape, raw bytes)) as the safetensors library lays them out."""
    meta: dict[str, object] = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, (dtype, shape, raw) in tensors.items():
        meta[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    head = json.dumps(meta, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for _, _, raw in tensors.values():
            f.write(raw)
