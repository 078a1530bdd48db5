"""The frozen data a push is planned as and read back in (models, files, refusals, the plan, its
result), low in the import graph: hub/card.py renders it, hub/gate.py and hub/plan.py fill it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .. import naming
from ..errors import Text
from ..runtimes import RUNTIMES


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


@dataclass(frozen=True)
class GateResult:
    files: tuple[str, ...]  # local model files, as they would be named in the repo
    bytes: int
    refusals: tuple[Refusal, ...]
