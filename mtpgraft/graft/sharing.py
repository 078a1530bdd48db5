"""Block accounting (FIEMAP): how much of a graft's output shares its inputs' blocks, estimated before and measured after writing."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..blocks import block_size, can_clone, common_bytes
from ..gguf_io import GGUFFile, Layout, OutTensor, main_input
from ..outputs import PendingOutput
from .types import GraftPlan, ShardSpec


@dataclass(frozen=True)
class BlockSharing:
    """How much of an output's body (the tensors copied from the base) sits in the base's own blocks,
    and how much of what was copied from the MTP source (a kept MTP block) sits in the source's."""

    body_bytes: int
    shared_bytes: int | None  # None: the filesystem does not say (no FIEMAP)
    mtp_bytes: int = 0  # copied from the MTP source as they are
    mtp_shared_bytes: int | None = 0

    @property
    def shared_fraction(self) -> float | None:
        if self.shared_bytes is None or not self.body_bytes:
            return None
        return self.shared_bytes / self.body_bytes


def shareable_bytes(shards: Sequence[ShardSpec], layout: Layout) -> int:
    """Bytes the outputs will share with an input instead of writing them: each shard's aligned run
    (the input it copies most from; see gguf_io.Layout) where the filesystem clones between the
    two. The free-space check asks only for the rest: on btrfs or XFS a graft needs room for its MTP
    block, not for a second body. The estimate leaves out a block at each end of the run."""
    if not (layout.align and layout.clone):
        return 0
    total = 0
    with PendingOutput(shards[0].path) as probe:
        fd = os.open(probe.path, os.O_WRONLY)
        try:
            for s in shards:
                found = main_input(list(s.tensors))
                if found is None:
                    continue
                src, n = found
                sfd = os.open(src, os.O_RDONLY)
                try:
                    if can_clone(sfd, fd):
                        total += max(0, n - 2 * block_size(fd))
                finally:
                    os.close(sfd)
        finally:
            os.close(fd)
    return total


def block_sharing(plan: GraftPlan) -> BlockSharing:
    """After execute_graft: compare the written outputs' extents with their inputs' (FIEMAP)."""
    mtp_sources = {r.path for r in plan.source_refs}
    counts = {False: [0, 0], True: [0, 0]}  # from the MTP source? -> [copied, shared]
    known = True
    for spec in plan.shards:
        for t, n in _copied_and_shared(spec):
            c = counts[t.src_path in mtp_sources]
            c[0] += t.nbytes
            if n is None:
                known = False
            else:
                c[1] += n
    (body, shared), (mtp, mtp_shared) = counts[False], counts[True]
    return BlockSharing(body, shared if known else None, mtp, mtp_shared if known else None)


def _copied_and_shared(spec: ShardSpec) -> Iterator[tuple[OutTensor, int | None]]:
    """Each tensor a written shard copied from an input, with the bytes of it that share the
    input's blocks (None: no FIEMAP)."""
    out = GGUFFile(spec.path)
    where = {t.name: out.data_offset + t.offset for t in out.tensors}
    fds: dict[Path, int] = {}
    ofd = os.open(spec.path, os.O_RDONLY)
    try:
        for t in spec.tensors:
            if t.src_path is None or t.name not in where:
                continue
            sfd = fds.get(t.src_path)
            if sfd is None:
                sfd = fds[t.src_path] = os.open(t.src_path, os.O_RDONLY)
            yield t, common_bytes(ofd, where[t.name], sfd, t.src_offset, t.nbytes)
    finally:
        os.close(ofd)
        for fd in fds.values():
            os.close(fd)
