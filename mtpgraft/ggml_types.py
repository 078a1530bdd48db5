"""The one table of ggml types and llama-quantize file types, for both runtimes mtpgraft knows:
mainline llama.cpp (read off 0c1e570) and ik_llama.cpp (read off the ik-llama-cpp-python 0.1.5 sdist).

Tensor types (ggml/include/ggml.h enum ggml_type; block size, bytes per block and bytes per row from
ggml/src/ggml.c type_traits) and file types (include/llama.h llama_ftype, the quantize tool's
QUANT_OPTIONS) are different things with different names: `Q4_K` is a tensor type, `Q4_K_M` a file
type (a mixture of tensor types). This module answers every question mtpgraft asks about either:
names, sizes, float or quantized, which runtime loads a type, what numpy can make, what llama-quantize
can make, what needs an importance matrix, which tensors llama-quantize quantizes at all, and which
types are valid `--mtp-type` targets.

Two runtimes, one id space. ik_llama.cpp keeps mainline's ids for the types both have and puts its own
at ids mainline does not use (Q6_0 133 ... IQ1_KT 158, the repacked `_R4`/`_R8` at 200 and up), so
nearly every id means one thing wherever it is known. Each TensorType says which runtimes load it
(`runtimes`: the runtimes whose GGUF loader knows its size). Where the two disagree:
- ids one runtime has and the other lacks: mainline's TQ1_0 34, TQ2_0 35, NVFP4 40, Q2_0 42; ik's
  Q4_0_4_4..Q4_0_8_8 31-33 (removed from mainline) and I2_S 36 (mainline's removed IQ4_NL_4_4);
- id 41 is the same type under two names (mainline Q1_0, ik Q1_0_G128: 128 elements, 18 bytes, the
  same bits), one entry with ik's name in IK_NAMES;
- id 15 (Q8_K, an activation type llama-quantize never writes) is 292 bytes per block in mainline
  and 296 in ik (ik's block adds a float `sum`). This is the one id whose layout depends on the
  runtime, so it has one entry per runtime, is left out of BY_ID, and `tensor_type(15)` answers None:
  the parser refuses such a tensor (`unknown_type_reason` says why) instead of guessing the size.
Lookups take a runtime where the answer depends on it (`types_of`, `tensor_type`, `file_type_name`);
`runtimes_for_types` says which runtimes load a set of type ids, `loader_refusal` what a runtime's
loader says about a type it does not load (mainline's message exactly as its gguf.cpp prints it).

Bytes: a row of `ne0` elements takes `row_meta + ne0 / block * size` bytes (ggml_row_size); row_meta
is the per-row header several ik types keep (IQ4_KS 4, IQ2_KS 2, the KT types 4, Q8_KV 8, ...), 0 for
every mainline type. ik's I2_S (Microsoft BitNet) is sized by a special case in ggml_nbytes
(`elements / 4 + 32`), not by its traits, and is modelled so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .arch import rule_for
from .errors import QuantizeOptionError, Setting, UsageError
from .runtimes import IK, LABELS, MAINLINE, RUNTIMES

BOTH = frozenset(RUNTIMES)
MAINLINE_ONLY = frozenset({MAINLINE})
IK_ONLY = frozenset({IK})


@dataclass(frozen=True)
class TensorType:
    name: str
    id: int  # the value stored in a GGUF tensor info
    block: int  # elements per block
    size: int  # bytes per block
    row_meta: int = 0  # bytes per row before its blocks (ggml type_traits row_meta_size)
    runtimes: frozenset[str] = BOTH  # the runtimes whose loader knows this type (and this size)

    @property
    def quantized(self) -> bool:
        return self.name not in _UNQUANTIZED

    def row_fits(self, ne0: int) -> bool:
        """Whether a row of `ne0` elements is a whole number of blocks (the loader requires it)."""
        return ne0 % self.block == 0

    def nbytes(self, ne: Sequence[int]) -> int:
        """rows * (row_meta + blocks per row * size), as ggml_nbytes computes it."""
        n = 1
        for d in ne:
            n *= d
        if not self.row_meta:
            return n // self.block * self.size
        ne0 = ne[0] if ne else 1
        rows = n // ne0 if ne0 else 0
        return rows * (self.row_meta + ne0 // self.block * self.size)


class _FlatType(TensorType):
    """ik's I2_S: ggml_nbytes sizes it `elements / 4 + 32` (a special case), whatever its traits say."""

    def nbytes(self, ne: Sequence[int]) -> int:
        n = 1
        for d in ne:
            n *= d
        return n // 4 + 32 if n else 0


