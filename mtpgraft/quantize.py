"""Quantize a model with an MTP block into many types with the real llama-quantize, safely.

Two steps, like the graft: `plan_quantize` reads headers only, runs every check and returns a frozen
QuantizePlan holding the exact llama-quantize (and llama-gguf-split) commands, which `--dry-run`
prints; `run_quantize` executes them. Why each part exists:

- llama-imatrix never runs the MTP graph, so an imatrix has no entries for the MTP block: the
  very-low-bit types (IQ1_*, IQ2_*, IQ3_XXS, IQ3_XS, Q2_K_S) abort on it ("Missing importance matrix
  for tensor blk.64.attn_k.weight ... bailing out") and every other type quantizes it unweighted,
  silently. Each command therefore carries an explicit `--tensor-type '^blk\\.64\\.=q8_0'` rule per
  MTP block (the MTP type policy: q8_0 by default, `match` for llama.cpp's own mixture, or a type).
- llama-quantize writes a zeroed header first and the real one last, so a failed run leaves a
  full-size file that is not a GGUF. Outputs go to a temporary name, are verified (magic, header,
  tensor count and names, file type, MTP block present and consistent, MTP types as planned, no
  zeroed tensor data) and only then renamed; a bad output is removed and reported.
- Outputs above the split size are split with llama-gguf-split into a per-type folder, named the way
  `llama-server -hf REPO:TYPE` finds them: `Name-Q4_K_M.gguf`, `Q8_0/Name-Q8_0-00001-of-00003.gguf`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import __version__, ggml_types, naming
from .arch import ASSISTANT_ARCH
from .errors import (
    GGUFFormatError,
    OutputExistsError,
    OutputWriteError,
    QuantizeError,
    QuantizeOptionError,
    Setting,
    Text,
    ToolFailedError,
)
from .ggml_types import (
    FILE_TYPES,
    FLOAT_FILE_TYPES,
    MTP_TYPE,
    llama_quantizes,
    mtp_target,
    type_name,
)
from .gguf_io import GGUFModel, TensorRef, open_input, shown
from .inspection import inspect_model
from .outputs import PendingOutput, disk_full, no_space_error
from .parsing import is_plain
from .tools import find_tool, format_cmd

log = logging.getLogger("mtpgraft")

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

Event = Callable[[str, str], None]  # (quant type, message)


# --------------------------------------------------------------------------- parsing helpers


def parse_types(types: str | Sequence[str]) -> tuple[str, ...]:
    """'Q4_K_M,Q8_0' or a list -> canonical names, in order, without duplicates."""
    items = types.split(",") if isinstance(types, str) else [x for t in types for x in str(t).split(",")]
    out = [canonical_type(t) for t in items if t.strip()]
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


def types_needing_imatrix(types: Sequence[str]) -> tuple[str, ...]:
    """The file types among `types` that llama-quantize makes only with an importance matrix."""
    return tuple(t for t in types if t in NEEDS_IMATRIX)


def output_names(out_dir: str | os.PathLike[str], name: str, quant_type: str) -> tuple[Path, Path]:
    """Where a type's output goes: the single file out_dir/Name-TYPE.gguf and the split set's folder."""
    out = Path(out_dir)
    return out / naming.quant_file_name(name, quant_type), out / quant_type


# --------------------------------------------------------------------------- imatrix coverage


@dataclass(frozen=True)
class ImatrixCoverage:
    path: str
    format: str  # "gguf" or "dat"
    entries: frozenset[str]  # tensor names with importance data (gguf format only)
    dataset_sha256: str | None  # recorded by `mtpgraft imatrix`

    def covers(self, tensor: str) -> bool:
        return tensor in self.entries


def read_imatrix_coverage(path: str | os.PathLike[str]) -> ImatrixCoverage:
    from .gguf_io import GGUFFile

    p = Path(path)
    if not p.is_file():
        raise QuantizeError(f"imatrix file not found: {p}")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":  # the legacy .dat format: its entries are not read here
        return ImatrixCoverage(str(p), "dat", frozenset(), None)
    try:
        g = GGUFFile(p)
    except GGUFFormatError as e:
        raise QuantizeError(f"imatrix {p} is not readable: {e}") from e
    entries = frozenset(t.name[: -len(".in_sum2")] for t in g.tensors if t.name.endswith(".in_sum2"))
    if not entries:
        raise QuantizeError(f"{p} holds no importance matrix entries (is it an imatrix file?)")
    sha = g.get("mtpgraft.imatrix.dataset_sha256")
    return ImatrixCoverage(str(p), "gguf", entries, str(sha) if sha else None)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class MtpRule:
    """One `--tensor-type REGEX=TYPE` rule (llama-quantize lower-cases the regex; first match wins)."""

    pattern: str
    type: str

    @property
    def arg(self) -> str:
        return f"{self.pattern}={self.type}"


@dataclass(frozen=True)
class OutputSpec:
    """What a verified output must look like."""

    quant_type: str
    file_type: int
    tensor_names: frozenset[str]
    mtp_present: bool
    mtp_layers: tuple[int, ...]
    mtp_types: tuple[tuple[str, str], ...]  # tensor -> exact ggml type expected
    mtp_quantized: tuple[str, ...]  # tensors that must hold some quantized type (policy "match")
    imatrix: bool
    layout: str


@dataclass(frozen=True)
class QuantizeJob:
    quant_type: str
    mtp_type: str  # the policy applied: "q8_0", "match", a ggml type, or "none" (no MTP block)
    single_path: str  # out_dir/Name-TYPE.gguf
    split_dir: str  # out_dir/TYPE, for a split set
    tmp_path: str  # where llama-quantize writes; renamed when verified
    command: tuple[str, ...]
    cwd: str | None
    mtp_rules: tuple[MtpRule, ...]
    expect: OutputSpec
    warnings: tuple[str, ...]

    def split_command(self, plan: QuantizePlan, tmp_dir: str) -> tuple[str, ...]:
        assert plan.llama_gguf_split is not None and plan.split_max_size is not None
        return (plan.llama_gguf_split, "--split", "--split-max-size", plan.split_max_size, self.tmp_path,
                str(Path(tmp_dir) / f"{plan.name}-{self.quant_type}"))

    def shell(self) -> str:
        cmd = format_cmd(list(self.command))
        return f"cd {format_cmd([self.cwd])} && {cmd}" if self.cwd else cmd


@dataclass(frozen=True)
class QuantizePlan:
    input: str
    input_files: tuple[str, ...]
    arch: str
    input_file_type: str | None
    mtp_layers: tuple[int, ...]
    tensor_count: int
    name: str
    out_dir: str
    imatrix: str | None
    imatrix_covers_mtp: bool
    split_max_size: str | None
    split_max_bytes: int | None
    allow_requantize: bool
    requantize: tuple[str, ...]  # "N x TYPE" of already-quantized input tensors that change type
    threads: int | None
    jobs_n: int
    force: bool
    llama_quantize: str
    llama_gguf_split: str | None
    jobs: tuple[QuantizeJob, ...]
    warnings: tuple[str, ...]

    @property
    def types(self) -> tuple[str, ...]:
        return tuple(j.quant_type for j in self.jobs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for j, jd in zip(self.jobs, d["jobs"], strict=True):
            jd["shell"] = j.shell()
            jd["expect"]["tensor_names"] = len(j.expect.tensor_names)
            if self.split_max_size:
                jd["split_command_if_larger"] = format_cmd(list(j.split_command(self, f"{self.out_dir}/.{j.quant_type}.partial")))
        return d

    def describe(self) -> str:
        """The human-readable plan with the exact commands (`--dry-run`)."""
        mtp = (f"MTP {', '.join(f'blk.{i}' for i in self.mtp_layers)}" if self.mtp_layers
               else "no MTP block")
        lines = [f"quantize {self.input} ({self.arch}, {self.tensor_count} tensors, {mtp}) -> {self.out_dir}"]
        if self.imatrix:
            lines.append(f"  imatrix: {self.imatrix}"
                         + ("" if self.imatrix_covers_mtp else " (no entries for the MTP block)"))
        for j in self.jobs:
            lines.append(f"  {j.quant_type}: MTP type {j.mtp_type} -> {Path(j.single_path).name}")
            lines.append(f"    {j.shell()}")
            if self.split_max_size:
                lines.append(f"    if larger than {self.split_max_size}: "
                             + format_cmd(list(j.split_command(self, f"{self.out_dir}/.{j.quant_type}.partial")))
                             + f" -> {Path(j.split_dir).name}/{self.name}-{j.quant_type}-0000i-of-0000N.gguf")
        for w in self.warnings:
            lines.append("  warning: " + w)
        return Text("\n").join(lines)


def mtp_policy_for(mtp_type: str | Mapping[str, str] | None, quant_type: str) -> str:
    if mtp_type is None:
        return DEFAULT_MTP_TYPE
    if isinstance(mtp_type, str):
        return mtp_type.strip().lower()
    by_type = {canonical_type(k) if k.lower() != "default" else "default": v for k, v in mtp_type.items()}
    return str(by_type.get(quant_type, by_type.get("default", DEFAULT_MTP_TYPE))).strip().lower()


def _check_assistant(name: str, imatrix: object, quant_types: Sequence[str]) -> None:
    """A gemma4-assistant has no importance matrix: llama-imatrix cannot run it (it needs its target's
    context), and its target's imatrix holds entries under the same names (blk.0.attn_q ...) sized for
    the target's width, which llama-quantize rejects ("imatrix size N is different from tensor size")
    or, were the widths equal, would apply to the wrong weights."""
    if imatrix is not None:
        raise QuantizeError(f"{name} is a gemma4-assistant: no imatrix applies to it (llama-imatrix "
                            "cannot run an assistant, and its target's imatrix describes the target's "
                            "tensors of the same names); quantize it without ", Setting("imatrix"))
    needing = [t for t in quant_types if t in NEEDS_IMATRIX]
    if needing:
        raise QuantizeError(f"{', '.join(needing)} need(s) an importance matrix, which a gemma4-assistant "
                            "cannot have (llama-imatrix cannot run it): use Q8_0, Q6_K, Q4_K_M or IQ4_XS")


def _check_mtp_types(mtp_type: str | Mapping[str, str] | None) -> None:
    """Every MTP policy given (one, or one per quant type) is valid: UsageError (exit 2) otherwise."""
    if mtp_type is None:
        return
    for v in [mtp_type] if isinstance(mtp_type, str) else list(mtp_type.values()):
        ggml_type(str(v))


@dataclass(frozen=True)
class QuantizeTools:
    """The tools a quantize plan runs, resolved once (ToolNotFoundError names every place looked)."""

    llama_quantize: str
    llama_gguf_split: str | None = None


def resolve_quantize_tools(llama_cpp: str | os.PathLike[str] | None = None, *, split: bool = False) -> QuantizeTools:
    return QuantizeTools(str(find_tool("llama-quantize", llama_cpp)),
                         str(find_tool("llama-gguf-split", llama_cpp)) if split else None)


@dataclass(frozen=True)
class _Input:
    """What planning learns about the input model and the imatrix (headers only)."""

    src: GGUFModel
    layout: str
    file_type: str | None
    mtp_layers: tuple[int, ...]
    mtp_weights: tuple[TensorRef, ...]  # MTP tensors llama-quantize quantizes
    quantized_in: tuple[TensorRef, ...]  # quantizable tensors already in a quantized type
    cov: ImatrixCoverage | None
    covers_mtp: bool

    @property
    def mtp_prefixes(self) -> tuple[str, ...]:
        return tuple(f"blk.{i}." for i in self.mtp_layers)


@dataclass(frozen=True)
class _JobTypes:
    """One quant type's MTP decisions, made before any command is built."""

    quant_type: str
    policy: str
    rules: tuple[MtpRule, ...]
    exact: tuple[tuple[str, str], ...]  # tensor -> exact ggml type expected
    must_quantize: tuple[str, ...]
    target: str | None  # the MTP tensor type for an explicit policy
    warnings: tuple[str, ...]


