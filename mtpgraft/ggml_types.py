"""The one table of ggml types and llama-quantize file types, read off llama.cpp 0c1e570.

Tensor types (ggml/include/ggml.h, block sizes from ggml/src/ggml.c type_traits) and file types
(include/llama.h llama_ftype, tools/quantize/quantize.cpp QUANT_OPTIONS) are different things with
different names: `Q4_K` is a tensor type, `Q4_K_M` a file type (a mixture of tensor types). This
module answers every question mtpgraft asks about either: names, sizes, float or quantized, what
numpy can make, what llama-quantize can make, what needs an importance matrix, which tensors
llama-quantize quantizes at all, and which types are valid `--mtp-type` targets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import QuantizeOptionError, Setting, UsageError


@dataclass(frozen=True)
class TensorType:
    name: str
    id: int  # the value stored in a GGUF tensor info
    block: int  # elements per block
    size: int  # bytes per block

    @property
    def quantized(self) -> bool:
        return self.name not in FLOAT_NAMES and not self.name.startswith("I")

    def row_fits(self, ne0: int) -> bool:
        """Whether a row of `ne0` elements is a whole number of blocks (the loader requires it)."""
        return ne0 % self.block == 0

    def nbytes(self, ne: Sequence[int]) -> int:
        n = 1
        for d in ne:
            n *= d
        return n // self.block * self.size


_T = TensorType
# (ggml.h enum ggml_type; ids 4, 5, 31-33, 36-38 were removed from llama.cpp)
TENSOR_TYPES: tuple[TensorType, ...] = (
    _T("F32", 0, 1, 4), _T("F16", 1, 1, 2), _T("Q4_0", 2, 32, 18), _T("Q4_1", 3, 32, 20),
    _T("Q5_0", 6, 32, 22), _T("Q5_1", 7, 32, 24), _T("Q8_0", 8, 32, 34), _T("Q8_1", 9, 32, 36),
    _T("Q2_K", 10, 256, 84), _T("Q3_K", 11, 256, 110), _T("Q4_K", 12, 256, 144),
    _T("Q5_K", 13, 256, 176), _T("Q6_K", 14, 256, 210), _T("Q8_K", 15, 256, 292),
    _T("IQ2_XXS", 16, 256, 66), _T("IQ2_XS", 17, 256, 74), _T("IQ3_XXS", 18, 256, 98),
    _T("IQ1_S", 19, 256, 50), _T("IQ4_NL", 20, 32, 18), _T("IQ3_S", 21, 256, 110),
    _T("IQ2_S", 22, 256, 82), _T("IQ4_XS", 23, 256, 136), _T("I8", 24, 1, 1), _T("I16", 25, 1, 2),
    _T("I32", 26, 1, 4), _T("I64", 27, 1, 8), _T("F64", 28, 1, 8), _T("IQ1_M", 29, 256, 56),
    _T("BF16", 30, 1, 2), _T("TQ1_0", 34, 256, 54), _T("TQ2_0", 35, 256, 66),
    _T("MXFP4", 39, 32, 17), _T("NVFP4", 40, 64, 36), _T("Q1_0", 41, 128, 18), _T("Q2_0", 42, 64, 18),
)
GGML_TYPE_COUNT = 43  # the loader refuses a tensor type >= this (ggml/src/gguf.cpp)
BY_ID = {t.id: t for t in TENSOR_TYPES}
BY_NAME = {t.name: t for t in TENSOR_TYPES}

FLOAT_NAMES = frozenset({"F32", "F16", "BF16", "F64"})
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


def tensor_type(type_id: int) -> TensorType | None:
    return BY_ID.get(type_id)


def type_name(type_id: int) -> str:
    t = BY_ID.get(type_id)
    return t.name if t is not None else f"type{type_id}"


def tensor_needs_imatrix(name: str, file_type: str | None = None) -> bool:
    return name in TENSOR_NEEDS_IMATRIX or (name == "Q2_K" and file_type == "Q2_K_S")


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
FLOAT_FILE_TYPES = frozenset({"F32", "F16", "BF16"})
# File types llama-quantize refuses to make without an imatrix ("this quantization requires an
# imatrix!") and, with one, aborts on the MTP block it does not cover. Measured on llama.cpp 0c1e570
# over every type in QUANT_OPTIONS (BENCHMARKS.md): the types whose mixture holds
# TENSOR_NEEDS_IMATRIX tensors, or Q2_K tensors inside Q2_K_S.
FILE_TYPES_NEED_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M",
                                     "IQ3_XXS", "IQ3_XS", "Q2_K_S"})


def canonical_file_type(name: str) -> str:
    """A llama-quantize file type name in its canonical spelling (q4_k -> Q4_K_M)."""
    up = name.strip().upper()
    up = FILE_TYPE_ALIASES.get(up, up)
    if up not in FILE_TYPES:
        raise QuantizeOptionError(f"unknown quant type {name!r}; llama-quantize knows {', '.join(FILE_TYPES)}")
    return up


def file_type_name(value: int | None) -> str | None:
    """general.file_type's name (15 -> Q4_K_M); `typeN` for a value llama.cpp does not define."""
    if value is None:
        return None
    return FILE_TYPE_NAMES.get(value, f"type{value}")


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
_KEEP_GLM5_NEXT = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)


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
    keep = _KEEP_SUBSTRINGS + (_KEEP_GLM5_NEXT if arch == "glm5-next" else ())
    return not any(s in name for s in keep)