_T = TensorType
_M, _I = MAINLINE_ONLY, IK_ONLY
# ggml.h enum ggml_type. Mainline first, in its order (ids 4, 5, 31-33, 36-38 were removed from
# llama.cpp); then ik_llama.cpp's own (its ggml.h and ggml.c type_traits at the pin).
TENSOR_TYPES: tuple[TensorType, ...] = (
    _T("F32", 0, 1, 4), _T("F16", 1, 1, 2), _T("Q4_0", 2, 32, 18), _T("Q4_1", 3, 32, 20),
    _T("Q5_0", 6, 32, 22), _T("Q5_1", 7, 32, 24), _T("Q8_0", 8, 32, 34), _T("Q8_1", 9, 32, 36),
    _T("Q2_K", 10, 256, 84), _T("Q3_K", 11, 256, 110), _T("Q4_K", 12, 256, 144),
    _T("Q5_K", 13, 256, 176), _T("Q6_K", 14, 256, 210), _T("Q8_K", 15, 256, 292, runtimes=_M),
    _T("IQ2_XXS", 16, 256, 66), _T("IQ2_XS", 17, 256, 74), _T("IQ3_XXS", 18, 256, 98),
    _T("IQ1_S", 19, 256, 50), _T("IQ4_NL", 20, 32, 18), _T("IQ3_S", 21, 256, 110),
    _T("IQ2_S", 22, 256, 82), _T("IQ4_XS", 23, 256, 136), _T("I8", 24, 1, 1), _T("I16", 25, 1, 2),
    _T("I32", 26, 1, 4), _T("I64", 27, 1, 8), _T("F64", 28, 1, 8), _T("IQ1_M", 29, 256, 56),
    _T("BF16", 30, 1, 2), _T("TQ1_0", 34, 256, 54, runtimes=_M), _T("TQ2_0", 35, 256, 66, runtimes=_M),
    _T("MXFP4", 39, 32, 17), _T("NVFP4", 40, 64, 36, runtimes=_M), _T("Q1_0", 41, 128, 18),
    _T("Q2_0", 42, 64, 18, runtimes=_M),
    # ik_llama.cpp only
    _T("Q8_K", 15, 256, 296, runtimes=_I),
    _T("Q4_0_4_4", 31, 32, 18, runtimes=_I), _T("Q4_0_4_8", 32, 32, 18, runtimes=_I),
    _T("Q4_0_8_8", 33, 32, 18, runtimes=_I), _FlatType("I2_S", 36, 1, 1, runtimes=_I),
    _T("Q8_0_X4", 97, 32, 34, runtimes=_I), _T("Q8_1_X4", 98, 32, 36, runtimes=_I),
    _T("Q8_2_X4", 99, 32, 36, runtimes=_I), _T("Q6_0", 133, 32, 26, runtimes=_I),
    _T("IQ1_BN", 134, 64, 13, 2, _I), _T("IQ2_BN", 135, 64, 16, 4, _I), _T("Q8_K64", 136, 64, 68, runtimes=_I),
    _T("IQ2_K", 137, 256, 76, runtimes=_I), _T("IQ3_K", 138, 256, 110, runtimes=_I),
    _T("IQ4_K", 139, 256, 144, runtimes=_I), _T("IQ5_K", 140, 256, 176, runtimes=_I),
    _T("IQ6_K", 141, 256, 212, runtimes=_I), _T("IQ4_KS", 144, 256, 136, 4, _I),
    _T("IQ2_KS", 145, 256, 70, 2, _I), _T("IQ4_KSS", 146, 256, 128, 4, _I), _T("Q8_K16", 147, 64, 64, 20, _I),
    _T("Q8_K32", 148, 256, 296, runtimes=_I), _T("Q8_KR8", 149, 256, 296, runtimes=_I),
    _T("Q8_K128", 150, 128, 140, runtimes=_I), _T("Q8_KV", 151, 32, 32, 8, _I),
    _T("IQ5_KS", 152, 256, 168, 4, _I), _T("IQ2_KT", 153, 256, 68, 4, _I), _T("IQ3_KT", 154, 256, 100, 4, _I),
    _T("IQ4_KT", 155, 256, 128, 4, _I), _T("IQ3_KS", 156, 256, 102, 2, _I), _T("IQ2_KL", 157, 256, 86, 2, _I),
    _T("IQ1_KT", 158, 256, 56, 4, _I),
    # ik's row-interleaved (repacked) variants: a row's bytes as ggml_row_size counts them
    _T("Q4_0_R8", 202, 32, 18, runtimes=_I), _T("Q5_0_R4", 206, 32, 22, runtimes=_I),
    _T("Q8_0_R8", 208, 32, 34, runtimes=_I), _T("Q2_K_R4", 210, 256, 84, runtimes=_I),
    _T("Q3_K_R4", 211, 256, 110, runtimes=_I), _T("Q4_K_R4", 212, 256, 144, runtimes=_I),
    _T("Q5_K_R4", 213, 256, 176, runtimes=_I), _T("Q6_K_R4", 214, 256, 210, runtimes=_I),
    _T("IQ2_XXS_R4", 216, 256, 66, runtimes=_I), _T("IQ2_XS_R4", 217, 256, 74, runtimes=_I),
    _T("IQ3_XXS_R4", 218, 256, 98, runtimes=_I), _T("IQ1_S_R4", 219, 32, 6, 2, _I),
    _T("IQ4_NL_R4", 220, 32, 18, runtimes=_I), _T("IQ3_S_R4", 221, 256, 110, runtimes=_I),
    _T("IQ2_S_R4", 222, 256, 82, runtimes=_I), _T("IQ4_XS_R8", 223, 256, 136, runtimes=_I),
    _T("IQ1_M_R4", 229, 32, 7, 2, _I), _T("BF16_R16", 230, 1, 2, runtimes=_I),
    _T("Q6_0_R4", 233, 32, 26, runtimes=_I), _T("IQ2_BN_R4", 335, 64, 16, 4, _I),
    _T("IQ2_K_R4", 337, 256, 76, runtimes=_I), _T("IQ3_K_R4", 338, 256, 110, runtimes=_I),
    _T("IQ4_K_R4", 339, 256, 144, runtimes=_I), _T("IQ5_K_R4", 340, 256, 176, runtimes=_I),
    _T("IQ4_KS_R4", 344, 256, 136, 4, _I), _T("IQ5_KS_R4", 352, 256, 168, 4, _I),
    _T("Q8_K_R16", 397, 256, 258, runtimes=_I), _T("Q8_KV_R8", 398, 32, 32, 4, _I),
    _T("Q8_K_R8", 399, 256, 258, runtimes=_I),
)
GGML_TYPE_COUNT = 43  # mainline's loader refuses a tensor type >= this (ggml/src/gguf.cpp)
IK_GGML_TYPE_COUNT = 400  # ik's loader asserts type < this (ggml.c gguf_tensor_info_sanitize)
# ik's spelling where it names a shared type differently (its --custom-q, its type names).
IK_NAMES = {41: "Q1_0_G128"}