def plan_quantize(model: str | os.PathLike[str], types: str | Sequence[str], *,
                  out_dir: str | os.PathLike[str] | None = None, name: str | None = None,
                  imatrix: str | os.PathLike[str] | None = None,
                  mtp_type: str | Mapping[str, str] | None = None,
                  split_max_size: str | None = None, allow_requantize: bool = False,
                  jobs: int = 1, threads: int | None = None, force: bool = False,
                  llama_cpp: str | os.PathLike[str] | None = None,
                  tools: QuantizeTools | None = None) -> QuantizePlan:
    """Check MODEL and the options, and return the plan with the exact commands. Headers only.

    Every check runs before a tool is looked up: `tools` if given, else resolved once from
    `llama_cpp` at the end, so a usage mistake is never hidden by "tool not found"."""
    quant_types = parse_types(types)
    _check_counts(jobs, threads)
    _check_mtp_types(mtp_type)
    inp = _read_input(model, imatrix, quant_types)
    if inp.src.arch == ASSISTANT_ARCH:
        mtp_type = mtp_type or "match"  # the assistant is all head: the file type applies to all of it
    name = name or default_name(inp.src.path)
    check_name(name, sidecar=inp.layout == "mtp-only")
    out = (Path(out_dir) if out_dir is not None else inp.src.path.parent).absolute()
    if out.exists() and not out.is_dir():
        raise QuantizeError(Setting("out_dir"), f" {out} is a file")
    split_bytes = parse_size(split_max_size) if split_max_size else None
    decided = [_job_types(qt, inp, mtp_type) for qt in quant_types]
    warnings = _plan_warnings(inp, decided, allow_requantize)
    _check_not_input(out, name, quant_types, inp)
    tools = tools or resolve_quantize_tools(llama_cpp, split=split_bytes is not None)
    if threads is None and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    plan_jobs = tuple(_job(jt, inp, tools, out, name, allow_requantize, threads) for jt in decided)
    src = inp.src
    return QuantizePlan(
        input=str(src.path), input_files=tuple(str(p) for p in src.paths), arch=src.arch,
        input_file_type=inp.file_type, mtp_layers=inp.mtp_layers, tensor_count=len(src.refs), name=name,
        out_dir=str(out), imatrix=str(inp.cov.path) if inp.cov else None, imatrix_covers_mtp=inp.covers_mtp,
        split_max_size=split_max_size.strip() if split_max_size else None, split_max_bytes=split_bytes,
        allow_requantize=allow_requantize, requantize=_requantize_list(inp, decided), threads=threads,
        jobs_n=jobs, force=force, llama_quantize=tools.llama_quantize, llama_gguf_split=tools.llama_gguf_split,
        jobs=plan_jobs, warnings=tuple(dict.fromkeys(warnings)))


