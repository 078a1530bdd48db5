"""Lean GGUF container reading and streaming writing.

Why not gguf.GGUFReader: it builds a numpy array per vocabulary string (hundreds of thousands for
Qwen3.6) and exposes tensors through one big mmap, so a graft's RSS would grow with the model.
Here only the header is parsed (from a read-only mmap that is closed afterwards), metadata entries
keep their raw encoded bytes so unchanged keys are copied verbatim, and tensor bytes are copied
file-to-file with copy_file_range (no user-space buffer) by the writer.

`values` holds the format's constants and value types, `header` reads one file, `model` a model
across its shards, `writer` writes one; every name is re-exported here.
"""

from __future__ import annotations

from .header import GGUFFile, TensorInfo, TruncatedHeaderError, open_input, tensor_nbytes, type_name
from .model import GGUFModel, TensorRef, read_tensor_rows
from .values import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    INT_RANGES,
    KV,
    MAX_DIMS,
    MAX_LAYERS,
    MAX_NAME,
    PAD_KEY,
    GGUFValueType,
    encode_kv,
    shown,
    vtype_name,
)
from .writer import CONVERTER, REFLINK, Layout, OutTensor, Written, main_input, write_gguf

__all__ = [
    "CONVERTER", "DEFAULT_ALIGNMENT", "GGUF_MAGIC", "INT_RANGES", "KV", "MAX_DIMS", "MAX_LAYERS", "MAX_NAME",
    "PAD_KEY", "REFLINK", "GGUFFile", "GGUFModel", "GGUFValueType", "Layout", "OutTensor", "TensorInfo",
    "TensorRef", "TruncatedHeaderError", "Written", "encode_kv", "main_input", "open_input", "read_tensor_rows",
    "shown", "tensor_nbytes", "type_name", "vtype_name", "write_gguf",
]
