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
from dataclasses import asdict, dataclass, field
from typing import Any

from gguf import GGMLQuantizationType, LlamaFileType

from .arch import (
    ASSISTANT_ARCH,
    ASSISTANT_NOTE,
    COMMON_LAYER_ARRAYS,
    GEMMA4_MESSAGE,
    NEXTN_REQUIRED,
    assistant_problems,
    rule_for,
)
from .gguf_io import GGUFModel, TensorRef

LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)$")
FLOAT_TYPES = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}


def layer_of(name: str) -> tuple[int, str] | None:
    m = LAYER_RE.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def file_type_name(value: Any) -> str | None:
    if value is None:
        return None
    try:
        name = LlamaFileType(int(value)).name
    except ValueError:
        return f"type{value}"
    for prefix in ("MOSTLY_", "ALL_"):
        if name.startswith(prefix):
            name = name[len(prefix):]
    return name


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

    @property
    def mtp_layers(self) -> list[int]:
        """The layers that form the MTP block(s): by the key when it is set, else by the tensors."""
        if self.nextn and self.block_count is not None:
            return list(range(self.block_count - self.nextn, self.block_count))
        return list(self.eh_layers)

    def mtp_refs(self) -> list[TensorRef]:
        out: list[TensorRef] = []
        for i in self.mtp_layers:
            out.extend(self.layers.get(i, []))
        return out