def _check_counts(jobs: int, threads: int | None) -> None:
    if jobs < 1:
        raise QuantizeOptionError(Setting("jobs"), f" must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise QuantizeOptionError(Setting("threads"), f" must be >= 1, got {threads}")


def _check_not_input(out: Path, name: str, quant_types: Sequence[str], inp: _Input) -> None:
    """No output may be the input file itself (the same name stem and type in the same folder)."""
    for qt in quant_types:
        single = output_names(out, name, qt)[0]
        if any(single.resolve() == p.resolve() for p in inp.src.paths):
            raise QuantizeError(f"the {qt} output {single} would overwrite the input; pass another ",
                                Setting("name"))


def _read_input(model: str | os.PathLike[str], imatrix: str | os.PathLike[str] | None,
                quant_types: Sequence[str]) -> _Input:
    src = GGUFModel(model)
    rep = inspect_model(src.path, src)
    if not rep.consistent:
        raise QuantizeError(f"{src.path.name} is inconsistent, llama.cpp would not load it: "
                            f"{'; '.join(rep.problems[:3])} (see `mtpgraft inspect`)")
    mtp_layers = tuple(rep.mtp_layers) if rep.mtp_present else ()
    prefixes = tuple(f"blk.{i}." for i in mtp_layers)
    if src.arch == ASSISTANT_ARCH:
        _check_assistant(src.path.name, imatrix, quant_types)
    cov = read_imatrix_coverage(imatrix) if imatrix is not None else None
    mtp_weights = tuple(r for r in src.refs if r.name.startswith(prefixes) and llama_quantizes(r.name, r.info.ne, src.arch))
    quantized_in = tuple(r for r in src.refs if llama_quantizes(r.name, r.info.ne, src.arch)
                         and type_name(r.info.ggml_type) not in ggml_types.FLOAT_TYPES)
    covers = bool(cov and mtp_weights and all(cov.covers(r.name) for r in mtp_weights))
    return _Input(src, rep.layout, rep.file_type, mtp_layers, mtp_weights, quantized_in, cov, covers)


def _job_types(qt: str, inp: _Input, mtp_type: str | Mapping[str, str] | None) -> _JobTypes:
    """The MTP policy for one quant type and what it means for the command and the output check."""
    cov, covers, blocks = inp.cov, inp.covers_mtp, ", ".join(f"blk.{i}" for i in inp.mtp_layers)
    if qt in NEEDS_IMATRIX and cov is None:
        raise QuantizeError(f"{qt} needs an importance matrix (llama-quantize refuses it without one): "
                            "pass ", Setting("imatrix"), " FILE (make one with `mtpgraft imatrix`)")
    policy = mtp_policy_for(mtp_type, qt) if inp.mtp_layers else "none"
    jw: list[str] = []
    if policy == "match":
        if qt in NEEDS_IMATRIX and not covers:
            raise QuantizeError(
                Setting("mtp_type", "match"), f" cannot make {qt}: its mixture needs importance data for "
                f"the MTP block ({blocks}), which the imatrix lacks (llama-imatrix never runs it); use ",
                Setting("mtp_type", "q8_0"), " or a type such as q6_k")
        if cov is not None and not covers:
            jw.append(Text(f"{qt}: the MTP block is quantized by llama.cpp's {qt} mixture without "
                           "importance data (", Setting("mtp_type", "match"), ")"))
        must = tuple(r.name for r in inp.mtp_weights) if qt not in FLOAT_FILE_TYPES else ()
        return _JobTypes(qt, policy, (), (), must, None, tuple(jw))
    if policy == "none":
        return _JobTypes(qt, policy, (), (), (), None, ())
    target = ggml_type(policy).upper()  # q8_0 is a policy word and a type
    if ggml_types.tensor_needs_imatrix(target, qt) and not covers:
        raise QuantizeError(Setting("mtp_type", policy), " needs importance data for the MTP block, which "
                            "the imatrix lacks (llama-imatrix never runs it); use q8_0, q6_k, q4_k or iq4_xs")
    if cov is not None and not covers and target not in ggml_types.IGNORES_IMATRIX:
        jw.append(Text(f"{qt}: MTP tensors get {target} without importance data (chosen with ",
                       Setting("mtp_type"), "; the imatrix has no entries for the MTP block)"))
    rules = tuple(MtpRule(rf"^blk\.{i}\.", target.lower()) for i in inp.mtp_layers)
    # overrides only apply when the file type is a quantized one
    exact = () if qt in FLOAT_FILE_TYPES else tuple(sorted(
        (r.name, target) for r in inp.mtp_weights if ggml_types.BY_NAME[target].row_fits(r.info.ne[0])))
    return _JobTypes(qt, policy, rules, exact, (), target, tuple(jw))


def _requantize_counts(inp: _Input, decided: Sequence[_JobTypes]) -> Counter[str]:
    """Already-quantized input tensors that change type over the batch (need --allow-requantize)."""
    requant: Counter[str] = Counter()
    for jt in decided:
        for r in inp.quantized_in:
            cur = type_name(r.info.ggml_type)
            if (r.name.startswith(inp.mtp_prefixes) and jt.target is not None and jt.quant_type not in FLOAT_FILE_TYPES
                    and cur == jt.target):
                continue
            requant[cur] += 1
    return requant


def _requantize_list(inp: _Input, decided: Sequence[_JobTypes]) -> tuple[str, ...]:
    return tuple(f"{n} x {t}" for t, n in sorted(_requantize_counts(inp, decided).items()))


def _plan_warnings(inp: _Input, decided: Sequence[_JobTypes], allow_requantize: bool) -> list[str]:
    warnings: list[str] = []
    if inp.cov is not None and inp.cov.format == "dat":
        warnings.append(f"{Path(inp.cov.path).name} is in the legacy .dat format: its MTP coverage is not "
                        "checked (llama-imatrix never covers the MTP block)")
    for jt in decided:
        warnings += jt.warnings
    if _requantize_counts(inp, decided):
        if not allow_requantize:
            raise QuantizeError(
                f"{inp.src.path.name} holds already-quantized tensors ({', '.join(_requantize_list(inp, decided))} "
                "over the batch) that would change type; llama-quantize refuses that unless you pass ",
                Setting("allow_requantize", True), f" (llama.cpp: {REQUANTIZE_WARNING.split(': ', 1)[1]}) — "
                "better, quantize from the F16/BF16 file")
        warnings.insert(0, REQUANTIZE_WARNING)
    if not inp.mtp_layers:
        warnings.append(f"{inp.src.path.name} has no MTP block: quantizing the trunk only (attach a head "
                        "afterwards with `mtpgraft attach`)")
    return warnings


def _job(jt: _JobTypes, inp: _Input, tools: QuantizeTools, out: Path, name: str, allow_requantize: bool,
         threads: int | None) -> QuantizeJob:
    """One llama-quantize command and what its output must look like."""
    qt, cov = jt.quant_type, inp.cov
    single, split_dir = output_names(out, name, qt)
    tmp = out / f".{name}-{qt}.gguf.partial"
    cmd: list[str] = [tools.llama_quantize] + (["--allow-requantize"] if allow_requantize else [])
    cwd = None
    if cov is not None:
        # Run beside the imatrix and name it by its file name: llama-quantize records the path
        # as given in quantize.imatrix.file, and a published file should not carry a local path.
        cwd = str(Path(cov.path).resolve().parent)
        cmd += ["--imatrix", Path(cov.path).name]
    for rule in jt.rules:
        cmd += ["--tensor-type", rule.arg]
    if inp.mtp_layers:
        cmd += ["--override-kv", f"mtpgraft.quantize.mtp_type=str:{jt.policy}"]
    if cov is not None and cov.dataset_sha256:
        cmd += ["--override-kv", f"mtpgraft.imatrix.dataset_sha256=str:{cov.dataset_sha256}"]
    cmd += [str(inp.src.path.resolve()), str(tmp), qt] + ([str(threads)] if threads is not None else [])
    spec = OutputSpec(quant_type=qt, file_type=FILE_TYPES[qt], tensor_names=frozenset(r.name for r in inp.src.refs),
                      mtp_present=bool(inp.mtp_layers), mtp_layers=inp.mtp_layers, mtp_types=jt.exact,
                      mtp_quantized=jt.must_quantize, imatrix=cov is not None, layout=inp.layout)
    return QuantizeJob(quant_type=qt, mtp_type=jt.policy, single_path=str(single), split_dir=str(split_dir),
                       tmp_path=str(tmp), command=tuple(cmd), cwd=cwd, mtp_rules=jt.rules, expect=spec,
                       warnings=jt.warnings)


# --------------------------------------------------------------------------- verification


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


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class OutputResult:
    quant_type: str
    status: str  # "done", "skipped" (existed and verified), "failed"
    path: str | None  # the file llama-server gets (first shard of a split set)
    files: tuple[str, ...] = ()
    bytes: int = 0
    seconds: float = 0.0
    split: bool = False
    reason: str = ""
    problems: tuple[str, ...] = ()
    mtp_types: tuple[tuple[str, str], ...] = ()
    log: str | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")


@dataclass(frozen=True)
class QuantizeResult:
    plan: QuantizePlan
    outputs: tuple[OutputResult, ...]
    wall_s: float
    tool_s: float  # time inside llama-quantize / llama-gguf-split

    @property
    def failed(self) -> tuple[OutputResult, ...]:
        return tuple(o for o in self.outputs if not o.ok)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "outputs": [asdict(o) for o in self.outputs],
                "wall_s": round(self.wall_s, 3), "tool_s": round(self.tool_s, 3), "ok": self.ok,
                "mtpgraft_version": __version__}


