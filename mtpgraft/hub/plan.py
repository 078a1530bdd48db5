"""Plan a push with read-only calls: which files are new, changed or unchanged, and the gate.

`plan_push` reads local files (inspect, sha256 cached by path/size/mtime) and the repo's current
tree, and decides per file: new, changed or unchanged. The gate refuses any GGUF that fails
`inspect` or has no passing `mtpgraft check` report with its sha256 (unless verify=False).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .. import naming
from ..errors import GGUFFormatError, HubError, Setting, Text, UsageError, redact
from ..reports import QUALITY_REPORT, CheckReport, QualityReport, load_check_report, load_quality
from ..runtimes import RUNTIMES
from .client import hub_errors, namespaces, whoami
from .sidecars import check_placement

if TYPE_CHECKING:
    from huggingface_hub import HfApi

# The Hub's old per-file limit, which GGUF publishers still split at (llama-gguf-split "50G").
MAX_FILE_BYTES = 50 * 1000**3
CHART_DIR = "charts"

# --------------------------------------------------------------------------- plan data


@dataclass(frozen=True)
class CheckMatch:
    """The passing `mtpgraft check` result that covers a model's files."""

    report: str  # the report.json it came from
    verdict: str
    acceptance: float | None
    mtp_active: bool | None
    categories: dict[str, dict[str, Any]]
    llama_cpp_build: str | None
    settings: dict[str, Any]
    mtpgraft_version: str | None
    chart: str | None  # path in the repo of the report's chart, when it has one
    chart_source: str | None = None  # the chart's local path
    by_config: tuple[dict[str, Any], ...] = ()  # acceptance per n (x p-min) over reps (check.tables)


@dataclass(frozen=True)
class FileRef:
    path: str  # in the repo
    size: int
    sha256: str


@dataclass(frozen=True)
class ModelEntry:
    """One model to publish: a single GGUF or a whole split set."""

    name: str  # path in the repo of the (first) file
    files: tuple[FileRef, ...]  # shards in order
    size: int
    quant: str | None
    architecture: str | None
    nextn_predict_layers: int
    mtp_head: str  # e.g. "1 layer, Q8_0"
    layout: str | None  # "full", "mtp-only", "trunk-only"
    metadata: dict[str, Any]  # general.* / quantize.imatrix.* / mtpgraft.* keys the card reads
    check: CheckMatch | None
    quality: QualityMatch | None = None
    runtimes: tuple[str, ...] = RUNTIMES  # the runtimes whose loader takes its tensor types (inspect)


@dataclass(frozen=True)
class QualityMatch:
    """`mtpgraft quality`'s figures for a model's files (quality.json beside a check report)."""

    report: str
    figures: dict[str, str]  # name -> the text llama-perplexity printed
    retention: float | None  # MTP acceptance / the reference's, every request
    reference: str
    how: dict[str, Any]  # text, ctx, chunks, build


@dataclass(frozen=True)
class PlannedFile:
    path_in_repo: str
    role: str  # "model", "chart", "card"
    size: int
    sha256: str
    status: str  # "new", "changed", "unchanged"; "refused" / "unknown" when the gate refused
    local_path: str | None = None  # None for the generated README.md
    mtime_ns: int | None = None
    git_oid: str | None = None  # git blob id, for small files the Hub may store outside LFS
    remote_size: int | None = None
    remote_sha256: str | None = None

    @property
    def sends(self) -> bool:
        return self.status in ("new", "changed")


@dataclass(frozen=True)
class Refusal:
    path: str
    reason: str

    def __str__(self) -> str:
        return Text(f"{self.path}: ", self.reason)


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    sha256: str | None  # LFS files
    git_oid: str


