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
    n_max_t = tuple(dict.fromkeys(int(n) for n in n_max))
    if not n_max_t or any(n < 1 for n in n_max_t):
        raise UsageError(f"--n-max values must be >= 1, got {list(n_max)}")
    temps = tuple(dict.fromkeys(float(t) for t in temperatures))
    if not temps or any(t < 0 or not math.isfinite(t) for t in temps):
        raise UsageError(f"--temperature values must be >= 0, got {list(temperatures)}")
    if reps < 1:
        raise UsageError(f"--reps must be >= 1, got {reps}")
    if per_category is not None and per_category < 1:
        raise UsageError(f"--per-category must be >= 1, got {per_category}")
    if n_predict < 8:
        raise UsageError(f"--n-predict must be >= 8, got {n_predict}")
    if ctx_size < 256:
        raise UsageError(f"--ctx must be >= 256, got {ctx_size}")
    if not 0 <= min_acceptance <= 1:
        raise UsageError(f"--min-acceptance must be in [0, 1], got {min_acceptance}")
    if min_speedup is not None and min_speedup <= 0:
        raise UsageError(f"--min-speedup must be > 0, got {min_speedup}")
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