def types_of(runtime: str) -> dict[int, TensorType]:
    """The tensor types `runtime`'s loader knows, by id."""
    return _BY_RUNTIME[runtime]


_BY_RUNTIME = {r: {t.id: t for t in TENSOR_TYPES if r in t.runtimes} for r in RUNTIMES}
# The ids that mean one layout wherever they are known (all but AMBIGUOUS_IDS).
AMBIGUOUS_IDS = frozenset(i for i in _BY_RUNTIME[MAINLINE].keys() & _BY_RUNTIME[IK].keys()
                          if _BY_RUNTIME[MAINLINE][i] is not _BY_RUNTIME[IK][i])
BY_ID = {t.id: t for t in TENSOR_TYPES if t.id not in AMBIGUOUS_IDS}
BY_NAME = {t.name: t for t in BY_ID.values()} | {IK_NAMES[i]: BY_ID[i] for i in IK_NAMES}

FLOAT_NAMES = frozenset({"F32", "F16", "BF16", "F64"})
_UNQUANTIZED = FLOAT_NAMES | {"I8", "I16", "I32", "I64", "BF16_R16"}
# Float types a converter writes and llama-quantize reads as "unquantized".
FLOAT_TYPES = frozenset({"F32", "F16", "BF16"})
# Types gguf-py's numpy code can make (gguf.quants.quantize); the rest need llama-quantize.
NUMPY_MAKES = frozenset({"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"})
# Types gguf-py's numpy code can read back to F32 (gguf.quants.dequantize): a source tensor of any
# other type (I8..I64, F64, Q8_1, Q8_K, Q1_0, Q2_0) can be copied but never converted.
NUMPY_READS = frozenset({"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
                         "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
                         "IQ3_S", "IQ2_S", "IQ4_XS", "IQ1_M", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4"})
# Types llama-quantize can produce (ggml/src/ggml.c ggml_quantize_chunk; anything else asserts).
LLAMA_QUANTIZE_MAKES = frozenset({"F32", "F16", "BF16", "Q1_0", "Q2_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                  "Q8_0", "MXFP4", "NVFP4", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                                  "TQ1_0", "TQ2_0", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ3_S", "IQ2_S",
                                  "IQ1_S", "IQ1_M", "IQ4_NL", "IQ4_XS"})
# Tensor types llama-quantize refuses to make without importance data for that tensor
# (src/llama-quant.cpp tensor_requires_imatrix; Q2_K too, but only inside a Q2_K_S file).
TENSOR_NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS"})
# Tensor types whose quantization ignores an importance matrix anyway.
IGNORES_IMATRIX = frozenset({"Q8_0", "F16", "BF16", "F32"})


def tensor_type(type_id: int, runtime: str | None = None) -> TensorType | None:
    """The type `type_id` is in `runtime`; without one, the type it is wherever it is known (None for
    an id no runtime knows, and for one whose size depends on the runtime: AMBIGUOUS_IDS)."""
    if runtime is not None:
        return _BY_RUNTIME[runtime].get(type_id)
    return BY_ID.get(type_id)


def type_name(type_id: int, runtime: str | None = None) -> str:
    t = tensor_type(type_id, runtime)
    if t is None and type_id in AMBIGUOUS_IDS:
        t = _BY_RUNTIME[MAINLINE][type_id]  # the same name in both, only the size differs
    if t is None:
        return f"type{type_id}"
    return IK_NAMES.get(type_id, t.name) if runtime == IK else t.name


def unknown_type_reason(type_id: int) -> str:
    """Why tensor_type(type_id) has no answer, for the parser's message."""
    if type_id in AMBIGUOUS_IDS:
        m, k = _BY_RUNTIME[MAINLINE][type_id], _BY_RUNTIME[IK][type_id]
        return (f"ggml type {type_id} ({m.name}) is {m.size} bytes per {m.block} elements in {LABELS[MAINLINE]} "
                f"but {k.size} in {LABELS[IK]}; mtpgraft does not guess which")
    return f"unknown ggml type {type_id}"


def runtimes_for_types(type_ids: Iterable[int]) -> frozenset[str]:
    """The runtimes whose loader knows every one of these tensor type ids: a file with an ik-only type
    (IQ4_KS, the KT types, `_R4`, ...) is ik_llama.cpp's only, one with TQ1_0/NVFP4/Q2_0 mainline's."""
    ids = set(type_ids)
    return frozenset(r for r in RUNTIMES if ids <= _BY_RUNTIME[r].keys())


def runtimes_label(runtimes: Iterable[str]) -> str:
    """How a report says which runtimes load a file: "llama.cpp and ik_llama.cpp", "ik_llama.cpp only"."""
    rs = [r for r in RUNTIMES if r in set(runtimes)]
    if not rs:
        return "neither llama.cpp nor ik_llama.cpp"
    if len(rs) == len(RUNTIMES):
        return " and ".join(LABELS[r] for r in rs)
    return f"{LABELS[rs[0]]} only"


# Mainline's type_traits names for ids it removed (blck_size 0: its loader refuses them, gguf.cpp).
_MAINLINE_REMOVED = {
    4: "DEPRECATED", 5: "DEPRECATED",
    **{i: f"TYPE_{n} REMOVED, use Q4_0 with runtime repacking" for i, n in
       ((31, "Q4_0_4_4"), (32, "Q4_0_4_8"), (33, "Q4_0_8_8"))},
    **{i: f"TYPE_{n} REMOVED, use IQ4_NL with runtime repacking" for i, n in
       ((36, "IQ4_NL_4_4"), (37, "IQ4_NL_4_8"), (38, "IQ4_NL_8_8"))},
}


def loader_refusal(runtime: str, tensor: str, type_id: int, ne0: int) -> str | None:
    """What `runtime`'s GGUF loader says about a tensor of a type it does not know, None if it knows it.
    Mainline (ggml/src/gguf.cpp gguf_init_from_file_impl) logs one of two lines and refuses the file;
    ik (ggml/src/ggml.c gguf_init_from_file) has no such check and dies."""
    if type_id in _BY_RUNTIME[runtime]:
        return None
    if runtime == MAINLINE:
        if type_id >= GGML_TYPE_COUNT:
            return f"tensor '{tensor}' has invalid ggml type {type_id}. should be in [0, {GGML_TYPE_COUNT})"
        name = _MAINLINE_REMOVED.get(type_id, "DEPRECATED")
        return (f"tensor '{tensor}' of type {type_id} ({name}) has {ne0} elements per row, "
                "not a multiple of block size (0)")
    if type_id >= IK_GGML_TYPE_COUNT:
        return "GGML_ASSERT(0 <= info->type && info->type < GGML_TYPE_COUNT) failed"
    return (f"tensor '{tensor}': ggml type {type_id} has no size in ik_llama.cpp (block size 0); its GGUF "
            "reader divides by it and the process dies (SIGFPE)")


def loadable_by(tensors: Iterable[tuple[str, int, int]]) -> dict[str, str | None]:
    """For (name, type id, row length) of every tensor in a file: per runtime, None if its loader takes
    every type, else its predicted refusal of the first tensor it does not take (the loader stops there)."""
    out: dict[str, str | None] = dict.fromkeys(RUNTIMES)
    for name, type_id, ne0 in tensors:
        for r in RUNTIMES:
            if out[r] is None:
                out[r] = loader_refusal(r, name, type_id, ne0)
    return out


def tensor_needs_imatrix(name: str, file_type: str | None = None, runtime: str = MAINLINE) -> bool:
    need = TENSOR_NEEDS_IMATRIX if runtime == MAINLINE else IK_TENSOR_NEEDS_IMATRIX
    return name in need or (name == "Q2_K" and file_type == "Q2_K_S")


# --------------------------------------------------------------------------- --mtp-type


MTP_TYPE = Setting("mtp_type")  # the setting whose value mtp_target checks, in its messages


def mtp_target(text: str, *, policies: Iterable[str] = ("q8_0", "match"), what: str | Setting = MTP_TYPE) -> str:
    """Validate an `--mtp-type` value: a policy word, or a tensor type something can make (numpy or
    llama-quantize). Returns the policy word or the canonical type name; UsageError otherwise.
    The one check for attach, quantize and recipes."""
    word = text.strip().lower()
    policies = tuple(policies)
    if word in policies:
        return word
    name = word.upper()
    if name in NUMPY_MAKES or name in LLAMA_QUANTIZE_MAKES:
        return name
    known = ", ".join(t.name.lower() for t in TENSOR_TYPES if t.name in NUMPY_MAKES | LLAMA_QUANTIZE_MAKES)
    raise UsageError(what, f" {text!r} is not {', '.join(policies)} or a ggml tensor type "
                     f"llama.cpp can make ({known})")


# --------------------------------------------------------------------------- file types


# llama-quantize's file types (QUANT_OPTIONS) -> llama_ftype, which it writes to general.file_type.
FILE_TYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
    "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
    "Q5_K_M": 17, "Q6_K": 18, "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21, "IQ3_XS": 22,
    "IQ3_XXS": 23, "IQ1_S": 24, "IQ4_NL": 25, "IQ3_S": 26, "IQ3_M": 27, "IQ2_S": 28, "IQ2_M": 29,
    "IQ4_XS": 30, "IQ1_M": 31, "BF16": 32, "TQ1_0": 36, "TQ2_0": 37, "MXFP4_MOE": 38,
    "Q1_0": 40, "Q2_0": 41,
}
FILE_TYPE_ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
# llama_ftype values that are not llama-quantize targets but may be found in files.
_OTHER_FILE_TYPES = {4: "Q4_1_SOME_F16", 33: "Q4_0_4_4", 34: "Q4_0_4_8", 35: "Q4_0_8_8", 39: "NVFP4"}
FILE_TYPE_NAMES = {**{v: k for k, v in FILE_TYPES.items()}, **_OTHER_FILE_TYPES}

# ik_llama.cpp's llama-quantize file types (examples/quantize/quantize.cpp QUANT_OPTIONS ->
# include/llama.h llama_ftype). Its numbers are not its tensor type ids (IQ4_KS: file type 145,
# tensor type 144), and two are mainline numbers with another meaning: 38 is ik's MXFP4 (mainline's
# MXFP4_MOE), 41 ik's Q1_0_G128 (mainline's Q2_0).
IK_FILE_TYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
    "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17,
    "Q6_K": 18, "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21, "IQ3_XS": 22, "IQ3_XXS": 23, "IQ1_S": 24,
    "IQ4_NL": 25, "IQ3_S": 26, "IQ3_M": 27, "IQ2_S": 28, "IQ2_M": 29, "IQ4_XS": 30, "IQ1_M": 31,
    "BF16": 32, "Q4_0_4_4": 33, "Q4_0_4_8": 34, "Q4_0_8_8": 35, "MXFP4": 38,
    "Q6_0": 135, "IQ1_BN": 136, "IQ2_BN": 137, "IQ2_K": 138, "IQ3_K": 139, "IQ4_K": 140, "IQ5_K": 141,
    "IQ6_K": 142, "IQ4_KS": 145, "IQ3_KL": 146, "IQ2_KS": 147, "IQ4_KSS": 148, "Q8_KV": 149,
    "IQ5_KS": 150, "IQ2_KT": 151, "IQ3_KT": 152, "IQ4_KT": 153, "IQ3_KS": 154, "IQ2_KL": 155,
    "IQ1_KT": 156, "Q4_0_R8": 202, "Q8_0_R8": 207, "Q5_0_R4": 208, "Q2_K_R4": 210, "Q3_K_R4": 211,
    "Q4_K_R4": 214, "Q5_K_R4": 216, "Q6_K_R4": 218, "IQ2_XXS_R4": 219, "IQ2_XS_R4": 220,
    "IQ3_XXS_R4": 223, "IQ1_S_R4": 224, "IQ4_NL_R4": 225, "IQ3_S_R4": 226, "IQ2_M_R4": 229,
    "IQ4_XS_R8": 230, "IQ1_M_R4": 231, "BF16_R16": 232, "Q6_0_R4": 335, "IQ2_BN_R4": 337,
    "IQ2_K_R4": 338, "IQ3_K_R4": 339, "IQ4_K_R4": 340, "IQ5_K_R4": 341, "IQ4_KS_R4": 345,
    "IQ5_KS_R4": 350, "Q8_KV_R8": 398, "Q8_K_R8": 399,
}
# In ik's llama_ftype but not a QUANT_OPTIONS choice.
_IK_OTHER_FILE_TYPES = {41: "Q1_0_G128"}
_FILE_TYPE_NAMES_BY_RUNTIME = {
    MAINLINE: FILE_TYPE_NAMES,
    IK: {**{v: k for k, v in IK_FILE_TYPES.items()}, **_IK_OTHER_FILE_TYPES},
}


