"""Rendering a CheckResult: the terminal table, report.json, report.md and the speedup chart.

The chart needs matplotlib (the `chart` extra); without it the report says so and `chart` is null.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .judge import SPEEDUP_GREEN, SPEEDUP_RED, CategorySummary, CheckResult, ModelResult

CHART_NAME = "speedup.png"
_DOT = {"green": "🟢", "yellow": "🟡", "red": "🔴", None: "⚪"}


def _f(x: float | None, fmt: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _pm(mean: float | None, std: float | None, fmt: str = ".2f") -> str:
    if mean is None:
        return "-"
    return f"{mean:{fmt}}±{std:{fmt}}" if std else f"{mean:{fmt}}"


def _pct(speedup: float | None) -> str:
    return "-" if speedup is None else f"{(speedup - 1) * 100:+.0f}%"


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- terminal


def format_verdict(result: CheckResult) -> str:
    acc = _f(result.acceptance)
    head = f"verdict: {result.verdict.upper()}  (acceptance {acc}, min {result.plan.min_acceptance:.2f}"
    if result.plan.min_speedup is not None:
        head += f", min code speedup {result.plan.min_speedup:.2f}"
    lines = [head + ")"]
    lines += [f"  - {r}" for r in result.reasons]
    return "\n".join(lines)


def format_table(result: CheckResult) -> str:
    """Per model: every n x temperature x category row, then the best-n summary; then the verdict."""
    out: list[str] = []
    for m in result.models:
        out.append(f"{m.spec.name}: {m.verdict.upper()}, acceptance {_f(m.acceptance)}, "
                   f"mean length {_f(m.counters.mean_accept_len)}, MTP "
                   f"{'active' if m.mtp_active else 'NOT active'}")
        rows = []
        for c in m.configs:
            rows.append([
                c.category, str(c.n_max), f"{c.temperature:g}",
                _pm(c.acceptance, c.acceptance_reps.std), _f(c.counters.mean_accept_len),
                " ".join(_f(x) for x in c.counters.per_pos_rate) or "-",
                _pm(c.decode_tps.mean, c.decode_tps.std, ".1f"), _f(c.baseline_decode_tps.mean, ".1f"),
                _pm(c.speedup.mean, c.speedup.std),
                f"{_f(c.prefill_tps.mean, '.0f')} / {_f(c.baseline_prefill_tps.mean, '.0f')}",
            ])
        if rows:
            out.append(_grid(["category", "n", "T", "accept", "len", "per-pos", "tok/s",
                              "base tok/s", "speedup", "prefill mtp/base"], rows))
            out.append("")
            out.append(_summary_grid(m))
        out.append("")
    out.append(format_verdict(result))
    return "\n".join(out)


def _summary_grid(m: ModelResult) -> str:
    rows = []
    for s in m.categories.values():
        rows.append([s.category, _f(s.best_n, "d") if s.best_n else "-", _f(s.acceptance),
                     _f(s.speedup) + ("x" if s.speedup is not None else ""),
                     _f(s.decode_tps, ".1f"), _f(s.baseline_decode_tps, ".1f"),
                     _f(s.prefill_tps, ".0f"), _f(s.baseline_prefill_tps, ".0f"),
                     s.status or "-"])
    return _grid(["best", "n", "accept", "speedup", "tok/s", "base tok/s", "prefill",
                  "base prefill", "status"], rows)


# --------------------------------------------------------------------------- report files


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    markdown: Path
    chart: Path | None
    chart_note: str = ""


def report_dict(result: CheckResult, chart: str | None = None) -> dict[str, Any]:
    d = result.to_dict()
    d["chart"] = chart
    return d


def recommendation_matrix(models: list[ModelResult]) -> str:
    """Markdown: model x category, a coloured dot and the speedup at the best n."""
    cats = list(dict.fromkeys(c for m in models for c in m.categories))
    header = "| model | " + " | ".join(cats) + " |"
    rows = [header, "|" + "---|" * (len(cats) + 1)]
    for m in models:
        cells = []
        for c in cats:
            s: CategorySummary | None = m.categories.get(c)
            if s is None or s.speedup is None:
                cells.append(f"{_DOT[None]} n/a")
            else:
                cells.append(f"{_DOT[s.status]} {_pct(s.speedup)} (n={s.best_n}, acc {s.acceptance:.2f})"
                             if s.acceptance is not None else f"{_DOT[s.status]} {_pct(s.speedup)}")
        rows.append(f"| {m.spec.name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(result: CheckResult, chart: str | None = None, chart_note: str = "") -> str:
    p = result.plan
    out = [f"# mtpgraft check: {result.verdict.upper()}", ""]
    out.append(f"Aggregate acceptance **{_f(result.acceptance)}** (threshold {p.min_acceptance:.2f})"
               + (f", code speedup threshold {p.min_speedup:.2f}x" if p.min_speedup else
                  ", speed reported, not gated") + ".")
    if result.reasons:
        out += ["", "Reasons:", ""] + [f"- {r}" for r in result.reasons]
    out += ["", "## Recommendation matrix", "",
            f"Decode speedup of MTP over the same server without MTP, at the best draft depth n, "
            f"temperature {p.temperatures[0]:g}: 🟢 speeds up (>= {SPEEDUP_GREEN:.2f}x), "
            f"🟡 marginal ({SPEEDUP_RED:.2f}x to {SPEEDUP_GREEN:.2f}x), 🔴 slows down "
            f"(< {SPEEDUP_RED:.2f}x).", "", recommendation_matrix(list(result.models)), ""]
    if chart:
        out += [f"![speedup per category]({chart})", ""]
    elif chart_note:
        out += [f"_{chart_note}_", ""]
    out += ["## Models", ""]
    for m in result.models:
        out += [f"### {m.spec.name}", "",
                f"Verdict **{m.verdict}**; MTP {'active' if m.mtp_active else '**not active**'}; "
                f"acceptance {_f(m.acceptance)}; mean acceptance length "
                f"{_f(m.counters.mean_accept_len)} (llama-server /metrics: "
                f"{m.counters.accepted} of {m.counters.draft_tokens} drafted tokens accepted in "
                f"{m.counters.drafts} drafts).", ""]
        out += [f"- {r}" for r in m.reasons]
        out += [f"- warning: {w}" for w in m.warnings]
        if m.reasons or m.warnings:
            out.append("")
        files = ", ".join(f"`{f.name}`" for f in m.spec.files)
        out += [f"Files: {files}", ""]
        if m.categories:
            rows = [[s.category, _f(s.best_n, "d") if s.best_n else "-",
                     _pm(s.acceptance, s.acceptance_std), _f(s.mean_accept_len),
                     _pm(s.decode_tps, s.decode_tps_std, ".1f"), _f(s.baseline_decode_tps, ".1f"),
                     f"{_DOT[s.status]} {_pm(s.speedup, s.speedup_std)}",
                     _f(s.prefill_tps, ".0f"), _f(s.baseline_prefill_tps, ".0f")]
                    for s in m.categories.values()]
            out += ["Best draft depth per category:", "",
                    _md_table(["category", "best n", "acceptance", "mean len", "tok/s",
                               "baseline tok/s", "speedup", "prefill tok/s",
                               "baseline prefill tok/s"], rows), ""]
        if m.configs:
            rows = [[c.category, str(c.n_max), f"{c.temperature:g}",
                     _pm(c.acceptance, c.acceptance_reps.std), _f(c.counters.mean_accept_len),
                     " / ".join(_f(x) for x in c.counters.per_pos_rate) or "-",
                     _pm(c.decode_tps.mean, c.decode_tps.std, ".1f"),
                     _pm(c.baseline_decode_tps.mean, c.baseline_decode_tps.std, ".1f"),
                     _pm(c.speedup.mean, c.speedup.std),
                     _f(c.prefill_tps.mean, ".0f"), _f(c.baseline_prefill_tps.mean, ".0f")]
                    for c in m.configs]
            out += ["Every configuration (mean ± sd over reps):", "",
                    _md_table(["category", "n", "T", "acceptance", "mean len", "per position",
                               "tok/s", "baseline tok/s", "speedup", "prefill", "baseline prefill"],
                              rows), ""]
        for s in m.servers:
            if s.error:
                tail = "\n".join(s.log_tail.splitlines()[-15:])
                out += [f"{_server_label(s.n_max)} failed: {s.error}", "", "```", tail, "```", ""]
    out += ["## Settings", "",
            f"- llama.cpp build: {result.llama_cpp_build}",
            f"- MTP: `--spec-type {p.spec_type}`" + (f", draft `-md {p.draft.name}`" if p.draft else ""),
            f"- draft depths n: {', '.join(map(str, p.n_max))}; temperatures: "
            f"{', '.join(f'{t:g}' for t in p.temperatures)}; reps: {p.reps} (seeds "
            f"{', '.join(map(str, p.seeds()))}); n_predict {p.n_predict}; ctx {p.ctx_size}",
            f"- prompts: {p.prompt_source}, {len(p.prompts)} in {', '.join(p.categories)}; "
            "prompt cache off (cache_prompt=false, --cache-ram 0)",
            f"- harness: {result.wall_s:.1f}s wall, of which server start {result.server_start_s:.1f}s "
            f"and llama-server generation {result.generation_s:.1f}s "
            f"(overhead {result.overhead_s:.1f}s)", ""]
    return "\n".join(out)


def _server_label(n_max: int | None) -> str:
    return "baseline llama-server" if n_max is None else f"llama-server with MTP n={n_max}"


def write_chart(result: CheckResult, path: Path) -> str:
    """Write the grouped bar chart; return '' or why it was skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install 'mtpgraft[chart]')"
    models = list(result.models)
    cats = list(dict.fromkeys(c for m in models for c in m.categories))
    if not cats or all(s.speedup is None for m in models for s in m.categories.values()):
        return "chart skipped: no speedup was measured"
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cats) * max(1, len(models)) ** 0.5), 4.0))
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        xs = [j + (i - (len(models) - 1) / 2) * width for j in range(len(cats))]
        ys = [(m.categories[c].speedup or 0.0) if c in m.categories else 0.0 for c in cats]
        errs = [(m.categories[c].speedup_std or 0.0) if c in m.categories else 0.0 for c in cats]
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=m.spec.name)
    ax.axhline(SPEEDUP_RED, color="black", linewidth=0.8)
    ax.axhline(SPEEDUP_GREEN, color="green", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(cats)))
    ax.set_xticklabels(cats)
    ax.set_ylabel("decode speedup with MTP (x)")
    ax.set_title("MTP speedup per category (best n)")
    if len(models) > 1:
        ax.legend(fontsize="small")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return ""


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(result: CheckResult, outdir: str | os.PathLike[str], *,
                 chart: bool = True) -> ReportFiles:
    """Write report.json, report.md and (with matplotlib) speedup.png into `outdir`."""
    d = Path(outdir)
    d.mkdir(parents=True, exist_ok=True)
    chart_path: Path | None = None
    note = "chart not requested"
    if chart:
        note = write_chart(result, d / CHART_NAME)
        chart_path = None if note else d / CHART_NAME
    name = chart_path.name if chart_path else None
    _write_text(d / "report.json", json.dumps(report_dict(result, name), indent=2,
                                              ensure_ascii=False) + "\n")
    _write_text(d / "report.md", render_markdown(result, name, note))
    return ReportFiles(d / "report.json", d / "report.md", chart_path, note)
