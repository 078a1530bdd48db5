"""The recipe file: TOML tables parsed into a frozen Recipe. Every error names the file, table and key.

Values a stage validates (quant types, MTP type policies, split sizes, output names, check settings,
repo ids) are checked by that stage's own validator; this module only checks shapes and types."""

from __future__ import annotations

import hashlib
import os
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import MtpgraftError, RecipeError

TABLES = ("model", "imatrix", "quantize", "check", "hub", "run")
RESOURCE_STEPS = ("graft", "imatrix", "quantize", "check", "push")


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


@dataclass(frozen=True)
class HubSection:
    repo: str
    dry_run: bool = False
    private: bool = False
    revision: str | None = None
    create_pr: bool = False
    endpoint: str | None = None  # else $HF_ENDPOINT / huggingface.co; the token: $HF_TOKEN or `hf auth login`


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
    llama_cpp: str | None = None
    resources: tuple[tuple[str, Resources], ...] = ()

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
        if self.check is None or not self.check.enabled:
            return ()
        return self.check.types if self.check.types is not None else self.quantize.types

    def resources_for(self, kind: str) -> Resources:
        return dict(self.resources).get(kind, Resources())

    def steps(self) -> tuple[str, ...]:
        """Every step id, in the order the pipeline runs them."""
        from .pipeline import step_ids

        return step_ids(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *, required: bool = False) -> Any:
        if key not in self.data:
            if required:
                self.fail(key, "is required")
            return default
        v = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(v, bool) and bool not in kinds:
            pass
        elif float in kinds and isinstance(v, int):
            return float(v)
        elif isinstance(v, kinds):
            return v
        words = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
        self.fail(key, f"must be {' or '.join(words.get(k, k.__name__) for k in kinds)}, got {v!r}")

    def string(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        v = self.get(key, str, default, required=required)
        if v is not None and not v.strip():
            self.fail(key, "must not be empty")
        return v

    def positive(self, key: str, default: int | None = None) -> int | None:
        v = self.get(key, int, default)
        if v is not None and v < 1:
            self.fail(key, f"must be >= 1, got {v}")
        return v

    def str_list(self, key: str, default: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
        if key not in self.data:
            return default
        v = self.data[key]
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            self.fail(key, f"must be a list of strings, got {v!r}")
        return tuple(v)

    def num_list(self, key: str, kind: type, default: tuple[Any, ...]) -> tuple[Any, ...]:
        if key not in self.data:
            return default
        v = self.data[key]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = [v]
        ok = isinstance(v, list) and v and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and (kind is float or isinstance(x, int))
            for x in v)
        if not ok:
            self.fail(key, f"must be a non-empty list of {'integers' if kind is int else 'numbers'}, got {v!r}")
        return tuple(kind(x) for x in v)

    def checked(self, key: str, validate: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a stage's validator; its error becomes this key's error."""
        try:
            return validate(*args, **kwargs)
        except MtpgraftError as e:
            self.fail(key, str(e))


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
    model = _model(_Section(where, "model", data["model"], ("name", "base", "mtp_from", "graft_mtp_type",
                                                             "replace_mtp")))
    imatrix = _imatrix(_Section(where, "imatrix", data["imatrix"], (
        "calibration", "file", "ctx", "chunks", "batch", "threads", "extra_args"))) if "imatrix" in data else None
    q = _Section(where, "quantize", data["quantize"],
                 ("types", "mtp_type", "split_max_size", "allow_requantize", "jobs", "threads", "out_dir"))
    quant = _quantize(q, imatrix)
    check = _check(_Section(where, "check", data["check"], (
        "enabled", "types", "n_max", "reps", "temperature", "seed", "n_predict", "ctx", "categories",
        "per_category", "prompts", "min_acceptance", "min_speedup", "server_args")), quant) \
        if "check" in data else None
    hub = _hub(_Section(where, "hub", data["hub"], ("repo", "dry_run", "private", "revision", "create_pr",
                                                     "endpoint")), quant, check) if "hub" in data else None
    r = _Section(where, "run", data.get("run", {}), ("work_dir", "llama_cpp", "resources"))
    wd = str(work_dir) if work_dir is not None else (r.string("work_dir") or f"mtpgraft-work/{model.name}")
    return Recipe(path=str(path), sha256=hashlib.sha256(text.encode()).hexdigest(), model=model,
                  quantize=quant, imatrix=imatrix, check=check, hub=hub,
                  work_dir=str(Path(wd).expanduser().absolute()), llama_cpp=r.string("llama_cpp"),
                  resources=_resources(r))


def _model(m: _Section) -> ModelSection:
    from ..quantize import name_problem

    name = m.string("name", required=True) or ""
    problem = name_problem(name)
    if problem:
        m.fail("name", problem)
    return ModelSection(name=name, base=m.string("base", required=True) or "",
                        mtp_from=m.string("mtp_from"), graft_mtp_type=m.string("graft_mtp_type"),
                        replace_mtp=m.get("replace_mtp", bool, False))


def _imatrix(s: _Section) -> ImatrixSection:
    cal, f = s.string("calibration"), s.string("file")
    if bool(cal) == bool(f):
        s.fail(None, "give exactly one of calibration (a text file to compute it from) or file "
                     "(an existing imatrix)")
    return ImatrixSection(calibration=cal, file=f, ctx=s.positive("ctx"), chunks=s.positive("chunks"),
                          batch=s.positive("batch"), threads=s.positive("threads"),
                          extra_args=s.str_list("extra_args", ()) or ())


def _quantize(q: _Section, imatrix: ImatrixSection | None) -> QuantizeSection:
    from ..quantize import canonical_type, check_mtp_policy, parse_size, types_needing_imatrix

    raw_types = q.str_list("types")
    if not raw_types:
        q.fail("types", "is required: a list of llama-quantize types, e.g. [\"Q4_K_M\", \"Q8_0\"]")
    types = tuple(dict.fromkeys(q.checked("types", canonical_type, t) for t in raw_types or ()))
    raw = q.data.get("mtp_type", "q8_0")
    mtp_type: str | tuple[tuple[str, str], ...]
    if isinstance(raw, str):
        mtp_type = q.checked("mtp_type", check_mtp_policy, raw, what="mtp_type")
    elif isinstance(raw, dict):
        pairs = []
        for k, v in raw.items():
            if not isinstance(v, str):
                q.fail(f"mtp_type.{k}", f"must be a string, got {v!r}")
            key = "default" if k.lower() == "default" else q.checked(f"mtp_type.{k}", canonical_type, k)
            if key != "default" and key not in types:
                q.fail(f"mtp_type.{k}", f"{key} is not one of the recipe's types")
            pairs.append((key, q.checked(f"mtp_type.{k}", check_mtp_policy, v, what="mtp_type")))
        mtp_type = tuple(pairs)
    else:
        q.fail("mtp_type", f"must be a string or a table, got {raw!r}")
    split = q.string("split_max_size")
    if split is not None:
        q.checked("split_max_size", parse_size, split)
    needy = types_needing_imatrix(types)
    if needy and imatrix is None:
        q.fail("types", f"{', '.join(needy)} need an importance matrix: add an [imatrix] section "
                        "(calibration = \"file.txt\")")
    return QuantizeSection(types=types, mtp_type=mtp_type, split_max_size=split,
                           allow_requantize=q.get("allow_requantize", bool, False),
                           jobs=q.positive("jobs", 1) or 1, threads=q.positive("threads"),
                           out_dir=q.string("out_dir", "quants") or "quants")


# the recipe's [check] keys under check.settings_problem's names
_CHECK_KEYS = {"ctx_size": "ctx", "temperatures": "temperature"}


def _check(c: _Section, quant: QuantizeSection) -> CheckSection:
    from ..check import settings_problem
    from ..quantize import canonical_type

    ctypes = c.str_list("types")
    if ctypes is not None:
        ctypes = tuple(c.checked("types", canonical_type, t) for t in ctypes)
        stray = [t for t in ctypes if t not in quant.types]
        if stray:
            c.fail("types", f"{', '.join(stray)} not in [quantize] types")
    check = CheckSection(
        enabled=c.get("enabled", bool, True), types=ctypes, n_max=c.num_list("n_max", int, (3,)),
        reps=c.get("reps", int, 1), temperatures=c.num_list("temperature", float, (0.0,)),
        seed=c.get("seed", int, 0), n_predict=c.get("n_predict", int, 128), ctx=c.get("ctx", int, 4096),
        categories=c.str_list("categories"), per_category=c.get("per_category", int),
        prompts=c.string("prompts"), min_acceptance=c.get("min_acceptance", float, 0.3),
        min_speedup=c.get("min_speedup", float), server_args=c.str_list("server_args", ()) or ())
    bad = settings_problem(n_max=check.n_max, temperatures=check.temperatures, reps=check.reps,
                           per_category=check.per_category, n_predict=check.n_predict,
                           ctx_size=check.ctx, min_acceptance=check.min_acceptance,
                           min_speedup=check.min_speedup)
    if bad is not None:
        c.fail(_CHECK_KEYS.get(bad[0], bad[0]), bad[1])
    return check


def _hub(h: _Section, quant: QuantizeSection, check: CheckSection | None) -> HubSection:
    from ..hub import REPO_ID_RE

    repo = h.string("repo", required=True) or ""
    if not REPO_ID_RE.match(repo):
        h.fail("repo", f"must be OWNER/NAME, got {repo!r}")
    hub = HubSection(repo=repo, dry_run=h.get("dry_run", bool, False), private=h.get("private", bool, False),
                     revision=h.string("revision"), create_pr=h.get("create_pr", bool, False),
                     endpoint=h.string("endpoint"))
    if check is None or not check.enabled or set(check.types or quant.types) != set(quant.types):
        h.fail(None, "pushing needs a passing check of every type: add a [check] section covering all "
                     "[quantize] types")
    return hub


def _resources(r: _Section) -> tuple[tuple[str, Resources], ...]:
    """[run] resources = {quantize = {cpus = 8}, check = {gpus = 1}}: what a cluster task asks for."""
    raw = r.data.get("resources", {})
    if not isinstance(raw, dict):
        r.fail("resources", f"must be a table of steps, got {raw!r}")
    out = []
    for step, spec in raw.items():
        key = f"resources.{step}"
        if step not in RESOURCE_STEPS:
            r.fail(key, f"unknown step (known: {', '.join(RESOURCE_STEPS)})")
        s = _Section(r.where, f"run.{key}", spec, ("cpus", "gpus"))
        cpus, gpus = s.get("cpus", float), s.get("gpus", float)
        for k, v in (("cpus", cpus), ("gpus", gpus)):
            if v is not None and v < 0:
                s.fail(k, f"must be >= 0, got {v:g}")
        out.append((step, Resources(cpus=cpus, gpus=gpus)))
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