@dataclass(frozen=True)
class PushPlan:
    repo_id: str
    endpoint: str
    revision: str
    create_pr: bool
    private: bool
    verify: bool
    user: str | None
    repo_exists: bool
    branch_exists: bool
    parent_commit: str | None
    models: tuple[ModelEntry, ...]
    files: tuple[PlannedFile, ...]
    refusals: tuple[Refusal, ...]
    warnings: tuple[str, ...]
    other_files: tuple[RemoteFile, ...]  # GGUFs already in the repo that this push leaves alone
    card: str
    commit_message: str
    commit_description: str
    chart_sources: tuple[tuple[str, str], ...] = field(default=())  # (path in repo, local path)
    picks: tuple[tuple[str, str | None], ...] = field(default=())  # (quant, sidecar -hf :TAG loads)

    def verify_tags(self) -> tuple[str, ...]:
        """The :TAGs whose loading this push changes: its quants', and those served by its sidecars."""
        pushed = {f.path for m in self.models for f in m.files}
        tags = [(naming.hf_split_info(q) or naming.HfSplit("", "", 1, 1)).tag
                for q, s in self.picks if q in pushed or s in pushed]
        return tuple(dict.fromkeys(t for t in tags if t))

    @property
    def to_send(self) -> tuple[PlannedFile, ...]:
        return tuple(f for f in self.files if f.sends)

    @property
    def bytes_to_send(self) -> int:
        return sum(f.size for f in self.to_send)

    @property
    def refused(self) -> bool:
        return bool(self.refusals)

    def refusal_message(self) -> Text:
        return "refusing to push: " + Text("; ").join(str(r) for r in self.refusals)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("chart_sources")
        d["bytes_to_send"] = self.bytes_to_send
        return d


@dataclass(frozen=True)
class PushResult:
    repo_id: str
    revision: str
    commit_oid: str | None  # None when there was nothing to send
    commit_url: str | None
    pr_url: str | None
    sent: tuple[str, ...]
    bytes_committed: int  # size of the files in the commit (Hub storage may have had some already)
    verified: tuple[str, ...]  # paths read back with the right size and sha256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- planning


def plan_push(paths: Sequence[str | os.PathLike[str]], *, repo_id: str, api: HfApi,
              revision: str | None = None, create_pr: bool = False, private: bool = False,
              report_dirs: Sequence[str | os.PathLike[str]] = (), verify: bool = True,
              max_file_bytes: int = MAX_FILE_BYTES, base_model: str | None = None) -> PushPlan:
    """Work out what a push would do. Only read-only Hub calls; refusals are returned, not raised.

    A pull request to a repo the token's user does not own sends only MTP sidecars, and the card is
    the repo's own README.md with one section about them (card.sidecar_section). `base_model`
    (OWNER/NAME) names the base model on the card when the GGUFs record none."""
    _check_push_args(paths, repo_id=repo_id, base_model=base_model)
    branch = revision or "main"
    local, skipped = _collect(paths)
    reports = [_load_report(Path(d)) for d in report_dirs]
    models, files, refusals, warnings, chart_sources = _plan_local(
        local, reports=reports, verify=verify, max_file_bytes=max_file_bytes, repo_id=repo_id)
    warnings = [f"{p}: skipped (an imatrix file, not a model)" for p in skipped] + warnings
    # where the gate refused, the Hub is not asked
    user, (repo_exists, branch_exists, parent, remote) = (None, (False, False, None, {})) if refusals else (
        whoami(api, repo_id), _remote_state(api, repo_id=repo_id, branch=branch, create_pr=create_pr))
    if private and repo_exists:
        warnings.append(Text(Setting("private", True), f" has no effect: {repo_id} exists (change its "
                             "visibility on the Hub)"))
    foreign = create_pr and repo_exists and repo_id.split("/")[0] not in namespaces(api, repo_id)
    if foreign:
        chart_sources.clear()
        refusals += _foreign_refusals(models, repo_id)
    placement = _placement(models, remote)
    refusals += [Refusal(p, why) for p, why in placement.refusals]
    warnings += placement.warnings
    files += [_chart_file(path_in_repo, local_path) for path_in_repo, local_path in sorted(chart_sources.items())]
    others = _other_ggufs(files, remote)
    text = _card_text(api, repo_id=repo_id, parent=parent, models=models, foreign=foreign,
                      picks=placement.picks, verify=verify, others=others, branch=branch,
                      base_model=base_model)
    files.append(_blob_file("README.md", "card", text.encode()))
    files = _settle(files, remote, refused=bool(refusals))
    message, description = _commit_text(models, files, verify=verify, repo_id=repo_id)
    return PushPlan(
        repo_id=repo_id, endpoint=api.endpoint, revision=branch, create_pr=create_pr, private=private,
        verify=verify, user=user, repo_exists=repo_exists, branch_exists=branch_exists,
        parent_commit=parent, models=tuple(models), files=tuple(files), refusals=tuple(refusals),
        warnings=tuple(warnings), other_files=others, card=text, commit_message=message,
        commit_description=description, chart_sources=tuple(sorted(chart_sources.items())),
        picks=placement.picks)