def analyse(model: GGUFModel) -> Structure:
    arch = model.arch
    bc = model.get(f"{arch}.block_count")
    nextn = int(model.get(f"{arch}.nextn_predict_layers", 0) or 0)
    layers: dict[int, list[TensorRef]] = {}
    for r in model.refs:
        lo = layer_of(r.name)
        if lo:
            layers.setdefault(lo[0], []).append(r)
    eh = sorted(i for i, refs in layers.items() if any(r.name.endswith("nextn.eh_proj.weight") for r in refs))
    bc_i = int(bc) if bc is not None else None
    trunk = bc_i - nextn if bc_i is not None else None
    mtp_only = nextn > 0 and "blk.0.attn_norm.weight" not in model.by_name and bool(layers) and min(layers) > 0
    return Structure(arch, bc_i, nextn, trunk, layers, eh, mtp_only)


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect_model(path: str | os.PathLike[str], model: GGUFModel | None = None) -> InspectReport:
    """Inspect a GGUF (single file or first shard). Raises GGUFFormatError only if it can't be read."""
    model = model or GGUFModel(path)
    st = analyse(model)
    arch = st.arch
    rule = rule_for(arch)
    problems: list[str] = []
    notes: list[str] = []
    bc, nextn = st.block_count, st.nextn

    if arch == ASSISTANT_ARCH:
        notes.append(ASSISTANT_NOTE)
        problems += assistant_problems(model.get, set(model.by_name))
    elif arch == "gemma4":
        notes.append(GEMMA4_MESSAGE)
    elif rule is None:
        notes.append(f"architecture {arch!r} has no in-file MTP support in llama.cpp")
    elif not rule.runs_mtp:
        notes.append(f"llama.cpp loads MTP tensors for {arch!r} but cannot run them ({rule.note})")

    if bc is None:
        problems.append(f"key {arch}.block_count is missing")
    else:
        beyond = sorted(i for i in st.layers if i >= bc)
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
        elif nextn and arch != ASSISTANT_ARCH:
            expected = list(range(bc - nextn, bc))
            present = [i for i in expected if st.layers.get(i)]
            if beyond and any(i in st.eh_layers for i in beyond):
                problems.append(f"block_count {bc} does not count the MTP block: nextn tensors are at "
                                f"{', '.join(f'blk.{i}' for i in beyond)} (llama.cpp looks for "
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
            else:
                for i in expected:
                    names = {r.name for r in st.layers.get(i, [])}
                    if not names:
                        problems.append(f"MTP block blk.{i} has no tensors")
                        continue
                    missing = [s for s in NEXTN_REQUIRED if f"blk.{i}.{s}" not in names]
                    if missing:
                        problems.append(f"MTP block blk.{i} lacks {', '.join(missing)}")
            if rule is not None and rule.max_nextn is not None and nextn > rule.max_nextn:
                problems.append(f"{arch} runs at most {rule.max_nextn} MTP block(s); file has {nextn}")
        if beyond and not (nextn and any(i in st.eh_layers for i in beyond)):
            problems.append(f"tensors for {', '.join(f'blk.{i}' for i in beyond)} lie beyond block_count "
                            f"{bc} (llama.cpp: wrong number of tensors)")
        if st.trunk and not st.mtp_only_layout:
            gaps = [i for i in range(st.trunk) if i not in st.layers]
            if gaps and len(gaps) < st.trunk:
                problems.append(f"trunk layers without tensors: {', '.join(f'blk.{i}' for i in gaps[:5])}")

    arrays: dict[str, int] = {}
    keys = rule.layer_arrays if rule else COMMON_LAYER_ARRAYS
    for k in keys:
        kv = model.kv.get(f"{arch}.{k}")
        if kv is not None and kv.is_array:
            arrays[f"{arch}.{k}"] = kv.count
            if bc is not None and kv.count != bc:
                problems.append(f"key {arch}.{k} has wrong array length; expected {bc}, got {kv.count}")

    split = None
    if model.is_split or "split.count" in model.kv:
        declared = model.get("split.tensors.count")
        actual = len(model.refs)
        split = {"count": len(model.shards), "tensors_count": declared, "files": [p.name for p in model.paths]}
        if declared is not None and int(declared) != actual:
            problems.append(f"split.tensors.count is {declared} but the shards hold {actual} tensors "
                            f"(llama.cpp: corrupted model: {declared} tensors expected but {actual} found)")
        for s in model.shards[1:]:
            if s.get("split.count") != model.get("split.count"):
                problems.append(f"{s.path.name}: split.count {s.get('split.count')} differs from the first shard's")
            if s.get("split.tensors.count") != declared:
                problems.append(f"{s.path.name}: split.tensors.count {s.get('split.tensors.count')} "
                                f"differs from the first shard's {declared}")

    mtp_refs = st.mtp_refs()
    if not mtp_refs and st.eh_layers:
        mtp_refs = [r for i in st.eh_layers for r in st.layers[i]]
    mtp_present = bool(st.eh_layers)
    layout = "mtp-only" if st.mtp_only_layout else ("full" if mtp_present else "trunk-only")
    if arch == ASSISTANT_ARCH:  # every block an MTP layer, plus the global nextn.* projections
        mtp_refs = [r for r in model.refs if r.name.startswith("nextn.")] + mtp_refs
        # a sidecar for -md, like the converter's --mtp output
        mtp_present, layout = bool(st.layers) and nextn > 0, "mtp-only"
    n_embd = model.get(f"{arch}.embedding_length")
    vocab, _ = vocab_fingerprint(model)
    dom = dominant_type(model.refs)
    return InspectReport(
        path=str(model.path),
        architecture=arch,
        block_count=bc,
        nextn_predict_layers=nextn,
        trunk_layers=st.trunk,
        mtp_present=mtp_present,
        mtp_layers=sorted({lo[0] for r in mtp_refs if (lo := layer_of(r.name))}),
        mtp_tensors=[MtpTensor(r.name, r.info.type_name, r.info.shape, r.info.nbytes) for r in mtp_refs],
        mtp_bytes=sum(r.info.nbytes for r in mtp_refs),
        layout=layout,
        tensor_count=len(model.refs),
        n_embd=int(n_embd) if n_embd is not None else None,
        vocab_size=vocab,
        file_type=file_type_name(model.get("general.file_type")),
        dominant_type=GGMLQuantizationType(dom).name if dom is not None else None,
        layer_arrays=arrays,
        split=split,
        imatrix={k: model.get(k) for k in model.kv if k.startswith("quantize.imatrix.")},
        provenance={k: model.get(k) for k in model.kv if k.startswith("mtpgraft.")},
        consistent=not problems,
        problems=problems,
        notes=notes,
    )
