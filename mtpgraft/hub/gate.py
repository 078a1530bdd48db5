"""The push's gate on local files, read-only and without the Hub: group them into models, inspect and
hash each, find the passing check report (and quality.json) listing their sha256, and say what it
refuses and why."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from .. import naming
from ..errors import GGUFFormatError, Setting, Text, UsageError
from ..gguf_io import GGUFModel
from ..hashing import sha256_file
from ..inspection import inspect_model
from ..reports import QUALITY_REPORT, CheckReport, QualityReport, load_check_report, load_quality
from .markdown import human_size
from .types import CheckMatch, FileRef, GateResult, ModelEntry, PlannedFile, QualityMatch, Refusal

# The Hub's old per-file limit, which GGUF publishers still split at (llama-gguf-split "50G").
MAX_FILE_BYTES = 50 * 1000**3
CHART_DIR = "charts"


def check_gate(paths: Sequence[str | os.PathLike[str]], *, report_dirs: Sequence[str | os.PathLike[str]] = (),
               max_file_bytes: int = MAX_FILE_BYTES) -> GateResult:
    """The push gate alone, without the Hub: what plan_push would refuse locally (unreadable or
    inconsistent files, no MTP head, too large, no passing check report listing their sha256)."""
    local, _ = collect_local(paths)
    reports = [load_gate_report(Path(d)) for d in report_dirs]
    files: list[PlannedFile] = []
    refusals: list[Refusal] = []
    for group in local:
        _, planned, refused, _ = plan_model(group, reports=reports, verify=True, max_file_bytes=max_file_bytes)
        files += planned or [PlannedFile(x.path_in_repo, "model", 0, "", "refused") for x in group]
        refusals += refused
    return GateResult(tuple(f.path_in_repo for f in files), sum(f.size for f in files), tuple(refusals))


@dataclass(frozen=True)
class LocalFile:
    path: Path
    path_in_repo: str


def collect_local(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[list[LocalFile]], list[str]]:
    """Local GGUFs grouped into models (a split set is one group), in a stable order, and the
    folder entries skipped: imatrix files and anything under a hidden folder (e.g. .cache)."""
    found: dict[str, LocalFile] = {}
    skipped: list[str] = []

    def add(p: Path, in_repo: str) -> None:
        prev = found.get(in_repo)
        if prev is not None and prev.path.resolve() != p.resolve():
            raise UsageError(f"two files would both be {in_repo} in the repo: {prev.path} and {p}")
        found[in_repo] = LocalFile(p, in_repo)

    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            ggufs = []
            for q in sorted(p.rglob("*.gguf")):
                rel = q.relative_to(p)
                if any(part.startswith(".") for part in rel.parts) or not q.is_file():
                    continue
                if "imatrix" in q.name.lower():
                    skipped.append(str(q))
                    continue
                ggufs.append(q)
            if not ggufs:
                raise UsageError(f"{p}: no .gguf model files in this folder")
            for q in ggufs:
                add(q, q.relative_to(p).as_posix())
        elif p.is_file():
            shard = naming.parse_shard(p.name)
            if shard:  # a shard brings its whole set
                for name in naming.shard_names(shard.prefix, shard.count):
                    add(p.with_name(name), name)
            else:
                add(p, p.name)
        else:
            raise UsageError(f"{p}: no such file or folder")

    groups: dict[str, list[LocalFile]] = {}
    for in_repo in sorted(found):
        loc = found[in_repo]
        shard = naming.parse_shard(PurePosixPath(in_repo).name)
        key = (str(PurePosixPath(in_repo).parent / shard.prefix) + "\0split") if shard else in_repo
        groups.setdefault(key, []).append(loc)
    return list(groups.values()), skipped


def plan_model(group: list[LocalFile], *, reports: list[GateReport], verify: bool, max_file_bytes: int,
               allow_trunk_only: bool = False) -> tuple[ModelEntry | None, list[PlannedFile], list[Refusal],
                                                        dict[str, str]]:
    """One model (a file or a split set): its entry (None when it cannot be read), its files, what
    the gate refuses, and the chart its check report brings (path in repo -> local path)."""
    first = group[0]
    refusals = _missing_refusals(group)
    if refusals:
        return None, [], refusals, {}
    sizes = {loc.path_in_repo: loc.path.stat().st_size for loc in group}
    refusals = _size_refusals(group, sizes, max_file_bytes)
    try:
        model = GGUFModel(first.path)
        report = inspect_model(first.path, model=model)
    except GGUFFormatError as e:
        return None, [], refusals + [Refusal(first.path_in_repo, f"not a readable GGUF ({e})")], {}
    refusals += _content_refusals(group, model, report, allow_trunk_only=allow_trunk_only)
    planned, shas = _model_files(group, hashed=not refusals)
    match, why = (None, "") if refusals else _match_check(shas, reports)
    charts: dict[str, str] = {}
    if match is not None and match.chart is not None and match.chart_source is not None:
        charts[match.chart] = match.chart_source
    if verify and match is None and not refusals:
        refusals.append(Refusal(first.path_in_repo, why))
    if refusals:
        planned = [replace(f, status="refused") for f in planned]

    metadata = {k: model.get(k) for k in CARD_METADATA_KEYS if model.get(k) is not None}
    entry = ModelEntry(
        name=first.path_in_repo, size=sum(sizes.values()),
        files=tuple(FileRef(f.path_in_repo, f.size, f.sha256) for f in planned),
        quant=report.file_type or naming.quant_tag(first.path.name), architecture=report.architecture,
        nextn_predict_layers=report.nextn_predict_layers, mtp_head=_mtp_head(report), layout=report.layout,
        metadata=metadata, check=match, quality=None if refusals else _match_quality(shas, reports),
        runtimes=tuple(report.runtimes))
    return entry, planned, refusals, charts


def _model_files(group: list[LocalFile], *, hashed: bool) -> tuple[list[PlannedFile], dict[str, str]]:
    """A model's files as planned, and their sha256 (path in repo -> sha256). A file already refused
    is not hashed (`hashed` False): minutes for a big one, and nothing to compare."""
    planned: list[PlannedFile] = []
    shas = {}
    for loc in group:
        st = loc.path.stat()
        shas[loc.path_in_repo] = sha256_file(loc.path) if hashed else ""
        planned.append(PlannedFile(loc.path_in_repo, "model", st.st_size, shas[loc.path_in_repo], "new",
                                   local_path=str(loc.path), mtime_ns=st.st_mtime_ns))
    return planned, shas


# The GGUF metadata a model's card entry carries (provenance, license, imatrix).
CARD_METADATA_KEYS = (
    "general.name", "general.basename", "general.license", "general.license.name",
    "general.size_label", "general.base_model.count", "general.base_model.0.name",
    "general.base_model.0.organization", "general.base_model.0.repo_url",
    "quantize.imatrix.file", "quantize.imatrix.dataset",
    "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count",
    "mtpgraft.version", "mtpgraft.mtp.source", "mtpgraft.mtp.source_sha256",
    "mtpgraft.mtp.type_policy", "mtpgraft.imatrix.dataset_sha256")


def _missing_refusals(group: list[LocalFile]) -> list[Refusal]:
    refusals = []
    for loc in group:
        if not loc.path.is_file():
            shard = naming.parse_shard(loc.path.name)
            refusals.append(Refusal(loc.path_in_repo, f"shard {shard.no} of {shard.count} is "
                                    f"missing ({loc.path})" if shard else "missing"))
    return refusals


def _size_refusals(group: list[LocalFile], sizes: dict[str, int], max_file_bytes: int) -> list[Refusal]:
    return [Refusal(loc.path_in_repo, (
                f"{_human(sizes[loc.path_in_repo])} is over the {_human(max_file_bytes)} per-file limit: "
                f"split it (llama-gguf-split --split --split-max-size {_human_g(max_file_bytes)} "
                f"{loc.path.name} OUT) and push the shards"))
            for loc in group if sizes[loc.path_in_repo] > max_file_bytes]


def _content_refusals(group: list[LocalFile], model: Any, report: Any, *, allow_trunk_only: bool) -> list[Refusal]:
    """What the model's own content refuses: a split set that differs from the push, inconsistent
    MTP metadata, no MTP head."""
    first = group[0]
    refusals = []
    expected = [p.name for p in model.paths]
    got = [loc.path.name for loc in group]
    if expected != got:
        refusals.append(Refusal(first.path_in_repo,
                                f"the split set holds {', '.join(expected)} but the push has {', '.join(got)}"))
    if not report.consistent:
        refusals.append(Refusal(first.path_in_repo, "inspect found inconsistent MTP metadata: "
                                + "; ".join(report.problems)))
    elif not report.mtp_present and not (allow_trunk_only and report.layout == "trunk-only"):
        refusals.append(Refusal(first.path_in_repo, "has no MTP head (no nextn tensors): nothing for "
                                "draft-mtp to use; graft one with `mtpgraft attach`"))
    return refusals


def _mtp_head(report: Any) -> str:
    if not report.mtp_present:
        return "none"
    sizes: dict[str, int] = {}
    for t in report.mtp_tensors:
        if len(t.shape) >= 2:
            sizes[t.type] = sizes.get(t.type, 0) + t.nbytes
    dom = max(sizes, key=lambda k: sizes[k]) if sizes else "?"
    n = len(report.mtp_layers) or report.nextn_predict_layers
    return f"{n} layer{'s' if n != 1 else ''}, {dom}"


# --------------------------------------------------------------------------- check reports


@dataclass(frozen=True)
class GateReport:
    check: CheckReport
    quality: QualityReport | None = None  # quality.json beside it (`mtpgraft quality`), if any


def load_gate_report(d: Path) -> GateReport:
    given = Text(Setting("report_dirs"), f" {d}: ")
    check = load_check_report(d, prefix=given)
    q = check.path.with_name(QUALITY_REPORT)
    return GateReport(check, load_quality(q, prefix=given) if q.is_file() else None)


def _match_quality(shas: dict[str, str], reports: list[GateReport]) -> QualityMatch | None:
    """The quality figures whose model lists exactly these files' sha256."""
    wanted = set(shas.values())
    for rep in reports:
        q = rep.quality
        for m in q.models if q is not None else ():
            if set(m.sha256) != wanted:
                continue
            return QualityMatch(report=str(q.path), figures=dict(m.figures),
                                retention=q.retention.get(m.name, {}).get("*"),
                                reference=Path(q.reference).name, how=dict(q.how))
    return None


