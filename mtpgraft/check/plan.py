"""The check plan: which models, which llama-server configurations, which prompts.

`plan_check` validates the user's choices and returns a frozen CheckPlan (models x server
configurations x prompts). It is pure: llama-server is found and probed once, by
`server.resolve_server`, and the result (a ServerTool) is passed in.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .prompts import Prompt, builtin_prompts, load_prompts, select_prompts
from .server import ServerTool

DEFAULT_N_MAX = (1, 2, 3, 4)
DEFAULT_TEMPERATURES = (0.0,)
DEFAULT_MIN_ACCEPTANCE = 0.3


@dataclass(frozen=True)
class ModelSpec:
    """A model to check. `path` is what llama-server gets (a split set's first shard)."""

    path: Path
    files: tuple[Path, ...]
    arch: str = ""
    nextn_predict_layers: int = 0

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class ServerConfig:
    """One llama-server process per model: the baseline (n_max None) or MTP with draft depth n_max."""

    n_max: int | None = None

    @property
    def mtp(self) -> bool:
        return self.n_max is not None

    @property
    def label(self) -> str:
        return f"MTP n={self.n_max}" if self.mtp else "baseline"


@dataclass(frozen=True)
class CheckPlan:
    models: tuple[ModelSpec, ...]
    prompts: tuple[Prompt, ...]
    server: ServerTool  # llama-server, resolved once (server.resolve_server)
    draft: Path | None = None
    n_max: tuple[int, ...] = DEFAULT_N_MAX
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    reps: int = 3
    seed: int = 0
    n_predict: int = 128
    ctx_size: int = 4096
    server_args: tuple[str, ...] = ()
    min_acceptance: float = DEFAULT_MIN_ACCEPTANCE
    min_speedup: float | None = None
    prompt_source: str = "built-in"
    warmup: bool = True

    @property
    def spec_type(self) -> str:
        return self.server.spec_type

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.category for p in self.prompts))

    @property
    def configs(self) -> tuple[ServerConfig, ...]:
        return (ServerConfig(None),) + tuple(ServerConfig(n) for n in self.n_max)

    @property
    def n_servers(self) -> int:
        return len(self.models) * len(self.configs)

    @property
    def n_requests(self) -> int:
        """Measured requests (warm-up requests not counted)."""
        return self.n_servers * len(self.temperatures) * self.reps * len(self.prompts)

    def seeds(self) -> tuple[int, ...]:
        return tuple(self.seed + r for r in range(self.reps))

    def settings_dict(self) -> dict[str, Any]:
        return {
            "n_max": list(self.n_max), "temperature": list(self.temperatures), "reps": self.reps,
            "n_predict": self.n_predict, "seed": self.seed, "seeds": list(self.seeds()),
            "ctx_size": self.ctx_size, "categories": list(self.categories),
            "prompts": self.prompt_source, "n_prompts": len(self.prompts),
            "draft": str(self.draft) if self.draft else None, "spec_type": self.spec_type,
            "server_args": list(self.server_args), "llama_server": str(self.server.path),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [{"path": str(m.path), "files": [str(f) for f in m.files], "arch": m.arch,
                        "nextn_predict_layers": m.nextn_predict_layers} for m in self.models],
            "servers": [f"{m.name}: {c.label}" for m in self.models for c in self.configs],
            "n_requests": self.n_requests,
            "settings": self.settings_dict(),
            "thresholds": {"min_acceptance": self.min_acceptance, "min_speedup": self.min_speedup},
        }


def resolve_model(path: str | os.PathLike[str]) -> ModelSpec:
    """Read a model's header; a split set is given by its first shard and lists every shard."""
    from ..gguf_io import GGUFModel

    p = Path(path)
    if not p.is_file():
        raise UsageError(f"model file not found: {p}")
    model = GGUFModel(p)
    arch = str(model.get("general.architecture", ""))
    nextn = model.get(f"{arch}.nextn_predict_layers", 0) if arch else 0
    return ModelSpec(path=model.path, files=tuple(model.paths), arch=arch,
                     nextn_predict_layers=int(nextn or 0))


_FLAGS = {"ctx_size": "--ctx", "temperatures": "--temperature"}


def settings_problem(*, n_max: Sequence[int], temperatures: Sequence[float], reps: int,
                     per_category: int | None, n_predict: int, ctx_size: int, min_acceptance: float,
                     min_speedup: float | None) -> tuple[str, str] | None:
    """(setting, what is wrong) for the first bad check setting, or None (recipes validate with it too)."""
    if not n_max or any(int(n) < 1 for n in n_max):
        return "n_max", f"values must be >= 1, got {list(n_max)}"
    if not temperatures or any(t < 0 or not math.isfinite(t) for t in temperatures):
        return "temperatures", f"values must be >= 0, got {list(temperatures)}"
    for setting, value, low in (("reps", reps, 1), ("per_category", per_category, 1),
                                ("n_predict", n_predict, 8), ("ctx_size", ctx_size, 256)):
        if value is not None and value < low:
            return setting, f"must be >= {low}, got {value}"
    if not 0 <= min_acceptance <= 1:
        return "min_acceptance", f"must be between 0 and 1, got {min_acceptance}"
    if min_speedup is not None and min_speedup <= 0:
        return "min_speedup", f"must be > 0, got {min_speedup}"
    return None


def plan_check(models: Sequence[str | os.PathLike[str]], *, draft: str | os.PathLike[str] | None = None,
               n_max: Sequence[int] = DEFAULT_N_MAX,
               temperatures: Sequence[float] = DEFAULT_TEMPERATURES, reps: int = 3, seed: int = 0,
               prompts: str | os.PathLike[str] | Sequence[Prompt] | None = None,
               categories: Sequence[str] | None = None, per_category: int | None = None,
               n_predict: int = 128, ctx_size: int = 4096, server_args: Sequence[str] = (),
               min_acceptance: float = DEFAULT_MIN_ACCEPTANCE, min_speedup: float | None = None,
               server: ServerTool, warmup: bool = True) -> CheckPlan:
    """Validate the inputs and return the plan; `server` is llama-server as resolve_server found it."""
    if not models:
        raise UsageError("give at least one model")
    bad = settings_problem(n_max=n_max, temperatures=temperatures, reps=reps, per_category=per_category,
                           n_predict=n_predict, ctx_size=ctx_size, min_acceptance=min_acceptance,
                           min_speedup=min_speedup)
    if bad is not None:
        raise UsageError(f"{_FLAGS.get(bad[0], '--' + bad[0].replace('_', '-'))} {bad[1]}")
    n_max_t = tuple(dict.fromkeys(int(n) for n in n_max))
    temps = tuple(dict.fromkeys(float(t) for t in temperatures))
    specs = tuple(resolve_model(m) for m in models)
    draft_path = None
    if draft is not None:
        draft_path = Path(draft)
        if not draft_path.is_file():
            raise UsageError(f"draft file not found: {draft_path}")

    if prompts is None:
        pool, source = builtin_prompts(), "built-in"
    elif isinstance(prompts, (str, os.PathLike)):
        pool, source = load_prompts(prompts), str(prompts)
    else:
        pool, source = list(prompts), "given"
    chosen = select_prompts(pool, categories, per_category)

    return CheckPlan(models=specs, prompts=tuple(chosen), server=server, draft=draft_path,
                     n_max=n_max_t, temperatures=temps, reps=reps, seed=seed, n_predict=n_predict,
                     ctx_size=ctx_size, server_args=tuple(server_args),
                     min_acceptance=min_acceptance, min_speedup=min_speedup,
                     prompt_source=source, warmup=warmup)