def quantize_makes(runtime: str) -> frozenset[str]:
    """The tensor types `runtime`'s llama-quantize makes: mainline's LLAMA_QUANTIZE_MAKES; for ik
    those its loader knows, and every ik-only tensor type that is also one of its file types (IQ4_KS,
    IQ4_KT, IQ2_KS, Q6_0, ..., the _R4/_R8 ones: a file type of one tensor type)."""
    if runtime == MAINLINE:
        return LLAMA_QUANTIZE_MAKES
    return frozenset({n for n in LLAMA_QUANTIZE_MAKES if IK in BY_NAME[n].runtimes}
                     | {n for n in IK_FILE_TYPES if n in BY_NAME and BY_NAME[n].runtimes == _I})


# ik_llama.cpp's ggml type_name where it is not the lower-cased name (ggml/src/ggml.c type_traits):
# its --custom-q compares names exactly, where mainline's --tensor-type ignores case.
_IK_GGML_SPELLING = {n: n.lower().replace("_k", "_K") for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")} | {
    "Q8_K64": "q8_K64", "Q8_K128": "q8_K128", "Q8_KV": "q8_KV", "Q8_KV_R8": "q8_KV_r8", "Q8_K32": "q8_K32",
    "Q8_KR8": "q8_KR8", "Q4_0_4_4": "q4_0_4x4", "Q4_0_4_8": "q4_0_4x8", "Q4_0_8_8": "q4_0_8x8"}


