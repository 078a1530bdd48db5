"""Lean GGUF container reading and streaming writing.

Why not gguf.GGUFReader: it builds a numpy array per vocabulary string (hundreds of thousands for
Qwen3.6) and exposes tensors through one big mmap, so a graft's RSS would grow with the model.
Here only the header is parsed (from a read-only mmap that is closed afterwards), metadata entries
keep their raw encoded bytes so unchanged keys are copied verbatim, and tensor bytes are copied
file-to-file with copy_file_range (no user-space buffer) by the writer.
"""

from __future__ import annotations

import math
import mmap
import os
import stat
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import ggml_types
from .errors import GGUFFormatError
from .naming import SPLIT_RE, shard_name

if TYPE_CHECKING:
    import numpy as np

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
PAD_KEY = "mtpgraft.layout.padding"  # a u8 array that sizes the header; layout, not metadata


class GGUFValueType(IntEnum):
    """GGUF's metadata value types (ggml/include/gguf.h; the values of gguf-py's enum of the same
    name, which compares equal to these). Our own so that reading and copying a GGUF never imports
    numpy and gguf-py (a tenth of a second on each attach): only the numpy code paths do."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FMT = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
    GGUFValueType.BOOL: "<?",
}

INT_RANGES = {GGUFValueType.UINT8: (0, 2**8 - 1), GGUFValueType.INT8: (-2**7, 2**7 - 1),
              GGUFValueType.UINT16: (0, 2**16 - 1), GGUFValueType.INT16: (-2**15, 2**15 - 1),
              GGUFValueType.UINT32: (0, 2**32 - 1), GGUFValueType.INT32: (-2**31, 2**31 - 1),
              GGUFValueType.UINT64: (0, 2**64 - 1), GGUFValueType.INT64: (-2**63, 2**63 - 1)}
# llama.cpp's own limits (ggml/include/ggml.h GGML_MAX_NAME, GGML_MAX_DIMS; src/llama-hparams.h).
MAX_NAME = 64
MAX_DIMS = 4
MAX_LAYERS = 512



def shown(text: str, limit: int = 80) -> str:
    """A name from a file, fit for a one-line message: non-printables as \\xNN, at most `limit` chars.

    Key and tensor names are whatever bytes a file holds; every message that names one uses this."""
    out = "".join(ch if ch.isprintable() else (f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
                  for ch in text[:limit])
    return out[:limit] + ("..." if len(text) > limit or len(out) > limit else "")


def vtype_name(kv: KV) -> str:
    """The GGUF type of an entry as llama.cpp names it (u32, f32, arr[i8], ...)."""
    names = {GGUFValueType.UINT8: "u8", GGUFValueType.INT8: "i8", GGUFValueType.UINT16: "u16",
             GGUFValueType.INT16: "i16", GGUFValueType.UINT32: "u32", GGUFValueType.INT32: "i32",
             GGUFValueType.FLOAT32: "f32", GGUFValueType.BOOL: "bool", GGUFValueType.STRING: "str",
             GGUFValueType.UINT64: "u64", GGUFValueType.INT64: "i64", GGUFValueType.FLOAT64: "f64"}
    if kv.is_array:
        return f"arr[{names.get(kv.item_type, '?') if kv.item_type is not None else '?'}]"
    return names.get(kv.vtype, "?")


# --------------------------------------------------------------------------- metadata


@dataclass
class KV:
    """One metadata entry: decoded lazily, raw bytes (key included) kept for verbatim copying."""

    key: str
    vtype: GGUFValueType
    raw: bytes  # the whole encoded entry: key length, key, type, value
    item_type: GGUFValueType | None = None  # arrays only
    count: int = 1  # arrays only: element count
    _value: Any = field(default=None, repr=False)
    _decoded: bool = field(default=False, repr=False)

    @property
    def is_array(self) -> bool:
        return self.vtype == GGUFValueType.ARRAY

    @property
    def payload(self) -> bytes:
        """The value bytes only (for arrays: the elements, after type and count)."""
        head = 8 + len(self.key.encode()) + 4
        if self.is_array:
            head += 12
        return self.raw[head:]

    @property
    def value(self) -> Any:
        if not self._decoded:
            self._value = _decode_value(self)
            self._decoded = True
        return self._value


def _decode_value(kv: KV) -> Any:
    data = kv.payload
    if kv.vtype == GGUFValueType.STRING:
        (n,) = struct.unpack_from("<Q", data, 0)
        return data[8:8 + n].decode("utf-8", errors="replace")
    if kv.vtype in _SCALAR_FMT:
        return struct.unpack_from(_SCALAR_FMT[kv.vtype], data, 0)[0]
    assert kv.item_type is not None
    if kv.item_type == GGUFValueType.STRING:
        out, off = [], 0
        for _ in range(kv.count):
            (n,) = struct.unpack_from("<Q", data, off)
            out.append(data[off + 8:off + 8 + n].decode("utf-8", errors="replace"))
            off += 8 + n
        return out
    if kv.item_type in _SCALAR_FMT:
        return list(struct.unpack_from(f"<{kv.count}{_SCALAR_FMT[kv.item_type][1]}", data, 0))
    raise GGUFFormatError(f"nested arrays are not supported (key {kv.key})")


def _numpy_scalars() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """numpy's integer, bool and number scalar types, or nothing: a value can only be a numpy
    scalar once numpy is loaded, and this module never loads it."""
    np = sys.modules.get("numpy")
    return ((np.integer,), (np.bool_,), (np.number,)) if np is not None else ((), (), ())


def _check_scalar(key: str, vtype: GGUFValueType, value: Any) -> None:
    """Refuse a value the GGUF type cannot hold, so the writer never meets a struct.error."""
    np_int, np_bool, np_num = _numpy_scalars()
    if vtype in INT_RANGES:
        lo, hi = INT_RANGES[vtype]
        ok = isinstance(value, (int, *np_int)) and lo <= int(value) <= hi  # a bool is 0 or 1
    elif vtype == GGUFValueType.BOOL:
        ok = isinstance(value, (bool, *np_bool)) or value in (0, 1)
    elif vtype in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        ok = isinstance(value, (int, float, *np_num)) and not isinstance(value, bool)
        if ok and vtype == GGUFValueType.FLOAT32 and math.isfinite(value):
            ok = abs(float(value)) <= 3.4028234663852886e38
    elif vtype == GGUFValueType.STRING:
        ok = True  # written as str(value)
    else:
        ok = False
    if not ok:
        raise GGUFFormatError(f"cannot write key {shown(key)}: {shown(repr(value), 40)} does not fit its "
                              f"type {GGUFValueType(vtype).name.lower()}")


def encode_kv(key: str, vtype: GGUFValueType, value: Any,
              item_type: GGUFValueType | None = None) -> KV:
    """Encode a metadata entry the way llama.cpp's writer does (little-endian GGUF v3).

    Every value is checked against its type first: a GGUFFormatError names the key, never a struct.error."""
    kb = key.encode()
    out = bytearray(struct.pack("<Q", len(kb)) + kb + struct.pack("<I", int(vtype)))
    count = 1
    if vtype == GGUFValueType.ARRAY:
        if item_type is None or item_type == GGUFValueType.ARRAY:
            raise GGUFFormatError(f"cannot write key {shown(key)}: arrays need a scalar item type")
        items = list(value)
        for v in items:
            _check_scalar(key, item_type, v)
        count = len(items)
        out += struct.pack("<IQ", int(item_type), count)
        if item_type == GGUFValueType.STRING:
            for s in items:
                sb = str(s).encode()
                out += struct.pack("<Q", len(sb)) + sb
        else:
            out += struct.pack(f"<{count}{_SCALAR_FMT[item_type][1]}", *items)
    else:
        _check_scalar(key, vtype, value)
        if vtype == GGUFValueType.STRING:
            vb = str(value).encode()
            out += struct.pack("<Q", len(vb)) + vb
        else:
            out += struct.pack(_SCALAR_FMT[vtype], value)
    return KV(key=key, vtype=vtype, raw=bytes(out), item_type=item_type, count=count)


# --------------------------------------------------------------------------- tensors


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


class TruncatedHeaderError(GGUFFormatError):
    """The bytes given end inside the header; `needed` is how many the next item needs."""

    def __init__(self, message: str, *, needed: int) -> None:
        super().__init__(message)
        self.needed = needed


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
    off = start
    try:
        for _ in range(count):
            off += 8 + unpack(buf, off)[0]
            if off > end:
                break
    except struct.error:  # fewer than 8 bytes left for a length
        off += 8
    if off > end:
        raise TruncatedHeaderError(f"{cur.path}: truncated GGUF header (needs {off} bytes, file has "
                                   f"{end})", needed=off)
    if count >= _WALK_MEMO_MIN and off - start <= _WALK_MEMO_MAX:
        if len(_WALKED) >= 8:
            _WALKED.pop(next(iter(_WALKED)))
        _WALKED[count] = bytes(buf[start:off])
    cur.off = off


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
            cur.take(count * struct.calcsize(_SCALAR_FMT[item_t]))
        return item_t, count
    try:
        fmt = _SCALAR_FMT[GGUFValueType(vtype)]
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


class _Metadata:
    """Typed, range-checked access to metadata: the one place a value's GGUF type is checked."""

    path: Path
    kv: dict[str, KV]

    def get(self, key: str, default: Any = None) -> Any:
        kv = self.kv.get(key)
        return default if kv is None else kv.value

    def get_int(self, key: str, *, lo: int = 0, hi: int = 2**32 - 1) -> int | None:
        """An integer key (any integer width), None when absent; GGUFFormatError for another type or
        a value outside lo..hi."""
        kv = self.kv.get(key)
        if kv is None:
            return None
        if kv.vtype not in INT_RANGES:
            raise GGUFFormatError(f"{self.path}: key {shown(key)} must be an integer but is {vtype_name(kv)}")
        v = int(kv.value)
        if not lo <= v <= hi:
            raise GGUFFormatError(f"{self.path}: key {shown(key)} is {v}, outside {lo}..{hi}")
        return v

    def get_str(self, key: str) -> str | None:
        kv = self.kv.get(key)
        if kv is None:
            return None
        if kv.vtype != GGUFValueType.STRING:
            raise GGUFFormatError(f"{self.path}: key {shown(key)} must be a string but is {vtype_name(kv)}")
        return str(kv.value)

    def type_defect(self, key: str, want: GGUFValueType = GGUFValueType.UINT32) -> str | None:
        """What llama.cpp's loader says when a key it reads has another type (it reads exact types:
        src/llama-model-loader.cpp GKV::get_kv), or None."""
        kv = self.kv.get(key)
        if kv is None or (kv.vtype == want and not kv.is_array):
            return None
        want_name = vtype_name(KV(key, want, b""))
        return f"key {shown(key)} has wrong type {vtype_name(kv)} but expected type {want_name}"


