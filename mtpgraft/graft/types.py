"""The graft's plan as data: what each MTP tensor becomes, which keys change, and every output file's keys and tensors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..gguf_io import KV, OutTensor, TensorRef
from ..runtimes import MAINLINE

# What `--dry-run --json` and `--json` print of a plan, in this order; the shards, the source's
# tensors and the resolved tool are the plan's working content, not part of what it says.
PRINTED = ("operation", "base", "source", "outputs", "mtp_type", "arch", "trunk_layers", "mtp_layers",
           "tensors", "key_changes", "warnings", "output_bytes", "force")


@dataclass(frozen=True)
class TensorAction:
    """One MTP tensor in the output: where it comes from and what happens to it."""

    source_name: str
    name: str
    shape: list[int]
    from_type: str
    to_type: str
    method: str  # "copy" | "convert" | "llama-quantize" | "drop"
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class KeyChange:
    key: str
    old: Any
    new: Any


@dataclass(frozen=True)
class ShardSpec:
    """One output file: its path, its keys in order, and its tensors in order (each saying where its
    bytes come from: an input's range, a producer, or nothing yet for a tensor the writer converts)."""

    path: Path
    kvs: tuple[KV, ...]
    tensors: tuple[OutTensor, ...]


@dataclass(frozen=True)
class GraftPlan:
    operation: str  # "attach" | "detach" | "extract" | "sidecar"
    base: str
    source: str | None
    outputs: list[str]
    mtp_type: str
    arch: str
    trunk_layers: int
    mtp_layers: list[int]
    tensors: list[TensorAction]
    key_changes: list[KeyChange]
    warnings: list[str]
    output_bytes: int
    force: bool
    shards: tuple[ShardSpec, ...] = field(default=(), repr=False, compare=False)
    source_refs: tuple[TensorRef, ...] = field(default=(), repr=False, compare=False)  # the MTP block's inputs
    llama_quantize: str | None = field(default=None, repr=False, compare=False)  # resolved when a tensor needs it
    quantize_runtime: str = field(default=MAINLINE, repr=False, compare=False)  # whose llama-quantize that is

    @property
    def alignment(self) -> int:
        """The outputs' tensor data alignment: the head shard's general.alignment, else GGUF's 32."""
        kv = next((k for k in self.shards[0].kvs if k.key == "general.alignment"), None)
        return int(kv.value) if kv is not None else 32

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in PRINTED}
        d.update(outputs=list(self.outputs), mtp_layers=list(self.mtp_layers), warnings=list(self.warnings),
                 tensors=[asdict(a) for a in self.tensors], key_changes=[asdict(c) for c in self.key_changes])
        return d