def _placement(models: list[ModelEntry], remote: dict[str, RemoteFile]) -> Any:
    """Where the pushed models sit among the repo's files (sidecars.check_placement)."""
    pushed = {f.path for m in models for f in m.files}
    return check_placement(sorted(set(remote) | pushed), layouts={m.name: m.layout or "" for m in models},
                           pushed=pushed)


def _other_ggufs(files: list[PlannedFile], remote: dict[str, RemoteFile]) -> tuple[RemoteFile, ...]:
    """The GGUFs already in the repo that this push neither sends nor replaces."""
    ours = {f.path_in_repo for f in files} | {"README.md"}
    return tuple(r for p, r in sorted(remote.items()) if p.endswith(".gguf") and p not in ours)


def _check_push_args(paths: Sequence[str | os.PathLike[str]], *, repo_id: str, base_model: str | None) -> None:
    _check_repo_id(repo_id)
    if base_model is not None and not naming.REPO_ID_RE.match(base_model):
        raise UsageError(Setting("base_model"), f" {base_model!r} is not OWNER/NAME")
    if not paths:
        raise UsageError("nothing to push: give GGUF files or folders")


def _check_repo_id(repo_id: str) -> None:
    if not naming.REPO_ID_RE.match(repo_id):
        raise UsageError(Setting("repo_id"), f" {repo_id!r} is not OWNER/NAME")


def _plan_local(local: list[list[_Local]], *, reports: list[_Report], verify: bool, max_file_bytes: int,
                repo_id: str) -> tuple[list[ModelEntry], list[PlannedFile], list[Refusal], list[str],
                                       dict[str, str]]:
    """The local half of a push plan: one entry per model, its files, the gate's refusals and
    warnings, and the charts the check reports bring (path in repo -> local path)."""
    refusals: list[Refusal] = []
    warnings: list[str] = []
    models: list[ModelEntry] = []
    files: list[PlannedFile] = []
    chart_sources: dict[str, str] = {}
    for group in local:
        # A trunk-only quant is judged with the repo's sidecars below (sidecars.check_placement).
        entry, group_files, group_refusals, charts = _plan_model(
            group, reports=reports, verify=verify, max_file_bytes=max_file_bytes, allow_trunk_only=True)
        refusals += group_refusals
        files += group_files
        chart_sources.update(charts)
        if entry is not None:
            models.append(entry)
            if naming.SIDECAR_PREFIX in PurePosixPath(entry.name).name.lower() and entry.layout != "mtp-only":
                warnings.append(f"{entry.name}: names containing '{naming.SIDECAR_PREFIX}' are skipped by "
                                "`llama-server -hf` (reserved for MTP sidecar files)")
    if not any(m.layout == "mtp-only" for m in models):  # decided here, before asking the Hub
        refusals += [Refusal(m.name, f"has no MTP head (no nextn tensors) and the push has no {naming.SIDECAR_PREFIX} sidecar "
                             "for it: graft one (mtpgraft attach) or push it with its sidecar")
                     for m in models if m.layout == "trunk-only"]
    tags = [m.quant for m in models if m.quant and m.layout != "mtp-only"]
    for t in sorted({t for t in tags if tags.count(t) > 1}):
        warnings.append(f"several files have quant type {t}: `llama-server -hf {repo_id}:{t}` "
                        "picks only one of them")
    return models, files, refusals, warnings, chart_sources


def _foreign_refusals(models: list[ModelEntry], repo_id: str) -> list[Refusal]:
    return [Refusal(m.name, f"a pull request to {repo_id.split('/')[0]}'s repo sends only MTP "
                    f"sidecars ({naming.SIDECAR_PREFIX}*.gguf, MTP-only); push quants to a repo of yours")
            for m in models if m.layout != "mtp-only"]


