"""The recipe file: TOML tables parsed into a frozen Recipe. Every error names the file, table and key.

Values a stage validates (quant types, MTP type policies, split sizes, output names, check settings,
repo ids) are checked by that stage's own validator; this module only checks shapes and types."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..check import settings_problem
from ..errors import MtpgraftError, RecipeError
from ..ggml_types import canonical_file_type as canonical_type
from ..naming import REPO_ID_RE
from ..parsing import plain_name
from ..quantize import check_mtp_policy, name_problem, parse_size, types_needing_imatrix
from ..runtimes import check_runtime

# The largest value of each integer key: far above any real use, far below what would size a loop or
# an allocation without bound (reps = 1e17 once ran out of memory after work had started). Any other
# integer key takes at most MAX_INT; every number is finite and at most MAX_NUMBER in size.
INT_MAX = {"reps": 1000, "n_predict": 1 << 15, "ctx": 1 << 22, "context_depth": 1 << 22, "chunks": 1 << 20,
           "batch": 1 << 22, "threads": 4096, "jobs": 256, "per_category": 1 << 20, "n_max": 64,
           "seed": 2**32 - 1}
MAX_INT = 1 << 31
MAX_NUMBER = 1e6

TABLES = ("model", "imatrix", "quantize", "check", "quality", "hub", "run")
# Every kind of step, in the order the pipeline runs them: the one list (recipe.pipeline orders its
# rules by it; each Step class names its own kind; [resources] takes these keys).
STEP_KINDS = ("graft", "imatrix", "quantize", "check", "quality", "push")
PER_TYPE = "quantize"  # the kind with one step per [quantize] type (quantize:Q4_K_M); the others have one


@dataclass(frozen=True)
class ModelSection:
    name: str
    base: str
    mtp_from: str | None = None
    graft_mtp_type: str | None = None
    replace_mtp: bool = False


@dataclass(frozen=True)
class ImatrixSection:
    calibration: str | None = None
    file: str | None = None
    ctx: int | None = None
    chunks: int | None = None
    batch: int | None = None
    threads: int | None = None
    extra_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuantizeSection:
    types: tuple[str, ...]
    mtp_type: str | tuple[tuple[str, str], ...] = "q8_0"
    split_max_size: str | None = None
    allow_requantize: bool = False
    jobs: int = 1
    threads: int | None = None
    out_dir: str = "quants"

    def mtp_policy(self) -> str | dict[str, str]:
        return self.mtp_type if isinstance(self.mtp_type, str) else dict(self.mtp_type)


@dataclass(frozen=True)
class CheckSection:
    enabled: bool = True
    types: tuple[str, ...] | None = None
    n_max: tuple[int, ...] = (3,)
    reps: int = 1
    temperatures: tuple[float, ...] = (0.0,)
    seed: int = 0
    n_predict: int = 128
    ctx: int = 4096
    categories: tuple[str, ...] | None = None
    per_category: int | None = None
    prompts: str | None = None
    min_acceptance: float = 0.3
    min_speedup: float | None = None
    server_args: tuple[str, ...] = ()
    mode: str = "auto"  # chat / raw / auto (chat when the GGUF has a chat template)
    reasoning: tuple[str, ...] = ()  # thinking settings measured side by side: "on", "off"
    context_depth: tuple[int, ...] = (0,)
    p_min: tuple[float, ...] = ()  # --spec-draft-p-min values (none: llama-server's default)

    def settings(self) -> dict[str, Any]:
        """The settings check validates (check.settings_problem), under check's names."""
        return {"n_max": self.n_max, "temperatures": self.temperatures, "reps": self.reps,
                "per_category": self.per_category, "n_predict": self.n_predict, "ctx_size": self.ctx,
                "min_acceptance": self.min_acceptance, "min_speedup": self.min_speedup,
                "context_depth": self.context_depth, "p_min": self.p_min or (None,), "mode": self.mode,
                "reasoning": self.reasoning}


@dataclass(frozen=True)
class QualitySection:
    """[quality]: llama-perplexity KL divergence of each quant against the graft output."""

    enabled: bool = True
    types: tuple[str, ...] | None = None  # default: every [quantize] type
    text: str | None = None  # default: the built-in small text
    chunks: int | None = None
    ctx: int = 512
    perplexity_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class HubSection:
    repo: str
    dry_run: bool = False
    private: bool = False
    revision: str | None = None
    create_pr: bool = False
    endpoint: str | None = None  # else $HF_ENDPOINT / huggingface.co; the token: $HF_TOKEN or `hf auth login`
    base_model: str | None = None  # OWNER/NAME for the card when the GGUFs record none
    verify_remote: bool = False  # after the commit, load each :TAG with llama-server -hf and check it