class GGUFFile(_Metadata):
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
        self.data_offset = _align(cur.off, self.alignment)
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
                expected = _align(expected + t.nbytes, self.alignment)

    @property
    def split_no(self) -> int:
        return self.get_int("split.no", hi=2**16 - 1) or 0

    @property
    def split_count(self) -> int:
        return self.get_int("split.count", hi=2**16 - 1) or 0


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


# --------------------------------------------------------------------------- a model (maybe split)


@dataclass(frozen=True)
class TensorRef:
    """A tensor and where its bytes are: shard index and absolute file offset."""

    info: TensorInfo
    shard: int
    path: Path
    abs_offset: int

    @property
    def name(self) -> str:
        return self.info.name


class GGUFModel(_Metadata):
    """A model as one or more shards. Metadata comes from the first shard."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        first = GGUFFile(path)
        self.path = first.path
        self.kv = first.kv
        self.shards = [first] + self._other_shards(first)
        self.refs: list[TensorRef] = []
        for i, s in enumerate(self.shards):
            for t in s.tensors:
                self.refs.append(TensorRef(t, i, s.path, s.data_offset + t.offset))
        self.by_name = {r.name: r for r in self.refs}
        self.defects = list(first.defects)
        for s in self.shards[1:]:
            self.defects += [f"{s.path.name}: {d}" for d in s.defects]
        if self.is_split and len(self.by_name) != len(self.refs):  # llama-model-loader.cpp
            dup = next(n for n, c in Counter(r.name for r in self.refs).items() if c > 1)
            self.defects.append(f"invalid model: tensor {shown(dup)} is duplicated across shards")

    def _other_shards(self, first: GGUFFile) -> list[GGUFFile]:
        count = first.split_count
        if count <= 1 and first.split_no == 0:
            return []
        if first.split_no != 0:
            raise GGUFFormatError(f"{self.path}: this is shard {first.split_no + 1} of {count}; "
                                  "pass the first shard (-00001-of-...)")
        m = SPLIT_RE.match(self.path.name)
        if not m:
            raise GGUFFormatError(f"{self.path}: split.count is {count} but the name is not "
                                  "NAME-00001-of-0000N.gguf, so the other shards cannot be found")
        shards = []
        for i in range(2, count + 1):
            p = self.path.with_name(shard_name(m["prefix"], i, count))
            if not p.exists():
                raise GGUFFormatError(f"{self.path}: shard {i} of {count} is missing ({p.name})")
            shard = GGUFFile(p)
            if shard.split_no != i - 1:
                raise GGUFFormatError(f"{p}: split.no is {shard.split_no}, expected {i - 1}")
            shards.append(shard)
        return shards

    @property
    def is_split(self) -> bool:
        return len(self.shards) > 1

    @property
    def paths(self) -> list[Path]:
        return [s.path for s in self.shards]

    @property
    def alignment(self) -> int:
        return self.shards[0].alignment

    def tensor_bytes_total(self) -> int:
        return sum(r.info.nbytes for r in self.refs)

    @property
    def arch(self) -> str:
        arch = self.get_str("general.architecture")
        if arch is None:
            raise GGUFFormatError(f"{self.path}: no general.architecture key")
        if not arch or not arch.isprintable() or len(arch) > MAX_NAME:  # every key name is built from it
            raise GGUFFormatError(f"{self.path}: general.architecture {shown(arch)} is not an architecture name")
        return arch


# --------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class OutTensor:
    """A tensor to write: either copied from a file region or produced by `produce` in chunks."""

    name: str
    ne: tuple[int, ...]
    ggml_type: int
    nbytes: int
    src_path: Path | None = None
    src_offset: int = 0
    produce: Callable[[], Iterable[bytes]] | None = None




@dataclass(frozen=True)
class Layout:
    """Where write_gguf puts tensor data.

    `align` (the default, "reflink"): tensors copied from the input that contributes most bytes come
    first, in that input's order, and a padding key sizes the header so that they land at offsets
    congruent to their source offsets modulo the filesystem block size; copy-on-write filesystems
    then share those blocks instead of copying them. New and converted tensors follow. llama.cpp
    reads tensor data in tensor-info order with no gaps, so the info order follows the data.
    Without `align` ("converter"): the tensors' given order and no padding key, byte for byte what
    convert_hf_to_gguf.py writes. `clone=False` copies every byte even where blocks could be shared.
    """

    align: bool = True
    clone: bool = True

    @property
    def name(self) -> str:
        return "reflink" if self.align else "converter"


REFLINK = Layout()
CONVERTER = Layout(align=False)


@dataclass(frozen=True)
class Written:
    """What write_gguf wrote: total bytes and where each key's entry starts in the file."""

    nbytes: int
    kv_offsets: dict[str, int]


