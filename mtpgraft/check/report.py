"""Rendering a CheckResult: the terminal table, per-prompt lines, report.json, report.md, the
bench JSON and the charts.

The charts need matplotlib (the `chart` extra); without it the report says so and `chart` is null.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..outputs import PendingOutput, write_text
from ..reports import CHECK_REPORT
from .judge import SPEEDUP_GREEN, SPEEDUP_RED, CheckResult, ConfigStats, ModelResult
from .plan import WARMUP_RULE, Condition
from .positions import CHAIN, SINGLE
from .records import RequestRecord
from .tables import (
    DOT,
    OFF_TEXT,
    acceptance_table,
    colour_basis,
    flags_table,
    margin_text,
    md_table,
    row_labels,
    speedup_matrix,
    task_flags,
)

CHART_NAME = "speedup.png"  # the quant x category heatmap
CHART_BY_N = "by-n.png"  # acceptance and speedup against n, one line per quant


def _f(x: float | None, fmt: str = ".2f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _pm(mean: float | None, std: float | None, fmt: str = ".2f") -> str:
    if mean is None:
        return "-"
    return f"{mean:{fmt}}±{std:{fmt}}" if std else f"{mean:{fmt}}"


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


def _config_row(c: ConfigStats) -> list[str]:
    return [c.category, c.config.label.removeprefix("MTP "), c.condition.label,
            _pm(c.acceptance, c.acceptance_reps.std), _f(c.counters.mean_accept_len),
            " ".join(_f(x) for x in c.counters.per_pos_upto(c.n_max)) or "-",
            _pm(c.decode_tps.mean, c.decode_tps.std, ".1f"), _f(c.baseline_decode_tps.mean, ".1f"),
            _pm(c.speedup.mean, c.speedup.std),
            f"{_f(c.prefill_tps.mean, '.0f')} / {_f(c.baseline_prefill_tps.mean, '.0f')}"]


def format_table(result: CheckResult) -> str:
    """Per model: every config x condition x category row, then the best-config summary; then the
    verdict."""
    out: list[str] = []
    for m in result.models:
        out.append(f"{m.spec.name}: {m.verdict.upper()}, acceptance {_f(m.acceptance)}, "
                   f"mean length {_f(m.counters.mean_accept_len)}, MTP "
                   f"{'active' if m.mtp_active else 'NOT active'}, {m.mode} mode")
        out += [f"  template: thinking {t.reasoning} sends {json.dumps(t.kwargs)}; "
                f"{'honoured' if t.honoured else 'NOT honoured'} (prompt ends {t.prompt_tail[-24:]!r})"
                for t in m.template]
        out += [f"  {line}" for line in _heads_lines(m)]
        if m.configs:
            out.append(_grid(["category", "config", "condition", "accept", "len", "per-pos",
                              "tok/s", "base tok/s", "speedup", "prefill mtp/base"],
                             [_config_row(c) for c in m.configs]))
            out.append("")
            out.append(_summary_grid(m))
        out.append("")
    out.append(format_verdict(result))
    return "\n".join(out)


def _heads_lines(m: ModelResult) -> list[str]:
    """Which head drafts which position (the per-position acceptance's column order), and where the
    graph drafts fewer positions than asked, for a model with MTP runs; nothing for a single in-file
    head (its every position is its one block, as the JSON says: the output reads as before)."""
    h = m.heads
    if h is None or not m.configs or (h.mode == SINGLE and not h.source):
        return []
    return [f"draft heads: {h.describe()}"] + [f"note: {n}" for n in m.notes]


def _summary_grid(m: ModelResult) -> str:
    rows = []
    for s in m.summaries or tuple(m.categories.values()):
        cond = f"T={s.temperature:g}" + (f" thinking {s.reasoning}" if s.reasoning else "") + \
            (f" depth {s.depth}" if s.depth else "")
        d = s.to_dict()
        flags = task_flags(d)
        rows.append([s.category, cond, (flags or OFF_TEXT) if flags is not None else "-",
                     _f(s.acceptance), _f(s.speedup) + ("x" if s.speedup is not None else ""),
                     _f(s.decode_tps, ".1f"), _f(s.baseline_decode_tps, ".1f"),
                     _f(s.prefill_tps, ".0f"), _f(s.baseline_prefill_tps, ".0f"),
                     (s.status or "-") + (f" ({s.why})" if s.why else ""), margin_text(d)])
    return _grid(["best", "condition", "recommended", "accept", "speedup", "tok/s", "base tok/s",
                  "prefill", "base prefill", "status", "margin"], rows)


def per_prompt_line(model: str, r: RequestRecord) -> str:
    """One request the way people post them: pred= draft= acc= rate= tok/s=."""
    cond = f"T={r.temperature:g}" + (f" thinking={r.reasoning}" if r.reasoning else "") + \
        (f" depth={r.depth}" if r.depth else "")
    return (f"{model} {r.config.label} {cond} rep={r.rep + 1} {r.prompt_id} [{r.category}]: "
            f"pred={r.predicted_n} draft={r.draft_n} acc={r.draft_n_accepted} "
            f"rate={_f(r.rate, '.3f')} tok/s={_f(r.decode_tps, '.1f')}")


def format_per_prompt(result: CheckResult) -> str:
    return "\n".join(per_prompt_line(m.spec.name, r) for m in result.models for c in m.cells
                     for r in c.requests)


def _aggregate(records: Sequence[RequestRecord]) -> dict[str, Any]:
    draft = sum(r.draft_n for r in records)
    accepted = sum(r.draft_n_accepted for r in records)
    return {"n_requests": len(records), "total_predicted": sum(r.predicted_n for r in records),
            "total_draft": draft, "total_draft_accepted": accepted,
            "aggregate_accept_rate": round(accepted / draft, 6) if draft else None,
            "wall_s_total": round(sum(r.wall_ms for r in records) / 1000.0, 3)}


def bench_dict(result: CheckResult) -> dict[str, Any]:
    """The aggregate people compare: over every MTP request, then per model x server config."""
    mtp = [r for m in result.models for c in m.cells if c.n_max is not None for r in c.requests]
    runs = []
    for m in result.models:
        for cfg in result.plan.configs:
            recs = [r for c in m.cells if c.config == cfg for r in c.requests]
            if recs:
                runs.append({"model": m.spec.name, "quant": m.spec.quant, "config": cfg.label,
                             "n_max": cfg.n_max, "p_min": cfg.p_min, **_aggregate(recs)})
    return {**_aggregate(mtp), "runs": runs}


# --------------------------------------------------------------------------- report files


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    markdown: Path
    chart: Path | None
    chart_note: str = ""
    charts: tuple[Path, ...] = ()


def report_dict(result: CheckResult, chart: str | None = None,
                charts: Sequence[str] = ()) -> dict[str, Any]:
    d = result.to_dict()
    d["chart"] = chart
    d["charts"] = list(charts)
    return d


def recommendation_matrix(models: list[ModelResult]) -> str:
    """Markdown: quant x category, a coloured dot and the speedup at the best config."""
    return speedup_matrix([m.to_dict() for m in models])


def _template_lines(m: ModelResult) -> list[str]:
    return [f"- thinking {t.reasoning}: sent `chat_template_kwargs` `{json.dumps(t.kwargs)}`; the "
            f"template {'honours it' if t.honoured else '**ignores it**'} (the rendered prompt "
            f"ends `{t.prompt_tail[-30:]!r}`)" for t in m.template]


def _labels(result: CheckResult) -> list[str]:
    """Row labels: the quant, or the file name where quants repeat (as in the matrix)."""
    return row_labels([{"quant": m.spec.quant, "name": m.spec.name} for m in result.models])


def _reasoning_table(result: CheckResult) -> list[str]:
    """Thinking on and off side by side: acceptance and speedup per model x category."""
    settings = result.plan.reasoning
    if len(settings) < 2:
        return []
    first = result.plan.conditions[0]
    header = ["model", "category"] + [f"{w} (thinking {r})" for r in settings
                                      for w in ("acceptance", "speedup")]
    rows = []
    for label, m in zip(_labels(result), result.models, strict=True):
        for cat in result.plan.categories:
            row = [label, cat]
            for r in settings:
                s = next((x for x in m.summaries if x.category == cat and x.reasoning == r
                          and x.temperature == first.temperature and x.depth == first.depth), None)
                row += [_pm(s.acceptance, s.acceptance_std) if s else "-",
                        _pm(s.speedup, s.speedup_std) if s else "-"]
            rows.append(row)
    return ["## Thinking on and off", "", md_table(header, rows), ""]


def _drafter_table(result: CheckResult) -> list[str]:
    """Per --spec-type list with more than MTP: which drafter proposed and had accepted what (llama.cpp's
    own per-drafter counters), beside llama-server's totals for the same requests (/metrics)."""
    rows = []
    for label, m in zip(_labels(result), result.models, strict=True):
        for c in m.configs:
            if c.spec_types is None or not c.drafters:
                continue
            for d in c.drafters:
                rows.append([label, c.category, c.config.label, c.condition.label,
                             d.type, str(d.drafts), str(d.draft_tokens), str(d.accepted),
                             _f(d.acceptance)])
            drafted = sum(d.draft_tokens for d in c.drafters)
            accepted = sum(d.accepted for d in c.drafters)
            rows.append([label, c.category, c.config.label, c.condition.label,
                         "all (llama-server /metrics)", str(c.counters.drafts),
                         str(c.counters.draft_tokens), str(c.counters.accepted), _f(c.acceptance)
                         + ("" if (drafted, accepted) == (c.counters.draft_tokens, c.counters.accepted)
                            else f" (drafters sum to {accepted}/{drafted})")])
    if not rows:
        return []
    return ["## Drafters", "",
            "Which drafter of a --spec-type list proposed and had accepted what: llama.cpp's own "
            "per-drafter counters (its `statistics` log lines at --verbosity 4), then llama-server's "
            "totals over the same requests. The drafts column of the total row counts verification "
            "steps.", "",
            md_table(["quant", "category", "config", "condition", "drafter", "drafts", "drafted",
                      "accepted", "acceptance"], rows), ""]


def _depth_table(result: CheckResult) -> list[str]:
    """Per depth: prefill with and without MTP (the ratio), decode speedup and acceptance."""
    if result.plan.context_depth == (0,):
        return []
    rows = []
    for label, m in zip(_labels(result), result.models, strict=True):
        for c in m.pooled:
            rows.append([label, str(c.depth), Condition(c.temperature, c.reasoning).label,
                         c.config.label.removeprefix("MTP "),
                         _f(c.baseline_prefill_tps.mean, ".0f"), _f(c.prefill_tps.mean, ".0f"),
                         _f(c.prefill_ratio), _pm(c.speedup.mean, c.speedup.std),
                         _pm(c.acceptance, c.acceptance_reps.std)])
    tokens = "; ".join(f"{label}: " + ", ".join(f"{k} = {v}" for k, v in m.context_tokens.items())
                       for label, m in zip(_labels(result), result.models, strict=True)
                       if m.context_tokens)
    return ["## Context depth", "",
            "Each prompt prefixed with a fixed built-in context of the given number of tokens (code "
            "for code prompts, prose for the rest; counted with the server's /tokenize"
            + (f": {tokens}" if tokens else "") + "). Prefill ratio = MTP prefill tok/s / baseline "
            "prefill tok/s (below 1: MTP slows the prefill).", "",
            md_table(["quant", "depth", "condition", "config", "prefill tok/s (no MTP)", "prefill tok/s (MTP)",
                      "prefill ratio", "decode speedup", "acceptance"], rows), ""]


def _per_pos_md(c: ConfigStats) -> str:
    """Each position's acceptance, with the block that drafts it where heads are chained."""
    heads = c.heads if c.heads is not None and c.heads.mode == CHAIN else None
    return " / ".join(_f(x) + "".join(f" (blk.{b})" for b in (heads.blocks_at(p, c.n_max) if heads else ()))
                      for p, x in enumerate(c.counters.per_pos_upto(c.n_max))) or "-"


def _model_section(m: ModelResult) -> list[str]:
    out = [f"### {m.spec.name}", "",
           f"Verdict **{m.verdict}**; MTP {'active' if m.mtp_active else '**not active**'}; "
           f"{m.mode} mode; acceptance {_f(m.acceptance)}; mean acceptance length "
           f"{_f(m.counters.mean_accept_len)} (llama-server /metrics: "
           f"{m.counters.accepted} of {m.counters.draft_tokens} drafted tokens accepted in "
           f"{m.counters.drafts} drafts).", ""]
    out += [f"- {r}" for r in m.reasons]
    out += [f"- warning: {w}" for w in m.warnings]
    out += _template_lines(m)
    heads = [f"- {line[0].upper()}{line[1:]}" for line in _heads_lines(m)]
    out += heads
    if m.reasons or m.warnings or m.template or heads:
        out.append("")
    out += [f"Files: {', '.join(f'`{f.name}`' for f in m.spec.files)}", ""]
    if m.configs:
        rows = [[c.category, c.config.label.removeprefix("MTP "), c.condition.label,
                 _pm(c.acceptance, c.acceptance_reps.std), _f(c.counters.mean_accept_len),
                 _per_pos_md(c), _pm(c.decode_tps.mean, c.decode_tps.std, ".1f"),
                 _pm(c.baseline_decode_tps.mean, c.baseline_decode_tps.std, ".1f"),
                 f"{DOT[c.status]} {_pm(c.speedup.mean, c.speedup.std)}",
                 _f(c.prefill_tps.mean, ".0f"), _f(c.baseline_prefill_tps.mean, ".0f")]
                for c in m.configs]
        out += ["Every configuration (mean ± sd over reps):", "",
                md_table(["category", "config", "condition", "acceptance", "mean len", "per position",
                          "tok/s", "baseline tok/s", "speedup", "prefill", "baseline prefill"],
                         rows), ""]
    for s in m.servers:
        if s.error:
            tail = "\n".join(s.log_tail.splitlines()[-15:])
            out += [f"llama-server {s.config.label} failed: {s.error}", "", "```", tail, "```", ""]
    return out


def render_markdown(result: CheckResult, chart: str | None = None, chart_note: str = "",
                    charts: Sequence[str] = ()) -> str:
    p = result.plan
    models = [m.to_dict() for m in result.models]
    out = [f"# mtpgraft check: {result.verdict.upper()}", ""]
    out.append(f"Aggregate acceptance **{_f(result.acceptance)}** (threshold {p.min_acceptance:.2f})"
               + (f", code speedup threshold {p.min_speedup:.2f}x" if p.min_speedup else
                  ", speed reported, not gated") + ".")
    if result.reasons:
        out += ["", "Reasons:", ""] + [f"- {r}" for r in result.reasons]
    first = p.conditions[0]
    out += ["", "## Recommendation matrix: speedup per quant and category", "",
            f"Decode speedup of MTP over the same server without MTP, at the recommended config "
            f"(the best n and p-min), {first.label}: 🟢 speeds up (>= {SPEEDUP_GREEN:.2f}x), "
            f"🟡 marginal ({SPEEDUP_RED:.2f}x to {SPEEDUP_GREEN:.2f}x), 🔴 slows down "
            f"(< {SPEEDUP_RED:.2f}x), ❔ inconclusive: over the reps 1.00x lies within one sd of "
            "the mean speedup, so a speedup and a slowdown are both plausible, ⬜ single run: one rep "
            "whose requests' spread does not tell it from 1.00x. " + colour_basis(models), "",
            speedup_matrix(models), ""]
    why = [f"- {m.spec.quant} {s.category}: {s.why}" for m in result.models
           for s in m.categories.values() if s.why]
    if why:
        out += ["Inconclusive:", ""] + why + [""]
    flags = flags_table(models)
    if flags:
        out += ["## Recommended llama-server flags per task", "",
                f"The winner per quant and category, {first.label}, among every configuration measured "
                "and MTP off (1.00x): its exact speculative flags, or \"leave MTP off\" where no "
                "configuration beat the server without MTP; the margin is the winner's mean speedup "
                "minus the runner-up's, inside the noise when within one sd of that difference (the "
                "two spreads over reps combined).", "", flags, ""]
    out += _drafter_table(result)
    acc = acceptance_table(models)
    if acc:
        out += ["## Acceptance per quant and draft depth", "",
                f"All categories pooled, {first.label}; mean ± sd over {p.reps} reps.", "", acc, ""]
    out += _reasoning_table(result) + _depth_table(result)
    shown = list(charts) or ([chart] if chart else [])
    out += [f"![{name}]({name})" for name in shown] + ([""] if shown else [])
    if not shown and chart_note:
        out += [f"_{chart_note}_", ""]
    out += ["## Models", ""]
    for m in result.models:
        out += _model_section(m)
    out += _settings(result)
    return "\n".join(out)


def _per_request_line(result: CheckResult) -> str:
    """What the build did with per-request speculative fields (and so how many servers ran)."""
    if result.per_request is None:
        return "not probed (no --spec-type list had more than one n / p-min on a server, or no warm-up)"
    ok, evidence = result.per_request
    return (f"{'accepted' if ok else 'ignored'} by llama.cpp {result.llama_cpp_build} ({evidence}); "
            + ("every n and p-min of a --spec-type list measured on one server start" if ok else
               "one server start per configuration"))


def _settings(result: CheckResult) -> list[str]:
    p = result.plan
    modes = ", ".join(sorted({p.mode_for(m) for m in p.models}))
    return ["## Settings", "",
            f"- llama.cpp build: {result.llama_cpp_build}",
            "- MTP: " + ", ".join(f"`--spec-type {t}`" for t in p.settings_dict()["spec_types"])
            + (f", draft `-md {p.draft.name}`" if p.draft else ""),
            f"- per-request speculative fields: {_per_request_line(result)}",
            f"- mode: {modes} (chat: /v1/chat/completions through the model's template with "
            "--jinja; raw: /completion)"
            + (f"; thinking {', '.join(p.reasoning)} via chat_template_kwargs.enable_thinking"
               if p.reasoning else ""),
            f"- draft depths n: {', '.join(map(str, p.n_max))}; p-min: "
            f"{', '.join('default' if x is None else f'{x:g}' for x in p.p_min)}"
            + (f" (dense models: {', '.join(f'{x:g}' for x in p.dense_p_min)})" if p.dense_p_min else "")
            + "; temperatures: "
            f"{', '.join(f'{t:g}' for t in p.temperatures)}; context depths: "
            f"{', '.join(map(str, p.context_depth))}; reps: {p.reps} (seeds "
            f"{', '.join(map(str, p.seeds()))}); n_predict {p.n_predict}; ctx {p.server_ctx}",
            f"- prompts: {p.prompt_source}, {len(p.prompts)} in {', '.join(p.categories)}; "
            "prompt cache off (cache_prompt=false, --cache-ram 0)",
            f"- warm-up: {WARMUP_RULE if p.warmup else 'none'}",
            f"- harness: {result.wall_s:.1f}s wall, of which server start {result.server_start_s:.1f}s "
            f"and llama-server generation {result.generation_s:.1f}s "
            f"(overhead {result.overhead_s:.1f}s)", ""]


# --------------------------------------------------------------------------- charts


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, plt: Any, path: Path) -> None:
    fig.tight_layout()
    with PendingOutput(path) as tmp:
        fig.savefig(tmp.path, dpi=120, format="png")
        plt.close(fig)
        tmp.install(force=True)


