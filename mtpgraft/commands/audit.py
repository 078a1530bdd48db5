"""`mtpgraft inspect hf://...`: the audit of published repos (hub.audit), rendered as a table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import click

from ..errors import EXIT_FAILED, EXIT_HUB, HubError, VerdictFailedError
from ..gguf_io import shown
from ..hub.audit import AuditReport, ModelAudit, RepoAudit, TagAudit
from .common import emit_json

MB = 1e6
_SHOWN_KEYS = ("mtpgraft.version", "mtpgraft.mtp.source", "mtpgraft.imatrix.dataset", "quantize.imatrix.dataset")


def run_audit(targets: Sequence[str], *, token: str | None, endpoint: str | None, jobs: int, only_mtp: bool,
              as_json: bool) -> None:
    """Audit the targets, print the table (or JSON) and one line per refused repo (stderr); raise
    for the exit status: 1 when a file would not load or a tag fails, 6 when no repo could be read."""
    from ..hub import make_api
    from ..hub.audit import audit_repos
    from ..sources.resolve import sources_cache

    api = make_api(endpoint=endpoint, token=token)
    report = audit_repos(targets, api=api, cache_root=sources_cache() / "ranges", jobs=jobs, only_mtp=only_mtp)
    for r in report.repos:
        if r.error:
            click.echo(f"mtpgraft: {shown(r.error, 400)}", err=True)
    if as_json:
        emit_json(report.to_dict())
    else:
        for line in audit_lines(report):
            click.echo(line)
    if report.exit_code == EXIT_FAILED:
        bad = sum(not m.loads for r in report.repos for m in r.models)
        tags = sum(bool(t.problem) for r in report.repos for t in r.tags)
        raise VerdictFailedError(f"{bad} file(s) would not load, {tags} tag(s) would load a wrong or no sidecar")
    if report.exit_code == EXIT_HUB:
        raise HubError(f"none of the {len(report.repos)} repo(s) could be audited")


def audit_lines(report: AuditReport) -> list[str]:
    lines: list[str] = []
    for r in report.repos:
        if r.error is None:
            lines += [*_repo_lines(r), ""]
    headers = sum(r.header_bytes for r in report.repos)
    lines.append(f"fetched {report.fetched:,} bytes of GGUF (the headers hold {headers:,} bytes; "
                 "listings not counted)")
    return lines


_COLS = "{:<44} {:<10} {:<8} {:>9}  {:<24} {:<26} {}"


def _repo_lines(r: RepoAudit) -> list[str]:
    lines = [r.target, "  " + _COLS.format("FILE", "ARCH", "TYPE", "SIZE", "MTP HEAD", "RUNTIME", "VERDICT")]
    for m in r.models:
        lines.append("  " + _COLS.format(shown(_name(m), 44), *_model_cells(m)))
        lines += [f"      - {shown(p, 300)}" for p in m.problems]
        lines += _provenance_lines(m)
    lines += [f"  {_tag_line(t)}" for t in r.tags]
    lines.append(f"  summary: {_summary(r)}")
    return lines


def _name(m: ModelAudit) -> str:
    return m.path + (f" (+{len(m.files) - 1} shards)" if len(m.files) > 1 else "")


def _model_cells(m: ModelAudit) -> tuple[str, ...]:
    rep = m.report
    size = f"{m.size / MB:.1f} MB"
    if rep is None:
        return "?", "?", size, "?", "none", "would not load"
    head = "no"
    if rep.mtp_present:
        types = Counter(t.type for t in rep.mtp_tensors)
        layers = ",".join(f"blk.{i}" for i in rep.mtp_layers)
        head = f"{layers} {'+'.join(t for t, _ in types.most_common(3))}"
    verdict = "loads" if m.loads else "would not load"
    return (shown(rep.architecture, 10), rep.file_type or "?", size, shown(head, 24),
            " + ".join(m.runtimes) or "none", verdict)


def _provenance_lines(m: ModelAudit) -> list[str]:
    """Who made the file: the keys people ask about first, and how many more --json holds."""
    if m.report is None:
        return []
    keys = {**m.report.provenance, **m.report.imatrix}
    parts = [f"{k}={shown(str(keys[k]), 80)}" for k in _SHOWN_KEYS if k in keys]
    if len(keys) > len(parts):
        parts.append(f"{len(keys) - len(parts)} more key(s) in --json")
    return [f"      provenance: {', '.join(parts)}"] if parts else []


def _tag_line(t: TagAudit) -> str:
    shards = f" ({len(t.model_files)} shards)" if len(t.model_files) > 1 else ""
    head = {"in-file": "MTP in the file", "sidecar": f"MTP sidecar {t.sidecar}", "none": "no MTP"}[t.mtp]
    out = f":{t.tag or '(default)'} -> {t.model or 'nothing'}{shards}; {head}"
    if t.problem:
        return f"{out}; FAILS: {shown(t.problem, 400)}"
    return f"{out}; note: {shown(t.note, 300)}" if t.note else out


def _summary(r: RepoAudit) -> str:
    models = [m for m in r.models if not m.is_sidecar]
    sidecars = len(r.models) - len(models)
    bad = sum(not m.loads for m in r.models)
    bad_tags = sum(bool(t.problem) for t in r.tags)
    mtp = sum(bool(m.report and m.report.mtp_present) for m in models)
    return (f"{len(models)} model(s) ({mtp} with MTP in the file), {sidecars} sidecar(s): "
            f"{len(r.models) - bad} load, {bad} would not; {len(r.tags)} tag(s), {bad_tags} failing; "
            f"fetched {r.fetched:,} bytes (headers {r.header_bytes:,})")
