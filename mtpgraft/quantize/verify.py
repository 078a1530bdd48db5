"""Checking a quantize output against what its plan promised (tensors, file type, the MTP block and
its types, no zeroed data), and finding an output already in place."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import ggml_types
from ..errors import GGUFFormatError
from ..gguf_io import GGUFModel, open_input, shown
from ..inspection import inspect_model
from .plan import OutputSpec, QuantizeJob


@dataclass(frozen=True)
class Verification:
    path: str
    ok: bool
    problems: tuple[str, ...]
    files: tuple[str, ...] = ()
    bytes: int = 0
    mtp_types: tuple[tuple[str, str], ...] = ()


_SAMPLES = 9  # the head, the tail and 7 regions between
_SAMPLE_BYTES = 512


def _zero_data(model: GGUFModel, names: Sequence[str]) -> list[str]:
    """Quantized tensors that read as zero in every sample: the head, the tail and evenly spread
    regions between. A failed write leaves the header or whole regions zeroed, while a real tensor
    may start with zero rows (unused tokens at the start of a vocabulary), so no single sample decides."""
    bad = []
    for n in names:
        r = model.by_name.get(n)
        if r is None or r.info.type_name in ggml_types.FLOAT_TYPES or not r.info.nbytes:
            continue
        k = min(_SAMPLE_BYTES, r.info.nbytes)
        span = r.info.nbytes - k
        offsets = sorted({span * i // (_SAMPLES - 1) for i in range(_SAMPLES)})
        fd = open_input(r.path)
        try:
            if not any(any(os.pread(fd, k, r.abs_offset + off)) for off in offsets):
                bad.append(n)
        finally:
            os.close(fd)
    return bad


def verify_output(path: str | os.PathLike[str], expect: OutputSpec) -> Verification:
    """Check one output (a file or a split set's first shard) against what the plan promised."""
    p = Path(path)
    try:
        model = GGUFModel(p)
    except GGUFFormatError as e:
        return Verification(str(p), False, (str(e),))
    rep = inspect_model(p, model)
    problems = _tensor_problems(model, expect) + _mtp_problems(model, rep, expect)
    if expect.imatrix and "quantize.imatrix.file" not in model.kv:
        problems.append("quantize.imatrix.file is missing: the imatrix was not applied")
    if not problems:
        check = [n for n, _ in expect.mtp_types] + [r.name for r in model.refs[:1] + model.refs[-1:]]
        zero = _zero_data(model, check)
        if zero:
            problems.append(f"tensor data is zeroed: {', '.join(shown(z) for z in zero[:3])}")
    mtp_types = tuple((t.name, t.type) for t in rep.mtp_tensors)
    files = tuple(str(x) for x in model.paths)
    size = sum(x.stat().st_size for x in model.paths)
    return Verification(str(p), not problems, tuple(problems), files, size, mtp_types)


def _tensor_problems(model: GGUFModel, expect: OutputSpec) -> list[str]:
    """The output's tensor list and file type against the input's and the plan's."""
    problems: list[str] = []
    names = {r.name for r in model.refs}
    if len(model.refs) != len(expect.tensor_names):
        problems.append(f"{len(model.refs)} tensors, the input has {len(expect.tensor_names)}")
    missing = sorted(expect.tensor_names - names)
    extra = sorted(names - expect.tensor_names)
    if missing:
        problems.append(f"tensors missing: {', '.join(shown(m) for m in missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if extra:
        problems.append(f"unexpected tensors: {', '.join(shown(x) for x in extra[:5])}")
    ft = model.get("general.file_type")
    if isinstance(ft, bool) or not isinstance(ft, int) or ft != expect.file_type:
        problems.append(f"general.file_type is {ft}, expected {expect.file_type} ({expect.quant_type})")
    return problems


def _mtp_problems(model: GGUFModel, rep: Any, expect: OutputSpec) -> list[str]:
    """The output's MTP block against the plan: consistent, present, its layers, layout and types."""
    problems: list[str] = []
    if not rep.consistent:
        problems += [f"inconsistent: {x}" for x in rep.problems]
    if rep.mtp_present != expect.mtp_present:
        problems.append("the MTP block is missing" if expect.mtp_present else "an MTP block appeared")
    elif expect.mtp_present and tuple(rep.mtp_layers) != expect.mtp_layers:
        problems.append(f"MTP layers {rep.mtp_layers}, expected {list(expect.mtp_layers)}")
    if rep.layout != expect.layout:
        problems.append(f"layout {rep.layout}, expected {expect.layout}")
    got = {r.name: r.info.type_name for r in model.refs}
    for n, t in expect.mtp_types:
        if n in got and got[n] != t:
            problems.append(f"{n} is {got[n]}, planned {t}")
    for n in expect.mtp_quantized:
        if n in got and got[n] in ggml_types.FLOAT_TYPES:
            problems.append(f"{n} was left {got[n]}, expected a quantized type")
    return problems


def existing_output(job: QuantizeJob, name: str) -> Path | None:
    """The output already in place for a job: the single file, or a split set's first shard."""
    single = Path(job.single_path)
    if single.exists():
        return single
    d = Path(job.split_dir)
    if d.is_dir():
        firsts = sorted(d.glob(f"{glob_escape(name)}-{job.quant_type}-00001-of-*.gguf"))
        if firsts:
            return firsts[0]
        if any(d.iterdir()):
            return d
    return None


def glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)
