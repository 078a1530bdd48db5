"""The GGUF format's constants and metadata value types: typed access to entries, and encoding one as
llama.cpp's writer does."""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from ..errors import GGUFFormatError

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


SCALAR_FMT = {
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


def aligned(n: int, a: int) -> int:
    """`n` rounded up to a multiple of `a`."""
    return (n + a - 1) // a * a




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
    if kv.vtype in SCALAR_FMT:
        return struct.unpack_from(SCALAR_FMT[kv.vtype], data, 0)[0]
    assert kv.item_type is not None
    if kv.item_type == GGUFValueType.STRING:
        out, off = [], 0
        for _ in range(kv.count):
            (n,) = struct.unpack_from("<Q", data, off)
            out.append(data[off + 8:off + 8 + n].decode("utf-8", errors="replace"))
            off += 8 + n
        return out
    if kv.item_type in SCALAR_FMT:
        return list(struct.unpack_from(f"<{kv.count}{SCALAR_FMT[kv.item_type][1]}", data, 0))
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
            out += struct.pack(f"<{count}{SCALAR_FMT[item_type][1]}", *items)
    else:
        _check_scalar(key, vtype, value)
        if vtype == GGUFValueType.STRING:
            vb = str(value).encode()
            out += struct.pack("<Q", len(vb)) + vb
        else:
            out += struct.pack(SCALAR_FMT[vtype], value)
    return KV(key=key, vtype=vtype, raw=bytes(out), item_type=item_type, count=count)




class Metadata:
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

