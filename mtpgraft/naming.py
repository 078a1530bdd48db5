"""File and repo names: shards, stems, quant tags, MTP sidecars, and how `llama-server -hf` picks files.

Everything here is a pure function of names. The `-hf` part re-states llama.cpp 0c1e570's rules
(common/download.cpp: get_gguf_split_info, extract_quant_bits, find_best_model, find_best_sibling,
gguf_filename_is_model, get_split_files) so mtpgraft can predict, before anything is sent, which
files a `llama-server -hf OWNER/REPO:TAG --spec-type draft-mtp` will download; tests compare the
prediction with what the real server resolves.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
# A Hub repo id as the Hub and llama.cpp (hf-cache.cpp is_valid_repo_id) accept it.
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# `llama-server -hf` never takes a file whose name contains one of these as the model.
HF_RESERVED = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
SIDECAR_PREFIX = "mtp-"
DEFAULT_TAGS = ("Q4_K_M", "Q8_0")  # what -hf tries when no :TAG is given
_FLOAT_SUFFIX_RE = re.compile(r"[-_.](f32|f16|bf16|fp16|fp32)$", re.I)
_QUANT_RE = re.compile(r"(?i)[-.](I?Q\d+_[A-Z0-9_]+|F16|BF16|F32|Q8_0)(?:-\d{5}-of-\d{5})?\.gguf$")


# --------------------------------------------------------------------------- shards and stems


def shard_name(prefix: str, no: int, count: int) -> str:
    """`Name-Q8_0`, 1, 3 -> `Name-Q8_0-00001-of-00003.gguf` (llama-gguf-split's names)."""
    return f"{prefix}-{no:05d}-of-{count:05d}.gguf"


def shard_names(prefix: str, count: int) -> list[str]:
    return [shard_name(prefix, i, count) for i in range(1, count + 1)]


@dataclass(frozen=True)
class Shard:
    prefix: str  # the name before -0000i-of-0000N.gguf
    no: int  # 1-based
    count: int


def parse_shard(name: str) -> Shard | None:
    """The shard parts of a file name (no folders), or None when it is not a shard name."""
    m = SPLIT_RE.match(name)
    return Shard(m["prefix"], int(m["no"]), int(m["count"])) if m else None


def strip_gguf(name: str) -> str:
    """A file name without its shard suffix and `.gguf`: `Name-Q8_0-00001-of-00003.gguf` -> `Name-Q8_0`."""
    shard = parse_shard(name)
    if shard is not None:
        return shard.prefix
    return name[:-5] if name.lower().endswith(".gguf") else name


def model_stem(name: str) -> str:
    """The stem quant outputs are named after: `strip_gguf` and a trailing float tag (`-F16`) removed."""
    stem = strip_gguf(name)
    return _FLOAT_SUFFIX_RE.sub("", stem) or stem


def untagged_stem(path: str) -> str:
    """What a quant and its MTP sidecar have in common: the file name without its folder, shard
    suffix, `.gguf`, sidecar prefix and quant tag. `Q8_0/Name-Q8_0-00001-of-00002.gguf` -> `Name`,
    `sub/mtp-Name-Q8_0.gguf` -> `Name`, `mtp-Name.gguf` -> `Name`. (model_stem instead keeps a quant
    tag and drops only a float one: the name of the quants made from a file.)"""
    name = strip_gguf(path.rsplit("/", 1)[-1]).removeprefix(SIDECAR_PREFIX)
    info = hf_split_info(f"{name}.gguf")
    return name[: -len(info.tag) - 1] if info and info.tag and name.upper().endswith("-" + info.tag) else name


def quant_file_name(stem: str, quant: str) -> str:
    """`Name`, `Q4_K_M` -> `Name-Q4_K_M.gguf`: a name `llama-server -hf REPO:Q4_K_M` finds."""
    return f"{stem}-{quant}.gguf"


def quant_tag(name: str) -> str | None:
    """The quant type a file name carries (`Name-Q4_K_M.gguf` -> `Q4_K_M`), upper case, or None."""
    m = _QUANT_RE.search(name)
    return m.group(1).upper() if m else None


def sidecar_name(stem: str, mtp_type: str) -> str:
    """The MTP-only sidecar's name: `mtp-NAME-TYPE.gguf`. `-hf` takes files containing `mtp-` as MTP
    drafts only, and picks among them by the `-TYPE.` in the name and its bit count."""
    return f"{SIDECAR_PREFIX}{strip_gguf(stem)}-{mtp_type.upper()}.gguf"


def is_hf_model_file(path: str) -> bool:
    """Whether `-hf` may take this repo path as the model (gguf_filename_is_model)."""
    if not path.endswith(".gguf"):
        return False
    name = path.rsplit("/", 1)[-1]
    return not any(word in name for word in HF_RESERVED)


# --------------------------------------------------------------------------- llama.cpp's -hf rules


@dataclass(frozen=True)
class HfSplit:
    """get_gguf_split_info: `prefix` keeps the folder and tag; `tag` is upper case."""

    prefix: str
    tag: str
    index: int
    count: int


def hf_split_info(path: str) -> HfSplit | None:
    if not path.endswith(".gguf"):
        return None
    prefix, index, count = path[:-5], 1, 1
    m = re.fullmatch(r"(.+)-([0-9]{5})-of-([0-9]{5})", prefix, re.I | re.S)
    if m:
        prefix, index, count = m[1], int(m[2]), int(m[3])
    t = re.search(r"[-.]([A-Z0-9_]+)$", prefix, re.I)
    return HfSplit(prefix, t[1].upper() if t else "", index, count)


def _bits(tag: str) -> int:
    """Q4_0 -> 4, F16 -> 16, IQ2_XXS -> 2, no digit -> 0 (std::stoi from the first digit)."""
    m = re.search(r"[0-9]+", tag)
    return int(m[0]) if m else 0


def quant_bits(path: str) -> int:
    info = hf_split_info(path)
    return _bits(info.tag) if info else 0


def hf_find_model(paths: Sequence[str], tag: str = "") -> str | None:
    """find_best_model: the first path (in the Hub's tree order) that is a model file, matches
    `TAG[.-]` anywhere in the path (case-insensitive) and is not a later shard. Without a tag it
    tries Q4_K_M, then Q8_0, then the first model file."""
    for t in ([tag] if tag else list(DEFAULT_TAGS)):
        try:
            rx = re.compile(t + r"[.-]", re.I)  # llama.cpp builds a regex from the tag as given
        except re.error:
            continue
        for p in paths:
            if is_hf_model_file(p) and rx.search(p) and is_first_shard(p):
                return p
    if not tag:
        return next((p for p in paths if is_hf_model_file(p) and is_first_shard(p)), None)
    return None


def is_first_shard(path: str) -> bool:
    info = hf_split_info(path)
    return info is None or info.count <= 1 or info.index == 1


def hf_split_files(paths: Sequence[str], model: str) -> list[str]:
    """get_split_files: every shard of the model's set (same prefix and count), in tree order."""
    info = hf_split_info(model)
    if info is None or info.count <= 1:
        return [model]
    return [p for p in paths if (s := hf_split_info(p)) and s.count == info.count and s.prefix == info.prefix]


@dataclass(frozen=True)
class SiblingChoice:
    """find_best_sibling's winner and why: the candidates it saw and their ranks."""

    path: str | None
    candidates: tuple[tuple[str, int, bool, int], ...]  # (path, depth, exact tag, bit distance)
    ignored: tuple[str, ...]  # keyword files outside the model's folder chain (never seen)


def hf_find_sibling(paths: Sequence[str], model: str | None, keyword: str = SIDECAR_PREFIX,
                    tag: str = "") -> SiblingChoice:
    """find_best_sibling: among `.gguf` paths containing `keyword` whose folder is the model's folder
    or one of its parents, the deepest folder wins, then a path containing `-TAG.`, then the closest
    bit count (the tag's, else the model's); ties keep the first in tree order."""
    model = model or ""
    model_bits = _bits(tag.upper()) if tag else quant_bits(model)
    model_dirs = model.split("/")[:-1]
    best: tuple[str, int, bool, int] | None = None
    seen, ignored = [], []
    for p in paths:
        if not p.endswith(".gguf") or keyword not in p:
            continue
        dirs = p.split("/")[:-1]
        if dirs != model_dirs[:len(dirs)]:
            ignored.append(p)
            continue
        exact = bool(tag) and f"-{tag.upper()}." in p.upper()
        cand = (p, len(dirs), exact, abs(quant_bits(p) - model_bits))
        seen.append(cand)
        if best is None or _better(cand, best):
            best = cand
    return SiblingChoice(best[0] if best else None, tuple(seen), tuple(ignored))


def _better(c: tuple[str, int, bool, int], best: tuple[str, int, bool, int]) -> bool:
    _, depth, exact, diff = c
    _, b_depth, b_exact, b_diff = best
    return (depth > b_depth or (depth == b_depth and exact and not b_exact)
            or (depth == b_depth and exact == b_exact and diff < b_diff))


def tied(choice: SiblingChoice) -> list[str]:
    """Candidates that rank equal to the winner: the pick among them depends on tree order alone."""
    if choice.path is None:
        return []
    win = next(c for c in choice.candidates if c[0] == choice.path)
    return [c[0] for c in choice.candidates if c[0] != win[0] and c[1:] == win[1:]]


@dataclass(frozen=True)
class HfResolution:
    """What `llama-server -hf REPO[:TAG]` (with --spec-type draft-mtp when `mtp`) downloads."""

    tag: str
    model: str | None
    model_files: tuple[str, ...]
    mtp: str | None
    mtp_choice: SiblingChoice | None


def hf_resolve(paths: Sequence[str], tag: str = "", *, mtp: bool = True) -> HfResolution:
    """common_download_get_hf_plan for a repo whose files are `paths` (tree order; no preset.ini)."""
    model = hf_find_model(paths, tag)
    files = tuple(hf_split_files(paths, model)) if model else ()
    choice = hf_find_sibling(paths, model, SIDECAR_PREFIX, tag) if mtp else None
    return HfResolution(tag, model, files, choice.path if choice else None, choice)


def model_folder(path: str) -> str:
    """The folder of a repo path ('' at the root)."""
    parent = str(PurePosixPath(path).parent)
    return "" if parent == "." else parent