def _settle(files: list[PlannedFile], remote: dict[str, RemoteFile], *, refused: bool) -> list[PlannedFile]:
    """Each file's status against the repo's; "unknown" where the gate refused and the Hub was not asked."""
    if refused:  # nothing is compared or sent
        return [f if f.status == "refused" else _replace(f, status="unknown") for f in files]
    return [_compare(f, remote.get(f.path_in_repo)) for f in files]


def _blob_file(path_in_repo: str, kind: str, data: bytes, **kw: Any) -> PlannedFile:
    return PlannedFile(path_in_repo, kind, len(data), hashlib.sha256(data).hexdigest(), "new",
                       git_oid=_git_blob_oid(data), **kw)


def _chart_file(path_in_repo: str, local_path: str) -> PlannedFile:
    return _blob_file(path_in_repo, "chart", Path(local_path).read_bytes(), local_path=local_path,
                      mtime_ns=os.stat(local_path).st_mtime_ns)


def _card_text(api: HfApi, *, repo_id: str, parent: str | None, models: list[ModelEntry], foreign: bool,
               picks: Any, verify: bool, others: tuple[RemoteFile, ...], branch: str,
               base_model: str | None) -> str:
    """The repo's README.md: its own with a sidecar section for a foreign pull request, else ours."""
    from . import card as cardmod

    if foreign:
        return cardmod.with_sidecar_section(_remote_readme(api, repo_id, parent), repo_id=repo_id,
                                            sidecars=[m for m in models if m.layout == "mtp-only"],
                                            picks=picks)
    return cardmod.render_card(repo_id=repo_id, models=models, verified=verify,
                               other_files=others, revision=branch, base_model=base_model)


def render_local_card(paths: Sequence[str | os.PathLike[str]], *, repo_id: str = "OWNER/REPO",
                      report_dirs: Sequence[str | os.PathLike[str]] = (),
                      base_model: str | None = None) -> tuple[str, tuple[Refusal, ...]]:
    """The card a push of `paths` would write, made offline (no Hub call), and what the push's gate
    would refuse. Files without a passing check report are shown unmeasured."""
    from . import card as cardmod

    _check_repo_id(repo_id)
    local, _ = _collect(paths)
    reports = [_load_report(Path(d)) for d in report_dirs]
    models: list[ModelEntry] = []
    refusals: list[Refusal] = []
    for group in local:
        entry, _, refused, _ = _plan_model(group, reports=reports, verify=True, max_file_bytes=MAX_FILE_BYTES,
                                           allow_trunk_only=True)
        refusals += refused
        if entry is None:
            raise UsageError(Text("; ").join(str(r) for r in refused))
        models.append(entry)
    text = cardmod.render_card(repo_id=repo_id, models=models, verified=all(m.check for m in models),
                               base_model=base_model)
    return text, tuple(refusals)


@dataclass(frozen=True)
class GateResult:
    files: tuple[str, ...]  # local model files, as they would be named in the repo
    bytes: int
    refusals: tuple[Refusal, ...]


def check_gate(paths: Sequence[str | os.PathLike[str]], *, report_dirs: Sequence[str | os.PathLike[str]] = (),
               max_file_bytes: int = MAX_FILE_BYTES) -> GateResult:
    """The push gate alone, without the Hub: what plan_push would refuse locally (unreadable or
    inconsistent files, no MTP head, too large, no passing check report listing their sha256)."""
    local, _ = _collect(paths)
    reports = [_load_report(Path(d)) for d in report_dirs]
    files: list[PlannedFile] = []
    refusals: list[Refusal] = []
    for group in local:
        _, planned, refused, _ = _plan_model(group, reports=reports, verify=True,
                                             max_file_bytes=max_file_bytes)
        files += planned or [PlannedFile(x.path_in_repo, "model", 0, "", "refused") for x in group]
        refusals += refused
    return GateResult(tuple(f.path_in_repo for f in files), sum(f.size for f in files), tuple(refusals))


@dataclass(frozen=True)
class _Local:
    path: Path
    path_in_repo: str