def write_chart(result: CheckResult, path: Path) -> str:
    """The quant x category heatmap of speedups; return '' or why it was skipped."""
    try:
        plt = _pyplot()
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install 'mtpgraft[chart]')"
    models = list(result.models)
    cats = list(dict.fromkeys(c for m in models for c in m.categories))
    if not cats or all(s.speedup is None for m in models for s in m.categories.values()):
        return "chart skipped: no speedup was measured"
    import numpy as np

    grid = np.array([[(m.categories[c].speedup if c in m.categories and m.categories[c].speedup
                       is not None else np.nan) for c in cats] for m in models])
    fig, ax = plt.subplots(figsize=(1.6 * len(cats) + 2.5, 0.6 * len(models) + 1.8))
    span = max(0.25, float(np.nanmax(np.abs(grid - 1.0))))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=1.0 - span, vmax=1.0 + span, aspect="auto")
    for i, m in enumerate(models):
        for j, c in enumerate(cats):
            s = m.categories.get(c)
            if s is not None and s.speedup is not None:
                mark = "?" if s.status in ("inconclusive", "single") else ""
                ax.text(j, i, f"{s.speedup:.2f}x{mark}\nn={s.best_n}", ha="center", va="center",
                        fontsize=8)
    ax.set_xticks(range(len(cats)), cats)
    ax.set_yticks(range(len(models)), [m.spec.quant for m in models])
    ax.set_title("MTP decode speedup (best config; ? = inconclusive or a single run)")
    fig.colorbar(im, ax=ax, label="speedup (x)")
    _save(fig, plt, path)
    return ""