@dataclass(frozen=True)
class Resources:
    """What one step asks a cluster scheduler for ([run] resources); None: derived from its settings."""

    cpus: float | None = None
    gpus: float | None = None


@dataclass(frozen=True)
class Recipe:
    path: str
    sha256: str
    model: ModelSection
    quantize: QuantizeSection
    imatrix: ImatrixSection | None = None
    check: CheckSection | None = None
    hub: HubSection | None = None
    work_dir: str = ""
    quality: QualitySection | None = None
    llama_cpp: str | None = None
    resources: tuple[tuple[str, Resources], ...] = ()
    runtime: str = "mainline"  # [run] runtime: whose llama.cpp tools every step runs (runtimes.py)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def base_dir(self) -> Path:
        return Path(self.path).parent

    def input_path(self, value: str) -> Path:
        """A recipe path (relative to the recipe file) as a Path; builtins are resolved elsewhere."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def check_types(self) -> tuple[str, ...]:
        return self._types(self.check)

    def quality_types(self) -> tuple[str, ...]:
        return self._types(self.quality)

    def _types(self, s: CheckSection | QualitySection | None) -> tuple[str, ...]:
        """The types a [check] or [quality] covers: its own list, else every [quantize] type."""
        if s is None or not s.enabled:
            return ()
        return s.types if s.types is not None else self.quantize.types

    def resources_for(self, kind: str) -> Resources:
        return dict(self.resources).get(kind, Resources())

    def steps(self) -> tuple[str, ...]:
        """Every step id, in the order the pipeline runs them: each kind whose table the recipe has, and
        a quantize step per type."""
        has = {"graft": True, "imatrix": self.imatrix is not None, "quantize": True, "check": bool(self.check_types()),
               "quality": bool(self.quality_types()), "push": self.hub is not None}
        return tuple(sid for kind in STEP_KINDS if has[kind]
                     for sid in ([f"{kind}:{t}" for t in self.quantize.types] if kind == PER_TYPE else [kind]))


class _Section:
    """Typed access to one TOML table; every error names the file, the table and the key."""

    def __init__(self, where: str, table: str, data: Any, known: Sequence[str]) -> None:
        self.where, self.table = where, table
        if not isinstance(data, dict):
            self.fail(None, f"must be a table ([{table}]), got {type(data).__name__}")
        self.data = data
        unknown = [k for k in data if k not in known]
        if unknown:
            self.fail(unknown[0], f"unknown key (known: {', '.join(known)})")

    def fail(self, key: str | None, msg: str) -> None:
        at = f"[{self.table}]" + (f" {key}" if key else "")
        raise RecipeError(f"{self.where}: {at}: {msg}")

    def get(self, key: str, kind: type) -> Any:
        v = self.data[key]
        if kind is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        if isinstance(v, kind) and (kind is bool or not isinstance(v, bool)):
            if kind is str and not v.strip():
                self.fail(key, "must not be empty")
            if kind is int and v < 1 and key != "seed":
                self.fail(key, f"must be >= 1, got {v}")
            if kind in (int, float):
                self.bounded(key, v)
            return v
        words = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        self.fail(key, f"must be {words[kind]}, got {v!r}")

    def str_list(self, key: str) -> tuple[str, ...]:
        v = self.data[key]
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.fail(key, f"must be a list of strings, got {v!r}")
        return tuple(v)

    def num_list(self, key: str, kind: type) -> tuple[Any, ...]:
        v = self.data[key]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v]
        ok = isinstance(v, list) and v and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and (kind is float or isinstance(x, int))
            for x in v)
        if not ok:
            self.fail(key, f"must be a non-empty list of {'integers' if kind is int else 'numbers'}, got {v!r}")
        for x in v:
            self.bounded(key, x)
        return tuple(kind(x) for x in v)

    def bounded(self, key: str, v: float) -> None:
        """Refuse a number no run could use (INT_MAX, MAX_INT, MAX_NUMBER) before anything is planned."""
        if isinstance(v, int):
            hi = INT_MAX.get(key, MAX_INT)
            if v > hi:
                self.fail(key, f"must be <= {hi:,}, got {v:,}")
        elif not math.isfinite(v) or abs(v) > MAX_NUMBER:
            self.fail(key, f"must be a finite number of at most {MAX_NUMBER:g} in size, got {v}")

    def checked(self, key: str, validate: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a stage's validator; its error becomes this key's error."""
        try:
            return validate(*args, **kwargs)
        except MtpgraftError as e:
            self.fail(key, str(e))


