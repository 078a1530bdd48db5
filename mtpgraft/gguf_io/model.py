"""A model as one or more shards: the first shard's metadata, every tensor with the file and offset
its bytes are at, and reading those bytes back in rows."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GGUFFormatError
from ..naming import SPLIT_RE, shard_name
from .header import GGUFFile, TensorInfo, tensor_nbytes
from .values import MAX_NAME, Metadata, shown

if TYPE_CHECKING:
    import numpy as np


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


class GGUFModel(Metadata):
    """A model as one or more shards. Metadata comes from the first shard."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        first = GGUFFile(path)
        self.path = first.path
        self._assemble([first] + self._other_shards(first))

    @classmethod
    def from_shards(cls, shards: list[GGUFFile]) -> GGUFModel:
        """A model from headers parsed elsewhere (e.g. read by ranges from the Hub), in shard order."""
        self = cls.__new__(cls)
        self.path = shards[0].path
        for i, s in enumerate(shards[1:], 2):
            if s.split_no != i - 1:
                raise GGUFFormatError(f"{s.path}: split.no is {s.split_no}, expected {i - 1}")
        self._assemble(shards)
        return self

    def _assemble(self, shards: list[GGUFFile]) -> None:
        first = shards[0]
        self.kv = first.kv
        self.shards = shards
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
