"""Reading one GGUF file's header (metadata and tensor infos) from a read-only mmap, range-checked
against hostile input; tensor data is never read."""

from __future__ import annotations

import mmap
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from .. import ggml_types
from ..errors import GGUFFormatError
from .values import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    KV,
    MAX_DIMS,
    MAX_NAME,
    PAD_KEY,
    SCALAR_FMT,
    GGUFValueType,
    Metadata,
    aligned,
    shown,
)

type_name = ggml_types.type_name


def tensor_nbytes(ggml_type: int, ne: tuple[int, ...]) -> int:
    t = ggml_types.tensor_type(ggml_type)
    if t is None:
        raise GGUFFormatError(ggml_types.unknown_type_reason(ggml_type))
    if ne and not t.row_fits(ne[0]):
        raise GGUFFormatError(f"row length {ne[0]} is not a multiple of {t.name}'s block size {t.block}")
    return t.nbytes(ne)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order: ne[0] is the row length
    ggml_type: int
    offset: int  # relative to the file's data section
    nbytes: int

    @property
    def type_name(self) -> str:
        return type_name(self.ggml_type)

    @property
    def shape(self) -> list[int]:
        return list(self.ne)


# --------------------------------------------------------------------------- one file


ESTIMATE_REACH = 4


class TruncatedHeaderError(GGUFFormatError):
    """The bytes given end inside the header; `needed` is how many the next item needs. Inside a
    string array (a tokenizer), `estimate` is where the array ends if its other items are as long as
    those read so far, but at most ESTIMATE_REACH times as far into it as read so far: a reader by
    ranges moves towards it instead of growing a little at a time, and a guess from a few long items
    (special tokens first) cannot send it far past the end."""

    def __init__(self, message: str, *, needed: int, estimate: int | None = None) -> None:
        super().__init__(message)
        self.needed = needed
        self.estimate = estimate


class _Cursor:
    def __init__(self, buf: memoryview, path: Path, limit: int | None = None) -> None:
        self.buf, self.off, self.path = buf, 0, path
        self.limit = len(buf) if limit is None else limit  # the whole file's size

    def take(self, n: int) -> memoryview:
        end = self.off + n
        if end > len(self.buf):
            raise TruncatedHeaderError(f"{self.path}: truncated GGUF header (needs {end} bytes, file has "
                                       f"{len(self.buf)})", needed=end)
        out = self.buf[self.off:end]
        self.off = end
        return out

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack("<Q", self.take(8))[0]

    def string(self) -> str:
        n = self.u64()
        if n > self.limit:
            raise GGUFFormatError(f"{self.path}: corrupt string length {n} at offset {self.off - 8}")
        return bytes(self.take(n)).decode("utf-8", errors="replace")


_U64 = struct.Struct("<Q")


# String arrays already walked (tokens, merges), by item count: a base, its donor and the output
# hold the same tokenizer, so an identical span (one memcmp) ends where the walk ended before.
_WALKED: dict[int, bytes] = {}
_WALK_MEMO_MIN, _WALK_MEMO_MAX = 4096, 64 << 20  # items; bytes per span


def _skip_strings(cur: _Cursor, count: int) -> None:
    """Step over `count` strings (u64 length, bytes): `cur.take` per item, without its per-call
    cost (a tokenizer holds 150-250k tokens and as many merges)."""
    buf, start, end, unpack = cur.buf, cur.off, len(cur.buf), _U64.unpack_from
    seen = _WALKED.get(count)
    if seen is not None and start + len(seen) <= end and bytes(buf[start:start + len(seen)]) == seen:
        cur.off = start + len(seen)  # the same bytes walk to the same end
        return
    off, i = start, 0
    try:
        for i in range(count):  # noqa: B007 - i says how many were read when it breaks
            off += 8 + unpack(buf, off)[0]
            if off > end:
                break
    except struct.error:  # fewer than 8 bytes left for a length
        off += 8
    if off > end:
        raise TruncatedHeaderError(f"{cur.path}: truncated GGUF header (needs {off} bytes, file has "
                                   f"{end})", needed=off, estimate=_array_end(buf, start, off, i, count))
    if count >= _WALK_MEMO_MIN and off - start <= _WALK_MEMO_MAX:
        if len(_WALKED) >= 8:
            _WALKED.pop(next(iter(_WALKED)))
        _WALKED[count] = bytes(buf[start:off])
    cur.off = off


