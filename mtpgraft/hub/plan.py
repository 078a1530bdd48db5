"""Plan a push with read-only Hub calls: each file new, changed or unchanged against the repo's tree,
the card and the commit text, on top of the local gate (hub/gate.py), as a PushPlan (hub/types.py).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from .. import naming
from ..errors import HubError, Setting, Text, UsageError, redact
from ..sources.hublimits import bounded
from .card import base_model_of, render_card, with_sidecar_section
from .client import hub_errors, namespaces, whoami
from .gate import (
    CARD_METADATA_KEYS,
    CHART_DIR,
    MAX_FILE_BYTES,
    GateReport,
    LocalFile,
    check_gate,
    collect_local,
    load_gate_report,
    plan_model,
)
from .markdown import human_size, md, md_code, plain_line
from .sidecars import check_placement
from .types import (
    CheckMatch,
    FileRef,
    GateResult,
    ModelEntry,
    PlannedFile,
    PushPlan,
    PushResult,
    QualityMatch,
    Refusal,
    RemoteFile,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

# The types (hub/types.py) and the gate (hub/gate.py) are importable from here, as before the split.
__all__ = [
    "CARD_METADATA_KEYS", "CHART_DIR", "MAX_FILE_BYTES", "CheckMatch", "FileRef", "GateResult", "ModelEntry",
    "PlannedFile", "PushPlan", "PushResult", "QualityMatch", "Refusal", "RemoteFile", "check_gate", "plan_push",
    "render_local_card",
]

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
    local, skipped = collect_local(paths)
    reports = [load_gate_report(Path(d)) for d in report_dirs]
    models, files, refusals, warnings, chart_sources = _plan_local(
        local, reports=reports, verify=verify, max_file_bytes=max_file_bytes, repo_id=repo_id)
    warnings = [f"{p}: skipped (an imatrix file, not a model)" for p in skipped] + warnings
    with bounded():  # every Hub answer read here under the time and size limits of sources/hublimits
        return _plan_remote(api, repo_id=repo_id, branch=branch, create_pr=create_pr, private=private,
                            verify=verify, base_model=base_model, models=models, files=files,
                            refusals=refusals, warnings=warnings, chart_sources=chart_sources)


def _plan_remote(api: HfApi, *, repo_id: str, branch: str, create_pr: bool, private: bool, verify: bool,
                 base_model: str | None, models: list[ModelEntry], files: list[PlannedFile],
                 refusals: list[Refusal], warnings: list[Any], chart_sources: dict[str, str]) -> PushPlan:
    """The read-only Hub half of plan_push: who pushes, what the repo holds, the card and the commit."""
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


def _plan_local(local: list[list[LocalFile]], *, reports: list[GateReport], verify: bool, max_file_bytes: int,
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
        entry, group_files, group_refusals, charts = plan_model(
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
        return [f if f.status == "refused" else replace(f, status="unknown") for f in files]
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
    if foreign:
        return with_sidecar_section(_remote_readme(api, repo_id, parent), repo_id=repo_id,
                                    sidecars=[m for m in models if m.layout == "mtp-only"], picks=picks)
    return render_card(repo_id=repo_id, models=models, verified=verify, other_files=others, revision=branch,
                       base_model=base_model)


def render_local_card(paths: Sequence[str | os.PathLike[str]], *, repo_id: str = "OWNER/REPO",
                      report_dirs: Sequence[str | os.PathLike[str]] = (),
                      base_model: str | None = None) -> tuple[str, tuple[Refusal, ...]]:
    """The card a push of `paths` would write, made offline (no Hub call), and what the push's gate
    would refuse. Files without a passing check report are shown unmeasured."""
    _check_repo_id(repo_id)
    local, _ = collect_local(paths)
    reports = [load_gate_report(Path(d)) for d in report_dirs]
    models: list[ModelEntry] = []
    refusals: list[Refusal] = []
    for group in local:
        entry, _, refused, _ = plan_model(group, reports=reports, verify=True, max_file_bytes=MAX_FILE_BYTES,
                                          allow_trunk_only=True)
        refusals += refused
        if entry is None:
            raise UsageError(Text("; ").join(str(r) for r in refused))
        models.append(entry)
    text = render_card(repo_id=repo_id, models=models, verified=all(m.check for m in models),
                       base_model=base_model)
    return text, tuple(refusals)


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
        return replace(f, status="new")
    same = (r.sha256 == f.sha256 and r.size == f.size) if r.sha256 else (r.git_oid == f.git_oid)
    remote_sha = r.sha256 if r.sha256 else (f.sha256 if same else None)
    return replace(f, status="unchanged" if same else "changed", remote_size=r.size, remote_sha256=remote_sha)


def _commit_text(models: list[ModelEntry], files: list[PlannedFile], *, verify: bool,
                 repo_id: str) -> tuple[str, str]:
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



def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
