"""The quantize settings checked and normalized: quant types, split sizes, output names and where
they go, and the MTP type policy per quant type."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .. import ggml_types, naming
from ..errors import QuantizeOptionError, Setting
from ..ggml_types import MTP_TYPE, mtp_target
from ..parsing import is_plain
from ..runtimes import MAINLINE

# The type knowledge is ggml_types'; these names stay for recipe.py, which imports them from here.
NEEDS_IMATRIX = ggml_types.FILE_TYPES_NEED_IMATRIX
ALIASES = ggml_types.FILE_TYPE_ALIASES
canonical_type = ggml_types.canonical_file_type
MTP_POLICIES = ("q8_0", "match")

DEFAULT_MTP_TYPE = "q8_0"
# llama.cpp's own words for --allow-requantize (tools/quantize/quantize.cpp usage()).
REQUANTIZE_WARNING = ("requantizing tensors that have already been quantized: this can severely "
                      "reduce quality compared to quantizing from 16bit or 32bit!")
# `llama-server -hf` skips files whose names contain these (common/download.cpp).
_SIZE_RE = re.compile(r"^([1-9]\d*)([MG])$")


def parse_types(types: str | Sequence[str], runtime: str = MAINLINE) -> tuple[str, ...]:
    """'Q4_K_M,Q8_0' or a list -> canonical names (of `runtime`'s llama-quantize), in order, without
    duplicates."""
    items = types.split(",") if isinstance(types, str) else [x for t in types for x in str(t).split(",")]
    out = [canonical_type(t, runtime) for t in items if t.strip()]
    if not out:
        raise QuantizeOptionError("no quant types given (e.g. ", Setting("types", "Q4_K_M,Q8_0"), ")")
    return tuple(dict.fromkeys(out))


def parse_size(text: str) -> int:
    """llama-gguf-split's --split-max-size syntax: an integer and M or G (decimal units)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise QuantizeOptionError(f"split size {text!r} is not N followed by M or G (e.g. 50G, 500M), "
                            "the units llama-gguf-split takes")
    return int(m.group(1)) * (10**6 if m.group(2) == "M" else 10**9)


def ggml_type(name: str, *, what: str | Setting = MTP_TYPE) -> str:
    """An MTP type policy (q8_0, match or a tensor type), validated by ggml_types.mtp_target."""
    return mtp_target(name, policies=MTP_POLICIES, what=what)


def default_name(path: str | os.PathLike[str]) -> str:
    """The output name stem: the input's file name without .gguf, shard suffix or float tag."""
    return naming.model_stem(Path(path).name)


def name_problem(name: str, *, sidecar: bool = False) -> str | None:
    """What is wrong with an output name stem, or None (the validator recipes use too). A `sidecar`
    (an MTP-only file or a gemma4-assistant) may, and should, carry the `mtp-` prefix `-hf` looks for."""
    if not is_plain(name) or name.startswith("."):  # no folders, control characters or 200+ characters
        return f"{name!r} must be a plain file name stem (no folders)"
    probe = naming.quant_file_name(name, "Q8_0")  # llama.cpp's test is case-sensitive, on the whole name
    for r in naming.HF_RESERVED:
        if r in probe and not (sidecar and r == naming.SIDECAR_PREFIX):
            return (f"{name!r} gives file names containing {r!r}, which `llama-server -hf` skips as "
                    "non-model files; choose another name")
    return None


def check_name(name: str, *, sidecar: bool = False) -> None:
    problem = name_problem(name, sidecar=sidecar)
    if problem:
        raise QuantizeOptionError(Setting("name"), f" {problem}")


def check_mtp_policy(value: str, *, what: str | Setting = MTP_TYPE) -> str:
    """An MTP type policy (q8_0, match or a ggml tensor type), normalized; UsageError if not one."""
    v = value.strip().lower()
    if v not in MTP_POLICIES:
        ggml_type(v, what=what)
    return v


def types_needing_imatrix(types: Sequence[str], runtime: str = MAINLINE) -> tuple[str, ...]:
    """The file types among `types` that `runtime`'s llama-quantize makes only with an importance matrix."""
    return tuple(t for t in types if t in ggml_types.file_types_need_imatrix(runtime))


def output_names(out_dir: str | os.PathLike[str], name: str, quant_type: str) -> tuple[Path, Path]:
    """Where a type's output goes: the single file out_dir/Name-TYPE.gguf and the split set's folder."""
    out = Path(out_dir)
    return out / naming.quant_file_name(name, quant_type), out / quant_type


def mtp_policy_for(mtp_type: str | Mapping[str, str] | None, quant_type: str, runtime: str = MAINLINE) -> str:
    if mtp_type is None:
        return DEFAULT_MTP_TYPE
    if isinstance(mtp_type, str):
        return mtp_type.strip().lower()
    by_type = {canonical_type(k, runtime) if k.lower() != "default" else "default": v for k, v in mtp_type.items()}
    return str(by_type.get(quant_type, by_type.get("default", DEFAULT_MTP_TYPE))).strip().lower()
