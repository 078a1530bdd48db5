"""Read a GGUF's MTP structure and say whether llama.cpp will load it.

The problems reported are the loader errors a bad graft produces (see the llama.cpp notes): a nextn
key without MTP tensors, MTP tensors without the key, a block_count that does not count the MTP
block, per-layer arrays of the wrong length, a split set whose tensor count is wrong.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from . import ggml_types
from .arch import (
    COMMON_LAYER_ARRAYS,
    NEXTN_REQUIRED,
    ArchRule,
    rule_for,
)
from .gguf_io import INT_RANGES, MAX_LAYERS, GGUFModel, GGUFValueType, TensorRef, shown, vtype_name
from .runtimes import LABELS, RUNTIMES

LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)$")
# Element types llama.cpp reads per-layer arrays from (src/llama-model-loader.cpp get_arr):
# anything else is "not a string/float32/uint32/int32/uint64 array" or "wrong array element type".
LAYER_ARRAY_ITEMS = frozenset({GGUFValueType.BOOL, GGUFValueType.UINT32, GGUFValueType.INT32,
                               GGUFValueType.FLOAT32})


def layer_of(name: str) -> tuple[int, str] | None:
    m = LAYER_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def _u32(model: GGUFModel, key: str, problems: list[str], *, lo: int = 0, hi: int = 2**32 - 1,
         want: GGUFValueType = GGUFValueType.UINT32) -> int | None:
    """An integer key as llama.cpp reads it (u32 unless `want` says otherwise): its value, or None
    (and the loader's complaint in `problems`) when it is not an integer or outside lo..hi. An
    integer of another width is read but reported: the loader reads exact types."""
    kv = model.kv.get(key)
    if kv is None:
        return None
    bad = model.type_defect(key, want)
    if kv.is_array or kv.vtype not in INT_RANGES:
        problems.append(bad or f"key {shown(key)} has type {vtype_name(kv)}")
        return None
    if bad:
        problems.append(bad)
    v = int(kv.value)
    if not lo <= v <= hi:
        problems.append(f"key {shown(key)} is {v}; llama.cpp accepts {lo}..{hi}")
        return None
    return v


def file_type_name(value: Any) -> str | None:
    """general.file_type's name for a value read from a file (None unless it is an integer)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return ggml_types.file_type_name(value)


def file_type_of(model: GGUFModel, problems: list[str] | None = None, runtime: str | None = None) -> str | None:
    """general.file_type's name (Q4_K_M, BF16, ...) in `runtime`'s numbering (ggml_types.file_type_name),
    None when absent or unreadable."""
    return ggml_types.file_type_name(_u32(model, "general.file_type", [] if problems is None else problems),
                                     runtime)


@dataclass(frozen=True)
class MtpTensor:
    name: str
    type: str
    shape: list[int]
    nbytes: int


@dataclass(frozen=True)
class Structure:
    """What the tensors and keys say about trunk and MTP layers (no verdict)."""

    arch: str
    block_count: int | None
    nextn: int
    trunk: int | None  # block_count - nextn
    layers: dict[int, list[TensorRef]]  # blk index -> its tensors, in file order
    eh_layers: list[int]  # indices holding nextn.eh_proj (the MTP blocks actually present)
    mtp_only_layout: bool  # nextn > 0 and no trunk layer 0 (convert_hf_to_gguf.py --mtp layout)
    defects: tuple[str, ...] = ()  # what llama.cpp refuses before it looks at MTP at all


    @property
    def mtp_layers(self) -> list[int]:
        """The layers that form the MTP block(s), by the tensors, never by a key alone: those holding
        nextn.eh_proj, else those holding any nextn tensor (an MTP block that lacks eh_proj)."""
        return list(self.eh_layers) or nextn_layers(self)

    def mtp_refs(self) -> list[TensorRef]:
        out: list[TensorRef] = []
        for i in self.mtp_layers:
            out.extend(self.layers.get(i, []))
        return out


def analyse(model: GGUFModel) -> Structure:
    """Trunk and MTP layers from the keys and the tensors. Keys of the wrong type or range are
    reported in `defects` (with what llama.cpp says) and read as absent, so no count from a corrupt
    file ever sizes anything."""
    arch = model.arch
    defects = list(model.defects)
    # llama-model.cpp: GGML_ASSERT(0 < n_layer_all <= LLAMA_MAX_LAYERS) and n_layer_nextn <= n_layer_all
    bc = _u32(model, f"{arch}.block_count", defects, lo=1, hi=MAX_LAYERS)
    nextn = _u32(model, f"{arch}.nextn_predict_layers", defects, hi=MAX_LAYERS) or 0
    _u32(model, f"{arch}.embedding_length", defects)
    file_type_of(model, defects)
    rule = rule_for(arch)
    for k in rule.layer_arrays if rule else COMMON_LAYER_ARRAYS:
        kv = model.kv.get(f"{arch}.{k}")
        if kv is not None and kv.is_array and kv.item_type not in LAYER_ARRAY_ITEMS:
            defects.append(f"key {arch}.{k} is an {vtype_name(kv)}; llama.cpp reads per-layer arrays of "
                           "u32, i32, f32 or bool only")
    layers: dict[int, list[TensorRef]] = {}
    for r in model.refs:
        lo = layer_of(r.name)
        if lo and lo[0] >= MAX_LAYERS:  # llama.cpp has at most 512 blocks: never size anything by it
            defects.append(f"tensor {shown(r.name)} is beyond llama.cpp's {MAX_LAYERS} layers")
        elif lo:
            layers.setdefault(lo[0], []).append(r)
    eh = sorted(i for i, refs in layers.items() if any(r.name.endswith("nextn.eh_proj.weight") for r in refs))
    trunk = bc - min(nextn, bc) if bc is not None else None
    mtp_only = nextn > 0 and "blk.0.attn_norm.weight" not in model.by_name and bool(layers) and min(layers) > 0
    return Structure(arch, bc, nextn, trunk, layers, eh, mtp_only, tuple(dict.fromkeys(defects)))


def nextn_layers(st: Structure) -> list[int]:
    """The blocks holding any nextn.* tensor."""
    return sorted(i for i, refs in st.layers.items() if any(layer_of(r.name)[1].startswith("nextn.")  # type: ignore[index]
                                                             for r in refs))


@dataclass(frozen=True)
class Blocks:
    """Trunk and MTP blocks as the tensors say, reconciled with the keys (see `reconcile`)."""

    trunk: int  # trunk layers: blk.0 .. blk.{trunk-1}, none holding a nextn tensor
    mtp: list[int]  # the MTP blocks: right after the trunk, each holding nextn.eh_proj
    contradiction: str | None  # tensors that contradict each other or the keys: no graft from them
    key_mismatch: str | None  # keys that do not describe the MTP block(s) the tensors hold
    stray_key: bool  # nextn_predict_layers set, no MTP block, and the layers it names are trunk layers


def blk_names(layers: Sequence[int], limit: int = 6) -> str:
    layers = list(layers)
    more = f" and {len(layers) - limit} more" if len(layers) > limit else ""
    return ", ".join(f"blk.{i}" for i in layers[:limit]) + more


def _holds(layers: Sequence[int]) -> str:
    return "holds" if len(layers) == 1 else "hold"


def reconcile(st: Structure) -> Blocks:
    """Where the trunk ends and the MTP block is, from the tensors, and what the keys say against
    it. A block holding no nextn tensor is a trunk layer; one holding nextn.eh_proj is an MTP
    block; one holding other nextn tensors only is neither (a trunk layer with a stray tensor, or
    an MTP block that lost eh_proj: the tensors cannot say which), whatever the keys say.
    Needs st.block_count."""
    bc, k, arch = st.block_count, st.nextn, st.arch
    assert bc is not None
    nextn_at = nextn_layers(st)
    trunk_at = [i for i in sorted(st.layers) if i not in nextn_at]
    mtp = list(st.eh_layers)
    trunk = trunk_at[-1] + 1 if trunk_at else (mtp[0] if mtp else 0)
    bad = _tensor_contradiction(st, nextn_at, trunk_at, trunk)
    if bad is not None:
        return Blocks(trunk, mtp, bad, None, False)
    if mtp:
        ok = (bc, k) == (trunk + len(mtp), len(mtp))
        why = None if ok else (f"{arch}.block_count {bc} and nextn_predict_layers {k} do not describe the tensors "
                               f"({trunk} trunk layers, MTP block {blk_names(mtp)})")
        return Blocks(trunk, mtp, None, why, False)
    if bc == trunk + k:
        return Blocks(trunk, [], None, None, False)  # trunk only; a kept key promises an absent block
    keyed = range(bc - min(k, bc), bc)
    if k and bc == trunk:
        return Blocks(trunk, [], None, f"{arch}.nextn_predict_layers is {k} but {blk_names(keyed)} "
                      f"{_holds(keyed)} no nextn tensor: the {trunk} layers block_count {bc} counts are trunk "
                      "layers and the key is stray", True)
    return Blocks(trunk, [], (f"{arch}.block_count {bc} and nextn_predict_layers {k or 'absent'} say the trunk has "
                              f"{bc - min(k, bc)} layers, the tensors {trunk} (blk.0..blk.{trunk - 1})"
                              if trunk else f"{arch}.block_count is {bc} but the file holds no layer tensors"),
                  None, False)


def _tensor_contradiction(st: Structure, nextn_at: list[int], trunk_at: list[int], trunk: int) -> str | None:
    """What makes the tensors' own layout impossible to read without guessing, or trunk layers that
    block_count leaves out; None when the tensors are a trunk followed by MTP blocks."""
    mtp, last, bc = st.eh_layers, (trunk_at[-1] if trunk_at else -1), st.block_count
    assert bc is not None
    if odd := [i for i in nextn_at if i not in mtp]:
        return (f"{blk_names(odd)} {_holds(odd)} nextn tensors but no nextn.eh_proj.weight: neither a trunk "
                "layer nor an MTP block")
    if mtp and mtp[0] < last:
        return f"MTP block {blk_names(mtp)} lies before trunk layer blk.{last}: an MTP block follows the trunk"
    if mtp and mtp != list(range(mtp[0], mtp[0] + len(mtp))):
        return f"the MTP blocks {blk_names(mtp)} are not consecutive"
    if mtp and trunk_at and mtp[0] != trunk:
        return f"MTP block blk.{mtp[0]} does not follow the last trunk layer blk.{last} (blk.{trunk} has no tensors)"
    if trunk_at and (gaps := [i for i in range(trunk) if i not in st.layers]):
        return f"trunk layer(s) {blk_names(gaps)} have no tensors although blk.{last} has"
    if trunk_at and bc < trunk:
        return (f"the trunk has {trunk} layers (blk.0..blk.{last} hold no nextn tensor) but {st.arch}.block_count "
                f"is {bc}: trunk layers beyond block_count")
    return None


def vocab_fingerprint(model: GGUFModel) -> tuple[int | None, str | None]:
    """(vocabulary size, sha256 of the raw tokenizer.ggml.tokens array) — identical tokens, same hash."""
    kv = model.kv.get("tokenizer.ggml.tokens")
    if kv is None:
        emb = model.by_name.get("token_embd.weight")
        return (emb.info.ne[1] if emb and len(emb.info.ne) > 1 else None), None
    return kv.count, hashlib.sha256(kv.payload).hexdigest()


def dominant_type(refs: list[TensorRef]) -> int | None:
    """The ggml type holding the most bytes among 2-D weights."""
    c: Counter[int] = Counter()
    for r in refs:
        if len(r.info.ne) >= 2:
            c[r.info.ggml_type] += r.info.nbytes
    return c.most_common(1)[0][0] if c else None


@dataclass(frozen=True)
class InspectReport:
    path: str
    architecture: str
    block_count: int | None
    nextn_predict_layers: int
    trunk_layers: int | None
    mtp_present: bool
    mtp_layers: list[int]
    mtp_tensors: list[MtpTensor]
    mtp_bytes: int
    layout: str  # "full", "trunk-only", "mtp-only" (also a gemma4-assistant: a file for -md)
    tensor_count: int
    n_embd: int | None
    vocab_size: int | None
    file_type: str | None
    dominant_type: str | None
    layer_arrays: dict[str, int]  # key -> length
    split: dict[str, Any] | None
    imatrix: dict[str, Any]
    provenance: dict[str, Any]
    consistent: bool
    problems: list[str]
    notes: list[str] = field(default_factory=list)
    runtimes: list[str] = field(default_factory=list)  # the runtimes whose loader takes every tensor type
    loads_with: str = ""  # how a report says so: "llama.cpp and ik_llama.cpp", "ik_llama.cpp only"
    loader_refusals: dict[str, str] = field(default_factory=dict)  # runtime -> its predicted refusal

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect_model(path: str | os.PathLike[str], model: GGUFModel | None = None,
                  runtime: str | None = None) -> InspectReport:
    """Inspect a GGUF (single file or first shard). Raises GGUFFormatError only if it can't be read.
    With a `runtime`, a tensor type its loader lacks is a problem: the refusal its loader would give."""
    model = model or GGUFModel(path)
    st = analyse(model)
    arch = st.arch
    rule = rule_for(arch)
    refusals = loader_refusals(model)
    problems: list[str] = list(st.defects) + [f"{LABELS[r]}'s loader refuses it: {refusals[r]}"
                                              for r in (runtime,) if r in refusals]
    notes = _arch_notes(arch, rule)
    drafter = rule is not None and rule.is_drafter
    if rule is not None and rule.file_problems is not None:
        problems += rule.file_problems(model.get, set(model.by_name))
    if st.block_count is None:
        if f"{arch}.block_count" not in model.kv:
            problems.append(f"key {arch}.block_count is missing")
    else:
        problems += _mtp_problems(st, rule, notes)
        if not drafter:
            b = reconcile(st)
            stray_loads = b.stray_key and rule is not None and rule.stray_key_loads  # a note: _mtp_block_problems
            stray = [b.key_mismatch] if b.stray_key and not stray_loads else []
            problems += [b.contradiction] if b.contradiction else stray
    arrays, array_problems = _layer_arrays(model, st, rule)
    split, split_problems = _split_info(model)
    problems += array_problems + split_problems
    mtp_refs = st.mtp_refs()
    mtp_present = bool(st.eh_layers)
    layout = "mtp-only" if st.mtp_only_layout else ("full" if mtp_present else "trunk-only")
    if drafter:  # every block an MTP layer, plus the global nextn.* projections
        keyed = range(max(0, st.block_count - st.nextn), st.block_count) if st.block_count is not None else ()
        mtp_refs = [r for r in model.refs if r.name.startswith("nextn.")] + [r for i in keyed for r in st.layers.get(i, [])]
        # a sidecar for -md, like the converter's --mtp output
        mtp_present, layout = bool(st.layers) and st.nextn > 0, "mtp-only"
    dom, loads = dominant_type(model.refs), [r for r in RUNTIMES if r not in refusals]
    return InspectReport(
        path=str(model.path), architecture=arch, block_count=st.block_count,
        nextn_predict_layers=st.nextn, trunk_layers=st.trunk, mtp_present=mtp_present,
        mtp_layers=sorted({lo[0] for r in mtp_refs if (lo := layer_of(r.name))}),
        mtp_tensors=[MtpTensor(r.name, r.info.type_name, r.info.shape, r.info.nbytes) for r in mtp_refs],
        mtp_bytes=sum(r.info.nbytes for r in mtp_refs),
        layout=layout,
        tensor_count=len(model.refs), n_embd=_u32(model, f"{arch}.embedding_length", []),
        vocab_size=vocab_fingerprint(model)[0], file_type=file_type_of(model, runtime=_numbering(loads)),
        dominant_type=ggml_types.type_name(dom) if dom is not None else None,
        layer_arrays=arrays, split=split,
        imatrix={k: model.get(k) for k in model.kv if k.startswith("quantize.imatrix.")},
        provenance={k: model.get(k) for k in model.kv if k.startswith("mtpgraft.")},
        consistent=not problems, problems=list(dict.fromkeys(problems)), notes=notes,
        runtimes=loads, loads_with=ggml_types.runtimes_label(loads), loader_refusals=refusals,
    )


def loader_refusals(model: GGUFModel) -> dict[str, str]:
    """Per runtime whose loader lacks one of the model's tensor types, the refusal it would print."""
    found = ggml_types.loadable_by((t.name, t.info.ggml_type, t.info.ne[0]) for t in model.refs)
    return {r: why for r, why in found.items() if why is not None}


def _numbering(runtimes: Sequence[str]) -> str | None:
    """Whose general.file_type numbers a file loadable by `runtimes` uses, where only one loads it."""
    return runtimes[0] if len(runtimes) == 1 else None


def _arch_notes(arch: str, rule: ArchRule | None) -> list[str]:
    if rule is not None and not rule.in_file:  # a drafter pair: how it is used instead
        return [rule.note]
    if rule is None:
        return [f"architecture {arch!r} has no in-file MTP support in llama.cpp"]
    if not rule.runs_mtp:
        return [f"llama.cpp loads MTP tensors for {arch!r} but cannot run them ({rule.note})"]
    return []


def _mtp_problems(st: Structure, rule: ArchRule | None, notes: list[str]) -> list[str]:
    """What the loader says about the MTP block, the trunk and block_count (the keys are sane here)."""
    arch, bc, nextn = st.arch, st.block_count, st.nextn
    assert bc is not None
    problems: list[str] = []
    beyond = sorted(i for i in st.layers if i >= bc)
    mtp_beyond = bool(nextn) and any(i in st.eh_layers for i in beyond)
    if nextn > bc:
        problems.append(f"{arch}.nextn_predict_layers {nextn} exceeds block_count {bc}")
    if not nextn and st.eh_layers:
        where = ", ".join(f"blk.{i}" for i in st.eh_layers)
        if all(i >= bc for i in st.eh_layers):
            problems.append(f"MTP tensors ({where}) present but {arch}.nextn_predict_layers is missing "
                            f"and block_count {bc} does not count them")
        else:
            problems.append(f"MTP tensors ({where}) present but {arch}.nextn_predict_layers is missing, "
                            f"so llama.cpp takes {where} for trunk layers and fails to load it")
    elif nextn and not (rule is not None and rule.is_drafter):
        problems += _mtp_block_problems(st, rule, beyond, notes)
    if beyond and not mtp_beyond:
        problems.append(f"tensors for {', '.join(f'blk.{i}' for i in beyond[:8])} lie beyond block_count "
                        f"{bc} (llama.cpp: wrong number of tensors)")
    if st.trunk and not st.mtp_only_layout:
        gaps = [i for i in range(st.trunk) if i not in st.layers]
        if gaps and len(gaps) < st.trunk:
            problems.append(f"trunk layers without tensors: {', '.join(f'blk.{i}' for i in gaps[:5])}")
    return problems


def _mtp_block_problems(st: Structure, rule: ArchRule | None, beyond: list[int], notes: list[str]) -> list[str]:
    arch, bc, nextn = st.arch, st.block_count, st.nextn
    assert bc is not None
    expected = list(range(max(0, bc - nextn), bc))
    present = [i for i in expected if st.layers.get(i)]
    problems: list[str] = []
    if beyond and any(i in st.eh_layers for i in beyond):
        problems.append(f"block_count {bc} does not count the MTP block: nextn tensors are at "
                        f"{', '.join(f'blk.{i}' for i in beyond[:8])} (llama.cpp looks for "
                        f"blk.{expected[0]}.nextn.eh_proj.weight)")
    elif not present:
        if rule is not None and rule.trunk_only_ok:
            notes.append(f"trunk-only file: {arch}.nextn_predict_layers={nextn} but no MTP tensors "
                         "(llama.cpp loads it without MTP)")
            if rule.trunk_only_mtp_aborts:
                notes.append("warning: llama-server started with --spec-type draft-mtp ABORTS on "
                             "this file (GGML_ASSERT: MTP block missing nextn.eh_proj); "
                             "`mtpgraft attach` an MTP block, or drop the key")
        else:
            problems.append(f"{arch}.nextn_predict_layers={nextn} but the MTP block "
                            f"blk.{expected[0]} has no tensors (llama.cpp: tensor "
                            f"'blk.{expected[0]}.attn_norm.weight' not found)")
    elif rule is not None and rule.stray_key_loads and not nextn_layers(st):
        notes.append(f"{arch}.nextn_predict_layers={nextn} but {blk_names(expected)} {_holds(expected)} no nextn "
                     "tensor: llama.cpp drops the key and runs the block as a trunk layer (MTP off; "
                     "--spec-type draft-mtp refuses: failed to create MTP context)")
    else:
        for i in expected:
            names = {r.name for r in st.layers.get(i, [])}
            missing = [s for s in NEXTN_REQUIRED if f"blk.{i}.{s}" not in names]
            if not names:
                problems.append(f"MTP block blk.{i} has no tensors")
            elif missing:
                problems.append(f"MTP block blk.{i} lacks {', '.join(missing)}")
    if rule is not None and rule.max_nextn is not None and nextn > rule.max_nextn:
        problems.append(f"{arch} runs at most {rule.max_nextn} MTP block(s); file has {nextn}")
    return problems


def _layer_arrays(model: GGUFModel, st: Structure, rule: ArchRule | None) -> tuple[dict[str, int], list[str]]:
    """Per-layer array keys, their lengths, and the loader's complaints about them."""
    arrays: dict[str, int] = {}
    problems: list[str] = []
    r, bc = rule or ArchRule(st.arch), st.block_count  # an unknown arch: the common arrays, exact lengths
    for k in r.layer_arrays:
        key = f"{st.arch}.{k}"
        kv = model.kv.get(key)
        if kv is None or not kv.is_array:
            continue
        arrays[key] = kv.count
        if kv.item_type in LAYER_ARRAY_ITEMS and bc is not None and not r.array_length_ok(k, kv.count, bc):
            at_least = "at least " if k in r.config_arrays else ""
            problems.append(f"key {key} has wrong array length; expected {at_least}{bc}, got {kv.count}")
    return arrays, problems


def _split_info(model: GGUFModel) -> tuple[dict[str, Any] | None, list[str]]:
    """A split set's shape and what the loader says about its counts (split.tensors.count is an i32)."""
    if not model.is_split and "split.count" not in model.kv:
        return None, []
    problems: list[str] = []
    declared = _u32(model, "split.tensors.count", problems, want=GGUFValueType.INT32, hi=2**31 - 1)
    actual = len(model.refs)
    split = {"count": len(model.shards), "tensors_count": declared, "files": [p.name for p in model.paths]}
    if declared is not None and declared != actual:
        problems.append(f"split.tensors.count is {declared} but the shards hold {actual} tensors "
                        f"(llama.cpp: corrupted model: {declared} tensors expected but {actual} found)")
    for s in model.shards[1:]:
        if s.kv.get("split.count", None) is None or s.split_count != model.shards[0].split_count:
            problems.append(f"{s.path.name}: split.count {s.get('split.count')} differs from the first shard's")
        theirs = _u32(s, "split.tensors.count", problems, want=GGUFValueType.INT32, hi=2**31 - 1)  # type: ignore[arg-type]
        if theirs != declared:
            problems.append(f"{s.path.name}: split.tensors.count {theirs} differs from the first shard's {declared}")
    return split, problems