def _match_check(shas: dict[str, str], reports: list[GateReport]) -> tuple[CheckMatch | None, str | Text]:
    """The passing report entry that lists every file's sha256, or None and why not."""
    wanted = set(shas.values())
    failed: list[str] = []
    partial = False
    for rep in (r.check for r in reports):
        for m in rep.models:
            listed = m.sha256s  # its files and the sidecar it was checked with (-md)
            if not wanted & listed:
                continue
            if not wanted <= listed:
                partial = True
                continue
            if m.verdict != "pass":
                reasons = "; ".join(m.reasons) or f"verdict {m.verdict!r}"
                failed.append(f"its check failed ({reasons}; {rep.path})")
                continue
            chart_in_repo = chart_src = None
            if rep.chart and (rep.path.parent / rep.chart).is_file():
                chart_src = rep.path.parent / rep.chart
                digest = hashlib.sha256(chart_src.read_bytes()).hexdigest()[:12]
                chart_in_repo = f"{CHART_DIR}/speedup-{digest}{chart_src.suffix or '.png'}"
            return CheckMatch(
                report=str(rep.path), verdict="pass", acceptance=m.acceptance, mtp_active=m.mtp_active,
                categories=dict(m.categories), llama_cpp_build=rep.llama_cpp_build, settings=dict(rep.settings),
                mtpgraft_version=rep.mtpgraft_version, chart=chart_in_repo,
                chart_source=str(chart_src) if chart_src else None, by_config=m.by_config), ""
    no_verify = Text("or push with ", Setting("verify", False))
    if failed:
        return None, Text(failed[0], "; fix it and check again, ", no_verify)
    short = ", ".join(sorted(s[:12] for s in wanted))
    if partial:
        return None, "the check report does not list every shard of this split set; check the whole set"
    if not reports:
        return None, Text("no check report given: run `mtpgraft check --report DIR` on it and pass ",
                          Setting("report_dirs"), " DIR, ", no_verify)
    return None, Text(f"no check report lists its sha256 ({short}): the file changed since the check, or it "
                      "was not checked; run `mtpgraft check --report DIR` on it, ", no_verify)



def _human(n: int) -> str:
    return human_size(n)


def _human_g(n: int) -> str:
    """A size as llama-gguf-split's --split-max-size takes it (whole G or M)."""
    return f"{n // 1000**3}G" if n >= 1000**3 else f"{max(1, n // 1000**2)}M"
