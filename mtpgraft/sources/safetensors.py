"""The safetensors container: an 8-byte little-endian header length, a JSON header (dtype, shape,
data_offsets relative to the end of the header), then the data. Any tensor is one byte range.

Only the header is parsed here; tensor bytes are read by whoever holds the file (local or remote).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import SourceError

# safetensors dtype -> bytes per element (the float types the converter handles without torch tricks)
DTYPE_SIZE = {"BF16": 2, "F16": 2, "F32": 4}
MAX_HEADER = 100 << 20  # the safetensors library's own limit


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
    try:
        meta = json.loads(data[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise SourceError(f"{file}: bad safetensors header ({e})") from None
    if not isinstance(meta, dict):
        raise SourceError(f"{file}: bad safetensors header (not a JSON object)")
    base = 8 + n
    tensors: dict[str, STensor] = {}
    for name, m in meta.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in m["data_offsets"])
            t = STensor(name, str(m["dtype"]), tuple(int(d) for d in m["shape"]), base + begin, base + end)
        except (KeyError, TypeError, ValueError):
            raise SourceError(f"{file}: bad header entry for {name}") from None
        if t.end < t.start or (file_size is not None and t.end > file_size):
            raise SourceError(f"{file}: tensor {name} lies outside the file")
        tensors[name] = t
    return STHeader(file, base, tensors)


def read_local_header(path: Path) -> STHeader:
    with open(path, "rb") as f:
        first = f.read(8)
        n = header_length(first, path.name)
        data = first + f.read(n)
    return parse_header(data, path.name, file_size=path.stat().st_size)


def weight_map(index_json: bytes, file: str) -> dict[str, str]:
    """tensor name -> shard file, from model.safetensors.index.json."""
    try:
        wm = json.loads(index_json.decode("utf-8"))["weight_map"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise SourceError(f"{file}: not a safetensors index (no weight_map)") from None
    if not isinstance(wm, dict):
        raise SourceError(f"{file}: weight_map is not an object")
    return {str(k): str(v) for k, v in wm.items()}


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
