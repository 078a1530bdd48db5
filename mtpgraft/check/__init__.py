"""The llama-server acceptance and speed check, as a package that shows its pipeline.

plan (what to run, validated, pure) -> measure (servers, requests, /metrics deltas) -> judge
(stats, best n, verdict) -> report (terminal, report.json/md, chart). `records` and `counters` hold
what was measured, `positions` which head drafts each position, `probe` the per-request
speculative-field probe; `servertool` resolves the llama-server, `server` is its process wrapper
(`watch` the watched HTTP exchange), `prompts` the prompt suite; `run` ties measure and judge
together.
"""

from .counters import SpecCounters
from .judge import (
    GATE_CATEGORY,
    SPEEDUP_GREEN,
    SPEEDUP_RED,
    CategorySummary,
    CheckResult,
    ConfigStats,
    MeanStd,
    ModelResult,
    judge_model,
    speed_status,
)
from .measure import SERVER_BASE_ARGS
from .plan import (
    DEFAULT_MIN_ACCEPTANCE,
    DEFAULT_N_MAX,
    DEFAULT_TEMPERATURES,
    CheckPlan,
    ModelSpec,
    ServerConfig,
    plan_check,
    resolve_model,
    settings_problem,
    validate_settings,
)
from .records import Cell, RequestRecord, ServerRun
from .run import execute_check
from .server import M_ACCEPTED, M_DRAFT, M_DRAFTS, M_PER_POS
from .servertool import ServerTool, resolve_server

__all__ = [
    "DEFAULT_MIN_ACCEPTANCE", "DEFAULT_N_MAX", "DEFAULT_TEMPERATURES", "GATE_CATEGORY", "M_ACCEPTED",
    "M_DRAFT", "M_DRAFTS", "M_PER_POS", "SERVER_BASE_ARGS", "SPEEDUP_GREEN", "SPEEDUP_RED",
    "CategorySummary", "Cell", "CheckPlan", "CheckResult", "ConfigStats", "MeanStd", "ModelResult",
    "ModelSpec", "RequestRecord", "ServerConfig", "ServerRun", "ServerTool", "SpecCounters",
    "execute_check", "judge_model", "plan_check", "resolve_model", "resolve_server", "settings_problem",
    "validate_settings",
    "speed_status",
]
