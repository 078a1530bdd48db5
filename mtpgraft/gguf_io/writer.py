"""Writing a GGUF file by streaming: the header from encoded entries, tensor bytes copied
file-to-file (blocks shared where the filesystem can) or produced in chunks, placed by a Layout."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..blocks import block_size, copy_range
from ..errors import GGUFFormatError
from .values import GGUF_MAGIC, KV, PAD_KEY, GGUFValueType, aligned, encode_kv


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
    fd = fh.fileno()
    block = block_size(fd)
    tensors = _place(tensors, layout)
    rel, off = [], 0
    for t in tensors:
        rel.append(off)
        off = aligned(off + t.nbytes, alignment)
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
    header += b"\0" * (aligned(len(header), alignment) - len(header))
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

