"""Planning a quantize batch from headers only: every check, each type's MTP decisions, and the
frozen QuantizePlan with the exact llama-quantize and llama-gguf-split commands."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .. import ggml_types
from ..arch import rule_for
from ..errors import GGUFFormatError, QuantizeError, QuantizeOptionError, Setting, Text
from ..ggml_types import (
    FLOAT_FILE_TYPES,
    file_types,
    file_types_need_imatrix,
    llama_quantizes,
    type_name,
)
from ..gguf_io import GGUFFile, GGUFModel, TensorRef
from ..inspection import inspect_model
from ..llama_quantize import QuantizeTools, quantize_argv, resolve_quantize_tools
from ..runtimes import IK, LABELS, MAINLINE
from ..tools import format_cmd
from .options import (
    REQUANTIZE_WARNING,
    check_name,
    default_name,
    ggml_type,
    mtp_policy_for,
    output_names,
    parse_size,
    parse_types,
)


@dataclass(frozen=True)
class ImatrixCoverage:
    path: str
    format: str  # "gguf" or "dat"
    entries: frozenset[str]  # tensor names with importance data (gguf format only)
    dataset_sha256: str | None  # recorded by `mtpgraft imatrix`
    # entry -> its number of values (in_sum2's elements: a row length per matrix, as llama-quantize reads it)
    sizes: tuple[tuple[str, int], ...] = ()

    def covers(self, tensor: str) -> bool:
        return tensor in self.entries


def read_imatrix_coverage(path: str | os.PathLike[str]) -> ImatrixCoverage:
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
    sizes = tuple((t.name[: -len(".in_sum2")], math.prod(t.ne)) for t in g.tensors if t.name.endswith(".in_sum2") and t.ne)
    return ImatrixCoverage(str(p), "gguf", entries, str(sha) if sha else None, sizes)


def check_imatrix_fits(cov: ImatrixCoverage, model: GGUFModel) -> None:
    """Every entry names a tensor of the model and has its size, llama-quantize's rule: ne[0] x ne[2]
    values (a row length per expert, or per head of MLA's 3-D attn_k_b / attn_v_b), else it aborts;
    names it lacks it silently ignores (an imatrix of another model)."""
    if cov.format != "gguf":
        return
    lacking = sorted(e for e in cov.entries if e not in model.by_name)
    if lacking:
        raise QuantizeError(f"imatrix {Path(cov.path).name} is not for {model.path.name}: {len(lacking)} of its "
                            f"{len(cov.entries)} entries name tensors the model lacks (e.g. {lacking[0]})")
    for name, size in cov.sizes:
        ne = model.by_name[name].info.ne
        mats = ne[2] if len(ne) > 2 else 1
        if ne and size != ne[0] * mats:
            if why := _reshaped_refusal(model.arch, name, size, ne[0] if mats == 1 else 0):
                raise QuantizeError(f"{model.path.name}: {why}")
            want = f"columns, the tensor's rows {ne[0]}" if mats == 1 else f"values, the tensor's {ne[0]} x {mats}"
            raise QuantizeError(f"imatrix {Path(cov.path).name} is not for {model.path.name}: its {name} entry "
                                f"has {size} {want}")


def _reshaped_refusal(arch: str, name: str, size: int, rows: int) -> str:
    """The architecture's imatrix_refused where an entry that does not fit is one its loader reshapes:
    a tensor named in imatrix_reshaped, 2-D in the file (`rows`: its ne[0], 0 for 3-D), with ne[0] x k
    values for some k > 1 (the matrices llama-imatrix saw at run time); else ''."""
    rule = rule_for(arch)
    if rule is None or not (rows > 0 and size % rows == 0 and size // rows > 1):
        return ""
    return rule.imatrix_refused if name.endswith(rule.imatrix_reshaped) else ""


@dataclass(frozen=True)
class MtpRule:
    """One `--tensor-type REGEX=TYPE` rule (llama-quantize lower-cases the regex; first match wins);
    ik_llama.cpp's llama-quantize takes them as one `--custom-q REGEX=TYPE,...` list."""

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
    runtime: str = MAINLINE  # whose llama-quantize runs (its file types, its spelling)

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


def _check_drafter(name: str, arch: str, imatrix: object, quant_types: Sequence[str]) -> None:
    """A drafter (a gemma4-assistant) has no importance matrix: llama-imatrix cannot run it (it needs its target's
    context), and its target's imatrix holds entries under the same names (blk.0.attn_q ...) sized for
    the target's width, which llama-quantize rejects ("imatrix size N is different from tensor size")
    or, were the widths equal, would apply to the wrong weights."""
    if imatrix is not None:
        raise QuantizeError(f"{name} is a {arch}: no imatrix applies to it (llama-imatrix "
                            "cannot run an assistant, and its target's imatrix describes the target's "
                            "tensors of the same names); quantize it without ", Setting("imatrix"))
    needing = [t for t in quant_types if t in file_types_need_imatrix(MAINLINE) | file_types_need_imatrix(IK)]
    if needing:
        raise QuantizeError(f"{', '.join(needing)} need(s) an importance matrix, which a {arch} "
                            "cannot have (llama-imatrix cannot run it): use Q8_0, Q6_K, Q4_K_M or IQ4_XS")


def _check_mtp_types(mtp_type: str | Mapping[str, str] | None) -> None:
    """Every MTP policy given (one, or one per quant type) is valid: UsageError (exit 2) otherwise."""
    if mtp_type is None:
        return
    for v in [mtp_type] if isinstance(mtp_type, str) else list(mtp_type.values()):
        ggml_type(str(v))


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
    runtime: str = MAINLINE

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
                  tools: QuantizeTools | None = None, runtime: str = MAINLINE) -> QuantizePlan:
    """Check MODEL and the options, and return the plan with the exact commands. Headers only.

    `runtime` is whose llama-quantize runs: its file types (ik_llama.cpp's IQ4_KS, IQ4_KT, ...), its
    imatrix rules, its spelling of the MTP rules. Every check runs before a tool is looked up: `tools`
    if given, else resolved once from `llama_cpp` at the end, so a usage mistake is never hidden by
    "tool not found"."""
    quant_types = parse_types(types, runtime)
    _check_counts(jobs, threads)
    _check_mtp_types(mtp_type)
    inp = replace(_read_input(model, imatrix, quant_types), runtime=runtime)
    rule = rule_for(inp.src.arch)
    if rule is not None and rule.is_drafter:
        mtp_type = mtp_type or rule.head_type  # a drafter is all head: the file type applies to all of it
    name = name or default_name(inp.src.path)
    check_name(name, sidecar=inp.layout == "mtp-only")
    out = (Path(out_dir) if out_dir is not None else inp.src.path.parent).absolute()
    if out.exists() and not out.is_dir():
        raise QuantizeError(Setting("out_dir"), f" {out} is a file")
    split_bytes = parse_size(split_max_size) if split_max_size else None
    decided = [_job_types(qt, inp, mtp_type) for qt in quant_types]
    warnings = _plan_warnings(inp, decided, allow_requantize)
    _check_not_input(out, name, quant_types, inp)
    tools = tools or resolve_quantize_tools(llama_cpp, split=split_bytes is not None, runtime=runtime)
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
        jobs=plan_jobs, warnings=tuple(dict.fromkeys(warnings)), runtime=runtime)


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
    rule = rule_for(src.arch)
    if rule is not None and not rule.imatrix_runs:
        _check_drafter(src.path.name, src.arch, imatrix, quant_types)
    cov = read_imatrix_coverage(imatrix) if imatrix is not None else None
    if cov is not None:
        check_imatrix_fits(cov, src)
    mtp_weights = tuple(r for r in src.refs if r.name.startswith(prefixes) and llama_quantizes(r.name, r.info.ne, src.arch))
    quantized_in = tuple(r for r in src.refs if llama_quantizes(r.name, r.info.ne, src.arch)
                         and type_name(r.info.ggml_type) not in ggml_types.FLOAT_TYPES)
    covers = bool(cov and mtp_weights and all(cov.covers(r.name) for r in mtp_weights))
    return _Input(src, rep.layout, rep.file_type, mtp_layers, mtp_weights, quantized_in, cov, covers)


