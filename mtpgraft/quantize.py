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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from . import __version__, naming
from .arch import ASSISTANT_ARCH
from .errors import GGUFFormatError, OutputExistsError, QuantizeError, ToolFailedError
from .gguf_io import GGUFModel
from .inspection import analyse, inspect_model
from .tools import find_tool, format_cmd

log = logging.getLogger("mtpgraft")
Q = GGMLQuantizationType

# llama-quantize's file types (tools/quantize/quantize.cpp QUANT_OPTIONS) -> llama_ftype value,
# which llama-quantize writes to general.file_type.
FTYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
    "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16,
    "Q5_K_M": 17, "Q6_K": 18, "IQ2_XXS": 19, "IQ2_XS": 20, "Q2_K_S": 21, "IQ3_XS": 22,
    "IQ3_XXS": 23, "IQ1_S": 24, "IQ4_NL": 25, "IQ3_S": 26, "IQ3_M": 27, "IQ2_S": 28, "IQ2_M": 29,
    "IQ4_XS": 30, "IQ1_M": 31, "BF16": 32, "TQ1_0": 36, "TQ2_0": 37, "MXFP4_MOE": 38,
    "Q1_0": 40, "Q2_0": 41,
}
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
FLOAT_FTYPES = frozenset({"F32", "F16", "BF16"})
# File types llama-quantize refuses to make without an imatrix ("this quantization requires an
# imatrix!") and, with one, aborts on the MTP block it does not cover. Measured on llama.cpp 0c1e570
# over every type in QUANT_OPTIONS (BENCHMARKS.md); they are the types whose mixture holds
# IQ1_S/IQ1_M/IQ2_XXS/IQ2_XS/IQ2_S/IQ3_XXS tensors, or Q2_K tensors inside Q2_K_S.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS",
                           "IQ3_XS", "Q2_K_S"})
# ggml tensor types that llama-quantize refuses to make without importance data for the tensor.
_TENSOR_NEEDS_IMATRIX = frozenset({Q.IQ1_S, Q.IQ1_M, Q.IQ2_XXS, Q.IQ2_XS, Q.IQ2_S, Q.IQ3_XXS})
# ggml tensor types whose quantization ignores an importance matrix anyway.
_UNWEIGHTED_TYPES = frozenset({Q.Q8_0, Q.F16, Q.BF16, Q.F32})
_FLOAT_TENSOR_TYPES = frozenset({Q.F32, Q.F16, Q.BF16})
# gguf-py knows these ggml types but llama.cpp 0c1e570 no longer makes them (or never as a target).
_NOT_TARGETS = {"Q4_2", "Q4_3", "Q8_1", "Q8_K", "I8", "I16", "I32", "I64", "F64", "Q4_0_4_4",
                "Q4_0_4_8", "Q4_0_8_8", "IQ4_NL_4_4", "IQ4_NL_4_8", "IQ4_NL_8_8"}

DEFAULT_MTP_TYPE = "q8_0"
MTP_POLICIES = ("q8_0", "match")
# llama.cpp's own words for --allow-requantize (tools/quantize/quantize.cpp usage()).
REQUANTIZE_WARNING = ("requantizing tensors that have already been quantized: this can severely "
                      "reduce quality compared to quantizing from 16bit or 32bit!")
# `llama-server -hf` skips files whose names contain these (common/download.cpp).
_SIZE_RE = re.compile(r"^([1-9]\d*)([MG])$")

Event = Callable[[str, str], None]  # (quant type, message)


# --------------------------------------------------------------------------- parsing helpers


def canonical_type(name: str) -> str:
    """A llama-quantize file type name in its canonical spelling (Q4_K -> Q4_K_M)."""
    up = name.strip().upper()
    up = ALIASES.get(up, up)
    if up not in FTYPES:
        raise QuantizeError(f"unknown quant type {name!r}; llama-quantize knows "
                            f"{', '.join(FTYPES)}")
    return up