# How a section's field is read, by its annotation (the dataclass is the table of keys and defaults).
_READ = {"str": str, "str | None": str, "int": int, "int | None": int, "bool": bool, "float": float,
         "float | None": float, "tuple[str, ...]": "strs", "tuple[str, ...] | None": "strs",
         "tuple[int, ...]": "ints", "tuple[float, ...]": "floats"}


def _read(where: str, table: str, data: Any, cls: type, *, keys: dict[str, str] | None = None,
          required: Sequence[str] = (), special: Sequence[str] = ()) -> tuple[_Section, dict[str, Any]]:
    """Read a table into `cls`'s fields by their types; `special` fields are left to the caller."""
    keys = keys or {}
    fields = dataclasses.fields(cls)
    sec = _Section(where, table, data, [keys.get(f.name, f.name) for f in fields])
    kw: dict[str, Any] = {}
    for f in fields:
        key = keys.get(f.name, f.name)
        if key in required and key not in sec.data:
            sec.fail(key, "is required")
        if f.name in special or key not in sec.data:
            continue
        how = _READ[str(f.type)]
        kw[f.name] = (sec.str_list(key) if how == "strs" else sec.num_list(key, int) if how == "ints"
                      else sec.num_list(key, float) if how == "floats" else sec.get(key, how))  # type: ignore[arg-type]
    return sec, kw


def parse_recipe(text: str, *, path: str | os.PathLike[str] = "<recipe>",
                 work_dir: str | os.PathLike[str] | None = None) -> Recipe:
    """Parse recipe TOML text into a frozen Recipe; RecipeError names the bad table and key."""
    where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{where}: not valid TOML: {e}") from None
    for k in data:
        if k not in TABLES:
            raise RecipeError(f"{where}: unknown table [{k}] (known: {', '.join(f'[{x}]' for x in TABLES)})")
    if "model" not in data:
        raise RecipeError(f"{where}: [model] is required (name, base)")
    if "quantize" not in data:
        raise RecipeError(f"{where}: [quantize] is required (types)")
    model = _model(*_read(where, "model", data["model"], ModelSection, required=("name", "base")))
    imatrix = _imatrix(*_read(where, "imatrix", data["imatrix"], ImatrixSection)) if "imatrix" in data else None
    r, run = _read(where, "run", data.get("run", {}), _Run, special=("resources",))
    runtime = r.checked("runtime", check_runtime, run.get("runtime") or "mainline")
    quant = _quantize(*_read(where, "quantize", data["quantize"], QuantizeSection,
                             special=("types", "mtp_type")), imatrix, runtime)
    check = _check(*_read(where, "check", data["check"], CheckSection, keys={"temperatures": "temperature"},
                          special=("types",)), quant) if "check" in data else None
    hub = _hub(*_read(where, "hub", data["hub"], HubSection, required=("repo",)), quant, check) \
        if "hub" in data else None
    quality = _quality(*_read(where, "quality", data["quality"], QualitySection, special=("types",)), quant) \
        if "quality" in data else None
    wd = str(work_dir) if work_dir is not None else (run.get("work_dir") or f"mtpgraft-work/{model.name}")
    return Recipe(path=str(path), sha256=hashlib.sha256(text.encode()).hexdigest(), model=model,
                  quantize=quant, imatrix=imatrix, check=check, hub=hub, quality=quality,
                  work_dir=str(Path(wd).expanduser().absolute()), llama_cpp=run.get("llama_cpp"),
                  resources=_resources(r), runtime=runtime)


@dataclass(frozen=True)
class _Run:  # the [run] keys
    work_dir: str | None = None
    llama_cpp: str | None = None
    resources: Any = None
    runtime: str | None = None


def _model(m: _Section, kw: dict[str, Any]) -> ModelSection:

    problem = name_problem(kw["name"])
    if problem:
        m.fail("name", problem)
    m.checked("name", plain_name, kw["name"], "the model name", error=RecipeError)
    return ModelSection(**kw)


def _imatrix(s: _Section, kw: dict[str, Any]) -> ImatrixSection:
    if bool(kw.get("calibration")) == bool(kw.get("file")):
        s.fail(None, "give exactly one of calibration (a text file to compute it from) or file "
                     "(an existing imatrix)")
    return ImatrixSection(**kw)


