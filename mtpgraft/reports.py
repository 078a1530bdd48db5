"""What mtpgraft reads back from its own reports: a check's report.json and a quality run's
quality.json, as frozen types, each read through one loader that checks the type of every value it
takes and says in one line which file and which key is wrong.

Only what a reader uses is typed here (the push's gate and card, quality's acceptance retention);
the files hold more. A key that is missing reads as its empty value (reports from older versions);
a key that is there with the wrong type is an error. Nothing here imports more of mtpgraft than
its errors, so any module may read reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Text, UsageError
from .parsing import read_json_file

CHECK_REPORT = "report.json"  # in the folder `mtpgraft check --report DIR` writes
QUALITY_REPORT = "quality.json"  # `mtpgraft quality`'s, beside the check report it read


@dataclass(frozen=True)
class Counts:
    """Draft tokens the server proposed and how many of them it accepted."""

    accepted: int = 0
    draft_tokens: int = 0


@dataclass(frozen=True)
class CheckedRun:
    category: str
    counts: Counts


@dataclass(frozen=True)
class CheckedModel:
    """One model entry of report.json."""

    path: str
    name: str
    file_sha256: tuple[str | None, ...]  # of each file (shard) checked, in order
    draft_sha256: str | None  # the sidecar it was checked with (-md), if any
    verdict: str | None
    reasons: tuple[str, ...]
    acceptance: float | None
    mtp_active: bool | None
    categories: dict[str, dict[str, Any]]  # per category at its best n, as the card shows it
    by_config: tuple[dict[str, Any], ...]  # acceptance per n (x p-min) over reps (check.tables)
    counts: Counts  # every MTP request
    runs: tuple[CheckedRun, ...]

    @property
    def sha256s(self) -> set[str | None]:
        """Every file it was checked as: its own and the sidecar's."""
        return {*self.file_sha256, *([self.draft_sha256] if self.draft_sha256 else [])}


@dataclass(frozen=True)
class CheckReport:
    path: Path  # the report.json
    models: tuple[CheckedModel, ...]
    settings: dict[str, Any]
    llama_cpp_build: str | None
    mtpgraft_version: str | None
    chart: str | None  # the speedup chart's name beside it, if one was drawn


@dataclass(frozen=True)
class QualityModel:
    name: str
    sha256: tuple[str, ...]  # of each of its files
    figures: dict[str, str | None]  # figure -> the text llama-perplexity printed


@dataclass(frozen=True)
class QualityReport:
    path: Path  # the quality.json
    models: tuple[QualityModel, ...]
    reference: str  # the reference model's path
    how: dict[str, Any]  # text, ctx_size, chunks, build
    retention: dict[str, dict[str, float | None]]  # model name -> category ("*": all) -> retention


_JSON_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "an object",
               list: "a list"}


