"""Carry out a PushPlan: create what is missing, one commit pinned to the planned parent, read back."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import HubError
from ..sources.hublimits import bounded
from .client import NO_TOKEN, hub_errors
from .plan import PushPlan, PushResult

if TYPE_CHECKING:
    from huggingface_hub import HfApi


def execute_push(plan: PushPlan, *, api: HfApi) -> PushResult:
    """Send what the plan says, as one commit, then read sizes and sha256 back."""
    from huggingface_hub import CommitOperationAdd

    if plan.refused:
        raise HubError(plan.refusal_message())
    for f in plan.to_send:
        if f.local_path is not None:
            st = os.stat(f.local_path)
            if st.st_size != f.size or st.st_mtime_ns != f.mtime_ns:
                raise HubError(f"{f.local_path} changed since the push was planned: run the push again")
    if not plan.to_send:
        verified = _read_back(api, plan, plan.parent_commit)
        return PushResult(plan.repo_id, plan.revision, None, None, None, (), 0, verified)
    if plan.user is None:
        raise HubError(NO_TOKEN)

    with hub_errors(api=api, repo_id=plan.repo_id, action="push", revision=plan.revision):
        parent = plan.parent_commit
        if not plan.repo_exists:
            api.create_repo(plan.repo_id, private=plan.private or None, exist_ok=True)
            parent = _head(api, plan.repo_id)  # the Hub's initial commit (.gitattributes)
        if not plan.branch_exists and plan.revision != "main":
            api.create_branch(plan.repo_id, branch=plan.revision, revision=parent, exist_ok=True)
        ops = []
        for f in plan.to_send:
            if f.role == "card":
                op = CommitOperationAdd(f.path_in_repo, plan.card.encode())
            else:
                op = CommitOperationAdd(f.path_in_repo, f.local_path)
                op.upload_info.sha256 = bytes.fromhex(f.sha256)  # hashed at plan time: no re-read
            ops.append(op)
        info = api.create_commit(
            plan.repo_id, ops, commit_message=plan.commit_message,
            commit_description=plan.commit_description, revision=plan.revision,
            create_pr=plan.create_pr, parent_commit=parent)
    verified = _read_back(api, plan, info.oid)
    return PushResult(plan.repo_id, plan.revision, info.oid, info.commit_url, info.pr_url,
                      tuple(f.path_in_repo for f in plan.to_send), plan.bytes_to_send, verified)


def _head(api: HfApi, repo_id: str) -> str | None:
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        with bounded():
            return api.model_info(repo_id).sha
    except RevisionNotFoundError:  # a repo created without any commit
        return None


def _read_back(api: HfApi, plan: PushPlan, revision: str | None) -> tuple[str, ...]:
    """Compare the Hub's size and sha256 of every planned file with the local ones."""
    from huggingface_hub.errors import RevisionNotFoundError
    from huggingface_hub.hf_api import RepoFile

    revision = revision or (None if plan.create_pr else plan.revision)
    if revision is None:
        return ()
    paths = [f.path_in_repo for f in plan.files]
    with hub_errors(api=api, repo_id=plan.repo_id, action="read the pushed files back"), bounded():
        try:
            entries = api.get_paths_info(plan.repo_id, paths, revision=revision)
        except RevisionNotFoundError:
            if plan.create_pr:
                raise
            # a server that resolves only branch names: the branch as it is now
            revision = plan.revision
            entries = api.get_paths_info(plan.repo_id, paths, revision=revision)
        got = {e.path: e for e in entries if isinstance(e, RepoFile)}
    bad = []
    for f in plan.files:
        e = got.get(f.path_in_repo)
        if e is None:
            bad.append(f"{f.path_in_repo} is missing")
        elif e.size != f.size:
            bad.append(f"{f.path_in_repo} is {e.size} bytes on the Hub, {f.size} here")
        elif e.lfs is not None and e.lfs.sha256 != f.sha256:
            bad.append(f"{f.path_in_repo} has sha256 {e.lfs.sha256[:12]}… on the Hub, {f.sha256[:12]}… here")
        elif e.lfs is None and e.blob_id != f.git_oid:
            bad.append(f"{f.path_in_repo} differs on the Hub (git blob {e.blob_id[:12]}…)")
    if bad:
        raise HubError(f"read-back after the commit on {plan.repo_id}@{revision[:12]} failed: "
                       + "; ".join(bad) + " (run the push again to re-upload)")
    return tuple(paths)