def _job_types(qt: str, inp: _Input, mtp_type: str | Mapping[str, str] | None) -> _JobTypes:
    """The MTP policy for one quant type and what it means for the command and the output check."""
    cov, covers, blocks = inp.cov, inp.covers_mtp, ", ".join(f"blk.{i}" for i in inp.mtp_layers)
    needs_imatrix = qt in file_types_need_imatrix(inp.runtime)
    tool = "llama-quantize" if inp.runtime == MAINLINE else f"{LABELS[inp.runtime]}'s llama-quantize"
    if needs_imatrix and cov is None:
        raise QuantizeError(f"{qt} needs an importance matrix ({tool} refuses it without one): "
                            "pass ", Setting("imatrix"), " FILE (make one with `mtpgraft imatrix`)")
    policy = mtp_policy_for(mtp_type, qt, inp.runtime) if inp.mtp_layers else "none"
    jw: list[str] = []
    if policy == "match":
        if needs_imatrix and not covers:
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
    if ggml_types.tensor_needs_imatrix(target, qt, inp.runtime) and not covers:
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
    return warnings + _uncovered_trunk(inp, decided)


# llama.cpp's mixtures give these a type that needs no importance data; llama-imatrix records neither
_NEVER_IN_IMATRIX = ("token_embd.weight", "output.weight")


