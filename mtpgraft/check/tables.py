"""The tables people publish, rendered from report.json's model entries (so a model card can render
them from a report on disk): the quant x category speedup matrix with green / yellow / red, and the
quant x n acceptance table with mean +- sd over reps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

DOT = {"green": "🟢", "yellow": "🟡", "red": "🔴", "inconclusive": "❔", "single": "⬜", None: "⚪"}


def _pm(mean: float | None, std: float | None, fmt: str = ".2f") -> str:
    if mean is None:
        return "-"
    return f"{mean:{fmt}} ± {std:{fmt}}" if std else f"{mean:{fmt}}"


def pct(speedup: float | None) -> str:
    return "-" if speedup is None else f"{(speedup - 1) * 100:+.0f}%"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def row_labels(models: Sequence[dict[str, Any]]) -> list[str]:
    """The quant of each model when that tells them apart, else the file name."""
    quants = [m.get("quant") or m.get("name", "?") for m in models]
    if len(set(quants)) == len(quants):
        return [str(q) for q in quants]
    return [str(m.get("name", "?")) for m in models]


def _config(c: dict[str, Any]) -> str:
    n, p = c.get("best_n"), c.get("best_p_min")
    if n is None:
        return ""
    types = str(c.get("best_spec_type") or "")
    others = [t for t in types.split(",") if t and t not in ("draft-mtp", "mtp")]
    return "".join(f"+{t} " for t in others) + f"n={n}" + (f", p-min {p:g}" if p is not None else "")


def matrix_cell(c: dict[str, Any] | None) -> str:
    if not c or c.get("speedup") is None:
        return f"{DOT[None]} n/a"
    status = c.get("status")
    acc = c.get("acceptance")
    what = f"{pct(c['speedup'])} ({_config(c)}" + (f", acc {acc:.2f}" if acc is not None else "") + ")"
    if status == "inconclusive":
        return f"{DOT[status]} inconclusive: {what}"
    if status == "single":
        return f"{DOT[status]} single run: {what}"
    return f"{DOT[status]} {what}"


def colour_basis(models: Sequence[dict[str, Any]]) -> str:
    """What stands behind the matrix's colours: how many repetitions, and for one, the rule."""
    cells = [c for m in models for c in (m.get("categories") or {}).values()
             if isinstance(c, dict) and c.get("speedup") is not None]
    reps = sorted({int(c.get("speedup_reps") or 0) for c in cells} - {0})
    if not reps:
        return ""
    many = f"{reps[0]}" if len(reps) == 1 else f"{reps[0]} to {reps[-1]}"
    text = f"Each colour stands on {many} repetition{'s' if reps[-1] > 1 else ''}"
    if reps[0] == 1:
        text += (f"; a speedup from one repetition is coloured only where the spread of its requests' "
                 f"speedups leaves 1.00x outside one sd, else {DOT['single']} single run")
    return text + "."


def speedup_matrix(models: Sequence[dict[str, Any]]) -> str:
    """Markdown: quant x category, a coloured dot, the speedup at the recommended n (and p-min)."""
    cats = list(dict.fromkeys(c for m in models for c in m.get("categories") or {}))
    rows = [[label] + [matrix_cell((m.get("categories") or {}).get(c)) for c in cats]
            for label, m in zip(row_labels(models), models, strict=True)]
    return md_table(["quant"] + cats, rows)


def _first_condition(m: dict[str, Any]) -> list[dict[str, Any]]:
    """A model entry's by_config runs at the report's first condition (temperature, thinking, depth)."""
    runs = [r for r in m.get("by_config") or [] if isinstance(r, dict)]
    if not runs:
        return []
    key = (runs[0].get("temperature"), runs[0].get("reasoning"), runs[0].get("depth"))
    return [r for r in runs if (r.get("temperature"), r.get("reasoning"), r.get("depth")) == key]


def acceptance_table(models: Sequence[dict[str, Any]], text: Callable[[Any], str] = str) -> str:
    """Markdown: quant x draft depth n (x p-min), acceptance mean +- sd over reps, all categories,
    at the report's first condition (temperature, thinking, depth). `text` renders each header and
    cell from the report (a card passes hub.markdown.md); the quant labels come as given."""
    cols: list[tuple[Any, Any]] = list(dict.fromkeys((r.get("n_max"), r.get("p_min"))
                                                     for m in models for r in _first_condition(m)))
    if not cols:
        return ""
    header = ["quant"] + [text(f"n={n}" + (f" p-min {p:g}" if p is not None else "")) for n, p in cols]
    rows = []
    for label, m in zip(row_labels(models), models, strict=True):
        got = {(r.get("n_max"), r.get("p_min")): r for r in _first_condition(m)}
        cells = []
        for key in cols:
            a = (got.get(key) or {}).get("acceptance_reps") or {}
            cells.append(text(_pm(a.get("mean"), a.get("std"))))
        rows.append([label] + cells)
    return md_table(header, rows)