def _quantize(q: _Section, kw: dict[str, Any], imatrix: ImatrixSection | None,
              runtime: str = "mainline") -> QuantizeSection:

    raw_types = q.str_list("types") if "types" in q.data else ()
    if not raw_types:
        q.fail("types", "is required: a list of llama-quantize types, e.g. [\"Q4_K_M\", \"Q8_0\"]")
    types = tuple(dict.fromkeys(q.checked("types", canonical_type, t, runtime) for t in raw_types))
    raw = q.data.get("mtp_type", QuantizeSection.mtp_type)
    if isinstance(raw, str):
        kw["mtp_type"] = q.checked("mtp_type", check_mtp_policy, raw, what="mtp_type")
    elif isinstance(raw, dict):
        pairs = []
        for k, v in raw.items():
            if not isinstance(v, str):
                q.fail(f"mtp_type.{k}", f"must be a string, got {v!r}")
            key = "default" if k.lower() == "default" else q.checked(f"mtp_type.{k}", canonical_type, k, runtime)
            if key != "default" and key not in types:
                q.fail(f"mtp_type.{k}", f"{key} is not one of the recipe's types")
            pairs.append((key, q.checked(f"mtp_type.{k}", check_mtp_policy, v, what="mtp_type")))
        kw["mtp_type"] = tuple(pairs)
    else:
        q.fail("mtp_type", f"must be a string or a table, got {raw!r}")
    if kw.get("split_max_size") is not None:
        q.checked("split_max_size", parse_size, kw["split_max_size"])
    needy = types_needing_imatrix(types, runtime)
    if needy and imatrix is None:
        q.fail("types", f"{', '.join(needy)} need an importance matrix: add an [imatrix] section "
                        "(calibration = \"file.txt\")")
    return QuantizeSection(types=types, **kw)


# the recipe's [check] keys under check.settings_problem's names
_CHECK_KEYS = {"ctx_size": "ctx", "temperatures": "temperature"}


def _types_subset(s: _Section, kw: dict[str, Any], quant: QuantizeSection) -> None:
    """A step's `types`: canonical names, each one of [quantize] types."""

    if "types" in s.data:
        kw["types"] = tuple(s.checked("types", canonical_type, t) for t in s.str_list("types"))
        stray = [t for t in kw["types"] if t not in quant.types]
        if stray:
            s.fail("types", f"{', '.join(stray)} not in [quantize] types")


def _check(c: _Section, kw: dict[str, Any], quant: QuantizeSection) -> CheckSection:

    _types_subset(c, kw, quant)
    check = CheckSection(**kw)
    bad = settings_problem(**check.settings())
    if bad is not None:
        c.fail(_CHECK_KEYS.get(bad[0], bad[0]), bad[1])
    return check


def _quality(s: _Section, kw: dict[str, Any], quant: QuantizeSection) -> QualitySection:
    _types_subset(s, kw, quant)
    if kw.get("ctx", QualitySection.ctx) < 16:
        s.fail("ctx", "must be at least 16")
    return QualitySection(**kw)


def _hub(h: _Section, kw: dict[str, Any], quant: QuantizeSection, check: CheckSection | None) -> HubSection:

    if not REPO_ID_RE.match(kw["repo"]):
        h.fail("repo", f"must be OWNER/NAME, got {kw['repo']!r}")
    if kw.get("base_model") is not None and not REPO_ID_RE.match(kw["base_model"]):
        h.fail("base_model", f"must be OWNER/NAME, got {kw['base_model']!r}")
    if kw.get("verify_remote") and (kw.get("create_pr") or kw.get("revision") not in (None, "main")):
        h.fail("verify_remote", "loads the repo from main as llama-server -hf does: not with create_pr or "
                                "another revision")
    if check is None or not check.enabled or set(check.types or quant.types) != set(quant.types):
        h.fail(None, "pushing needs a passing check of every type: add a [check] section covering all "
                     "[quantize] types")
    return HubSection(**kw)


def _resources(r: _Section) -> tuple[tuple[str, Resources], ...]:
    """[run] resources = {quantize = {cpus = 8}, check = {gpus = 1}}: what a cluster task asks for."""
    raw = r.data.get("resources", {})
    if not isinstance(raw, dict):
        r.fail("resources", f"must be a table of steps, got {raw!r}")
    out = []
    for step, spec in raw.items():
        if step not in STEP_KINDS:
            r.fail(f"resources.{step}", f"unknown step (known: {', '.join(STEP_KINDS)})")
        s, kw = _read(r.where, f"run.resources.{step}", spec, Resources)
        for k, v in kw.items():
            if v < 0:
                s.fail(k, f"must be >= 0, got {v:g}")
        out.append((step, Resources(**kw)))
    return tuple(out)


def load_recipe(path: str | os.PathLike[str], *, work_dir: str | os.PathLike[str] | None = None) -> Recipe:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe {p}: {e}") from None
    return parse_recipe(text, path=p.absolute(), work_dir=work_dir)