def quantize_rules_argv(runtime: str, rules: Iterable[tuple[str, str]]) -> list[str]:
    """llama-quantize's per-tensor type rules, (regex, tensor type name) each, as `runtime` spells
    them: mainline takes one --tensor-type REGEX=type each; ik_llama.cpp one --custom-q comma list with
    ggml's exact type names (examples/quantize/quantize.cpp parse_custom_quants)."""
    if runtime == IK:
        spelled = [f"{rx}={_IK_GGML_SPELLING.get(t.upper(), t.lower())}" for rx, t in rules]
        return ["--custom-q", ",".join(spelled)] if spelled else []
    return [x for rx, t in rules for x in ("--tensor-type", f"{rx}={t.lower()}")]


def file_types(runtime: str) -> dict[str, int]:
    """`runtime`'s llama-quantize file types, name -> the general.file_type it writes."""
    return FILE_TYPES if runtime == MAINLINE else IK_FILE_TYPES


def file_type_runtimes(name: str) -> frozenset[str]:
    """The runtimes whose llama-quantize makes this file type (canonical name)."""
    return frozenset(r for r in RUNTIMES if name in file_types(r))
FLOAT_FILE_TYPES = frozenset({"F32", "F16", "BF16"})
# File types llama-quantize refuses to make without an imatrix ("this quantization requires an
# imatrix!") and, with one, aborts on the MTP block it does not cover. Measured on llama.cpp 0c1e570
# over every type in QUANT_OPTIONS (BENCHMARKS.md): the types whose mixture holds
# TENSOR_NEEDS_IMATRIX tensors, or Q2_K tensors inside Q2_K_S.
FILE_TYPES_NEED_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M",
                                     "IQ3_XXS", "IQ3_XS", "Q2_K_S"})