class _Json:
    """Typed reads from one parsed file: every error names the file and the key."""

    def __init__(self, path: Path, prefix: str | Text) -> None:
        self.path, self.prefix = path, prefix

    def fail(self, key: str, want: str, got: Any) -> UsageError:
        return UsageError(self.prefix, f"{self.path} is not an mtpgraft report: {key} must be {want}, "
                          f"got {json.dumps(got)[:40]}")

    def get(self, obj: dict[str, Any], key: str, where: str, want: type | tuple[type, ...], default: Any) -> Any:
        """obj[key] if it is one of `want` (a bool is no number); `default` when it is missing, and
        null also where the default is None."""
        v = obj.get(key, default)
        types = want if isinstance(want, tuple) else (want,)
        if (v is None and default is None) or (isinstance(v, types) and (bool in types or not isinstance(v, bool))):
            return v
        raise self.fail(f"{where}{key}", " or ".join(_JSON_NAMES[t] for t in types), v)

    def items(self, obj: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
        """A list of objects."""
        out = self.get(obj, key, where, list, [])
        for i, x in enumerate(out):
            if not isinstance(x, dict):
                raise self.fail(f"{where}{key}[{i}]", "an object", x)
        return out

    def objects(self, obj: dict[str, Any], key: str, where: str) -> dict[str, dict[str, Any]]:
        """An object whose values are objects."""
        out = self.get(obj, key, where, dict, {})
        for k, x in out.items():
            if not isinstance(x, dict):
                raise self.fail(f"{where}{key}.{k}", "an object", x)
        return out


def _read(path: Path, prefix: str | Text, missing: str) -> Any:
    try:
        return read_json_file(path, path.name, error=UsageError)  # bounded: size and depth
    except FileNotFoundError:
        raise UsageError(prefix, missing) from None
    except (OSError, UsageError) as e:
        raise UsageError(prefix, f"cannot read {path} ({e})") from None


def load_check_report(where: str | Path, *, prefix: str | Text | None = None) -> CheckReport:
    """The report.json in the folder `where` (or the file `where`). `prefix` starts every message
    (by default the path and a colon: a caller names the setting that gave it)."""
    d = Path(where)
    p = d / CHECK_REPORT if d.is_dir() else d
    prefix = f"{d}: " if prefix is None else prefix
    data = _read(p, prefix, f"no {CHECK_REPORT} there (write one with `mtpgraft check --report DIR`)")
    if not isinstance(data, dict) or not isinstance(data.get("models"), list):
        raise UsageError(prefix, f"{p} is not an mtpgraft check report (no models list)")
    j = _Json(p, prefix)
    return CheckReport(
        p, tuple(_checked_model(j, m, f"models[{i}].") for i, m in enumerate(j.items(data, "models", ""))),
        dict(j.get(data, "settings", "", dict, {})), j.get(data, "llama_cpp_build", "", str, None),
        j.get(data, "mtpgraft_version", "", str, None), j.get(data, "chart", "", str, None))


def _counts(j: _Json, obj: dict[str, Any], where: str) -> Counts:
    c = j.get(obj, "counters", where, dict, {})
    return Counts(j.get(c, "accepted", f"{where}counters.", int, 0), j.get(c, "draft_tokens", f"{where}counters.", int, 0))


_NUMBER = (int, float)
# What the card reads of each category's winner (check.tables: the matrix, the flags, the margin)
_CATEGORY_TYPES: dict[str, type | tuple[type, ...]] = {
    "speedup": _NUMBER, "acceptance": _NUMBER, "best_p_min": _NUMBER, "margin": _NUMBER, "margin_sd": _NUMBER,
    "best_n": int, "speedup_reps": int, "best_spec_type": str, "runner_up": str, "status": str, "mtp_off": bool,
    "margin_in_noise": bool}
SPEED_STATUSES = ("green", "yellow", "red", "inconclusive", "single")  # check.judge.speed_status's


def _categories(j: _Json, m: dict[str, Any], at: str) -> dict[str, dict[str, Any]]:
    """Per category at its best n, with the type of each value the card reads checked."""
    cats = j.objects(m, "categories", at)
    for name, c in cats.items():
        w = f"{at}categories.{name}."
        for key, want in _CATEGORY_TYPES.items():
            j.get(c, key, w, want, None)
        if c.get("status") is not None and c["status"] not in SPEED_STATUSES:
            raise j.fail(f"{w}status", "one of " + ", ".join(SPEED_STATUSES), c["status"])
    return dict(cats)


def _by_config(j: _Json, m: dict[str, Any], at: str) -> tuple[dict[str, Any], ...]:
    """The runs per n (x p-min), with the type of each value the card's tables read checked."""
    runs = j.items(m, "by_config", at)
    for i, r in enumerate(runs):
        w = f"{at}by_config[{i}]."
        for key, want in (("n_max", int), ("n_max_effective", int), ("p_min", _NUMBER)):
            j.get(r, key, w, want, None)
        reps = j.get(r, "acceptance_reps", w, dict, None) or {}
        for k in ("mean", "std"):
            j.get(reps, k, f"{w}acceptance_reps.", _NUMBER, None)
        for n, p in enumerate(j.items(r, "positions", w)):
            pw = f"{w}positions[{n}]."
            j.get(p, "position", pw, int, None)
            j.get(p, "acceptance", pw, _NUMBER, None)
            for b, block in enumerate(j.get(p, "head_blocks", pw, list, None) or []):
                if not isinstance(block, int) or isinstance(block, bool):
                    raise j.fail(f"{pw}head_blocks[{b}]", "an integer", block)
    return tuple(runs)


def _checked_model(j: _Json, m: dict[str, Any], at: str) -> CheckedModel:
    files = j.items(m, "files", at)
    draft = j.get(m, "draft", at, dict, None)
    return CheckedModel(
        path=j.get(m, "path", at, str, ""), name=j.get(m, "name", at, str, ""),
        file_sha256=tuple(j.get(f, "sha256", f"{at}files[{i}].", str, None) for i, f in enumerate(files)),
        draft_sha256=j.get(draft, "sha256", f"{at}draft.", str, None) if draft else None,
        verdict=j.get(m, "verdict", at, str, None),
        reasons=tuple(str(r) for r in j.get(m, "reasons", at, list, [])),
        acceptance=j.get(m, "acceptance", at, (int, float), None), mtp_active=j.get(m, "mtp_active", at, bool, None),
        categories=_categories(j, m, at), by_config=_by_config(j, m, at),
        counts=_counts(j, m, at),
        runs=tuple(CheckedRun(j.get(r, "category", f"{at}runs[{i}].", str, ""), _counts(j, r, f"{at}runs[{i}]."))
                   for i, r in enumerate(j.items(m, "runs", at))))


def load_quality(path: str | Path, *, prefix: str | Text | None = None) -> QualityReport:
    """A quality.json (`mtpgraft quality`'s figures, beside the check report it read)."""
    p = Path(path)
    prefix = f"{p}: " if prefix is None else prefix
    data = _read(p, prefix, f"no {QUALITY_REPORT} there (write one with `mtpgraft quality`)")
    if not isinstance(data, dict):
        raise UsageError(prefix, f"{p} is not an mtpgraft quality report (not an object)")
    j = _Json(p, prefix)
    plan = j.get(data, "plan", "", dict, {})
    models = []
    for i, m in enumerate(j.items(data, "models", "")):
        at = f"models[{i}]."
        models.append(QualityModel(
            j.get(m, "name", at, str, ""), tuple(str(s) for s in j.get(m, "sha256", at, list, [])),
            {k: j.get(v, "text", f"{at}figures.{k}.", str, None) for k, v in j.objects(m, "figures", at).items()}))
    retention = {name: {cat: j.get(per, cat, f"retention.{name}.", (int, float), None) for cat in per}
                 for name, per in j.objects(data, "retention", "").items()}
    return QualityReport(p, tuple(models), j.get(plan, "reference", "plan.", str, ""),
                         {k: plan.get(k) for k in ("text", "ctx_size", "chunks", "build")}, retention)