def _array_end(buf: memoryview, start: int, off: int, i: int, count: int) -> int:
    """Where a string array that starts at `start` ends, if its items after the i-th (which ends at
    `off`) are as long as the later half of those read (a vocabulary's length drifts: special tokens
    first or last), but at most ESTIMATE_REACH times as far into it as read so far."""
    mid = start
    for _ in range(i // 2):
        mid += 8 + _U64.unpack_from(buf, mid)[0]
    per = (off - mid) / (i - i // 2 + 1)
    return start + min(off - start + int(per * (count - i - 1)), ESTIMATE_REACH * (off - start))


def _skip_value(cur: _Cursor, vtype: int) -> tuple[GGUFValueType | None, int]:
    if vtype == GGUFValueType.STRING:
        cur.take(cur.u64())
        return None, 1
    if vtype == GGUFValueType.ARRAY:
        item = cur.u32()
        count = cur.u64()
        try:
            item_t = GGUFValueType(item)
        except ValueError as e:
            raise GGUFFormatError(f"{cur.path}: unknown array item type {item}") from e
        if item_t == GGUFValueType.STRING:
            if count * 8 > cur.limit - cur.off:
                raise GGUFFormatError(f"{cur.path}: corrupt array length {count} at offset {cur.off - 8}")
            _skip_strings(cur, count)
        elif item_t == GGUFValueType.ARRAY:
            raise GGUFFormatError(f"{cur.path}: nested arrays are not supported")
        else:
            cur.take(count * struct.calcsize(SCALAR_FMT[item_t]))
        return item_t, count
    try:
        fmt = SCALAR_FMT[GGUFValueType(vtype)]
    except (ValueError, KeyError) as e:
        raise GGUFFormatError(f"{cur.path}: unknown metadata value type {vtype}") from e
    cur.take(struct.calcsize(fmt))
    return None, 1


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
               (stat.S_ISSOCK, "a socket"))


def open_input(path: Path) -> int:
    """Open an input read-only; anything but a regular file is refused before open() could block
    (a FIFO blocks until a writer comes) and checked again on the descriptor."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise GGUFFormatError(f"{path}: is a directory, not a GGUF file")
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _FILE_KINDS if test(mode)), "not a regular file")
            raise GGUFFormatError(f"{path}: is {kind}, not a regular file; mtpgraft reads GGUF files only")
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise GGUFFormatError(f"{path}: no such file") from e
    except PermissionError as e:
        raise GGUFFormatError(f"{path}: permission denied") from e
    except OSError as e:
        raise GGUFFormatError(f"{path}: cannot open: {e.strerror or e}") from e
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped for something else since the stat
        os.close(fd)
        raise GGUFFormatError(f"{path}: is not a regular file")
    return fd


class GGUFFile(Metadata):
    """The header of one GGUF file. Tensor data is never read here.

    `defects` lists what llama.cpp's GGUF reader (ggml/src/gguf.cpp gguf_init_from_file_impl) or
    model loader refuses although the header can be parsed: inspect reports them, and no command
    writes an output from such a file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        fd = open_input(self.path)
        try:
            size = os.fstat(fd).st_size
            if size < 24:
                raise GGUFFormatError(f"{self.path}: not a GGUF file (only {size} bytes)")
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mm:
                mv = memoryview(mm)
                try:
                    self._parse(mv, size)
                finally:
                    mv.release()
        finally:
            os.close(fd)

    @classmethod
    def from_prefix(cls, data: bytes, *, size: int, name: str) -> GGUFFile:
        """Parse a header from the first bytes of a file of `size` bytes (e.g. fetched by range).
        Raises TruncatedHeaderError, with the byte count needed next, when `data` ends too soon."""
        self = cls.__new__(cls)
        self.path = Path(name)
        self._parse(memoryview(data), size)
        return self

    def _parse(self, mv: memoryview, size: int) -> None:
        self.file_size = size
        self.defects: list[str] = []
        cur = self._preamble(mv)
        n_tensors, n_kv = cur.u64(), cur.u64()
        # The smallest key-value pair takes 13 bytes and the smallest tensor info 24: larger counts
        # cannot be true, and are refused before anything is sized by them.
        if n_tensors > 1 << 24 or n_kv > 1 << 24 or 13 * n_kv + 24 * n_tensors > size:
            raise GGUFFormatError(f"{self.path}: corrupt header (tensor count {n_tensors}, key count {n_kv}, "
                                  f"{size} bytes)")
        self.kv: dict[str, KV] = {}
        for i in range(n_kv):
            self._read_kv(cur, i)
        self.tensors: list[TensorInfo] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            t = self._read_tensor_info(cur, i)
            if t.name in seen:  # gguf.cpp: "duplicate tensor name"
                self.defects.append(f"duplicate tensor name {shown(t.name)}")
            seen.add(t.name)
            self.tensors.append(t)
        self.alignment = self._alignment()
        self.header_size = cur.off
        self.data_offset = aligned(cur.off, self.alignment)
        self._check_layout(size)

    def _preamble(self, mv: memoryview) -> _Cursor:
        magic = bytes(mv[:4])
        if magic != GGUF_MAGIC:
            if magic == b"\0\0\0\0":
                raise GGUFFormatError(f"{self.path}: not a GGUF file: the header is zeroed "
                                      "(the remains of a failed write or quantization?)")
            if magic == b"FUGG":
                raise GGUFFormatError(f"{self.path}: big-endian GGUF files are not supported")
            raise GGUFFormatError(f"{self.path}: not a GGUF file (magic {magic!r})")
        cur = _Cursor(mv, self.path, self.file_size)
        cur.take(4)
        self.version = cur.u32()
        if self.version not in (2, 3):
            raise GGUFFormatError(f"{self.path}: unsupported GGUF version {self.version}")
        return cur

    def _read_kv(self, cur: _Cursor, i: int) -> None:
        start = cur.off
        key = cur.string()
        vtype = cur.u32()
        try:
            vt = GGUFValueType(vtype)
        except ValueError as e:
            raise GGUFFormatError(f"{self.path}: unknown value type {vtype} for key {shown(key)}") from e
        item_t, count = _skip_value(cur, vtype)
        if key == PAD_KEY:  # layout, not metadata: every writer sizes its own
            return
        if not key:
            self.defects.append(f"key {i} is empty")
        elif key in self.kv:  # gguf.cpp: "duplicate key"
            self.defects.append(f"duplicate key {shown(key)}")
            return  # the first one counts, as in llama.cpp's lookup
        self.kv[key] = KV(key=key, vtype=vt, raw=bytes(cur.buf[start:cur.off]), item_type=item_t, count=count)

    def _read_tensor_info(self, cur: _Cursor, i: int) -> TensorInfo:
        name = cur.string()
        if len(name.encode()) >= MAX_NAME:
            self.defects.append(f"tensor name {shown(name)} is too long ({len(name.encode())} >= {MAX_NAME} bytes)")
        n_dims = cur.u32()
        if n_dims > MAX_DIMS:
            raise GGUFFormatError(f"{self.path}: tensor {shown(name)} has {n_dims} dimensions")
        ne = tuple(cur.u64() for _ in range(n_dims))
        n = 1
        for d in ne:
            n *= d
        if any(d >= 2**63 for d in ne) or n >= 2**63:
            raise GGUFFormatError(f"{self.path}: tensor {shown(name)} has an impossible shape {list(ne)}")
        if 0 in ne:  # gguf.cpp reads it, but no model tensor is empty and llama-quantize dies on one
            self.defects.append(f"tensor {shown(name)} has a zero dimension (shape {list(ne)})")
        gtype = cur.u32()
        offset = cur.u64()
        try:
            nbytes = tensor_nbytes(gtype, ne)
        except GGUFFormatError as e:
            raise GGUFFormatError(f"{self.path}: tensor {shown(name)}: {e}") from e
        return TensorInfo(name, ne, gtype, offset, nbytes)

    def _alignment(self) -> int:
        # gguf.cpp: "key 'general.alignment' must be of type u32", "alignment N is not a power of 2";
        # the file is refused, and read here with the default alignment only to report it.
        bad = self.type_defect("general.alignment")
        if bad is not None:
            self.defects.append(bad)
            return DEFAULT_ALIGNMENT
        a = int(self.get("general.alignment", DEFAULT_ALIGNMENT))
        if a <= 0 or a & (a - 1):
            self.defects.append(f"general.alignment {a} is not a power of 2")
            return DEFAULT_ALIGNMENT
        return a

    def _check_layout(self, size: int) -> None:
        expected = 0
        for t in self.tensors:
            end = self.data_offset + t.offset + t.nbytes
            if end > size:
                raise GGUFFormatError(f"{self.path}: truncated: tensor {shown(t.name)} ends at byte {end} "
                                      f"but the file has {size} bytes")
            if t.offset != expected and expected >= 0:  # gguf.cpp: "tensor X has offset N, expected M"
                self.defects.append(f"tensor {shown(t.name)} has offset {t.offset}, expected {expected}")
                expected = -1  # report the first only
            elif expected >= 0:
                expected = aligned(expected + t.nbytes, self.alignment)

    @property
    def split_no(self) -> int:
        return self.get_int("split.no", hi=2**16 - 1) or 0

    @property
    def split_count(self) -> int:
        return self.get_int("split.count", hi=2**16 - 1) or 0