def _collect(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[list[_Local]], list[str]]:
    """Local GGUFs grouped into models (a split set is one group), in a stable order, and the
    folder entries skipped: imatrix files and anything under a hidden folder (e.g. .cache)."""
    found: dict[str, _Local] = {}
    skipped: list[str] = []

    def add(p: Path, in_repo: str) -> None:
        prev = found.get(in_repo)
        if prev is not None and prev.path.resolve() != p.resolve():
            raise UsageError(f"two files would both be {in_repo} in the repo: {prev.path} and {p}")
        found[in_repo] = _Local(p, in_repo)

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

    groups: dict[str, list[_Local]] = {}
    for in_repo in sorted(found):
        loc = found[in_repo]
        shard = naming.parse_shard(PurePosixPath(in_repo).name)
        key = (str(PurePosixPath(in_repo).parent / shard.prefix) + "\0split") if shard else in_repo
        groups.setdefault(key, []).append(loc)
    return list(groups.values()), skipped


def _plan_model(group: list[_Local], *, reports: list[_Report], verify: bool,
                max_file_bytes: int, allow_trunk_only: bool = False) -> tuple[ModelEntry | None, list[PlannedFile], list[Refusal],
                                              dict[str, str]]:
    from ..gguf_io import GGUFModel
    from ..inspection import inspect_model

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
        planned = [_replace(f, status="refused") for f in planned]

    metadata = {k: model.get(k) for k in CARD_METADATA_KEYS if model.get(k) is not None}
    entry = ModelEntry(
        name=first.path_in_repo, size=sum(sizes.values()),
        files=tuple(FileRef(f.path_in_repo, f.size, f.sha256) for f in planned),
        quant=report.file_type or naming.quant_tag(first.path.name), architecture=report.architecture,
        nextn_predict_layers=report.nextn_predict_layers, mtp_head=_mtp_head(report), layout=report.layout,
        metadata=metadata, check=match, quality=None if refusals else _match_quality(shas, reports),
        runtimes=tuple(report.runtimes))
    return entry, planned, refusals, charts


def _model_files(group: list[_Local], *, hashed: bool) -> tuple[list[PlannedFile], dict[str, str]]:
    """A model's files as planned, and their sha256 (path in repo -> sha256). A file already refused
    is not hashed (`hashed` False): minutes for a big one, and nothing to compare."""
    from ..hashing import sha256_file

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


def _missing_refusals(group: list[_Local]) -> list[Refusal]:
    refusals = []
    for loc in group:
        if not loc.path.is_file():
            shard = naming.parse_shard(loc.path.name)
            refusals.append(Refusal(loc.path_in_repo, f"shard {shard.no} of {shard.count} is "
                                    f"missing ({loc.path})" if shard else "missing"))
    return refusals


def _size_refusals(group: list[_Local], sizes: dict[str, int], max_file_bytes: int) -> list[Refusal]:
    return [Refusal(loc.path_in_repo, (
                f"{_human(sizes[loc.path_in_repo])} is over the {_human(max_file_bytes)} per-file limit: "
                f"split it (llama-gguf-split --split --split-max-size {_human_g(max_file_bytes)} "
                f"{loc.path.name} OUT) and push the shards"))
            for loc in group if sizes[loc.path_in_repo] > max_file_bytes]


def _content_refusals(group: list[_Local], model: Any, report: Any, *, allow_trunk_only: bool) -> list[Refusal]:
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
class _Report:
    check: CheckReport
    quality: QualityReport | None = None  # quality.json beside it (`mtpgraft quality`), if any


def _load_report(d: Path) -> _Report:
    given = Text(Setting("report_dirs"), f" {d}: ")
    check = load_check_report(d, prefix=given)
    q = check.path.with_name(QUALITY_REPORT)
    return _Report(check, load_quality(q, prefix=given) if q.is_file() else None)


def _match_quality(shas: dict[str, str], reports: list[_Report]) -> QualityMatch | None:
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


def _match_check(shas: dict[str, str], reports: list[_Report]) -> tuple[CheckMatch | None, str | Text]:
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


# --------------------------------------------------------------------------- the Hub side


def _remote_readme(api: HfApi, repo_id: str, revision: str | None) -> str:
    """The repo's README.md as it is now ('' when it has none)."""
    from huggingface_hub.errors import EntryNotFoundError

    with hub_errors(api=api, repo_id=repo_id, action="read the model card"):
        try:
            return Path(api.hf_hub_download(repo_id, "README.md", revision=revision)).read_text()
        except EntryNotFoundError:
            return ""


