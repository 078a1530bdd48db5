"""Recipes: a quantizer's whole job for one model in a TOML file, run as a resumable pipeline.

    recipe = load_recipe("recipes/qwen3.6-27b.toml")
    result = run_recipe(recipe, resume=True, on_event=print_step)

The pipeline is graft -> imatrix -> quantize (one step per type) -> check (one per type) -> push.
Every finished step writes `state/<step>.json` in the work dir: the step's key (a sha256 over its
settings and the sha256 of every input file) and the sha256 of every file it produced. A step is
finished when its record's key matches the key computed now and its files still hash the same, so
an interrupted run resumes where it stopped, an edited recipe redoes exactly the steps it affects,
and separate processes (`--only Q4_K_M`, `--only Q8_0`) can share one work dir: each step runs under
its own lock file, and a process that needs a step another is running waits for it. On separate
machines, copy the work dir after the imatrix step and copy the quants, checks and state back.

Recipe format (paths to input files are relative to the recipe file; `builtin:` names the tiny
test models and calibration text shipped with mtpgraft):

    [model]
    name = "Qwen3.6-27B"                  # output names: Name-Q4_K_M.gguf, Q8_0/Name-Q8_0-0000i-of-0000N.gguf
    base = "Qwen3.6-27B-BF16.gguf"        # the full-precision GGUF to quantize (first shard of a split set)
    mtp_from = "mtp-Qwen3.6-27B.gguf"     # optional: where the MTP block comes from (attach)
    graft_mtp_type = "keep"               # optional: attach --mtp-type (default: the base's float type)
    replace_mtp = false                   # optional: replace an MTP block the base already has

    [imatrix]                             # optional; needed for IQ1/IQ2/IQ3_XXS/IQ3_XS/Q2_K_S
    calibration = "calibration_datav3.txt"  # or: file = "existing-imatrix.gguf"
    ctx = 512
    chunks = 200
    batch = 512
    threads = 16
    extra_args = ["-ngl", "99"]

    [quantize]
    types = ["Q8_0", "Q6_K", "Q4_K_M", "IQ4_XS", "IQ2_XXS"]
    mtp_type = "q8_0"                     # q8_0 | match | a ggml type, or a table {default = "q8_0", Q2_K = "q6_k"}
    split_max_size = "50G"
    allow_requantize = false
    jobs = 1
    threads = 16
    out_dir = "quants"                    # relative to the work dir

    [check]                               # optional; `enabled = false` skips it
    types = ["Q4_K_M", "IQ2_XXS"]         # default: every type
    n_max = [3]
    reps = 1
    n_predict = 128
    ctx = 4096
    categories = ["code", "factual"]
    per_category = 2
    prompts = "my-prompts.jsonl"
    min_acceptance = 0.5
    min_speedup = 1.1
    server_args = ["-ngl", "99"]

    [hub]                                 # optional; no [hub], no push step
    repo = "me/Qwen3.6-27B-MTP-GGUF"
    dry_run = true
    private = false
    revision = "main"
    create_pr = false
    endpoint = "https://huggingface.co"   # optional; the token comes from $HF_TOKEN or `hf auth login`

    [run]
    work_dir = "work/qwen3.6-27b"         # relative to the CURRENT directory; default mtpgraft-work/<name>
    llama_cpp = "/opt/llama.cpp/build"    # optional
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import __version__
from .errors import MtpgraftError, RecipeError

STEPS = ("graft", "imatrix", "quantize", "check", "push")
BUILTIN = "builtin:"
BUILTIN_CALIBRATION = {"calibration-tiny": "calibration-tiny.txt"}
_TINY_RE = re.compile(r"^tiny-(?P<arch>qwen35moe|qwen35)-(?P<variant>.+)$")
Event = Callable[[str, str], None]  # (step id, message)


# --------------------------------------------------------------------------- the recipe


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

    def steps(self) -> tuple[str, ...]:
        """Every step id, in the order the pipeline runs them."""
        out = ["graft"]
        if self.imatrix is not None:
            out.append("imatrix")
        out += [f"quantize:{t}" for t in self.quantize.types]
        out += [f"check:{t}" for t in self.check_types()]
        if self.hub is not None:
            out.append("push")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- parsing


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


def parse_recipe(text: str, *, path: str | os.PathLike[str] = "<recipe>",
                 work_dir: str | os.PathLike[str] | None = None) -> Recipe:
    """Parse recipe TOML text into a frozen Recipe; RecipeError names the bad table and key."""
    from .quantize import canonical_type, ggml_type, parse_size

    where = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{where}: not valid TOML: {e}") from None
    known = ("model", "imatrix", "quantize", "check", "hub", "run")
    for k in data:
        if k not in known:
            raise RecipeError(f"{where}: unknown table [{k}] (known: {', '.join(f'[{x}]' for x in known)})")
    if "model" not in data:
        raise RecipeError(f"{where}: [model] is required (name, base)")
    if "quantize" not in data:
        raise RecipeError(f"{where}: [quantize] is required (types)")

    m = _Section(where, "model", data["model"], ("name", "base", "mtp_from", "graft_mtp_type", "replace_mtp"))
    name = m.string("name", required=True)
    assert name is not None
    from .quantize import check_name

    try:
        check_name(name)
    except MtpgraftError as e:
        m.fail("name", str(e).replace("--name ", ""))
    model = ModelSection(name=name, base=m.string("base", required=True) or "",
                         mtp_from=m.string("mtp_from"), graft_mtp_type=m.string("graft_mtp_type"),
                         replace_mtp=m.get("replace_mtp", bool, False))

    imatrix = None
    if "imatrix" in data:
        s = _Section(where, "imatrix", data["imatrix"],
                     ("calibration", "file", "ctx", "chunks", "batch", "threads", "extra_args"))
        cal, f = s.string("calibration"), s.string("file")
        if bool(cal) == bool(f):
            s.fail(None, "give exactly one of calibration (a text file to compute it from) or file "
                         "(an existing imatrix)")
        imatrix = ImatrixSection(calibration=cal, file=f, ctx=s.positive("ctx"), chunks=s.positive("chunks"),
                                 batch=s.positive("batch"), threads=s.positive("threads"),
                                 extra_args=s.str_list("extra_args", ()) or ())

    q = _Section(where, "quantize", data["quantize"],
                 ("types", "mtp_type", "split_max_size", "allow_requantize", "jobs", "threads", "out_dir"))
    raw_types = q.str_list("types")
    if not raw_types:
        q.fail("types", "is required: a list of llama-quantize types, e.g. [\"Q4_K_M\", \"Q8_0\"]")
    assert raw_types is not None
    try:
        types = tuple(dict.fromkeys(canonical_type(t) for t in raw_types))
    except MtpgraftError as e:
        q.fail("types", str(e))
    mtp_raw = q.data.get("mtp_type", "q8_0")
    mtp_type: str | tuple[tuple[str, str], ...]
    if isinstance(mtp_raw, str):
        mtp_type = _check_policy(q, "mtp_type", mtp_raw, ggml_type)
    elif isinstance(mtp_raw, dict):
        pairs = []
        for k, v in mtp_raw.items():
            if not isinstance(v, str):
                q.fail(f"mtp_type.{k}", f"must be a string, got {v!r}")
            key = "default" if k.lower() == "default" else None
            if key is None:
                try:
                    key = canonical_type(k)
                except MtpgraftError as e:
                    q.fail(f"mtp_type.{k}", str(e))
                if key not in types:
                    q.fail(f"mtp_type.{k}", f"{key} is not one of the recipe's types")
            pairs.append((key, _check_policy(q, f"mtp_type.{k}", v, ggml_type)))
        mtp_type = tuple(pairs)
    else:
        q.fail("mtp_type", f"must be a string or a table, got {mtp_raw!r}")
    split = q.string("split_max_size")
    if split is not None:
        try:
            parse_size(split)
        except MtpgraftError as e:
            q.fail("split_max_size", str(e))
    quant = QuantizeSection(types=types, mtp_type=mtp_type, split_max_size=split,
                            allow_requantize=q.get("allow_requantize", bool, False),
                            jobs=q.positive("jobs", 1) or 1, threads=q.positive("threads"),
                            out_dir=q.string("out_dir", "quants") or "quants")
    from .quantize import NEEDS_IMATRIX

    needy = [t for t in types if t in NEEDS_IMATRIX]
    if needy and imatrix is None:
        q.fail("types", f"{', '.join(needy)} need an importance matrix: add an [imatrix] section "
                        "(calibration = \"file.txt\")")

    check = None
    if "check" in data:
        c = _Section(where, "check", data["check"],
                     ("enabled", "types", "n_max", "reps", "temperature", "seed", "n_predict", "ctx",
                      "categories", "per_category", "prompts", "min_acceptance", "min_speedup",
                      "server_args"))
        ctypes = c.str_list("types")
        if ctypes is not None:
            try:
                ctypes = tuple(canonical_type(t) for t in ctypes)
            except MtpgraftError as e:
                c.fail("types", str(e))
            stray = [t for t in ctypes if t not in types]
            if stray:
                c.fail("types", f"{', '.join(stray)} not in [quantize] types")
        n_max = c.num_list("n_max", int, (3,))
        if any(n < 1 for n in n_max):
            c.fail("n_max", f"values must be >= 1, got {list(n_max)}")
        temps = c.num_list("temperature", float, (0.0,))
        min_acc = c.get("min_acceptance", float, 0.3)
        if not 0 <= min_acc <= 1:
            c.fail("min_acceptance", f"must be between 0 and 1, got {min_acc}")
        min_speed = c.get("min_speedup", float)
        if min_speed is not None and min_speed <= 0:
            c.fail("min_speedup", f"must be > 0, got {min_speed}")
        n_predict = c.positive("n_predict", 128) or 128
        if n_predict < 8:
            c.fail("n_predict", f"must be >= 8, got {n_predict}")
        check = CheckSection(enabled=c.get("enabled", bool, True), types=ctypes, n_max=n_max,
                             reps=c.positive("reps", 1) or 1, temperatures=temps,
                             seed=c.get("seed", int, 0), n_predict=n_predict,
                             ctx=c.positive("ctx", 4096) or 4096, categories=c.str_list("categories"),
                             per_category=c.positive("per_category"), prompts=c.string("prompts"),
                             min_acceptance=min_acc, min_speedup=min_speed,
                             server_args=c.str_list("server_args", ()) or ())

    hub = None
    if "hub" in data:
        h = _Section(where, "hub", data["hub"], ("repo", "dry_run", "private", "revision", "create_pr", "endpoint"))
        repo = h.string("repo", required=True) or ""
        if not re.match(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$", repo):
            h.fail("repo", f"must be OWNER/NAME, got {repo!r}")
        hub = HubSection(repo=repo, dry_run=h.get("dry_run", bool, False), private=h.get("private", bool, False),
                         revision=h.string("revision"), create_pr=h.get("create_pr", bool, False),
                         endpoint=h.string("endpoint"))
        if check is None or not check.enabled or set(check.types or types) != set(types):
            h.fail(None, "pushing needs a passing check of every type: add a [check] section covering all "
                         "[quantize] types")

    r = _Section(where, "run", data.get("run", {}), ("work_dir", "llama_cpp"))
    wd = str(work_dir) if work_dir is not None else (r.string("work_dir") or f"mtpgraft-work/{name}")
    return Recipe(path=str(path), sha256=hashlib.sha256(text.encode()).hexdigest(), model=model,
                  quantize=quant, imatrix=imatrix, check=check, hub=hub,
                  work_dir=str(Path(wd).expanduser().absolute()), llama_cpp=r.string("llama_cpp"))


def _check_policy(sec: _Section, key: str, value: str, ggml_type: Callable[..., Any]) -> str:
    v = value.strip().lower()
    if v in ("q8_0", "match"):
        return v
    try:
        ggml_type(v, what="mtp_type")
    except MtpgraftError as e:
        sec.fail(key, str(e))
    return v


def load_recipe(path: str | os.PathLike[str], *, work_dir: str | os.PathLike[str] | None = None) -> Recipe:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"recipe not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"cannot read recipe {p}: {e}") from None
    return parse_recipe(text, path=p.absolute(), work_dir=work_dir)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True)
class StepRecord:
    step: str
    key: str
    status: str  # "done" or "failed"
    finished: str
    seconds: float
    outputs: dict[str, str]  # path (relative to the work dir when inside it) -> sha256
    detail: dict[str, Any] = field(default_factory=dict)


class State:
    """One JSON record per step under WORK/state, written atomically; one lock file per step."""

    def __init__(self, work_dir: Path) -> None:
        self.work = work_dir
        self.dir = work_dir / "state"

    def _file(self, step: str) -> Path:
        return self.dir / (step.replace(":", "-") + ".json")

    def records(self) -> list[StepRecord]:
        out = []
        if self.dir.is_dir():
            for f in sorted(self.dir.glob("*.json")):
                r = self._read(f)
                if r is not None:
                    out.append(r)
        return out

    def _read(self, f: Path) -> StepRecord | None:
        try:
            d = json.loads(f.read_text())
            return StepRecord(**{k: d[k] for k in StepRecord.__dataclass_fields__ if k in d})
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def get(self, step: str) -> StepRecord | None:
        return self._read(self._file(step))

    def put(self, rec: StepRecord) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        f = self._file(rec.step)
        tmp = f.with_name(f".{f.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(rec), indent=2, sort_keys=True) + "\n")
        os.replace(tmp, f)

    def clear(self) -> None:
        for f in self.dir.glob("*.json") if self.dir.is_dir() else []:
            f.unlink(missing_ok=True)

    def rel(self, p: str | Path) -> str:
        p = Path(p).absolute()
        try:
            return p.relative_to(self.work).as_posix()
        except ValueError:
            return str(p)

    def abs(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else self.work / q

    @contextlib.contextmanager
    def lock(self, step: str, on_wait: Callable[[], None]) -> Iterator[None]:
        import fcntl

        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / (step.replace(":", "-") + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                on_wait()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _key(step: str, params: Mapping[str, Any], inputs: Mapping[str, str]) -> str:
    blob = json.dumps({"step": step, "params": params, "inputs": dict(sorted(inputs.items()))},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _hash_files(files: Sequence[str | Path]) -> dict[str, str]:
    from .hashing import sha256_file

    return {str(f): sha256_file(f) for f in files}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class StepResult:
    step: str
    status: str  # "done", "finished-before", "failed", "dry-run", "blocked"
    seconds: float = 0.0
    message: str = ""
    outputs: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status in ("done", "finished-before", "dry-run")


@dataclass(frozen=True)
class RunResult:
    recipe: str
    work_dir: str
    steps: tuple[StepResult, ...]
    wall_s: float
    dry_run: bool = False

    @property
    def failed(self) -> tuple[StepResult, ...]:
        return tuple(s for s in self.steps if not s.ok)

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe, "work_dir": self.work_dir, "ok": self.ok, "dry_run": self.dry_run,
                "wall_s": round(self.wall_s, 3), "steps": [asdict(s) for s in self.steps],
                "mtpgraft_version": __version__}


class _StepFailed(MtpgraftError):
    pass


# --------------------------------------------------------------------------- selection


def select_steps(recipe: Recipe, only: Sequence[str] | None) -> tuple[str, ...]:
    """The steps `--only` names, plus every step they depend on, in pipeline order."""
    all_steps = recipe.steps()
    if not only:
        return all_steps
    from .quantize import ALIASES

    wanted: set[str] = set()
    words = [w.strip() for o in only for w in o.split(",") if w.strip()]
    for w in words:
        low = w.lower()
        up = ALIASES.get(w.upper(), w.upper())
        if low in STEPS:
            hits = [s for s in all_steps if s == low or s.startswith(low + ":")]
        elif ":" in w:
            step, _, t = w.partition(":")
            t = ALIASES.get(t.upper(), t.upper())
            hits = [s for s in all_steps if s == f"{step.lower()}:{t}"]
        else:
            hits = [s for s in all_steps if s.endswith(":" + up)]
        if not hits:
            raise RecipeError(f"--only {w}: not a step of this recipe (steps: {', '.join(all_steps)}; "
                              f"or a type: {', '.join(recipe.quantize.types)})")
        wanted.update(hits)
    # dependencies: graft <- imatrix <- quantize:T <- check:T <- push
    for s in list(wanted):
        kind, _, t = s.partition(":")
        if kind in ("imatrix", "quantize", "check", "push"):
            wanted.add("graft")
        if kind in ("quantize", "check", "push") and "imatrix" in all_steps:
            wanted.add("imatrix")
        if kind == "check":
            wanted.add(f"quantize:{t}")
        if kind == "push":
            wanted.update(x for x in all_steps if x.startswith(("quantize:", "check:")))
    return tuple(s for s in all_steps if s in wanted)


# --------------------------------------------------------------------------- the pipeline


def resolve_builtin_model(spec: str, dest_dir: Path, *, generate: bool = True) -> Path:
    """`builtin:tiny-qwen35-base` (or -full, -full-mixed, ...): generate the tiny test model."""
    from .testmodels import TEST_SET, build_tiny_model

    name = spec[len(BUILTIN):]
    m = _TINY_RE.match(name)
    variant = m["variant"] if m else ""
    variant = {"full": "full-aligned", "mtp-only": "mtp-only-aligned"}.get(variant, variant)
    if not m or variant not in TEST_SET:
        known = ", ".join(f"builtin:tiny-qwen35-{v}" for v in ("base", "full", *TEST_SET))
        raise RecipeError(f"unknown built-in model {spec!r} (known: {known}; qwen35moe likewise)")
    path = dest_dir / f"{name}.gguf"
    if not path.is_file() and generate:
        dest_dir.mkdir(parents=True, exist_ok=True)
        build_tiny_model(path, arch=m["arch"], dtype="f16", **TEST_SET[variant])  # type: ignore[arg-type]
    return path


def resolve_calibration(recipe: Recipe, spec: str) -> Path:
    if spec.startswith(BUILTIN):
        key = spec[len(BUILTIN):]
        if key not in BUILTIN_CALIBRATION:
            raise RecipeError(f"unknown built-in calibration {spec!r} (known: "
                              f"{', '.join(BUILTIN + k for k in BUILTIN_CALIBRATION)})")
        from importlib import resources

        p = Path(str(resources.files("mtpgraft") / "data" / BUILTIN_CALIBRATION[key]))
        if not p.is_file():
            raise RecipeError(f"{spec}: {p} is missing from the mtpgraft installation")
        return p
    p = recipe.input_path(spec)
    if not p.is_file():
        raise RecipeError(f"[imatrix] calibration: {p} not found")
    return p


class _Pipeline:
    def __init__(self, recipe: Recipe, *, force: bool, dry_run: bool, on_event: Event | None,
                 llama_cpp: str | None, hub_api: Callable[[HubSection], Any] | None = None) -> None:
        self.hub_api = hub_api
        self.r = recipe
        self.work = Path(recipe.work_dir)
        self.state = State(self.work)
        self.force = force
        self.dry_run = dry_run
        self.emit = on_event or (lambda s, m: None)
        self.llama_cpp = llama_cpp or recipe.llama_cpp
        self.results: dict[str, StepResult] = {}
        self.model_path: Path | None = None  # what gets quantized
        self.imatrix_path: Path | None = None
        self.quant_outputs: dict[str, Path] = {}

    # ---- generic step machinery

    def _done(self, step: str, key: str) -> StepRecord | None:
        rec = self.state.get(step)
        if rec is None or rec.status != "done" or rec.key != key or self.force:
            return None
        try:
            now = _hash_files([self.state.abs(p) for p in rec.outputs])
        except OSError:
            return None  # an output is gone: redo the step
        if {self.state.rel(k): v for k, v in now.items()} != rec.outputs:
            return None
        return rec

    def _record(self, step: str, key: str, t0: float, outputs: Sequence[Path], detail: dict[str, Any],
                status: str = "done") -> None:
        hashes = _hash_files(outputs) if status == "done" else {}
        self.state.put(StepRecord(step=step, key=key, status=status,
                                  finished=datetime.now(UTC).isoformat(timespec="seconds"),
                                  seconds=round(time.perf_counter() - t0, 3),
                                  outputs={self.state.rel(k): v for k, v in hashes.items()}, detail=detail))

    def _run_step(self, step: str, key_fn: Callable[[], str],
                  body: Callable[[str, float], StepResult], on_cached: Callable[[StepRecord], None]) -> StepResult:
        if self.dry_run:
            res = body("", time.perf_counter())
            self.results[step] = res
            return res
        with self.state.lock(step, lambda: self.emit(step, "waiting: another process is running this step")):
            key = key_fn()
            rec = self._done(step, key)
            if rec is not None:
                on_cached(rec)
                self.emit(step, "finished before (recorded; inputs unchanged)")
                res = StepResult(step, "finished-before", 0.0, "recorded as finished",
                                 tuple(rec.outputs))
                self.results[step] = res
                return res
            t0 = time.perf_counter()
            try:
                res = body(key, t0)
            except MtpgraftError as e:
                self._record(step, key, t0, [], {"error": str(e)}, status="failed")
                self.emit(step, f"FAILED: {e}")
                res = StepResult(step, "failed", time.perf_counter() - t0, str(e))
            self.results[step] = res
            return res

    # ---- graft

    def graft(self) -> StepResult:
        step = "graft"
        r = self.r
        sources = self.work / "sources"
        out = self.work / f"{r.name}.gguf"

        def resolve(spec: str, what: str) -> Path:
            if spec.startswith(BUILTIN):
                return resolve_builtin_model(spec, sources, generate=not self.dry_run)
            p = r.input_path(spec)
            if not p.is_file():
                raise RecipeError(f"[model] {what}: {p} not found")
            return p

        base = resolve(r.model.base, "base")
        src = resolve(r.model.mtp_from, "mtp_from") if r.model.mtp_from else None

        def model_files(p: Path) -> list[Path]:
            from .gguf_io import GGUFModel

            return GGUFModel(p).paths

        def key() -> str:
            inputs = _hash_files(model_files(base) + (model_files(src) if src else []))
            inputs = {Path(k).name: v for k, v in inputs.items()}
            return _key(step, {"mtp_from": bool(src), "graft_mtp_type": r.model.graft_mtp_type,
                               "replace": r.model.replace_mtp}, inputs)

        def cached(rec: StepRecord) -> None:
            self.model_path = self.state.abs(rec.detail["model"])

        def body(k: str, t0: float) -> StepResult:
            from .inspection import inspect_model

            if self.dry_run and not (base.is_file() and (src is None or src.is_file())):
                self.model_path = out if src is not None else base
                return StepResult(step, "dry-run", 0.0, "generate the built-in sources, then "
                                  + (f"attach the MTP block of {src.name} to {base.name}" if src
                                     else f"use {base.name}"), (str(self.model_path),))
            if src is None:
                rep = inspect_model(base)
                if not rep.consistent:
                    raise RecipeError(f"[model] base {base.name} is inconsistent: {'; '.join(rep.problems)}")
                if not rep.mtp_present:
                    raise RecipeError(f"[model] base {base.name} has no MTP block: set mtp_from to a GGUF "
                                      "holding one (a full MTP model or an mtp-*.gguf sidecar)")
                self.model_path = base
                if not self.dry_run:
                    self._record(step, k, t0, [], {"model": self.state.rel(base), "grafted": False})
                self.emit(step, f"{base.name} already has its MTP block (nothing to graft)")
                return StepResult(step, "dry-run" if self.dry_run else "done",
                                  time.perf_counter() - t0, "base has MTP", (str(base),))
            from .graft import apply_plan, describe_plan, plan_attach

            plan = plan_attach(base, src, out, mtp_type=r.model.graft_mtp_type, replace=r.model.replace_mtp,
                               force=True, llama_cpp=self.llama_cpp)
            for w in plan.warnings:
                self.emit(step, f"warning: {w}")
            self.model_path = Path(plan.outputs[0])
            if self.dry_run:
                return StepResult(step, "dry-run", 0.0, describe_plan(plan), tuple(plan.outputs))
            self.emit(step, f"attaching the MTP block of {src.name} to {base.name}")
            written = apply_plan(plan)
            rep = inspect_model(written[0])
            if not rep.consistent or not rep.mtp_present:
                raise RecipeError(f"the grafted model fails inspection: {'; '.join(rep.problems)}")
            self._record(step, k, t0, written, {"model": self.state.rel(written[0]), "grafted": True,
                                                 "mtp_type": plan.mtp_type})
            self.emit(step, f"done: {self.state.rel(written[0])}")
            return StepResult(step, "done", time.perf_counter() - t0, f"grafted, MTP type {plan.mtp_type}",
                              tuple(str(w) for w in written))

        return self._run_step(step, key, body, cached)

    # ---- imatrix

    def imatrix(self) -> StepResult:
        step = "imatrix"
        spec = self.r.imatrix
        assert spec is not None
        out = self.work / f"{self.r.name}.imatrix.gguf"

        if spec.file:
            given = self.r.input_path(spec.file)
            if not given.is_file():
                raise RecipeError(f"[imatrix] file: {given} not found")
            self.imatrix_path = given

            def key_f() -> str:
                return _key(step, {"file": True}, {given.name: _hash_files([given])[str(given)]})

            def body_f(k: str, t0: float) -> StepResult:
                from .imatrix import read_imatrix

                info = read_imatrix(given)
                if not self.dry_run:
                    self._record(step, k, t0, [given], {"imatrix": self.state.rel(given), "given": True})
                return StepResult(step, "dry-run" if self.dry_run else "done", 0.0,
                                  f"given: {given.name} ({info.entries} entries)", (str(given),))

            return self._run_step(step, key_f, body_f, lambda rec: None)

        assert spec.calibration is not None
        cal = resolve_calibration(self.r, spec.calibration)
        self.imatrix_path = out

        def key() -> str:
            assert self.model_path is not None
            inputs = _hash_files([self.model_path, cal])
            return _key(step, {"ctx": spec.ctx, "chunks": spec.chunks, "batch": spec.batch,
                               "extra": list(spec.extra_args)},
                        {"model": inputs[str(self.model_path)], "calibration": inputs[str(cal)]})

        def body(k: str, t0: float) -> StepResult:
            from .imatrix import plan_imatrix, run_imatrix

            assert self.model_path is not None
            if self.dry_run and not self.model_path.exists():
                return StepResult(step, "dry-run", 0.0, f"llama-imatrix on {self.model_path.name} with "
                                  f"{cal.name} (command known after the graft)", (str(out),))
            plan = plan_imatrix(self.model_path, cal, out, ctx=spec.ctx, chunks=spec.chunks,
                                batch=spec.batch, threads=spec.threads, extra_args=spec.extra_args,
                                force=True, llama_cpp=self.llama_cpp)
            if self.dry_run:
                return StepResult(step, "dry-run", 0.0, plan.shell(), (str(out),))
            self.emit(step, f"llama-imatrix on {self.model_path.name} with {cal.name}")
            logs = self.work / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            res = run_imatrix(plan, log_path=logs / "imatrix.log")
            self._record(step, k, t0, [out], {"imatrix": self.state.rel(out), "entries": res.info.entries,
                                              "chunks": res.info.chunk_count,
                                              "calibration": cal.name,
                                              "calibration_sha256": plan.calibration_sha256})
            self.emit(step, f"done: {res.info.entries} entries over {res.info.chunk_count} chunks")
            return StepResult(step, "done", time.perf_counter() - t0,
                              f"{res.info.entries} entries, {res.info.chunk_count} chunks", (str(out),))

        return self._run_step(step, key, body, lambda rec: None)

    # ---- quantize

    def quantize(self, types: Sequence[str]) -> None:
        from .quantize import plan_quantize, run_quantize

        q = self.r.quantize
        out_dir = self.state.abs(q.out_dir)
        assert self.model_path is not None
        steps = [f"quantize:{t}" for t in types]
        if self.dry_run:
            if not self.model_path.exists():
                for s in steps:
                    self.results[s] = StepResult(s, "dry-run", 0.0, "commands known after the graft")
                return
            plan = plan_quantize(self.model_path, list(types), out_dir=out_dir, name=self.r.name,
                                 imatrix=self.imatrix_path if self.imatrix_path and self.imatrix_path.exists() else None,
                                 mtp_type=q.mtp_policy(), split_max_size=q.split_max_size,
                                 allow_requantize=q.allow_requantize, jobs=q.jobs, threads=q.threads,
                                 llama_cpp=self.llama_cpp)
            for j in plan.jobs:
                self.results[f"quantize:{j.quant_type}"] = StepResult(f"quantize:{j.quant_type}", "dry-run",
                                                                     0.0, j.shell(), (j.single_path,))
            return

        inputs = _hash_files([self.model_path] + ([self.imatrix_path] if self.imatrix_path else []))
        in_key = {"model": inputs[str(self.model_path)]}
        if self.imatrix_path:
            in_key["imatrix"] = inputs[str(self.imatrix_path)]

        def key_for(t: str) -> str:
            from .quantize import _mtp_policy

            return _key(f"quantize:{t}", {"type": t, "mtp_type": _mtp_policy(q.mtp_policy(), t),
                                          "split_max_size": q.split_max_size, "name": self.r.name,
                                          "out_dir": q.out_dir, "allow_requantize": q.allow_requantize},
                        in_key)

        pending: list[str] = []
        with contextlib.ExitStack() as stack:
            for t in types:
                s = f"quantize:{t}"
                stack.enter_context(self.state.lock(s, lambda s=s: self.emit(s, "waiting: another process "
                                                                            "is running this step")))
                rec = self._done(s, key_for(t))
                if rec is not None:
                    self.quant_outputs[t] = self.state.abs(rec.detail["path"])
                    self.emit(s, "finished before (recorded; inputs unchanged)")
                    self.results[s] = StepResult(s, "finished-before", 0.0, "recorded as finished",
                                                 tuple(rec.outputs))
                else:
                    pending.append(t)
            if not pending:
                return
            t0 = time.perf_counter()
            try:
                plan = plan_quantize(self.model_path, pending, out_dir=out_dir, name=self.r.name,
                                     imatrix=self.imatrix_path, mtp_type=q.mtp_policy(),
                                     split_max_size=q.split_max_size, allow_requantize=q.allow_requantize,
                                     jobs=q.jobs, threads=q.threads, force=True, llama_cpp=self.llama_cpp)
            except MtpgraftError as e:
                for t in pending:
                    s = f"quantize:{t}"
                    self.results[s] = StepResult(s, "failed", 0.0, str(e))
                    self.emit(s, f"FAILED: {e}")
                return
            for w in plan.warnings:
                self.emit("quantize", f"warning: {w}")

            def on_result(o: Any) -> None:
                s = f"quantize:{o.quant_type}"
                if o.ok:
                    files = [Path(f) for f in o.files]
                    self._record(s, key_for(o.quant_type), t0, files,
                                 {"path": self.state.rel(o.path), "bytes": o.bytes, "split": o.split,
                                  "mtp_types": dict(o.mtp_types)})
                    self.quant_outputs[o.quant_type] = Path(o.path)
                    self.results[s] = StepResult(s, "done", o.seconds, f"{o.bytes / 1e6:.1f} MB", o.files)
                else:
                    self._record(s, key_for(o.quant_type), t0, [], {"error": o.reason}, status="failed")
                    self.results[s] = StepResult(s, "failed", o.seconds, o.reason)

            run_quantize(plan, on_event=lambda t, m: self.emit(f"quantize:{t}", m), on_result=on_result,
                         log_dir=self.work / "logs")

    # ---- check

    def check(self, t: str) -> StepResult:
        step = f"check:{t}"
        spec = self.r.check
        assert spec is not None
        report_dir = self.work / "checks" / t
        out = self.quant_outputs.get(t)
        if out is None:
            qres = self.results.get(f"quantize:{t}")
            if self.dry_run:
                res = StepResult(step, "dry-run", 0.0, f"check of the {t} output "
                                 f"(n_max {list(spec.n_max)}, min acceptance {spec.min_acceptance})")
                self.results[step] = res
                return res
            res = StepResult(step, "blocked", 0.0, f"no verified {t} output"
                             + (f" ({qres.message})" if qres and qres.message else ""))
            self.results[step] = res
            return res
        prompts = self.r.input_path(spec.prompts) if spec.prompts else None

        def key() -> str:
            from .gguf_io import GGUFModel

            files = GGUFModel(out).paths + ([prompts] if prompts else [])
            hashes = {Path(k).name: v for k, v in _hash_files(files).items()}
            params = {k: v for k, v in asdict(spec).items() if k not in ("enabled", "types")}
            return _key(step, params, hashes)

        def body(k: str, t0: float) -> StepResult:
            from .check import plan_check, resolve_server, run_check
            from .check.report import write_report

            plan = plan_check([out], n_max=spec.n_max, temperatures=spec.temperatures, reps=spec.reps,
                              seed=spec.seed, prompts=prompts, categories=spec.categories,
                              per_category=spec.per_category, n_predict=spec.n_predict, ctx_size=spec.ctx,
                              server_args=spec.server_args, min_acceptance=spec.min_acceptance,
                              min_speedup=spec.min_speedup,
                              server=resolve_server(self.llama_cpp))
            if self.dry_run:
                return StepResult(step, "dry-run", 0.0, f"{plan.n_servers} llama-server runs, "
                                  f"{plan.n_requests} requests", (str(report_dir),))
            self.emit(step, f"{plan.n_servers} llama-server runs, {plan.n_requests} requests")
            result = run_check(plan, log_dir=report_dir / "logs")
            files = write_report(result, report_dir)
            acc = result.acceptance
            summary = f"verdict {result.verdict}, acceptance {acc:.3f}" if acc is not None else \
                f"verdict {result.verdict}"
            if not result.passed:
                raise _StepFailed(f"{summary}: {'; '.join(result.reasons)}")
            self._record(step, k, t0, [files.json], {"verdict": result.verdict, "acceptance": acc,
                                                      "report": self.state.rel(files.json)})
            self.emit(step, f"done: {summary} ({self.state.rel(files.json)})")
            return StepResult(step, "done", time.perf_counter() - t0, summary, (str(files.json),))

        return self._run_step(step, key, body, lambda rec: None)

    # ---- push

    def _offline_gate(self, repo: str, reports: Sequence[Path]) -> str:
        """Every output file must be listed, by sha256, in a passing check report (the Hub gate)."""
        from .gguf_io import GGUFModel

        passing: set[str] = set()
        for d in reports:
            try:
                data = json.loads((d / "report.json").read_text())
            except (OSError, ValueError):
                continue
            for m in data.get("models") or []:
                if m.get("verdict") == "pass":
                    passing.update(f.get("sha256") for f in m.get("files") or [] if isinstance(f, dict))
        files = [f for t in self.r.quantize.types for f in GGUFModel(self.quant_outputs[t]).paths]
        hashes = _hash_files(files)
        unchecked = [Path(f).name for f, h in hashes.items() if h not in passing]
        if unchecked:
            raise _StepFailed(f"refusing to push: no passing check report lists {', '.join(unchecked)}")
        size = sum(Path(f).stat().st_size for f in files)
        return f"would send {len(files)} model file(s), {size / 1e6:.1f} MB, and README.md to {repo}"

    def push(self) -> StepResult:
        step = "push"
        hub = self.r.hub
        assert hub is not None
        out_dir = self.state.abs(self.r.quantize.out_dir)
        missing = [t for t in self.r.quantize.types if t not in self.quant_outputs]
        not_checked = [t for t in self.r.check_types() if not self.results.get(f"check:{t}", StepResult("", "")).ok]
        if (missing or not_checked) and not self.dry_run:
            res = StepResult(step, "blocked", 0.0, "not pushing: " + "; ".join(
                x for x in (f"no verified output for {', '.join(missing)}" if missing else "",
                            f"no passing check for {', '.join(not_checked)}" if not_checked else "") if x))
            self.results[step] = res
            return res
        reports = [self.work / "checks" / t for t in self.r.check_types()]

        def key() -> str:
            files = [p for p in sorted(out_dir.rglob("*.gguf")) if not any(
                part.startswith(".") for part in p.relative_to(out_dir).parts)]
            files += [d / "report.json" for d in reports]
            hashes = {self.state.rel(k): v for k, v in _hash_files(files).items()}
            return _key(step, asdict(hub), hashes)

        def body(k: str, t0: float) -> StepResult:
            from .errors import HubError
            from .hub import execute_push, make_api, plan_push

            if self.dry_run:  # the pipeline's --dry-run: not even read-only Hub calls
                return StepResult(step, "dry-run", 0.0, f"push {out_dir} to {hub.repo}"
                                  + (" ([hub] dry_run: plan only)" if hub.dry_run else ""))
            api = self.hub_api(hub) if self.hub_api is not None else make_api(endpoint=hub.endpoint)
            try:
                plan = plan_push([out_dir], repo_id=hub.repo, api=api, revision=hub.revision,
                                 create_pr=hub.create_pr, private=hub.private, report_dirs=reports,
                                 verify=True)
            except HubError as e:
                if not (self.dry_run or hub.dry_run):
                    raise
                # A dry run on a machine without the Hub: apply the gate locally and say so.
                msg = self._offline_gate(hub.repo, reports)
                self.emit(step, f"dry run without the Hub ({e}): {msg}")
                return StepResult(step, "dry-run", time.perf_counter() - t0, f"{msg} (Hub not consulted)")
            for w in plan.warnings:
                self.emit(step, f"warning: {w}")
            if plan.refused:
                raise _StepFailed(plan.refusal_message())
            sends = ", ".join(f.path_in_repo for f in plan.to_send) or "nothing"
            if self.dry_run or hub.dry_run:
                self.emit(step, f"dry run: would send {sends} to {hub.repo}")
                return StepResult(step, "dry-run", time.perf_counter() - t0,
                                  f"would send {len(plan.to_send)} file(s), {plan.bytes_to_send / 1e6:.1f} MB")
            self.emit(step, f"pushing {len(plan.to_send)} file(s) to {hub.repo}")
            res = execute_push(plan, api=api)
            self._record(step, k, t0, [], {"commit": res.commit_oid, "url": res.commit_url or res.pr_url,
                                           "sent": list(res.sent)})
            return StepResult(step, "done", time.perf_counter() - t0,
                              f"commit {res.commit_oid or '(nothing new)'}", tuple(res.sent))

        return self._run_step(step, key, body, lambda rec: None)


def run_recipe(recipe: Recipe, *, only: Sequence[str] | None = None, resume: bool = False,
               force: bool = False, dry_run: bool = False, on_event: Event | None = None,
               llama_cpp: str | None = None,
               hub_api: Callable[[HubSection], Any] | None = None) -> RunResult:
    """Run the recipe's pipeline (or the steps `only` names, with what they depend on).

    A work dir with recorded steps needs `resume` (skip what is finished and still valid) or `force`
    (start over, overwriting outputs). Failed steps do not stop independent ones (other types); the
    result lists every step's outcome and `ok` is False when any failed or was blocked.
    `hub_api(hub_section)` builds the Hub client for the push (default: hub.make_api)."""
    t0 = time.perf_counter()
    selected = select_steps(recipe, only)
    p = _Pipeline(recipe, force=force, dry_run=dry_run, on_event=on_event, llama_cpp=llama_cpp,
                  hub_api=hub_api)
    if not dry_run:
        previous = p.state.records()
        if previous and not (resume or force):
            raise RecipeError(f"{recipe.work_dir} holds a previous run of this pipeline ({len(previous)} "
                              "recorded step(s)); pass --resume to continue it or --force to start over")
        if force:
            p.state.clear()
        Path(recipe.work_dir).mkdir(parents=True, exist_ok=True)
        if not previous and not force:
            _refuse_foreign_outputs(recipe)

    def run(step: str, fn: Callable[[], StepResult]) -> bool:
        try:
            res = fn()
        except MtpgraftError as e:
            res = StepResult(step, "failed", 0.0, str(e))
            p.results[step] = res
            if on_event is not None:
                on_event(step, f"FAILED: {e}")
        return res.ok

    ok = run("graft", p.graft)
    if ok and "imatrix" in selected:
        ok = run("imatrix", p.imatrix)
    if ok:
        types = [s.split(":", 1)[1] for s in selected if s.startswith("quantize:")]
        if types:
            try:
                p.quantize(types)
            except MtpgraftError as e:
                for t in types:
                    p.results.setdefault(f"quantize:{t}", StepResult(f"quantize:{t}", "failed", 0.0, str(e)))
        for s in selected:
            if s.startswith("check:"):
                t = s.split(":", 1)[1]
                if t not in p.quant_outputs and f"quantize:{t}" not in selected:
                    p.results[s] = StepResult(s, "blocked", 0.0, f"quantize:{t} is not selected")
                    continue
                run(s, lambda t=t: p.check(t))
        if "push" in selected:
            run("push", p.push)
    steps = tuple(p.results.get(s, StepResult(s, "blocked", 0.0, "an earlier step failed")) for s in selected)
    return RunResult(recipe=recipe.path, work_dir=recipe.work_dir, steps=steps,
                     wall_s=time.perf_counter() - t0, dry_run=dry_run)


def _refuse_foreign_outputs(recipe: Recipe) -> None:
    """On a first run, never overwrite quants that this pipeline did not make."""
    out_dir = Path(recipe.work_dir) / recipe.quantize.out_dir if not Path(recipe.quantize.out_dir).is_absolute() \
        else Path(recipe.quantize.out_dir)
    clash = [out_dir / f"{recipe.name}-{t}.gguf" for t in recipe.quantize.types
             if (out_dir / f"{recipe.name}-{t}.gguf").exists() or (out_dir / t).exists()]
    if clash:
        raise RecipeError(f"{clash[0]} exists and no run of this recipe is recorded in {recipe.work_dir}; "
                          "pass --force to overwrite it")


def describe_state(recipe: Recipe) -> list[tuple[str, str]]:
    """(step, what the state records for it) for every step of the recipe."""
    st = State(Path(recipe.work_dir))
    out = []
    for s in recipe.steps():
        rec = st.get(s)
        out.append((s, "not run" if rec is None else f"{rec.status} {rec.finished}"))
    return out


def remove_work_dir(recipe: Recipe) -> None:
    shutil.rmtree(recipe.work_dir, ignore_errors=True)