def _uncovered_trunk(inp: _Input, decided: Sequence[_JobTypes]) -> list[str]:
    """Trunk weights the imatrix has no entry for: llama-imatrix records only what the graph runs
    (glm-dsa's shared indexer layers carry indexer weights that never run), and llama-quantize aborts
    on the first one a very-low-bit mixture needs importance data for."""
    needing = [jt.quant_type for jt in decided if jt.quant_type in file_types_need_imatrix(inp.runtime)]
    if inp.cov is None or inp.cov.format != "gguf" or not needing:
        return []
    lacking = [r.name for r in inp.src.refs if not r.name.startswith(inp.mtp_prefixes)
               and r.name not in _NEVER_IN_IMATRIX and llama_quantizes(r.name, r.info.ne, inp.src.arch)
               and not inp.cov.covers(r.name)]
    if not lacking:
        return []
    return [f"the imatrix has no entries for {len(lacking)} trunk tensor(s) ({', '.join(lacking[:3])}"
            f"{', ...' if len(lacking) > 3 else ''}): llama-imatrix records only the tensors the model's graph "
            f"runs; {', '.join(needing)} abort(s) in llama-quantize if its mixture gives one of them a type "
            "that needs importance data"]


def _job(jt: _JobTypes, inp: _Input, tools: QuantizeTools, out: Path, name: str, allow_requantize: bool,
         threads: int | None) -> QuantizeJob:
    """One llama-quantize command and what its output must look like."""
    qt, cov = jt.quant_type, inp.cov
    single, split_dir = output_names(out, name, qt)
    tmp = out / f".{name}-{qt}.gguf.partial"
    cwd = None
    if cov is not None:
        # Run beside the imatrix and name it by its file name: llama-quantize records the path
        # as given in quantize.imatrix.file, and a published file should not carry a local path.
        cwd = str(Path(cov.path).resolve().parent)
    overrides = [f"mtpgraft.quantize.mtp_type=str:{jt.policy}"] if inp.mtp_layers else []
    if cov is not None and cov.dataset_sha256:
        overrides.append(f"mtpgraft.imatrix.dataset_sha256=str:{cov.dataset_sha256}")
    cmd = quantize_argv(tools.llama_quantize, str(inp.src.path.resolve()), str(tmp), qt,
                        allow_requantize=allow_requantize, imatrix=Path(cov.path).name if cov is not None else None,
                        runtime=inp.runtime,
                        rules=[(r.pattern, r.type) for r in jt.rules], override_kv=overrides, threads=threads)
    spec = OutputSpec(quant_type=qt, file_type=file_types(inp.runtime)[qt], tensor_names=frozenset(r.name for r in inp.src.refs),
                      mtp_present=bool(inp.mtp_layers), mtp_layers=inp.mtp_layers, mtp_types=jt.exact,
                      mtp_quantized=jt.must_quantize, imatrix=cov is not None, layout=inp.layout)
    return QuantizeJob(quant_type=qt, mtp_type=jt.policy, single_path=str(single), split_dir=str(split_dir),
                       tmp_path=str(tmp), command=tuple(cmd), cwd=cwd, mtp_rules=jt.rules, expect=spec,
                       warnings=jt.warnings)
