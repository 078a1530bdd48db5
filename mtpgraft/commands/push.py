"""`mtpgraft push`: publish checked MTP GGUFs and sidecars with their model card."""

from __future__ import annotations

from typing import Any

import click

from ..errors import HubError, UsageError, VerdictFailedError
from .common import STATE, cli_text, emit_json, error_boundary, info, show_progress, warn
from .options import base_model_option, check_reports_option, hub_options, standard_options


@click.command("push")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--repo", "repo_id", required=True, metavar="OWNER/NAME", help="The model repo to push to.")
@click.option("--revision", metavar="BRANCH", default=None,
              help="Branch to commit to (created from main if missing). Default: main.")
@click.option("--create-pr", is_flag=True, help="Open a pull request instead of committing to the branch.")
@click.option("--private", is_flag=True, help="Create the repo private (if it does not exist yet).")
@hub_options
@check_reports_option("A `mtpgraft check --report` folder; may be repeated. Each GGUF needs a passing "
                      "result with its sha256.")
@click.option("--no-verify", is_flag=True,
              help="Push without a passing check report (the model card says so).")
@base_model_option("The base model on the card (base_model, base_model_relation: quantized) when the "
                   "GGUFs record none.")
@click.option("--verify-remote", is_flag=True,
              help="After the commit, load every changed :TAG with the real `llama-server -hf` from the "
                   "Hub (as users will) and check that it drafts; exit 1 when one fails.")
@standard_options(dry_run="Print the plan; make no write request.", llama_cpp=True)
@error_boundary
def push_cmd(paths: tuple[str, ...], repo_id: str, revision: str | None, create_pr: bool, private: bool,
         token: str | None, endpoint: str | None, reports: tuple[str, ...], no_verify: bool,
         base_model: str | None, verify_remote: bool, llama_cpp: str | None, dry_run: bool,
         as_json: bool) -> None:
    """Publish GGUF files (or folders of them) with a measured model card, in one commit.

    Plans first with read-only calls (new / changed / unchanged per file, by size and sha256), refuses
    any GGUF that fails `inspect` or lacks a passing check report, then sends only what the Hub does
    not have, as one commit with README.md, and reads sizes and sha256 back.
    """
    from huggingface_hub.utils import disable_progress_bars

    from ..hub import execute_push, make_api, plan_push

    if not show_progress():
        disable_progress_bars()
    api = make_api(endpoint=endpoint, token=token)
    if verify_remote and (create_pr or (revision or "main") != "main"):
        raise UsageError("--verify-remote loads the repo as `llama-server -hf` does, from main: it cannot "
                         "check a pull request or another branch")
    plan = plan_push(list(paths), repo_id=repo_id, api=api, revision=revision, create_pr=create_pr,
                     private=private, report_dirs=list(reports), verify=not no_verify,
                     base_model=base_model)
    for w in plan.warnings:
        warn(w)
    if dry_run or plan.refused:
        _show_plan(plan, dry_run=dry_run, as_json=as_json)
        return
    if not as_json and not STATE.quiet:
        for line in _plan_lines(plan, dry_run=False):
            info(line)
    result = execute_push(plan, api=api)
    checks = _verify_remote(plan, token=token, llama_cpp=llama_cpp) if verify_remote else []
    if as_json:
        emit_json({"dry_run": False, "plan": plan.to_dict(), "result": result.to_dict(),
                   **({"verify_remote": [_check_dict(c) for c in checks]} if verify_remote else {})})
    else:
        _show_result(result, checks, repo_id=repo_id, revision=plan.revision)
    _exit_on_failed(checks)


def _show_plan(plan: Any, *, dry_run: bool, as_json: bool) -> None:
    """The plan on stdout; a HubError with the gate's refusals when it refused."""
    if as_json:
        emit_json({"dry_run": dry_run, "plan": plan.to_dict()})
    else:
        for line in _plan_lines(plan, dry_run=dry_run):
            click.echo(cli_text(line))
    if plan.refused:
        raise HubError(plan.refusal_message())