def parse_types(types: str | Sequence[str]) -> tuple[str, ...]:
    """'Q4_K_M,Q8_0' or a list -> canonical names, in order, without duplicates."""
    items = types.split(",") if isinstance(types, str) else [x for t in types for x in str(t).split(",")]
    out = [canonical_type(t) for t in items if t.strip()]
    if not out:
        raise QuantizeError("no quant types given (e.g. --types Q4_K_M,Q8_0)")
    return tuple(dict.fromkeys(out))


def parse_size(text: str) -> int:
    """llama-gguf-split's --split-max-size syntax: an integer and M or G (decimal units)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise QuantizeError(f"split size {text!r} is not N followed by M or G (e.g. 50G, 500M), "
                            "the units llama-gguf-split takes")
    return int(m.group(1)) * (10**6 if m.group(2) == "M" else 10**9)


def ggml_type(name: str, *, what: str = "--mtp-type") -> Q:
    try:
        t = Q[name.strip().upper()]
    except KeyError:
        t = None
    if t is None or t.name in _NOT_TARGETS:
        known = ", ".join(x.name.lower() for x in Q if x.name not in _NOT_TARGETS)
        raise QuantizeError(f"{what} {name!r} is not q8_0, match or a ggml tensor type ({known})")
    return t


def default_name(path: str | os.PathLike[str]) -> str:
    """The output name stem: the input's file name without .gguf, shard suffix or float tag."""
    return naming.model_stem(Path(path).name)