@dataclass(frozen=True)
class _Copy:
    src: Path
    src_off: int
    dst_off: int
    n: int


def _tensor_info_bytes(t: OutTensor, offset: int) -> bytes:
    nb = t.name.encode()
    out = struct.pack("<Q", len(nb)) + nb + struct.pack("<I", len(t.ne))
    out += struct.pack(f"<{len(t.ne)}Q", *t.ne)
    out += struct.pack("<IQ", t.ggml_type, offset)
    return out


def main_input(tensors: list[OutTensor]) -> tuple[Path, int] | None:
    """The input a file copies most bytes from, and how many: the run the reflink layout aligns."""
    per_src: dict[Path, int] = {}
    for t in tensors:
        if t.src_path is not None:
            per_src[t.src_path] = per_src.get(t.src_path, 0) + t.nbytes
    return max(per_src.items(), key=lambda kv: kv[1]) if per_src else None


def _place(tensors: list[OutTensor], layout: Layout) -> list[OutTensor]:
    """The output's tensor order: the main input's tensors first in source order (reflink layout)."""
    found = main_input(tensors) if layout.align else None
    if found is None:
        return list(tensors)
    main = found[0]
    body = sorted((t for t in tensors if t.src_path == main), key=lambda t: t.src_offset)
    return body + [t for t in tensors if t.src_path != main]