def _show_result(result: Any, checks: list[Any], *, repo_id: str, revision: str) -> None:
    """What a push sent (or that the repo already had it all), and each verify-remote check."""
    if result.commit_oid is None:
        click.echo(f"{repo_id}@{revision}: already up to date; nothing sent "
                   f"({len(result.verified)} files read back with matching sha256)")
    else:
        click.echo(f"pushed {len(result.sent)} file(s) to {repo_id} in commit {result.commit_oid[:12]} "
                   f"({len(result.verified)} files read back with matching sha256)")
        click.echo(result.pr_url or result.commit_url or "")
    for c in checks:
        acc = c.result.acceptance
        click.echo(f"verify-remote {repo_id}:{c.tag}: {c.result.verdict}, acceptance "
                   f"{'–' if acc is None else f'{acc:.2f}'} ({'; '.join(c.resolution.lines())})")


def _verify_remote(plan: Any, *, token: str | None, llama_cpp: str | None) -> list[Any]:
    from ..check import resolve_server
    from ..hub.remote import verify_remote

    tags = plan.verify_tags()
    if not tags:
        warn("--verify-remote: no :TAG of this repo changed what llama-server -hf loads; nothing checked")
        return []
    info(f"verify-remote: loading {', '.join(tags)} from {plan.endpoint} with llama-server -hf")
    return verify_remote(plan.repo_id, tags, server=resolve_server(llama_cpp), endpoint=plan.endpoint,
                         token=token)


def _check_dict(c: Any) -> dict[str, Any]:
    return {"tag": c.tag, "verdict": c.result.verdict, "acceptance": c.result.acceptance,
            "reasons": list(c.result.reasons), "resolved": c.resolution.to_dict()}


def _exit_on_failed(checks: list[Any]) -> None:
    """A verify-remote check that failed is a failed result (exit 1), with or without --json."""
    bad = [c for c in checks if not c.passed]
    if bad:
        raise VerdictFailedError("verify-remote: the published repo does not pass its check: "
                                 + "; ".join(f"{c.tag}: {'; '.join(c.result.reasons) or c.result.verdict}"
                                             for c in bad))


def _plan_lines(plan: Any, *, dry_run: bool) -> list[str]:
    from ..hub.markdown import human_size

    where = "repo will be created" if not plan.repo_exists and not plan.refused else (
        "branch will be created" if plan.repo_exists and not plan.branch_exists else "")
    head = f"push to {plan.repo_id} (branch {plan.revision}{'; ' + where if where else ''}"
    head += "; as a pull request" if plan.create_pr else ""
    head += f"; as {plan.user})" if plan.user else ")"
    lines = [head]
    checks = {f.path: m.check for m in plan.models for f in m.files}
    width = max((len(f.path_in_repo) for f in plan.files), default=10)
    for f in plan.files:
        note = ""
        c = checks.get(f.path_in_repo)
        if f.role == "model":
            if c is not None:
                acc = f", acceptance {c.acceptance * 100:.0f}%" if isinstance(c.acceptance, (int, float)) else ""
                note = f"  check: {c.verdict}{acc}"
            elif not plan.verify:
                note = "  not verified (--no-verify)"
        lines.append(f"  {f.status:<9}  {f.path_in_repo:<{width}}  {human_size(f.size):>9}  "
                     f"sha256 {f.sha256[:12]}{note}")
    for r in plan.refusals:
        lines.append("  refused    " + str(r))
    if plan.refused:
        return lines
    n = len(plan.to_send)
    lines.append(f"to send: {n} file(s), {human_size(plan.bytes_to_send)}"
                 + (" (objects already in Hub storage are skipped)" if n else ""))
    if n:
        lines.append(f"commit: {plan.commit_message}")
    if dry_run:
        lines.append("dry run: nothing was sent")
    return lines
