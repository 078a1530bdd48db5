"""What a recipe step is and runs with, and how any step runs: under its lock, keyed by its settings
and inputs, skipped when recorded as finished with the same key, else run and recorded."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import MtpgraftError, RecipeError, Setting, spelled
from ..hashing import sha256_file
from ..sources.hubimatrix import fetch_imatrix
from ..testmodels import TEST_SET, build_tiny_model
from ..testmodels.calibrated import CALIBRATED_SET, builtin_kwargs
from .schema import HubSection, Recipe, Resources
from .state import State, content_key, now_iso

BUILTIN = "builtin:"
BUILTIN_CALIBRATION = {"calibration-tiny": "calibration-tiny.txt"}
_TINY_RE = re.compile(r"^tiny-(?P<arch>qwen35moe|qwen35)-(?P<variant>.+)$")
Event = Callable[[str, str], None]  # (step id, message)


class StepFailed(MtpgraftError):
    """A step ran and did not produce a verified output (`log_tail`: the tool's last lines)."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


@dataclass
class Context:
    """What a step runs with: the recipe, its work dir's state, the tools, where events go."""

    recipe: Recipe
    llama_cpp: str | None = None
    emit: Event = field(default=lambda s, m: None)
    hub_api: Callable[[HubSection], Any] | None = None
    pin_threads: bool = False  # on a cluster: a quantize uses exactly the CPUs it reserved

    @property
    def state(self) -> State:
        return State(Path(self.recipe.work_dir))

    @property
    def work(self) -> Path:
        return Path(self.recipe.work_dir)

    def upstream(self, step: str, key: str) -> Path:
        """A path an earlier step recorded (the grafted model, the imatrix, a quant's first file)."""
        rec = self.state.get(step)
        if rec is None or rec.status != "done":
            raise RecipeError(f"{step} has not finished in {self.work}")
        return self.state.abs(rec.detail[key])

    def model(self) -> Path:
        return self.upstream("graft", "model")

    def imatrix(self) -> Path | None:
        return self.upstream("imatrix", "imatrix") if self.recipe.imatrix is not None else None

    def quants(self, types: tuple[str, ...]) -> list[Path]:
        return [self.upstream(f"quantize:{t}", "path") for t in types]

    def input(self, table: str, key: str) -> Path:
        """A recipe input file: `builtin:` models and texts, else a path relative to the recipe."""
        spec = getattr(getattr(self.recipe, table), key)
        if spec.startswith(BUILTIN) and key != "file":  # an imatrix file is never built in
            return (resolve_calibration(spec) if key == "calibration"
                    else resolve_builtin_model(spec, self.work / "sources"))
        if key == "file" and spec.startswith("hf://"):  # a published imatrix, fetched once into the cache
            return fetch_imatrix(spec, endpoint=self.recipe.hub.endpoint if self.recipe.hub else None)
        p = self.recipe.input_path(spec)
        if not p.is_file():
            raise RecipeError(f"[{table}] {key}: {p} not found")
        return p


@dataclass(frozen=True)
class Outcome:
    message: str
    outputs: tuple[Path, ...] = ()  # hashed into the record
    detail: dict[str, Any] = field(default_factory=dict)
    record: bool = True  # a push dry run leaves no record: it has not published anything


class Step:
    kind = ""

    def __init__(self, recipe: Recipe, quant_type: str | None = None) -> None:
        self.r, self.type = recipe, quant_type
        self.id = f"{self.kind}:{quant_type}" if quant_type else self.kind

    @property
    def s(self) -> Any:
        """The recipe table this step runs with ([model] for the graft, [hub] for the push)."""
        return getattr(self.r, {"graft": "model", "push": "hub"}.get(self.kind, self.kind))

    def key(self, ctx: Context) -> str:
        """sha256 over the step's id, its settings and the sha256 of each input file."""
        return content_key(self.id, self.params(),
                           {name: sha256_file(p) for name, p in self.inputs(ctx).items()})

    def params(self) -> dict[str, Any]:
        return asdict(self.s)

    def inputs(self, ctx: Context) -> dict[str, Path]:  # a stable name -> the file
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def run(self, ctx: Context) -> Outcome:
        raise NotImplementedError

    def default_resources(self) -> Resources:
        return Resources(cpus=1.0, gpus=0.0)

    def resources(self) -> Resources:
        """What a cluster task for this step asks for: the recipe's [run] resources, else the default."""
        own, default = self.r.resources_for(self.kind), self.default_resources()
        return Resources(cpus=default.cpus if own.cpus is None else own.cpus,
                         gpus=default.gpus if own.gpus is None else own.gpus)


# --------------------------------------------------------------------------- inputs


def resolve_builtin_model(spec: str, dest_dir: Path) -> Path:
    """`builtin:tiny-qwen35-base` (or -full, -full-mixed, -calibrated-full, ...): generate the tiny
    test model (-calibrated-*: testmodels.calibrated, qwen35 only)."""
    name = spec[len(BUILTIN):]
    m = _TINY_RE.match(name)
    variant = m["variant"] if m else ""
    variant = {"full": "full-aligned", "mtp-only": "mtp-only-aligned"}.get(variant, variant)
    calibrated = builtin_kwargs(m["arch"], variant) if m else None
    if not m or (variant not in TEST_SET and calibrated is None):
        known = ", ".join(f"builtin:tiny-qwen35-{v}" for v in ("base", "full", *TEST_SET, *CALIBRATED_SET))
        raise RecipeError(f"unknown built-in model {spec!r} (known: {known}; qwen35moe likewise, "
                          "except calibrated)")
    path = dest_dir / f"{name}.gguf"
    if not path.is_file():
        dest_dir.mkdir(parents=True, exist_ok=True)
        kwargs = calibrated if calibrated is not None else TEST_SET[variant]
        build_tiny_model(path, arch=m["arch"], dtype="f16", **kwargs)  # type: ignore[arg-type]
    return path


def resolve_calibration(spec: str) -> Path:
    """`builtin:calibration-tiny`: the small calibration text shipped with mtpgraft."""
    key = spec[len(BUILTIN):]
    if key not in BUILTIN_CALIBRATION:
        raise RecipeError(f"unknown built-in calibration {spec!r} (known: "
                          f"{', '.join(BUILTIN + k for k in BUILTIN_CALIBRATION)})")
    p = Path(str(resources.files("mtpgraft") / "data" / BUILTIN_CALIBRATION[key]))
    if not p.is_file():
        raise RecipeError(f"{spec}: {p} is missing from the mtpgraft installation")
    return p


# --------------------------------------------------------------------------- running one step


@dataclass(frozen=True)
class StepResult:
    step: str
    status: str  # "done", "finished-before", "failed", "dry-run", "blocked"
    seconds: float = 0.0
    message: str = ""
    outputs: tuple[str, ...] = ()
    log_tail: str = ""
    where: str = ""  # the node that ran it (cluster runs)
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status in ("done", "finished-before", "dry-run")


def execute_step(ctx: Context, step: Step) -> StepResult:
    """Run one step under its lock, unless its record says it is finished with the same key."""
    st, sid = ctx.state, step.id
    with st.lock(sid, lambda: ctx.emit(sid, "waiting: another process is running this step")):
        t0, started = time.perf_counter(), now_iso("microseconds")
        key = ""
        try:
            key = step.key(ctx)
            rec = st.finished(sid, key)
            if rec is not None:
                ctx.emit(sid, "finished before (recorded; inputs unchanged)")
                return StepResult(sid, "finished-before", 0.0, "recorded as finished", tuple(rec.outputs))
            out = step.run(ctx)
        except MtpgraftError as e:
            tail, msg = getattr(e, "log_tail", "") or getattr(e, "output_tail", ""), spelled(e, recipe_setting)
            if key:
                st.record(sid, key, started, time.perf_counter() - t0, [], {"error": msg, "log_tail": tail},
                          status="failed")
            ctx.emit(sid, f"FAILED: {msg}")
            return StepResult(sid, "failed", time.perf_counter() - t0, msg, log_tail=tail)
        if out.record:
            st.record(sid, key, started, time.perf_counter() - t0, out.outputs, out.detail)
        return StepResult(sid, "done" if out.record else "dry-run", time.perf_counter() - t0, out.message,
                          tuple(str(p) for p in out.outputs))


RUN_FLAGS = ("force", "resume", "only", "executor")  # what `mtpgraft run` sets; the rest is recipe keys


def recipe_setting(s: Setting) -> str:
    """A stage's setting as a recipe user sets it: `run`'s flag (--force), else the key (jobs = 2)."""
    if s.name in RUN_FLAGS:
        return f"--{s.name}" + ("" if s.value in (None, True) else f" {s.value}")
    return s.name if s.value is None else f"{s.name} = {json.dumps(s.value)}"