def _positions(r: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in r.get("positions") or [] if isinstance(p, dict)]


def _chained(r: dict[str, Any]) -> bool:
    """Whether a run's positions are drafted by different blocks (chained heads)."""
    return len({str(p.get("head_blocks")) for p in _positions(r) if p.get("head_blocks")}) > 1


def positions_table(models: Sequence[dict[str, Any]], text: Callable[[Any], str] = str) -> str:
    """Markdown: per quant and draft depth n (x p-min), each position's acceptance and the block that
    drafts it, all categories, at the report's first condition; '' unless some model's heads are
    chained (one head drafts every position: the acceptance table says all). A depth the heads clamp
    says how many positions it drafts. `text` renders each cell from the report (as acceptance_table)."""
    chosen = [(label, [r for r in _first_condition(m) if _chained(r)])
              for label, m in zip(row_labels(models), models, strict=True)]
    width = max((len(_positions(r)) for _, runs in chosen for r in runs), default=0)
    if not width:
        return ""
    rows = []
    for label, runs in chosen:
        for r in runs:
            n, p, eff = r.get("n_max"), r.get("p_min"), r.get("n_max_effective")
            config = f"n={n}" + (f" p-min {p:g}" if isinstance(p, (int, float)) else "") \
                + (f" (drafts {eff})" if isinstance(eff, int) and eff != n else "")
            cells = [text(_position_cell(x)) for x in _positions(r)]
            rows.append([label, text(config)] + cells + ["-"] * (width - len(cells)))
    return md_table(["quant", "config"] + [f"position {i}" for i in range(width)], rows)


def _position_cell(p: dict[str, Any]) -> str:
    acc, blocks = p.get("acceptance"), p.get("head_blocks") or []
    rate = f"{acc:.2f}" if isinstance(acc, (int, float)) else "-"
    return rate + (f" (blk.{blocks[0]})" if len(blocks) == 1 and isinstance(blocks[0], int) else "")


OFF_TEXT = "leave MTP off"


def task_flags(c: dict[str, Any] | None) -> str | None:
    """The llama-server flags of a category's winner (report.json's category entry), '' where MTP off
    won (no MTP configuration beat the server without MTP), None where nothing was measured."""
    if not c or c.get("best_n") is None:
        return None
    if c.get("mtp_off"):
        return ""
    flags = f"--spec-type {c.get('best_spec_type') or 'draft-mtp'} --spec-draft-n-max {c['best_n']}"
    p = c.get("best_p_min")
    return flags + (f" --spec-draft-p-min {p:g}" if isinstance(p, (int, float)) else "")


def margin_text(c: dict[str, Any]) -> str:
    """The winner's margin over the runner-up and whether it is inside the noise."""
    margin, runner = c.get("margin"), c.get("runner_up")
    if margin is None or not runner:
        return "-"
    sd, inside = c.get("margin_sd"), c.get("margin_in_noise")
    noise = ("noise not measured (1 rep)" if inside is None else
             f"inside the noise (sd {sd:.2f})" if inside else f"outside the noise (sd {sd:.2f})")
    return f"{margin:+.2f}x over {runner}, {noise}"


def flags_table(models: Sequence[dict[str, Any]], code: Any = None) -> str:
    """Markdown: per task x quant, the exact llama-server flags that won (or 'leave MTP off') and the
    margin over the runner-up. `code` renders a flag string (default: a backtick code span)."""
    def show(flags: str) -> str:
        return code(flags) if code is not None else f"`{flags}`"

    labels = row_labels(models)
    tasks = list(dict.fromkeys(t for m in models for t in m.get("categories") or {}))
    rows = []
    for task in tasks:
        for label, m in zip(labels, models, strict=True):
            c = (m.get("categories") or {}).get(task)
            flags = task_flags(c)
            if c is not None and flags is not None:
                rows.append([str(task), label, show(flags) if flags else OFF_TEXT, margin_text(c)])
    return md_table(["task", "quant", "llama-server flags", "margin over the runner-up"], rows) if rows else ""
