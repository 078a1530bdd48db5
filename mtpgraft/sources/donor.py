"""A GGUF donor read by ranges: its header(s), then only its MTP tensors' bytes.

The donor's header is read from the front in growing pieces until it parses (what is read past its
end stays under a quarter of the header, or 512 bytes); for a split set the shards are read from the last one back, headers only, until the
MTP block's first tensor is found, so shards without MTP tensors are never read. What is written is a
"tensors-only" GGUF: the donor's metadata (tokenizer included, split keys dropped) and the MTP
tensors byte for byte, which graft.plan_attach takes as an MTP source.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ..arch import head_globals
from ..errors import GraftError, SourceError
from ..gguf_io import (
    CONVERTER,
    KV,
    GGUFFile,
    GGUFModel,
    GGUFValueType,
    OutTensor,
    TensorInfo,
    TruncatedHeaderError,
    encode_kv,
    write_gguf,
)
from ..naming import parse_shard, shard_names
from .hublimits import HEADER_CAP

ORIGIN_KEY = "mtpgraft.cache.origin"  # what the MTP source really is (provenance records it)
AFTER_KEY = "mtpgraft.cache.after"  # the donor tensor the MTP block followed (graft keeps the order)
FIRST_READ = 2048
READAHEAD_MIN = 512
MAX_BLOCKS = 1 << 16  # block_count / nextn_predict_layers past this are no model's
MAX_MTP_LAYERS = 64  # a split donor's MTP layers are taken from the keys: at most this many
_LAYER = re.compile(r"^blk\.(\d+)\.")


class Files(Protocol):
    """Where a source's files are: a local folder or a Hub repo at one commit."""

    def size(self, path: str) -> int: ...

    def read(self, path: str, start: int, end: int) -> bytes: ...

    def label(self, path: str) -> str: ...


@dataclass(frozen=True)
class MtpTensorRef:
    shard: str  # file (in the repo / folder) holding the bytes
    info: TensorInfo
    start: int  # absolute offset in that file

    @property
    def end(self) -> int:
        return self.start + self.info.nbytes


@dataclass(frozen=True)
class DonorHead:
    path: str
    first: GGUFFile
    tensors: list[MtpTensorRef]
    mtp_layers: list[int]
    after: str | None  # the tensor just before the MTP block, in donor order
    header_bytes: int  # bytes read to parse the header(s)
    shards_read: list[str]

    @property
    def mtp_bytes(self) -> int:
        return sum(t.info.nbytes for t in self.tensors)