def _remote_state(api: HfApi, *, repo_id: str, branch: str,
                  create_pr: bool) -> tuple[bool, bool, str | None, dict[str, RemoteFile]]:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    with hub_errors(api=api, repo_id=repo_id, action="read the repo"):
        try:
            head = api.model_info(repo_id, revision=branch).sha
            branch_exists = True
        except RevisionNotFoundError:
            if create_pr:
                raise HubError(f"{repo_id} has no branch {branch!r}: a pull request needs an existing "
                               "target branch (drop ", Setting("create_pr"), " to create the branch)") from None
            head = api.model_info(repo_id).sha  # a new branch starts at main
            branch_exists = False
        except RepositoryNotFoundError:
            if create_pr:
                raise HubError(f"{repo_id} not found on {api.endpoint}: ", Setting("create_pr"), " needs an "
                               "existing repo (check ", Setting("repo_id"), ", or drop ", Setting("create_pr"),
                               " to create it)") from None
            return False, False, None, {}
        remote = _tree(api, repo_id, head or branch)
    return True, branch_exists, head, remote


def _tree(api: HfApi, repo_id: str, revision: str | None) -> dict[str, RemoteFile]:
    from huggingface_hub.hf_api import RepoFile

    out = {}
    for e in api.list_repo_tree(repo_id, revision=revision, recursive=True):
        if isinstance(e, RepoFile):
            out[e.path] = RemoteFile(e.path, e.size, e.lfs.sha256 if e.lfs else None, e.blob_id)
    return out


def _compare(f: PlannedFile, r: RemoteFile | None) -> PlannedFile:
    if f.status == "refused":
        return f
    if r is None:
        return _replace(f, status="new")
    same = (r.sha256 == f.sha256 and r.size == f.size) if r.sha256 else (r.git_oid == f.git_oid)
    remote_sha = r.sha256 if r.sha256 else (f.sha256 if same else None)
    return _replace(f, status="unchanged" if same else "changed", remote_size=r.size, remote_sha256=remote_sha)


def _commit_text(models: list[ModelEntry], files: list[PlannedFile], *, verify: bool,
                 repo_id: str) -> tuple[str, str]:
    from .card import base_model_of, human_size, md, md_code, plain_line

    sending = {f.path_in_repo: f for f in files if f.sends}
    sent_models = [m for m in models if any(f.path in sending for f in m.files)]
    quants: list[str] = []
    for m in sent_models:
        q = m.quant or m.name
        if q not in quants:
            quants.append(q)
    base = next((b for m in models if (b := base_model_of(m.metadata))), None)
    of = base or next((m.metadata.get("general.name") for m in models if m.metadata.get("general.name")),
                      repo_id)
    if sent_models:
        verb = "Add" if all(sending[f.path].status == "new" for m in sent_models for f in m.files
                            if f.path in sending) else "Update"
        noun = "quant" if len(quants) == 1 else "quants"
        message = f"{verb} {', '.join(quants)} MTP GGUF {noun} of {of}"
        message = plain_line(message)  # the title: one line, whatever the names hold
    else:
        message = f"Update model card of {repo_id}"
    rows = ["| File | Size | SHA256 |", "|---|---:|---|"]
    rows += [f"| {md(f.path_in_repo)} | {human_size(f.size)} | {md_code(f.sha256)} |" for f in sending.values()]
    gate = ("Every GGUF passed `mtpgraft check` (matched by sha256)." if verify
            else "Pushed with --no-verify: the GGUFs were not checked with llama-server.")
    return redact(message), redact("\n".join(rows) + "\n\n" + gate + "\n")


# --------------------------------------------------------------------------- small helpers


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _replace(f: PlannedFile, **kw: Any) -> PlannedFile:
    from dataclasses import replace

    return replace(f, **kw)


def _human(n: int) -> str:
    from .card import human_size

    return human_size(n)


def _human_g(n: int) -> str:
    """A size as llama-gguf-split's --split-max-size takes it (whole G or M)."""
    return f"{n // 1000**3}G" if n >= 1000**3 else f"{max(1, n // 1000**2)}M"
