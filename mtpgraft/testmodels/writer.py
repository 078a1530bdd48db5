"""The one place a test model is written: gguf.GGUFWriter driven in its order (keys, tensors, split).

Both kinds of test model go through `write_model`: the runnable tiny models (`write_tiny_gguf`, which
adds the tokenizer and wraps it in an atomic output) and the synthetic random-weight files
(mtpgraft.testmodels.synthetic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..outputs import PendingOutput
from .vocab import CHAT_TEMPLATE, TinyVocab

if TYPE_CHECKING:  # numpy is imported where it is used, so `mtpgraft --help` does not pay for it
    import gguf
    import numpy as np


def write_model(path: str | Path, arch: str, keys: Callable[[gguf.GGUFWriter], None],
                tensors: Iterable[tuple[str, np.ndarray, gguf.GGMLQuantizationType]], *,
                alignment: int | None = None, shards: int = 1) -> None:
    """Write `arch`'s keys (`keys(w)` adds them after general.architecture) and `tensors` (name, float32
    array in numpy order, the type it is stored as) to `path`. `shards` > 1 writes a split set the way
    gguf-py splits (PATH-0000k-of-0000n.gguf beside `path`, tensors divided evenly, keys in the first)."""
    import gguf
    import numpy as np

    tensors = list(tensors)
    per_shard = -(-len(tensors) // shards) if shards > 1 else 0
    w = gguf.GGUFWriter(str(path), arch, split_max_tensors=per_shard)
    try:
        if alignment:
            w.add_custom_alignment(alignment)
        keys(w)
        for name, arr, qtype in tensors:
            w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), qtype),
                         raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()


def tensor_type(name: str, arr: np.ndarray, dtype: str):
    import gguf

    # convert_hf_to_gguf.py: 1-D tensors, *_norm.weight, gate_inp and ssm_conv1d stay F32, as does
    # anything not named .weight (ssm_a, ssm_dt.bias).
    keep_f32 = (arr.ndim <= 1 or name.endswith("_norm.weight") or "ffn_gate_inp" in name
                or "ssm_conv1d" in name or not name.endswith(".weight"))
    if keep_f32 or dtype == "f32":
        return gguf.GGMLQuantizationType.F32
    return {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16}[dtype]


def file_type_of(dtype: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype]


def write_tiny_gguf(path: Path, arch: str, name: str, keys: Callable[[gguf.GGUFWriter], None],
                    tensors: list[tuple[str, np.ndarray]], *, dtype: str, vocab: TinyVocab,
                    tokenizer_pre: str) -> Path:
    """Write one tiny model atomically: general keys, `keys(w)` (the architecture's), the tiny
    byte-level BPE tokenizer, then `tensors` (float32 arrays; 1-D and norm tensors stay F32, the
    others in `dtype`)."""
    import gguf

    def all_keys(w: gguf.GGUFWriter) -> None:
        w.add_type(gguf.GGUFType.MODEL)
        w.add_name(name)
        keys(w)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(tokenizer_pre)
        w.add_token_list(list(vocab.tokens))
        w.add_token_types(list(vocab.token_types))
        w.add_token_merges(list(vocab.merges))
        w.add_eos_token_id(vocab.eos_id)
        w.add_pad_token_id(vocab.pad_id)
        w.add_bos_token_id(vocab.bos_id)
        w.add_add_bos_token(False)
        w.add_chat_template(CHAT_TEMPLATE)

    with PendingOutput(path) as tmp:
        write_model(tmp.path, arch, all_keys, [(n, a, tensor_type(n, a, dtype)) for n, a in tensors])
        tmp.install(force=True)  # build_test_set refused existing files without --force
    return path