def read_header(files: Files, path: str, *, slack: int = 4) -> tuple[GGUFFile, int]:
    """Parse a GGUF header from the front of `path`; returns it and the bytes read. A header that
    needs more than HEADER_CAP bytes is refused before those bytes are asked for. Each piece reaches
    1/`slack` of what is read past what the parser needs next (or half way to where a string array
    ends, by its items read so far): what is read past the header's end stays near 1/`slack` of it."""
    size = files.size(path)
    buf = b""
    want = min(size, FIRST_READ)
    while True:
        if len(buf) < want:
            buf += files.read(path, len(buf), want)
        try:
            return GGUFFile.from_prefix(buf, size=size, name=path), len(buf)
        except TruncatedHeaderError as e:
            if len(buf) >= size:
                raise
            if e.needed > HEADER_CAP:
                raise SourceError(f"{files.label(path)}: its GGUF header needs more than {e.needed:,} bytes, "
                                  f"past the {HEADER_CAP // 2**20} MiB mtpgraft reads of a header (a tokenizer "
                                  "takes a few MB); refusing it unread") from None
            # What the next item needs plus a quarter of what we have (slack 4): a 10 MB header takes
            # ~40 requests, and what is read past the header's end stays under 1/4 of it (or 512 bytes).
            # Inside a string array, half way to where its items read so far say it ends: the first
            # items of a vocabulary (special tokens) can be twice the average, never more than once.
            target = max(e.needed, len(buf), (e.needed + e.estimate) // 2 if e.estimate else 0)
            want = min(size, HEADER_CAP, target + max(READAHEAD_MIN * 4 // slack, len(buf) // slack))


def _layer_keys(first: GGUFFile, arch: object) -> tuple[int | None, int]:
    """block_count and nextn_predict_layers, refused when no model could have them (before any list
    is sized by them)."""
    bc = first.get_int(f"{arch}.block_count", hi=MAX_BLOCKS)
    nextn = first.get_int(f"{arch}.nextn_predict_layers", hi=MAX_BLOCKS) or 0
    if bc is not None and nextn > bc:
        raise GraftError(f"{first.path}: {arch}.nextn_predict_layers ({nextn}) is more than {arch}.block_count "
                         f"({bc}); the keys contradict each other")
    return bc, nextn


def _mtp_layers(first: GGUFFile, label: str) -> list[int]:
    arch = first.get("general.architecture")
    bc, nextn = _layer_keys(first, arch)
    if not first.split_count or first.split_count <= 1:
        eh = sorted({int(m.group(1)) for t in first.tensors if (m := _LAYER.match(t.name))
                     and t.name.endswith("nextn.eh_proj.weight")})
        by_key = list(range(bc - nextn, bc)) if nextn and bc is not None and nextn <= len(eh) else []
        if by_key and all(i in eh for i in by_key):
            return by_key
        if eh:
            return eh
    elif nextn and bc is not None:
        if nextn > MAX_MTP_LAYERS:
            raise GraftError(f"{label}: {arch}.nextn_predict_layers is {nextn}; no model has more than "
                             f"{MAX_MTP_LAYERS} MTP layers")
        return list(range(bc - nextn, bc))
    raise GraftError(f"{label} has no MTP tensors (no blk.N.nextn.eh_proj.weight"
                     + (f"; {arch}.nextn_predict_layers is {nextn})" if nextn else
                        f"; {arch}.nextn_predict_layers is not set)"))


def plan_donor(files: Files, path: str) -> DonorHead:
    """Headers only: which tensors form the donor's MTP block and where their bytes are."""
    first, nread = read_header(files, path)
    label = files.label(path)
    if first.split_no != 0:
        raise GraftError(f"{label} is shard {first.split_no + 1} of {first.split_count}; name the first shard")
    layers = _mtp_layers(first, label)
    wanted = set(layers)

    def is_mtp(name: str) -> bool:
        m = _LAYER.match(name)
        return bool(m) and int(m.group(1)) in wanted

    shards: list[tuple[str, GGUFFile]] = [(path, first)]
    count = first.split_count if first.split_count > 1 else 1
    if count > 1:
        shard = parse_shard(Path(path).name)
        if shard is None:
            raise GraftError(f"{label}: split.count is {count} but the name is not NAME-00001-of-0000N.gguf")
        folder = str(Path(path).parent)
        names = shard_names(shard.prefix, count)[1:]
        for p, f, n in _scan_back(files, [n if folder == "." else f"{folder}/{n}" for n in names], is_mtp):
            shards.append((p, f))
            nread += n
    ordered = sorted(shards, key=lambda s: s[1].split_no)
    tensors: list[MtpTensorRef] = []
    after: str | None = None
    prev: str | None = None
    # with the blocks, in the donor's order: the root tensors its head owns (deepseek4's output_hc_*)
    own = set(head_globals(str(first.get("general.architecture"))))
    seen = False  # a block tensor yet
    for p, f in ordered:
        for t in f.tensors:
            if is_mtp(t.name) and not seen:
                after, seen = prev, True
            if is_mtp(t.name) or t.name in own:
                tensors.append(MtpTensorRef(p, t, f.data_offset + t.offset))
            prev = t.name
    if not seen:
        raise GraftError(f"{label} has no MTP tensors (blk.{layers[0]}.* is absent)")
    if {t.info.name for t in tensors} & own != own:  # all of them or none (a shard not read may hold some)
        tensors = [t for t in tensors if t.info.name not in own]
    return DonorHead(path, first, tensors, layers, after, nread, [p for p, _ in ordered])


def keep_layers(head: DonorHead, layers: list[int]) -> DonorHead:
    """The donor with only the MTP tensors of `layers` (a chain's first heads: only their bytes are
    fetched). Its keys stay the donor's: graft takes the blocks its tensors hold."""
    keep = set(layers)
    tensors = [t for t in head.tensors if not (m := _LAYER.match(t.info.name)) or int(m.group(1)) in keep]
    return replace(head, tensors=tensors, mtp_layers=list(layers))


def _scan_back(files: Files, rest: list[str], is_mtp: Callable[[str], bool]) -> list[tuple[str, GGUFFile, int]]:
    """Headers of shards 2..N from the last one back, until the MTP block's start is seen (and the
    tensor before it: the shard before a block that opens a shard)."""
    out: list[tuple[str, GGUFFile, int]] = []
    found = False
    for p in reversed(rest):
        f, n = read_header(files, p)
        out.append((p, f, n))
        has = any(is_mtp(t.name) for t in f.tensors)
        if found and not has:
            break  # this shard holds the tensor before the block
        if has:
            found = True
            if f.tensors and not is_mtp(f.tensors[0].name):
                break  # the block starts inside this shard
    return out


def check_donor(head: DonorHead, base: GGUFModel, label: str) -> None:
    """The checks graft makes, done on the header before any tensor byte travels."""
    first = head.first
    arch = first.get("general.architecture")
    if arch != base.arch:
        raise GraftError(f"architecture mismatch: base is {base.arch}, MTP source {label} is {arch}")
    be, se = base.get(f"{arch}.embedding_length"), first.get(f"{arch}.embedding_length")
    if be is not None and se is not None and be != se:
        raise GraftError(f"n_embd mismatch: base {be}, MTP source {se}: {label} is another model")
    bt, st = base.kv.get("tokenizer.ggml.tokens"), first.kv.get("tokenizer.ggml.tokens")
    if bt is not None and st is not None:
        if bt.count != st.count:
            raise GraftError(f"vocabulary size mismatch: base has {bt.count} tokens, MTP source {st.count}")
        if bt.payload != st.payload:
            raise GraftError("tokenizer tokens differ between base and MTP source (same size, other tokens): "
                             "the MTP head was trained for another tokenizer")


def tensors_only_kvs(first: GGUFFile, origin: str, after: str | None) -> list[KV]:
    kvs = [kv for k, kv in first.kv.items() if not k.startswith("split.") and not k.startswith("mtpgraft.cache.")]
    kvs.append(encode_kv(ORIGIN_KEY, GGUFValueType.STRING, origin))
    if after:
        kvs.append(encode_kv(AFTER_KEY, GGUFValueType.STRING, after))
    return kvs


def write_tensors_only(head: DonorHead, located: dict[tuple[str, int], tuple[Path, int]] | None, out: Path,
                       origin: str, *, progress: Callable[[int], None] = lambda n: None) -> None:
    """Write the donor's metadata and its MTP tensors (bytes from `located`: (shard, start) -> where;
    None writes the header only, the data left a hole, for planning)."""
    tensors = []
    for t in head.tensors:
        p, off = located[(t.shard, t.start)] if located is not None else (None, 0)
        tensors.append(OutTensor(t.info.name, t.info.ne, t.info.ggml_type, t.info.nbytes, p, off))
    with open(out, "wb") as fh:
        write_gguf(fh, tensors_only_kvs(head.first, origin, head.after), tensors,
                   alignment=head.first.alignment, progress=progress, header_only=located is None,
                   layout=CONVERTER)  # a temporary source: its header-only twin must match it


def merge_spans(spans: Sequence[tuple[str, int, int]], max_gap: int) -> list[tuple[str, int, int]]:
    """Join byte ranges of the same file that touch or are `max_gap` bytes apart (padding)."""
    out: list[tuple[str, int, int]] = []
    for f, s, e in sorted(spans):
        if out and out[-1][0] == f and s - out[-1][2] <= max_gap:
            out[-1] = (f, out[-1][1], max(out[-1][2], e))
        else:
            out.append((f, s, e))
    return out