def _failure_reason(e: ToolFailedError) -> str:
    for line in reversed(e.output_tail.splitlines()):
        m = re.search(r"failed to quantize: (.*)", line)
        if m:
            return m.group(1).strip()
    for line in reversed(e.output_tail.splitlines()):
        if re.search(r"error|ERROR|failed", line):
            return line.strip()[:300]
    return str(e)


def _rm(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


class _Runner:
    def __init__(self, plan: QuantizePlan, on_event: Event | None, log_dir: Path | None) -> None:
        self.plan = plan
        self.emit = on_event or (lambda t, m: None)
        self.log_dir = log_dir
        self.tool_s = 0.0

    def _tool(self, cmd: Sequence[str], cwd: str | None, log_name: str) -> str:
        from .tools import run_tool

        t0 = time.perf_counter()
        try:
            proc = run_tool(list(cmd), cwd=cwd, tail_lines=40)
            output = proc.stdout
        except ToolFailedError as e:
            self._write_log(log_name, e.output_tail)
            raise
        finally:
            self.tool_s += time.perf_counter() - t0
        self._write_log(log_name, output)
        return output

    def _write_log(self, name: str, text: str) -> None:
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / name).write_text(text, encoding="utf-8", errors="replace")

    def run(self, job: QuantizeJob) -> OutputResult:
        t0 = time.perf_counter()
        qt, plan = job.quant_type, self.plan
        log_name = f"{plan.name}-{qt}.log"
        log_path = str(self.log_dir / log_name) if self.log_dir is not None else None
        existing = existing_output(job, plan.name)
        if existing is not None and not plan.force:
            return self._existing(job, existing, t0)
        try:
            Path(plan.out_dir).mkdir(parents=True, exist_ok=True)
            with PendingOutput(job.single_path, tmp=job.tmp_path) as tmp:
                self.emit(qt, "quantizing")
                try:
                    self._tool(job.command, job.cwd, log_name)
                except ToolFailedError as e:
                    return self._tool_failed(job, e, tmp.path, t0, log_path)
                v = verify_output(tmp.path, job.expect)
                if not v.ok:
                    self.emit(qt, f"FAILED verification: {'; '.join(v.problems)}")
                    return OutputResult(qt, "failed", None, reason="bad output removed: " + "; ".join(v.problems),
                                        problems=v.problems, seconds=time.perf_counter() - t0, log=log_path)
                if plan.split_max_bytes is not None and tmp.path.stat().st_size > plan.split_max_bytes:
                    final = self._split(job, log_name)
                    if final is not None:
                        v = verify_output(final, job.expect)
                        return self._result(job, "done", v, t0, split=True, log=log_path)
                self._claim(Path(job.split_dir))
                tmp.install(force=plan.force)
            v = verify_output(job.single_path, job.expect)
            return self._result(job, "done", v, t0, log=log_path)
        except (ToolFailedError, QuantizeError, OutputExistsError, OutputWriteError) as e:
            self.emit(qt, "FAILED: " + e.text)
            return OutputResult(qt, "failed", None, reason=e.text, seconds=time.perf_counter() - t0,
                                log=log_path)

    def _existing(self, job: QuantizeJob, existing: Path, t0: float) -> OutputResult:
        """An output already in place (no force): skipped when it verifies, else a failure."""
        qt = job.quant_type
        v = verify_output(existing, job.expect) if existing.is_file() else Verification(
            str(existing), False, ("a folder without a first shard",))
        if v.ok:
            self.emit(qt, f"exists and verifies: {_rel(existing)} (skipped)")
            return self._result(job, "skipped", v, t0, split=existing.parent == Path(job.split_dir))
        msg = Text(f"{existing} exists but fails verification ({'; '.join(v.problems)}); pass ",
                   Setting("force", True), " to redo it")
        self.emit(qt, "FAILED: " + msg)
        return OutputResult(qt, "failed", None, reason=msg, problems=v.problems, seconds=time.perf_counter() - t0)

    def _tool_failed(self, job: QuantizeJob, e: ToolFailedError, tmp: Path, t0: float,
                     log_path: str | None) -> OutputResult:
        """llama-quantize failed: its own reason, or that the disk is full."""
        reason = f"llama-quantize: {_failure_reason(e)}"
        if disk_full(self.plan.out_dir):
            reason = str(no_space_error(job.single_path, tmp.stat().st_size if tmp.is_file() else None))
        self.emit(job.quant_type, f"FAILED: {reason}")
        return OutputResult(job.quant_type, "failed", None, reason=reason, seconds=time.perf_counter() - t0,
                            log=log_path)

    def _split(self, job: QuantizeJob, log_name: str) -> Path | None:
        plan = self.plan
        dest = Path(job.split_dir)
        with PendingOutput(dest, tmp=Path(plan.out_dir) / f".{job.quant_type}.partial", folder=True) as st:
            self.emit(job.quant_type, f"splitting at {plan.split_max_size}")
            self._tool(job.split_command(plan, str(st.path)), None, log_name.replace(".log", "-split.log"))
            shards = sorted(st.path.glob("*.gguf"))
            if len(shards) <= 1:  # llama-gguf-split counts tensor bytes only: it may not need to split
                return None
            v = verify_output(shards[0], job.expect)
            if not v.ok:
                raise QuantizeError(f"the split set is bad ({'; '.join(v.problems)}); removed")
            if len(v.files) != len(shards):
                raise QuantizeError(f"llama-gguf-split wrote {len(shards)} files but the set has {len(v.files)}")
            self._claim(Path(job.single_path))
            st.install(force=plan.force)
        return dest / shards[0].name

    def _claim(self, other: Path) -> None:
        """One type has one output: a single file or a split folder. Installing one removes the
        other with --force and is refused without it (the target itself is guarded by install())."""
        if other.exists() and not self.plan.force:
            raise OutputExistsError(f"{other} appeared meanwhile; pass ", Setting("force", True))
        _rm(other)

    def _result(self, job: QuantizeJob, status: str, v: Verification, t0: float, *, split: bool = False,
                log: str | None = None) -> OutputResult:
        if not v.ok:  # an installed output that no longer verifies: never count it
            return OutputResult(job.quant_type, "failed", None, reason="; ".join(v.problems),
                                problems=v.problems, seconds=time.perf_counter() - t0, log=log)
        res = OutputResult(job.quant_type, status, v.files[0], v.files, v.bytes, time.perf_counter() - t0,
                           split, mtp_types=v.mtp_types, log=log)
        if status == "done":
            where = _rel(Path(v.files[0])) + (f" (+{len(v.files) - 1} shards)" if len(v.files) > 1 else "")
            self.emit(job.quant_type, f"done: {where}, {v.bytes / 1e6:.1f} MB, {res.seconds:.1f}s")
        return res


def _rel(p: Path) -> str:
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def run_quantize(plan: QuantizePlan, *, on_event: Event | None = None,
                 on_result: Callable[[OutputResult], None] | None = None,
                 log_dir: str | os.PathLike[str] | None = None) -> QuantizeResult:
    """Run every job of the plan (plan.jobs_n at a time); a failed type does not stop the others.

    Returns every type's result; the caller decides what a failure means (the CLI exits 1)."""
    t0 = time.perf_counter()
    runner = _Runner(plan, on_event, Path(log_dir) if log_dir is not None else None)

    def one(job: QuantizeJob) -> OutputResult:
        r = runner.run(job)
        if on_result is not None:
            on_result(r)
        return r

    if plan.jobs_n <= 1 or len(plan.jobs) <= 1:
        results = [one(j) for j in plan.jobs]
    else:
        with ThreadPoolExecutor(max_workers=plan.jobs_n, thread_name_prefix="quantize") as ex:
            results = list(ex.map(one, plan.jobs))
    return QuantizeResult(plan, tuple(results), time.perf_counter() - t0, runner.tool_s)