def _padding(tensors: list[OutTensor], rel: list[int], header_len: int, alignment: int, block: int) -> int | None:
    """How many padding bytes the padding key carries so that most copied bytes land congruent
    with their source offsets, or None when no copied tensor can (alignment mismatch)."""
    weight: dict[int, int] = {}
    for t, r in zip(tensors, rel, strict=True):
        if t.src_path is not None:
            res = (t.src_offset - r) % block
            weight[res] = weight.get(res, 0) + t.nbytes
    fixed = header_len + len(encode_kv(PAD_KEY, GGUFValueType.ARRAY, [], GGUFValueType.UINT8).raw)
    for res in sorted(weight, key=lambda x: -weight[x]):
        n = (res - fixed) % block
        if (fixed + n) % alignment == 0:
            return n
    return None


def write_gguf(fh: BinaryIO, kvs: list[KV], tensors: list[OutTensor], *, alignment: int,
               progress: Callable[[int], None] = lambda n: None, layout: Layout = REFLINK,
               header_only: bool = False) -> Written:
    """Write a complete GGUF v3 file to an open binary file (see Layout for where the data goes).

    header_only: write the header and leave the tensor data a hole of the right size (a file that
    parses like the real one, for planning without the data)."""
    from .blocks import block_size

    fd = fh.fileno()
    block = block_size(fd)
    tensors = _place(tensors, layout)
    rel, off = [], 0
    for t in tensors:
        rel.append(off)
        off = _align(off + t.nbytes, alignment)
    kvs = [kv for kv in kvs if kv.key != PAD_KEY]
    infos = b"".join(_tensor_info_bytes(t, r) for t, r in zip(tensors, rel, strict=True))
    if layout.align:
        head_len = 24 + sum(len(kv.raw) for kv in kvs) + len(infos)
        pad = _padding(tensors, rel, head_len, alignment, block)
        if pad is not None:
            kvs.append(encode_kv(PAD_KEY, GGUFValueType.ARRAY, bytes(pad), GGUFValueType.UINT8))
    header = bytearray(GGUF_MAGIC + struct.pack("<IQQ", 3, len(tensors), len(kvs)))
    kv_offsets = {}
    for kv in kvs:
        kv_offsets[kv.key] = len(header)
        header += kv.raw
    header += infos
    header += b"\0" * (_align(len(header), alignment) - len(header))
    fh.write(header)
    fh.flush()
    data = len(header)
    if header_only:
        os.ftruncate(fd, data + off)
        return Written(data + off, kv_offsets)
    _write_data(fd, tensors, [data + r for r in rel], data + off, layout, block, progress)
    return Written(data + off, kv_offsets)


