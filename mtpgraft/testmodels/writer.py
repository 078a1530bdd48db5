"""The one place a test model is written: gguf.GGUFWriter driven in its order (keys, tensors, split).

Both kinds of test model go through `write_model`: the runnable tiny models (mtpgraft.testmodels, which
wraps it in an atomic output) and the synthetic random-weight files (mtpgraft.testmodels.synthetic).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

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