# ik_llama.cpp 0.1.5's llama-quantize refuses these without an imatrix: the file types its main()
# names (examples/quantize/quantize.cpp, "Please do not use IQ1_S, ...") and those whose tensors are of
# a type llama_tensor_quantize calls "very low-bit" (src/llama-quantize.cpp: IQ1_S/M, IQ2_XXS/XS/S and
# their _R4, IQ1_KT, IQ2_KT; Q2_K inside Q2_K_S). ik's IQ3_XXS is not among them (mainline's is).
IK_TENSOR_NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S_R4", "IQ1_M_R4",
                                     "IQ2_XXS_R4", "IQ2_XS_R4", "IQ2_S_R4", "IQ1_KT", "IQ2_KT"})
IK_FILE_TYPES_NEED_IMATRIX = frozenset({"IQ1_S", "IQ1_S_R4", "IQ1_M", "IQ1_M_R4", "IQ2_XXS", "IQ2_XXS_R4",
                                        "IQ2_XS", "IQ2_XS_R4", "IQ2_S", "IQ2_M", "IQ2_M_R4", "Q2_K_S",
                                        "IQ1_KT", "IQ2_KT"})


def file_types_need_imatrix(runtime: str = MAINLINE) -> frozenset[str]:
    """The file types `runtime`'s llama-quantize refuses to make without an importance matrix."""
    return FILE_TYPES_NEED_IMATRIX if runtime == MAINLINE else IK_FILE_TYPES_NEED_IMATRIX