def _write_data(fd: int, tensors: list[OutTensor], starts: list[int], end: int, layout: Layout, block: int,
                progress: Callable[[int], None]) -> None:
    """Tensor bytes at their offsets; runs of tensors copied from consecutive places in one input
    (the padding between them included) become one range, so their blocks can be shared whole."""
    from .blocks import copy_range

    runs: list[tuple[int, _Copy | OutTensor]] = []
    for t, pos in zip(tensors, starts, strict=True):
        last = runs[-1][1] if runs else None
        if t.src_path is None:
            runs.append((pos, t))
        elif isinstance(last, _Copy) and last.src == t.src_path and t.src_offset - last.src_off == pos - last.dst_off:
            runs[-1] = (last.dst_off, _Copy(last.src, last.src_off, last.dst_off, pos - last.dst_off + t.nbytes))
        else:
            runs.append((pos, _Copy(t.src_path, t.src_offset, pos, t.nbytes)))
    pos = starts[0] if starts else end
    for start, run in runs:  # the padding between tensors, and after the last one: ggml's reader
        if start > pos:      # reads the blob padded, as gguf-py writes it
            os.pwrite(fd, bytes(start - pos), pos)
        pos = start + (run.n if isinstance(run, _Copy) else run.nbytes)
    if end > pos:
        os.pwrite(fd, bytes(end - pos), pos)
    src_fds: dict[Path, int] = {}
    try:
        for start, run in _largest_copy_last(runs):
            if isinstance(run, OutTensor):
                _produce(fd, run, start, progress)
                continue
            sfd = src_fds.get(run.src)
            if sfd is None:
                sfd = src_fds[run.src] = os.open(run.src, os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):  # a larger readahead window, as cp asks for
                    os.posix_fadvise(sfd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            copy_range(sfd, fd, run.src_off, start, run.n, clone=layout.clone, block=block, progress=progress)
    finally:
        for sfd in src_fds.values():
            os.close(sfd)


def _largest_copy_last(runs: list[tuple[int, _Copy | OutTensor]]) -> list[tuple[int, _Copy | OutTensor]]:
    """The order the runs are written in (each at its own offset, so any order makes the same file):
    the largest copied run (the body) last. The MTP block is then copied, or converted, while the
    provenance digest reads the same source bytes, so they come from storage once; after a 12 GB
    body they would have left the page cache and been read a second time."""
    copies = [i for i, (_, r) in enumerate(runs) if isinstance(r, _Copy)]
    if not copies:
        return runs
    big = max(copies, key=lambda i: runs[i][1].n)  # type: ignore[union-attr]
    return [r for i, r in enumerate(runs) if i != big] + [runs[big]]


def _produce(fd: int, t: OutTensor, pos: int, progress: Callable[[int], None]) -> int:
    assert t.produce is not None
    written = 0
    for chunk in t.produce():
        _pwrite_all(fd, chunk, pos + written)
        written += len(chunk)
        progress(len(chunk))
    if written != t.nbytes:
        raise GGUFFormatError(f"internal error: {t.name} produced {written} bytes, expected {t.nbytes}")
    return pos + written


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, pos)
        mv, pos = mv[n:], pos + n


def read_tensor_rows(ref: TensorRef, rows_per_chunk: int) -> Iterator[np.ndarray]:
    """Yield a tensor's raw bytes as uint8 arrays of whole rows (bounded memory)."""
    import numpy as np

    ne0 = ref.info.ne[0] if ref.info.ne else 1
    row_bytes = tensor_nbytes(ref.info.ggml_type, (ne0,))
    n_rows = ref.info.nbytes // row_bytes if row_bytes else 0
    with open(ref.path, "rb", buffering=0) as f:
        for r0 in range(0, n_rows, rows_per_chunk):
            r1 = min(n_rows, r0 + rows_per_chunk)
            f.seek(ref.abs_offset + r0 * row_bytes)
            buf = f.read((r1 - r0) * row_bytes)
            yield np.frombuffer(buf, dtype=np.uint8).reshape(r1 - r0, row_bytes)