def name_problem(name: str, *, sidecar: bool = False) -> str | None:
    """What is wrong with an output name stem, or None (the validator recipes use too). A `sidecar`
    (an MTP-only file or a gemma4-assistant) may, and should, carry the `mtp-` prefix `-hf` looks for."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
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
        raise QuantizeError(f"--name {problem}")


def check_mtp_policy(value: str, *, what: str = "--mtp-type") -> str:
    """An MTP type policy (q8_0, match or a ggml tensor type), normalized; QuantizeError if not one."""
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


def llama_quantizes(name: str, ne: Sequence[int]) -> bool:
    """Whether llama-quantize gives this tensor a quantized type (llama-quant.cpp
    tensor_allows_quantization, for the architectures mtpgraft handles)."""
    if len(ne) < 2 or not name.endswith("weight") or "_norm.weight" in name:
        return False
    skip = ("ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel", "per_layer_model_proj",
            "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight", "indexer.q_proj.weight",
            "time_mix_")
    return not any(s in name for s in skip) and name not in ("position_embd.weight", "token_types.weight")


def _row_fits(t: Q, ne0: int) -> bool:
    return ne0 % GGML_QUANT_SIZES[t][0] == 0


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

    def split_prefix(self, name: str) -> str:
        return str(Path(self.split_dir) / f"{name}-{self.quant_type}")

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
            lines.append(f"  warning: {w}")
        return "\n".join(lines)


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
                            "tensors of the same names); quantize it without --imatrix")
    needing = [t for t in quant_types if t in NEEDS_IMATRIX]
    if needing:
        raise QuantizeError(f"{', '.join(needing)} need(s) an importance matrix, which a gemma4-assistant "
                            "cannot have (llama-imatrix cannot run it): use Q8_0, Q6_K, Q4_K_M or IQ4_XS")


def plan_quantize(model: str | os.PathLike[str], types: str | Sequence[str], *,
                  out_dir: str | os.PathLike[str] | None = None, name: str | None = None,
                  imatrix: str | os.PathLike[str] | None = None,
                  mtp_type: str | Mapping[str, str] | None = None,
                  split_max_size: str | None = None, allow_requantize: bool = False,
                  jobs: int = 1, threads: int | None = None, force: bool = False,
                  llama_cpp: str | os.PathLike[str] | None = None) -> QuantizePlan:
    """Check MODEL and the options, and return the plan with the exact commands. Headers only."""
    quant_types = parse_types(types)
    if jobs < 1:
        raise QuantizeError(f"--jobs must be >= 1, got {jobs}")
    if threads is not None and threads < 1:
        raise QuantizeError(f"--threads must be >= 1, got {threads}")
    src = GGUFModel(model)
    rep = inspect_model(src.path, src)
    if not rep.consistent:
        raise QuantizeError(f"{src.path.name} is inconsistent, llama.cpp would not load it: "
                            f"{'; '.join(rep.problems)} (see `mtpgraft inspect`)")
    st = analyse(src)
    if src.arch == ASSISTANT_ARCH:
        _check_assistant(src.path.name, imatrix, quant_types)
        mtp_type = mtp_type or "match"  # the assistant is all head: the file type applies to all of it
    mtp_layers = tuple(rep.mtp_layers) if rep.mtp_present else ()
    mtp_prefixes = tuple(f"blk.{i}." for i in mtp_layers)
    name = name or default_name(src.path)
    check_name(name, sidecar=rep.layout == "mtp-only")
    out = (Path(out_dir) if out_dir is not None else src.path.parent).absolute()
    if out.exists() and not out.is_dir():
        raise QuantizeError(f"--out-dir {out} is a file")
    split_bytes = parse_size(split_max_size) if split_max_size else None

    cov = read_imatrix_coverage(imatrix) if imatrix is not None else None
    mtp_weights = [r for r in src.refs if r.name.startswith(mtp_prefixes) and llama_quantizes(r.name, r.info.ne)]
    covers_mtp = bool(cov and mtp_weights and all(cov.covers(r.name) for r in mtp_weights))
    quantizer = str(find_tool("llama-quantize", llama_cpp))
    splitter = str(find_tool("llama-gguf-split", llama_cpp)) if split_bytes else None
    if threads is None and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)

    warnings: list[str] = []
    if cov is not None and cov.format == "dat":
        warnings.append(f"{Path(cov.path).name} is in the legacy .dat format: its MTP coverage is not "
                        "checked (llama-imatrix never covers the MTP block)")
    names = frozenset(r.name for r in src.refs)
    quantized_in = [r for r in src.refs if llama_quantizes(r.name, r.info.ne)
                    and Q(r.info.ggml_type) not in _FLOAT_TENSOR_TYPES]

    plan_jobs: list[QuantizeJob] = []
    requant: Counter[str] = Counter()
    for qt in quant_types:
        jw: list[str] = []
        if qt in NEEDS_IMATRIX and cov is None:
            raise QuantizeError(f"{qt} needs an importance matrix (llama-quantize refuses it without one): "
                                "pass --imatrix FILE (make one with `mtpgraft imatrix`)")
        policy = mtp_policy_for(mtp_type, qt) if mtp_layers else "none"
        rules: list[MtpRule] = []
        exact: dict[str, str] = {}
        must_quantize: list[str] = []
        target: Q | None = None
        if policy == "match":
            if qt in NEEDS_IMATRIX and not covers_mtp:
                raise QuantizeError(
                    f"--mtp-type match cannot make {qt}: its mixture needs importance data for the MTP "
                    f"block ({', '.join(f'blk.{i}' for i in mtp_layers)}), which the imatrix lacks "
                    "(llama-imatrix never runs it); use --mtp-type q8_0 or a type such as q6_k")
            if cov is not None and not covers_mtp:
                jw.append(f"{qt}: the MTP block is quantized by llama.cpp's {qt} mixture without importance "
                          "data (--mtp-type match)")
            if qt not in FLOAT_FTYPES:
                must_quantize = [r.name for r in mtp_weights]
        elif policy != "none":
            target = ggml_type(policy)
            needs = target in _TENSOR_NEEDS_IMATRIX or (target == Q.Q2_K and qt == "Q2_K_S")
            if needs and not covers_mtp:
                raise QuantizeError(
                    f"--mtp-type {policy} needs importance data for the MTP block, which the imatrix "
                    "lacks (llama-imatrix never runs it); use q8_0, q6_k, q4_k or iq4_xs")
            if cov is not None and not covers_mtp and target not in _UNWEIGHTED_TYPES:
                jw.append(f"{qt}: MTP tensors get {target.name} without importance data (chosen with "
                          "--mtp-type; the imatrix has no entries for the MTP block)")
            for i in mtp_layers:
                rules.append(MtpRule(rf"^blk\.{i}\.", target.name.lower()))
            for r in mtp_weights:
                if qt in FLOAT_FTYPES:
                    continue  # overrides only apply when the file type is a quantized one
                if _row_fits(target, r.info.ne[0]):
                    exact[r.name] = target.name
        # Already-quantized input tensors that will change type need --allow-requantize.
        for r in quantized_in:
            cur = Q(r.info.ggml_type)
            if r.name.startswith(mtp_prefixes) and target is not None and qt not in FLOAT_FTYPES:
                if cur == target:
                    continue
            requant[cur.name] += 1
        single, split_dir = output_names(out, name, qt)
        tmp = out / f".{name}-{qt}.gguf.partial"
        cmd: list[str] = [quantizer]
        if allow_requantize:
            cmd.append("--allow-requantize")
        cwd = None
        if cov is not None:
            # Run beside the imatrix and name it by its file name: llama-quantize records the path
            # as given in quantize.imatrix.file, and a published file should not carry a local path.
            cwd = str(Path(cov.path).resolve().parent)
            cmd += ["--imatrix", Path(cov.path).name]
        for rule in rules:
            cmd += ["--tensor-type", rule.arg]
        if mtp_layers:
            cmd += ["--override-kv", f"mtpgraft.quantize.mtp_type=str:{policy}"]
        if cov is not None and cov.dataset_sha256:
            cmd += ["--override-kv", f"mtpgraft.imatrix.dataset_sha256=str:{cov.dataset_sha256}"]
        if any(single.resolve() == Path(f).resolve() for f in src.paths):
            raise QuantizeError(f"the {qt} output {single} would overwrite the input; pass another --name")
        cmd += [str(src.path.resolve()), str(tmp), qt]
        if threads is not None:
            cmd.append(str(threads))
        spec = OutputSpec(quant_type=qt, file_type=FTYPES[qt], tensor_names=names,
                          mtp_present=bool(mtp_layers), mtp_layers=mtp_layers,
                          mtp_types=tuple(sorted(exact.items())), mtp_quantized=tuple(must_quantize),
                          imatrix=cov is not None, layout=rep.layout)
        plan_jobs.append(QuantizeJob(quant_type=qt, mtp_type=policy, single_path=str(single),
                                     split_dir=str(split_dir), tmp_path=str(tmp),
                                     command=tuple(cmd), cwd=cwd, mtp_rules=tuple(rules), expect=spec,
                                     warnings=tuple(jw)))
        warnings += jw

    requant_list = tuple(f"{n} x {t}" for t, n in sorted(requant.items()))
    if requant and not allow_requantize:
        raise QuantizeError(
            f"{src.path.name} holds already-quantized tensors ({', '.join(requant_list)} over the batch) "
            "that would change type; llama-quantize refuses that unless you pass --allow-requantize "
            f"(llama.cpp: {REQUANTIZE_WARNING.split(': ', 1)[1]}) — better, quantize from the F16/BF16 file")
    if requant:
        warnings.insert(0, REQUANTIZE_WARNING)
    if not mtp_layers:
        warnings.append(f"{src.path.name} has no MTP block: quantizing the trunk only (attach a head "
                        "afterwards with `mtpgraft attach`)")
    return QuantizePlan(
        input=str(src.path), input_files=tuple(str(p) for p in src.paths), arch=st.arch,
        input_file_type=rep.file_type, mtp_layers=mtp_layers, tensor_count=len(src.refs), name=name,
        out_dir=str(out), imatrix=str(cov.path) if cov else None, imatrix_covers_mtp=covers_mtp,
        split_max_size=split_max_size.strip() if split_max_size else None, split_max_bytes=split_bytes,
        allow_requantize=allow_requantize, requantize=requant_list, threads=threads, jobs_n=jobs,
        force=force, llama_quantize=quantizer, llama_gguf_split=splitter, jobs=tuple(plan_jobs),
        warnings=tuple(dict.fromkeys(warnings)))


# --------------------------------------------------------------------------- verification


@dataclass(frozen=True)
class Verification:
    path: str
    ok: bool
    problems: tuple[str, ...]
    files: tuple[str, ...] = ()
    bytes: int = 0
    mtp_types: tuple[tuple[str, str], ...] = ()


def _zero_data(model: GGUFModel, names: Sequence[str]) -> list[str]:
    """Tensors whose first bytes are all zero: a quantized weight never starts with a zero block."""
    bad = []
    for n in names:
        r = model.by_name.get(n)
        if r is None or Q(r.info.ggml_type) in _FLOAT_TENSOR_TYPES:
            continue
        with open(r.path, "rb") as f:
            f.seek(r.abs_offset)
            head = f.read(min(r.info.nbytes, 512))
        if head and not any(head):
            bad.append(n)
    return bad


def verify_output(path: str | os.PathLike[str], expect: OutputSpec) -> Verification:
    """Check one output (a file or a split set's first shard) against what the plan promised."""
    p = Path(path)
    try:
        model = GGUFModel(p)
    except GGUFFormatError as e:
        return Verification(str(p), False, (str(e),))
    problems: list[str] = []
    files = tuple(str(x) for x in model.paths)
    size = sum(x.stat().st_size for x in model.paths)
    names = {r.name for r in model.refs}
    if len(model.refs) != len(expect.tensor_names):
        problems.append(f"{len(model.refs)} tensors, the input has {len(expect.tensor_names)}")
    missing = sorted(expect.tensor_names - names)
    extra = sorted(names - expect.tensor_names)
    if missing:
        problems.append(f"tensors missing: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
    if extra:
        problems.append(f"unexpected tensors: {', '.join(extra[:5])}")
    ft = model.get("general.file_type")
    if ft is None or int(ft) != expect.file_type:
        problems.append(f"general.file_type is {ft}, expected {expect.file_type} ({expect.quant_type})")
    rep = inspect_model(p, model)
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
        if n in got and Q[got[n]] in _FLOAT_TENSOR_TYPES:
            problems.append(f"{n} was left {got[n]}, expected a quantized type")
    if expect.imatrix and "quantize.imatrix.file" not in model.kv:
        problems.append("quantize.imatrix.file is missing: the imatrix was not applied")
    if not problems:
        check = [n for n, _ in expect.mtp_types] + [r.name for r in model.refs[:1] + model.refs[-1:]]
        zero = _zero_data(model, check)
        if zero:
            problems.append(f"tensor data is zeroed: {', '.join(zero[:3])}")
    mtp_types = tuple((t.name, t.type) for t in rep.mtp_tensors)
    return Verification(str(p), not problems, tuple(problems), files, size, mtp_types)


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
    sha256: tuple[tuple[str, str], ...] = ()
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
    extra: dict[str, Any] = field(default_factory=dict)

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
    def __init__(self, plan: QuantizePlan, on_event: Event | None, log_dir: Path | None,
                 hash_outputs: bool) -> None:
        self.plan = plan
        self.emit = on_event or (lambda t, m: None)
        self.log_dir = log_dir
        self.hash_outputs = hash_outputs
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
            v = verify_output(existing, job.expect) if existing.is_file() else Verification(
                str(existing), False, ("a folder without a first shard",))
            if v.ok:
                self.emit(qt, f"exists and verifies: {_rel(existing)} (skipped)")
                return self._result(job, "skipped", v, t0, split=existing.parent == Path(job.split_dir))
            msg = f"{existing} exists but fails verification ({'; '.join(v.problems)}); pass --force to redo it"
            self.emit(qt, f"FAILED: {msg}")
            return OutputResult(qt, "failed", None, reason=msg, problems=v.problems,
                                seconds=time.perf_counter() - t0)
        tmp = Path(job.tmp_path)
        _rm(tmp)  # a stale partial from an interrupted run is ours to replace
        split_tmp = Path(plan.out_dir) / f".{qt}.partial"
        try:
            Path(plan.out_dir).mkdir(parents=True, exist_ok=True)
            self.emit(qt, "quantizing")
            try:
                self._tool(job.command, job.cwd, log_name)
            except ToolFailedError as e:
                reason = _failure_reason(e)
                self.emit(qt, f"FAILED: llama-quantize: {reason}")
                return OutputResult(qt, "failed", None, reason=f"llama-quantize: {reason}",
                                    seconds=time.perf_counter() - t0, log=log_path)
            v = verify_output(tmp, job.expect)
            if not v.ok:
                self.emit(qt, f"FAILED verification: {'; '.join(v.problems)}")
                return OutputResult(qt, "failed", None, reason="bad output removed: " + "; ".join(v.problems),
                                    problems=v.problems, seconds=time.perf_counter() - t0, log=log_path)
            size = tmp.stat().st_size
            if plan.split_max_bytes is not None and size > plan.split_max_bytes:
                final = self._split(job, split_tmp, log_name)
                if final is not None:
                    v = verify_output(final, job.expect)
                    return self._result(job, "done", v, t0, split=True, log=log_path)
            self._install_single(job, tmp)
            v = verify_output(job.single_path, job.expect)
            return self._result(job, "done", v, t0, log=log_path)
        except (ToolFailedError, QuantizeError, OutputExistsError) as e:
            self.emit(qt, f"FAILED: {e}")
            return OutputResult(qt, "failed", None, reason=str(e), seconds=time.perf_counter() - t0,
                                log=log_path)
        finally:
            _rm(tmp)
            _rm(split_tmp)

    def _split(self, job: QuantizeJob, split_tmp: Path, log_name: str) -> Path | None:
        plan = self.plan
        _rm(split_tmp)
        split_tmp.mkdir(parents=True)
        self.emit(job.quant_type, f"splitting at {plan.split_max_size}")
        self._tool(job.split_command(plan, str(split_tmp)), None, log_name.replace(".log", "-split.log"))
        shards = sorted(split_tmp.glob("*.gguf"))
        if len(shards) <= 1:  # llama-gguf-split counts tensor bytes only: it may not need to split
            return None
        first = shards[0]
        v = verify_output(first, job.expect)
        if not v.ok:
            raise QuantizeError(f"the split set is bad ({'; '.join(v.problems)}); removed")
        if len(v.files) != len(shards):
            raise QuantizeError(f"llama-gguf-split wrote {len(shards)} files but the set has {len(v.files)}")
        dest = Path(job.split_dir)
        single = Path(job.single_path)
        if (dest.exists() or single.exists()) and not plan.force:
            raise OutputExistsError(f"{dest if dest.exists() else single} appeared meanwhile; pass --force")
        _rm(dest)
        _rm(single)
        os.rename(split_tmp, dest)
        return dest / first.name

    def _install_single(self, job: QuantizeJob, tmp: Path) -> None:
        single, dest = Path(job.single_path), Path(job.split_dir)
        if (single.exists() or dest.exists()) and not self.plan.force:
            raise OutputExistsError(f"{single if single.exists() else dest} appeared meanwhile; pass --force")
        if dest.exists():
            _rm(dest)
        os.chmod(tmp, 0o644)
        os.replace(tmp, single)

    def _result(self, job: QuantizeJob, status: str, v: Verification, t0: float, *, split: bool = False,
                log: str | None = None) -> OutputResult:
        if not v.ok:  # an installed output that no longer verifies: never count it
            return OutputResult(job.quant_type, "failed", None, reason="; ".join(v.problems),
                                problems=v.problems, seconds=time.perf_counter() - t0, log=log)
        sha: tuple[tuple[str, str], ...] = ()
        if self.hash_outputs:
            from .hashing import sha256_file

            sha = tuple((f, sha256_file(f)) for f in v.files)
        res = OutputResult(job.quant_type, status, v.files[0], v.files, v.bytes, time.perf_counter() - t0,
                           split, mtp_types=v.mtp_types, sha256=sha, log=log)
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
                 log_dir: str | os.PathLike[str] | None = None,
                 hash_outputs: bool = False) -> QuantizeResult:
    """Run every job of the plan (plan.jobs_n at a time); a failed type does not stop the others.

    Returns every type's result; the caller decides what a failure means (the CLI exits 1)."""
    t0 = time.perf_counter()
    runner = _Runner(plan, on_event, Path(log_dir) if log_dir is not None else None, hash_outputs)

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