def canonical_file_type(name: str, runtime: str = MAINLINE) -> str:
    """A `runtime`'s llama-quantize file type name in its canonical spelling (q4_k -> Q4_K_M)."""
    up = name.strip().upper()
    up = FILE_TYPE_ALIASES.get(up, up)
    known = file_types(runtime)
    if up not in known:
        tool = "llama-quantize" if runtime == MAINLINE else f"{LABELS[runtime]}'s llama-quantize"
        msg = f"unknown quant type {name!r}; {tool} knows {', '.join(known)}"
        if runtime == MAINLINE and up in IK_FILE_TYPES:
            raise QuantizeOptionError(msg, f"; {up} is ik_llama.cpp's: pass ", Setting("runtime", IK))
        raise QuantizeOptionError(msg)
    return up


def file_type_name(value: int | None, runtime: str | None = None) -> str | None:
    """general.file_type's name (15 -> Q4_K_M) in `runtime`'s numbering; without one, mainline's,
    else ik's for the numbers only ik writes (145 -> IQ4_KS). `typeN` for a value neither defines.
    38 and 41 mean different things in the two: pass the file's runtime (runtimes_for_types)."""
    if value is None:
        return None
    if runtime is not None:
        return _FILE_TYPE_NAMES_BY_RUNTIME[runtime].get(value, f"type{value}")
    for r in RUNTIMES:
        if value in _FILE_TYPE_NAMES_BY_RUNTIME[r]:
            return _FILE_TYPE_NAMES_BY_RUNTIME[r][value]
    return f"type{value}"


