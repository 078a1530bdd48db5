"""Quality next to speed: KL divergence and perplexity of quants against their reference, made by
llama.cpp's own llama-perplexity, and MTP acceptance retention from check reports.

`plan_quality` reads headers and hashes only and returns a frozen QualityPlan (what `--dry-run`
prints): where the reference's logits go (cached by the content hash of model, text and arguments)
and how large they may grow. `execute_quality` runs llama-perplexity on the reference once with
`--kl-divergence-base` (skipped when the cache has the file) and with `--kl-divergence` per model,
and keeps every figure as the tool printed it next to the parsed float.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .errors import MtpgraftError, Setting, UsageError
from .gguf_io import GGUFModel
from .hashing import sha256_file
from .outputs import PendingOutput, ensure_space, write_text
from .pins import cache_dir
from .reports import QUALITY_REPORT, CheckedModel, CheckReport, load_check_report
from .runtimes import LABELS, MAINLINE
from .tools import find_tool, run_tool, tool_version

DEFAULT_CTX = 512
BUILTIN_TEXT = "quality-small.txt"
_NUM = r"([-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|inf|nan))"
# llama-perplexity's summary lines (tools/perplexity/perplexity.cpp, kl_divergence())
_FIGURES = {
    "ppl": rf"^Mean PPL\(Q\)\s*:\s*{_NUM}\s*±\s*{_NUM}",
    "ppl_base": rf"^Mean PPL\(base\)\s*:\s*{_NUM}\s*±\s*{_NUM}",
    "ln_ppl_ratio": rf"^Mean ln\(PPL\(Q\)/PPL\(base\)\)\s*:\s*{_NUM}\s*±\s*{_NUM}",
    "ppl_ratio": rf"^Mean PPL\(Q\)/PPL\(base\)\s*:\s*{_NUM}\s*±\s*{_NUM}",
    "kld": rf"^Mean\s+KLD:\s*{_NUM}\s*±\s*{_NUM}",
    "kld_max": rf"^Maximum KLD:\s*{_NUM}",
    "kld_99_9": rf"^99\.9%\s+KLD:\s*{_NUM}",
    "kld_99": rf"^99\.0%\s+KLD:\s*{_NUM}",
    "kld_median": rf"^Median\s+KLD:\s*{_NUM}",
    "same_top_p": rf"^Same top p:\s*{_NUM}\s*±\s*{_NUM}\s*%",
}
_REQUIRED = ("ppl", "ppl_ratio", "kld", "kld_99", "kld_99_9", "same_top_p")
_FINAL = rf"Final estimate: PPL = {_NUM} \+/- {_NUM}"
# llama.cpp's logger is an asynchronous queue whose singleton is deliberately never destroyed
# (common/log.cpp, llama.cpp#22142): at exit the last lines, the summary among them, are sometimes
# lost (seen: 2 runs in 6 on a loaded machine). A run whose summary is missing is repeated.
ATTEMPTS = 5


class QualityError(MtpgraftError):
    """llama-perplexity ran but its output lacks a figure, or check reports cannot be compared."""


@dataclass(frozen=True)
class Figure:
    """A number exactly as llama-perplexity printed it, and parsed."""

    text: str
    value: float
    pm_text: str | None = None  # the ± uncertainty, as printed
    pm: float | None = None


@dataclass(frozen=True)
class QualityPlan:
    reference: str
    models: list[str]
    text: str
    text_sha256: str
    ctx_size: int
    chunks: int | None
    extra_args: list[str]
    perplexity: str
    build: str
    logits: str  # the reference's --kl-divergence-base file
    logits_cached: bool
    logits_bytes_max: int  # before it is written: an upper bound from the text size and vocabulary
    n_vocab: int
    model_sha256: list[list[str]] = field(default_factory=list)  # per model, every shard's (the card matches them)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ModelQuality:
    path: str
    name: str
    figures: dict[str, Figure]
    log: str
    attempts: int = 1  # runs until llama-perplexity's output held its summary
    sha256: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "name": self.name, "sha256": list(self.sha256), "log": self.log,
                "attempts": self.attempts,
                "figures": {k: asdict(v) for k, v in self.figures.items()}}


@dataclass(frozen=True)
class QualityResult:
    plan: QualityPlan
    reference_ppl: Figure | None
    logits_bytes: int
    logits_reused: bool
    models: list[ModelQuality]
    retention: dict[str, dict[str, float | None]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "reference_ppl": asdict(self.reference_ppl) if self.reference_ppl else None,
                "logits_bytes": self.logits_bytes, "logits_reused": self.logits_reused,
                "models": [m.to_dict() for m in self.models], "retention": self.retention}


# --------------------------------------------------------------------------- plan


def builtin_text() -> Path:
    return Path(__file__).parent / "data" / BUILTIN_TEXT


def logits_dir() -> Path:
    return cache_dir() / "kld-logits"


def logits_size(n_vocab: int, ctx: int, n_chunk: int) -> int:
    """Bytes of a --kl-divergence-base file: magic, n_ctx, n_vocab, n_chunk, the tokens, then per
    chunk the second half's log-probs as uint16 over nv = 2*ceil(n_vocab/2)+4 entries."""
    nv = 2 * ((n_vocab + 1) // 2) + 4
    return 8 + 4 + 4 + 4 + 4 * ctx * n_chunk + n_chunk * (ctx - 1 - ctx // 2) * nv * 2


def plan_quality(reference: str | os.PathLike[str], models: Sequence[str | os.PathLike[str]], *,
                 text: str | os.PathLike[str] | None = None, ctx_size: int = DEFAULT_CTX,
                 chunks: int | None = None, extra_args: Sequence[str] = (),
                 llama_cpp: str | None = None, runtime: str = MAINLINE) -> QualityPlan:
    """Check the inputs, hash them, and say where the reference's logits go and how large (`runtime`'s
    llama-perplexity makes them)."""
    if runtime != MAINLINE:  # read as mainline's, ik 0.1.5's output gave a mean KLD of 0 and a PPL ratio of 2367
        raise UsageError(f"{LABELS[runtime]}'s llama-perplexity is not supported yet (mtpgraft does not read "
                         "its KL-divergence output); measure quality with mainline llama.cpp")
    if ctx_size < 16:
        raise UsageError(f"context size {ctx_size} is too small for perplexity (use 128 or more)")
    if chunks is not None and chunks < 1:
        raise UsageError(Setting("chunks"), " must be at least 1")
    txt = Path(text) if text is not None else builtin_text()
    if not txt.is_file():
        raise UsageError(f"text file not found: {txt}")
    ref = GGUFModel(reference)
    shards = [GGUFModel(m).paths for m in models]  # readable GGUFs: refused before anything runs
    tokens = ref.kv.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise UsageError(f"{ref.path.name} has no tokenizer; llama-perplexity needs one")
    n_vocab = tokens.count
    tool = find_tool("llama-perplexity", llama_cpp, runtime)
    build = tool_version(tool)
    text_sha = sha256_file(txt)
    max_chunks = (txt.stat().st_size + 2) // ctx_size  # a token is at least one byte of text
    if chunks is not None:
        max_chunks = min(max_chunks, chunks)
    if max_chunks < 2:
        raise UsageError(f"{txt.name} is too short for context {ctx_size}: llama-perplexity needs at "
                         f"least {2 * ctx_size} tokens (a longer text, or a smaller ", Setting("ctx_size"), ")")
    key = hashlib.sha256(json.dumps({
        "model": [sha256_file(p) for p in ref.paths], "text": text_sha, "ctx": ctx_size,
        "chunks": chunks, "args": list(extra_args), "build": build}, sort_keys=True).encode()).hexdigest()
    logits = logits_dir() / f"{key[:32]}.kld"
    return QualityPlan(
        reference=str(ref.path), models=[str(m) for m in models], text=str(txt), text_sha256=text_sha,
        ctx_size=ctx_size, chunks=chunks, extra_args=list(extra_args), perplexity=str(tool), build=build,
        logits=str(logits), logits_cached=logits.is_file() and logits.with_suffix(".json").is_file(),
        logits_bytes_max=logits_size(n_vocab, ctx_size, max_chunks), n_vocab=n_vocab,
        model_sha256=[[sha256_file(p) for p in ps] for ps in shards])


# --------------------------------------------------------------------------- run


def _base_cmd(plan: QualityPlan, model: str) -> list[str]:
    cmd = [plan.perplexity, "-m", model, "-f", plan.text, "-c", str(plan.ctx_size)]
    if plan.chunks is not None:
        cmd += ["--chunks", str(plan.chunks)]
    return cmd + list(plan.extra_args)


def parse_kld_output(out: str) -> dict[str, Figure]:
    """The summary figures of a `--kl-divergence` run, exactly as printed."""
    figs: dict[str, Figure] = {}
    for name, rx in _FIGURES.items():
        m = re.search(rx, out, re.M)
        if m:
            pm = m.group(2) if m.lastindex and m.lastindex >= 2 else None
            figs[name] = Figure(m.group(1), float(m.group(1)), pm, float(pm) if pm is not None else None)
    missing = [k for k in _REQUIRED if k not in figs]
    if missing:
        raise QualityError(f"llama-perplexity's output has no {', '.join(missing)} line")
    return figs


def _parse_final(out: str) -> Figure | None:
    m = re.search(_FINAL, out)
    return Figure(m.group(1), float(m.group(1)), m.group(2), float(m.group(2))) if m else None


def _run_logged(cmd: list[str], log: Path) -> str:
    try:
        proc = run_tool(cmd)
    except MtpgraftError as e:
        tail = getattr(e, "output_tail", "")
        log.write_text(tail)
        raise
    log.write_text(proc.stdout)
    return proc.stdout


def _reference_logits(plan: QualityPlan, log_dir: Path, emit: Callable[[str], None]) -> tuple[Figure | None, bool]:
    """Compute the reference's logits once (atomically into the cache), or reuse them."""
    logits, meta = Path(plan.logits), Path(plan.logits).with_suffix(".json")
    if plan.logits_cached and logits.is_file() and meta.is_file():
        d = json.loads(meta.read_text())
        emit(f"reusing the reference's logits {logits} ({logits.stat().st_size:,} bytes)")
        return (Figure(**d["reference_ppl"]) if d.get("reference_ppl") else None), True
    logits.parent.mkdir(parents=True, exist_ok=True)
    ensure_space(logits, plan.logits_bytes_max)
    emit(f"writing the reference's logits (at most {plan.logits_bytes_max / 1e6:.1f} MB) to {logits}")
    with PendingOutput(logits) as tmp:
        out = _run_logged(_base_cmd(plan, plan.reference) + ["--kl-divergence-base", str(tmp.path)],
                          log_dir / "reference-base.log")
        ppl = _parse_final(out)
        tmp.install(force=True)  # a cache entry: the same inputs give the same logits
    write_text(meta, json.dumps({"reference": plan.reference, "text": plan.text, "build": plan.build,
                                "reference_ppl": asdict(ppl) if ppl else None}, indent=2))
    return ppl, False


def execute_quality(plan: QualityPlan, *, log_dir: str | os.PathLike[str],
                emit: Callable[[str], None] = lambda m: None) -> QualityResult:
    """llama-perplexity on the reference once (--kl-divergence-base), then per model (--kl-divergence)."""
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    ref_ppl, reused = _reference_logits(plan, logs, emit)
    results = [replace(_model_quality(plan, model, logs / f"{i:02d}-{Path(model).stem}.log", emit),
                       sha256=tuple(plan.model_sha256[i]) if plan.model_sha256 else ())
               for i, model in enumerate(plan.models)]
    return QualityResult(plan, ref_ppl, Path(plan.logits).stat().st_size, reused, results)


def _model_quality(plan: QualityPlan, model: str, log: Path, emit: Callable[[str], None]) -> ModelQuality:
    emit(f"KL divergence of {Path(model).name}")
    cmd = _base_cmd(plan, model) + ["--kl-divergence-base", plan.logits, "--kl-divergence"]
    for attempt in range(1, ATTEMPTS + 1):
        out = _run_logged(cmd, log)
        try:
            return ModelQuality(model, Path(model).name, parse_kld_output(out), str(log), attempt)
        except QualityError:
            if attempt == ATTEMPTS:
                raise
            emit(f"llama-perplexity's output lost its summary (llama.cpp's logger at exit); running {Path(model).name} again")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- acceptance retention

# What must be equal for two check reports' acceptances to be compared.
SAME_SETTINGS = ("prompts", "n_prompts", "categories", "n_max", "temperature", "n_predict", "seed", "reps",
                 "mode", "reasoning", "context_depth", "p_min", "spec_type")


def _find_model(reports: Sequence[CheckReport], path: str) -> tuple[CheckReport, CheckedModel]:
    p = Path(path).resolve()
    for rep in reports:
        for m in rep.models:
            if Path(m.path).resolve() == p or Path(m.path).name == p.name:
                return rep, m
    raise QualityError(f"no check report holds {Path(path).name}; run `mtpgraft check` on it first")


def _same_settings(a: CheckReport, b: CheckReport, what: str) -> None:
    for k in SAME_SETTINGS:
        if a.settings.get(k) != b.settings.get(k):
            raise QualityError(f"check reports differ in {k} ({a.settings.get(k)!r} vs {b.settings.get(k)!r}) "
                               f"for {what}: acceptance is only comparable under the same settings")
    if a.llama_cpp_build != b.llama_cpp_build:
        raise QualityError(f"check reports were made with different llama.cpp builds for {what} "
                           f"({a.llama_cpp_build!r} vs {b.llama_cpp_build!r})")


def _acceptance_by_category(m: CheckedModel) -> dict[str, float | None]:
    pooled: dict[str, list[int]] = {}
    for run in m.runs:
        acc = pooled.setdefault(run.category, [0, 0])
        acc[0] += run.counts.accepted
        acc[1] += run.counts.draft_tokens
    pooled["*"] = [m.counts.accepted, m.counts.draft_tokens]
    return {k: (a / d if d else None) for k, (a, d) in pooled.items()}


def acceptance_retention(report_paths: Sequence[str | os.PathLike[str]], reference: str,
                         models: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Per model and category ("*": every MTP request): its acceptance / the reference's, pooled
    over the same runs; refuses reports made with other prompts, n, temperature or build."""
    reports = [load_check_report(p, prefix=f"check report {p}: ") for p in report_paths]
    ref_rep, ref_m = _find_model(reports, reference)
    ref_acc = _acceptance_by_category(ref_m)
    out: dict[str, dict[str, float | None]] = {}
    for model in models:
        rep, m = _find_model(reports, model)
        _same_settings(ref_rep, rep, Path(model).name)
        acc = _acceptance_by_category(m)
        out[Path(model).name] = {cat: (acc[cat] / r if r and acc.get(cat) is not None else None)
                                 for cat, r in ref_acc.items()}
    return out


# --------------------------------------------------------------------------- report


def format_table(result: QualityResult) -> str:
    """Markdown: per model the figures as printed, and the retention where known."""
    head = ["model", "PPL", "PPL ratio", "mean KLD", "KLD 99%", "KLD 99.9%", "same top token", "acceptance retention"]
    rows = []
    for m in result.models:
        f = m.figures
        ret = result.retention.get(m.name, {}).get("*")
        rows.append([m.name, f"{f['ppl'].text} ± {f['ppl'].pm_text}", f["ppl_ratio"].text,
                     f"{f['kld'].text} ± {f['kld'].pm_text}", f["kld_99"].text, f["kld_99_9"].text,
                     f"{f['same_top_p'].text} %", f"{ret:.3f}" if ret is not None else "-"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(result: QualityResult) -> str:
    p = result.plan
    ref = result.reference_ppl
    out = ["# Quality against the reference", "",
           f"- reference: `{Path(p.reference).name}`" + (f", PPL {ref.text} ± {ref.pm_text}" if ref else ""),
           f"- text: `{Path(p.text).name}` (sha256 {p.text_sha256[:16]}...), context {p.ctx_size}"
           + (f", {p.chunks} chunks" if p.chunks else ", every chunk"),
           f"- made with llama-perplexity ({p.build}): `--kl-divergence-base` on the reference once "
           f"({result.logits_bytes:,} bytes of logits, {'reused from the cache' if result.logits_reused else 'computed'}), "
           "then `--kl-divergence` per model; figures exactly as the tool printed them",
           "- acceptance retention: the model's MTP acceptance / the reference's, from check reports with "
           "the same settings", "", format_table(result), ""]
    if result.retention:
        cats = sorted({c for r in result.retention.values() for c in r if c != "*"})
        out += ["## Acceptance retention per category", "",
                "| model | " + " | ".join(cats) + " | all |", "|" + "---|" * (len(cats) + 2)]
        for name, r in result.retention.items():
            cells = [f"{r[c]:.3f}" if r.get(c) is not None else "-" for c in [*cats, "*"]]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def write_report(result: QualityResult, outdir: str | os.PathLike[str], *,
                 md_name: str = "report.md") -> tuple[Path, Path]:
    """quality.json (what the card reads) and the markdown report, atomically."""
    d = Path(outdir)
    d.mkdir(parents=True, exist_ok=True)
    js, md = d / QUALITY_REPORT, d / md_name
    for path, text in ((js, json.dumps(result.to_dict(), indent=2)), (md, render_markdown(result))):
        write_text(path, text)
    return js, md
