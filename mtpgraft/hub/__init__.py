"""Publishing to the Hugging Face Hub: plan with read-only calls, gate, one atomic commit, read back.

    api = make_api(endpoint=..., token=...)      # client.py: the one place the client is built
    plan = plan_push(paths, repo_id=..., api=api, report_dirs=[...])   # plan.py: read-only, gated
    result = execute_push(plan, api=api)          # execute.py: one commit, then read back

card.py renders the model card (README.md) from the plan, sections.py each of its sections; client.py
also maps the client's errors to one-line HubErrors.
"""

from __future__ import annotations

from ..naming import REPO_ID_RE
from .client import NO_TOKEN, describe_error, hub_errors, make_api
from .execute import execute_push
from .plan import (
    MAX_FILE_BYTES,
    CheckMatch,
    FileRef,
    GateResult,
    ModelEntry,
    PlannedFile,
    PushPlan,
    PushResult,
    Refusal,
    RemoteFile,
    check_gate,
    plan_push,
)

__all__ = [
    "MAX_FILE_BYTES", "NO_TOKEN", "REPO_ID_RE", "CheckMatch", "FileRef", "GateResult", "ModelEntry",
    "PlannedFile", "PushPlan", "PushResult", "Refusal", "RemoteFile", "check_gate", "describe_error",
    "execute_push", "hub_errors", "make_api", "plan_push",
]