# --------------------------------------------------------------------------- llama-quantize's rule


# src/llama-quant.cpp tensor_allows_quantization: substrings that keep a tensor in its type.
_KEEP_SUBSTRINGS = (
    "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
    "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
    "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
    "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
    "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
    "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
    "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", "sam.pos_embd", "sam.neck.",
    "sam.net_", ".rel_pos", ".patch_embd", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd",
)
_KEEP_NAMES = ("position_embd.weight", "token_types.weight")


def n_dims(ne: Sequence[int]) -> int:
    """ggml_n_dims: trailing dimensions of 1 do not count (a {4096, 1} tensor is 1-D)."""
    for i in range(len(ne) - 1, 0, -1):
        if ne[i] > 1:
            return i + 1
    return 1


def llama_quantizes(name: str, ne: Sequence[int], arch: str | None = None) -> bool:
    """Whether llama-quantize gives this tensor a quantized type at all (the rest keep their type).
    mtpgraft never passes --leave-output-tensor, so output.weight is quantized."""
    if n_dims(ne) < 2 or not name.endswith("weight") or name in _KEEP_NAMES:
        return False
    rule = rule_for(arch) if arch else None
    keep = _KEEP_SUBSTRINGS + (rule.quantize_keeps if rule else ())
    return not any(s in name for s in keep)