def write_chart_by_n(result: CheckResult, path: Path) -> str:
    """Acceptance and speedup against n, one line per quant (p-min, --spec-type list and condition:
    the first)."""
    try:
        plt = _pyplot()
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install 'mtpgraft[chart]')"
    plan = result.plan
    first, types = plan.conditions[0], plan.spec_lists[0]
    fig, (ax_a, ax_s) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    drawn = False
    for m in result.models:
        p0 = plan.p_min_for(m.spec)[0]
        runs = sorted((c for c in m.pooled if c.condition == first and c.p_min == p0
                       and c.spec_types == types), key=lambda c: c.n_max)
        if not runs:
            continue
        drawn = True
        ns = [c.n_max for c in runs]
        ax_a.errorbar(ns, [c.acceptance_reps.mean or 0.0 for c in runs],
                      yerr=[c.acceptance_reps.std or 0.0 for c in runs], marker="o", capsize=3,
                      label=m.spec.quant)
        ax_s.errorbar(ns, [c.speedup.mean or 0.0 for c in runs],
                      yerr=[c.speedup.std or 0.0 for c in runs], marker="o", capsize=3,
                      label=m.spec.quant)
    if not drawn:
        plt.close(fig)
        return "chart skipped: no MTP run was measured"
    ax_a.set(xlabel="draft depth n", ylabel="acceptance", ylim=(0, 1.05), title="acceptance")
    ax_s.set(xlabel="draft depth n", ylabel="decode speedup (x)", title="speedup")
    ax_s.axhline(1.0, color="black", linewidth=0.8)
    ax_s.legend(fontsize="small")
    _save(fig, plt, path)
    return ""


def _write_text(path: Path, text: str) -> None:
    write_text(path, text)


def write_bench_json(result: CheckResult, path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    _write_text(p, json.dumps(bench_dict(result), indent=2) + "\n")
    return p


def write_report(result: CheckResult, outdir: str | os.PathLike[str], *,
                 chart: bool = True) -> ReportFiles:
    """Write report.json, report.md and (with matplotlib) speedup.png and by-n.png into `outdir`."""
    d = Path(outdir)
    d.mkdir(parents=True, exist_ok=True)
    charts: list[Path] = []
    note = "chart not requested"
    if chart:
        note = write_chart(result, d / CHART_NAME)
        if not note:
            charts.append(d / CHART_NAME)
            if not write_chart_by_n(result, d / CHART_BY_N):
                charts.append(d / CHART_BY_N)
    names = [c.name for c in charts]
    main = names[0] if names else None
    _write_text(d / CHECK_REPORT, json.dumps(report_dict(result, main, names), indent=2,
                                              ensure_ascii=False) + "\n")
    _write_text(d / "report.md", render_markdown(result, main, note, names))
    return ReportFiles(d / CHECK_REPORT, d / "report.md", charts[0] if charts else None, note,
                       tuple(charts))
