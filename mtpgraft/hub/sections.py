"""The model card's sections below its title (files, measurements, flags per task, usage, provenance),
each rendered from the push plan's types as a list of Markdown lines."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from .. import __version__, naming
from ..arch import rule_for
from ..check.tables import (
    OFF_TEXT,
    acceptance_table,
    colour_basis,
    margin_text,
    speedup_matrix,
    task_flags,
)
from ..ggml_types import runtimes_label
from ..runtimes import IK, IK_CARD_SERVER, LABELS, MAINLINE, RUNTIMES
from .markdown import human_size, md, md_code, url_path
from .types import CheckMatch, ModelEntry, RemoteFile

DEFAULT_N_MAX = 3  # suggested when nothing was measured
HUB_URL = "https://huggingface.co"


def recommended_n(check: CheckMatch | None) -> int | None:
    """The draft length most tasks measured best; on a tie, the one whose tasks sped up most."""
    if check is None:
        return None
    counts: Counter[int] = Counter()
    speed: dict[int, list[float]] = {}
    for c in check.categories.values():
        if isinstance(c, dict) and isinstance(c.get("best_n"), (int, float)):
            n = int(c["best_n"])
            counts[n] += 1
            if isinstance(c.get("speedup"), (int, float)):
                speed.setdefault(n, []).append(float(c["speedup"]))
    if not counts:
        return None

    def mean_speedup(n: int) -> float:
        return sum(speed.get(n, [])) / len(speed[n]) if speed.get(n) else 0.0

    return min(counts, key=lambda n: (-counts[n], -mean_speedup(n), n))


def _quant_tables(measured: Sequence[ModelEntry]) -> list[str]:
    """The quant x task speedup matrix and the quant x n acceptance table over every measured quant."""

    rows = [{"quant": md(m.quant or PurePosixPath(m.name).name), "name": md(PurePosixPath(m.name).name),
             "categories": {md(k): v for k, v in m.check.categories.items()}, "by_config": list(m.check.by_config)}
            for m in measured if m.check is not None]
    if not rows:
        return []
    basis = colour_basis(rows)
    out = ["Decode speedup with MTP per quant and task, at the best draft length: 🟢 faster "
           "(>= 1.10×), 🟡 marginal, 🔴 slower (< 1.00×), ❔ inconclusive (the spread over repetitions "
           "covers 1.00×), ⬜ a single run (one repetition, no spread that tells it from 1.00×)."
           + (f" {basis}" if basis else ""), "", speedup_matrix(rows), ""]
    acc = acceptance_table(rows, md)
    if acc:
        out += ["Draft acceptance per quant and `--spec-draft-n-max` (all tasks, mean ± sd over "
                "repetitions):", "", acc, ""]
    return out


def pct(x: Any) -> str:
    return f"{float(x) * 100:.0f}%" if isinstance(x, (int, float)) else "–"


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    return fmt.format(float(x)) if isinstance(x, (int, float)) else "–"


def files_section(repo_id: str, models: Sequence[ModelEntry], other_files: Sequence[RemoteFile],
                   revision: str) -> list[str]:
    quality = any(m.quality is not None for m in models)
    runs = any(set(m.runtimes) != set(RUNTIMES) for m in models)  # a column only where a file needs one
    out = ["## Files", "", "| File | Quant type | MTP head | " + ("Runs on | " if runs else "") + "Size | "
           + ("KLD | PPL ratio | MTP retention | " if quality else "") + "SHA256 |",
           "|---|---|---|" + ("---|" if runs else "") + "---:|" + ("---:|---:|---:|" if quality else "") + "---|"]
    for m in models:
        for i, f in enumerate(m.files):
            shard = f" (part {i + 1}/{len(m.files)})" if len(m.files) > 1 else ""
            out.append(f"| [{md(PurePosixPath(f.path).name)}]({HUB_URL}/{repo_id}/blob/{url_path(revision)}/"
                       f"{url_path(f.path)}){shard} | {md(m.quant or '–')} | {md(m.mtp_head)} | "
                       + (f"{runtimes_label(m.runtimes)} | " if runs else "") + f"{human_size(f.size)} | "
                       + (_quality_cells(m) if quality else "") + f"`{f.sha256}` |")
    out.append("")
    out += _runtime_note(models)
    if quality:
        out += _quality_note(models)
    if other_files:
        out += ["Also in this repository (not part of this push, not described above):", "",
                "| File | Size | SHA256 |", "|---|---:|---|"]
        out += [f"| {md(f.path)} | {human_size(f.size)} | {md_code(f.sha256 or f.git_oid)} |" for f in other_files]
        out.append("")
    return out


def _runtime_note(models: Sequence[ModelEntry]) -> list[str]:
    """Which runtime the files need, where not every file loads in both (inspect's loads_with)."""
    ik_only = [m for m in models if MAINLINE not in m.runtimes and IK in m.runtimes]
    if not ik_only:
        return []
    mixed = len(ik_only) < len(models)
    what = (f"This repository mixes runtimes: the files marked \"{runtimes_label([IK])}\"" if mixed
            else "These files")
    return [f"{what} hold tensor types that only [ik_llama.cpp](https://github.com/ikawrakow/ik_llama.cpp) "
            f"loads ({', '.join(sorted({m.quant or '?' for m in ik_only}))}); mainline {LABELS[MAINLINE]} "
            "refuses them. Run them with ik_llama.cpp's llama-server (Usage below).", ""]


def measurements_section(models: Sequence[ModelEntry], verified: bool) -> list[str]:
    measured = [m for m in models if m.check is not None]
    out = ["## Measured MTP acceptance and speedup", ""]
    if not measured:
        out += ["Nothing was measured for these files"
                + (" (pushed with `--no-verify`)." if not verified else "."), ""]
    if not any(m.quality is not None for m in models):  # else the Files section's quality note says it
        out += _synthetic_note(measured)
    out += _quant_tables(measured)
    for m in measured:
        out += _check_table(m)
    return out


def _check_settings(s: dict) -> list[str]:
    """The check's settings in words: draft lengths, temperatures, repetitions, tokens."""
    how = []
    if s.get("n_max"):
        how.append(f"draft lengths {md(', '.join(str(x) for x in s['n_max']))}")
    if s.get("temperature") is not None:
        temps = s["temperature"] if isinstance(s["temperature"], list) else [s["temperature"]]
        how.append(f"temperature {md(', '.join(str(x) for x in temps))}")
    if s.get("reps"):
        how.append(f"{md(s['reps'])} repetitions")
    if s.get("n_predict"):
        how.append(f"{md(s['n_predict'])} tokens per request")
    return how


def _check_table(m: ModelEntry) -> list[str]:
    c = m.check
    assert c is not None
    how = _check_settings(c.settings)
    out = [f"### {md(PurePosixPath(m.name).name)}", "",
           f"`mtpgraft check` with llama-server (llama.cpp {md(c.llama_cpp_build or 'unknown build')}): "
           f"verdict **{md(c.verdict)}**, draft acceptance {pct(c.acceptance)} overall"
           + (", MTP active" if c.mtp_active else "") + "."
           + (f" Settings: {'; '.join(how)}." if how else ""), "",
           "| Task | Draft acceptance | Speedup | Decode tok/s (MTP) | Decode tok/s (no MTP) "
           "| Prefill tok/s | Best `--spec-draft-n-max` |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for task, v in c.categories.items():
        if not isinstance(v, dict):
            continue
        single = " (single run)" if v.get("status") == "single" and v.get("speedup") is not None else ""
        out.append(f"| {md(task)} | {pct(v.get('acceptance'))} | {_num(v.get('speedup'), '{:.2f}×')}{single} | "
                   f"{_num(v.get('decode_tps'))} | {_num(v.get('baseline_decode_tps'))} | "
                   f"{_num(v.get('prefill_tps'))} | {md(v.get('best_n', '–'))} |")
    out.append("")
    if c.chart:
        out += [f"![MTP speedup per task]({url_path(c.chart)})", ""]
    return out


_SAFE_COMMAND = re.compile(r"[\w ,.:/=+-]+")


def task_flags_section(repo_id: str, models: Sequence[ModelEntry]) -> list[str]:
    """Per task and quant: the exact llama-server command of the configuration that won the check's
    measured table (check.tables.task_flags), or "leave MTP off" where none beat the server without
    MTP, with the winner's margin over the runner-up and whether it is inside the noise."""

    rows = []
    for m in models:
        if m.check is None or m.layout == "mtp-only":
            continue
        tag = getattr(naming.hf_split_info(m.name), "tag", "") or m.quant or PurePosixPath(m.name).stem
        for task, c in m.check.categories.items():
            flags = task_flags(c) if isinstance(c, dict) else None
            if flags is None:
                continue
            cmd = f"llama-server -hf {repo_id}:{tag} {flags}"
            shown = (md_code(cmd) if _SAFE_COMMAND.fullmatch(cmd) else md(cmd)) if flags else OFF_TEXT
            rows.append((str(task), f"| {md(task)} | {md(m.quant or PurePosixPath(m.name).name)} | {shown} | "
                                    f"{md(margin_text(c))} |"))
    if not rows:
        return []
    order = list(dict.fromkeys(t for t, _ in rows))  # by task, the quants in the card's order
    rows.sort(key=lambda r: order.index(r[0]))
    return ["## llama-server flags per task", "",
            "The configuration that measured fastest per quant and task (draft types, "
            "`--spec-draft-n-max`, `--spec-draft-p-min`), or \"leave MTP off\" where no MTP "
            "configuration beat llama-server without it; the margin is the winner's mean speedup "
            "over the runner-up's, inside the noise when within one sd over the repetitions.", "",
            "| Task | Quant | Command | Margin over the runner-up |", "|---|---|---|---|",
            *(r for _, r in rows), ""]


def usage_section(repo_id: str, models: Sequence[ModelEntry], revision: str) -> list[str]:
    out = ["## Usage", "", "Run with the MTP head as the draft:", "", "```sh"]
    for m in models:
        if m.layout == "mtp-only":
            continue
        n = recommended_n(m.check)
        if MAINLINE not in m.runtimes:  # downloaded below; ik's llama-server as pinned has no -hf
            out.append(IK_CARD_SERVER.format(model=m.files[0].path, n=n or DEFAULT_N_MAX)
                       + f"  # {LABELS[IK]}")
            continue
        # -hf matches the tag in the file name, whatever the GGUF's own file type says
        tag = getattr(naming.hf_split_info(m.name), "tag", "") or m.quant or PurePosixPath(m.name).stem
        out.append(f"llama-server -hf {repo_id}:{tag} --spec-type draft-mtp "
                   f"--spec-draft-n-max {n or DEFAULT_N_MAX}")
    out += ["```", ""]
    if any(recommended_n(m.check) is None for m in models):
        out += [f"`--spec-draft-n-max {DEFAULT_N_MAX}` is a starting point where nothing was measured; "
                "the tables above give the best value per task where it was.", ""]
    else:
        out += ["The draft length is the one most tasks measured best; the tables above give it per task.", ""]
    return out + _download_section(repo_id, models, revision)


def _download_section(repo_id: str, models: Sequence[ModelEntry], revision: str) -> list[str]:
    rev = f" --revision {revision}" if revision != "main" else ""
    out = ["Download:", "", "```sh"]
    for m in models:
        if len(m.files) == 1:
            out.append(f"hf download {repo_id} {m.files[0].path}{rev} --local-dir .")
        else:
            pattern = f"{naming.strip_gguf(m.files[0].path)}-*.gguf"
            out.append(f'hf download {repo_id} --include "{pattern}"{rev} --local-dir .')
    out += ["```", ""]
    if revision != "main":
        out += [f"These files are on the `{revision}` branch; `llama-server -hf` reads `main`.", ""]
    return out


def provenance_section(models: Sequence[ModelEntry], verified: bool, base: str | None,
                        base_link: str) -> list[str]:
    out = ["## Provenance", ""]
    if base:
        out.append(f"- Base model: {base_link}")
    out += _prov(models, "Architecture", lambda m: _architecture(m.architecture))
    out += _prov(models, "MTP head source", lambda m: _mtp_source(m.metadata))
    out += _prov(models, "MTP tensor types", lambda m: _md_or_none(m.metadata.get("mtpgraft.mtp.type_policy")))
    out += _prov(models, "imatrix", lambda m: _imatrix(m.metadata))
    out += _prov(models, "llama.cpp build (check)", lambda m: _md_or_none(m.check.llama_cpp_build if m.check else None))
    out += _prov(models, "Grafted with mtpgraft", lambda m: _md_or_none(m.metadata.get("mtpgraft.version")))
    out.append(f"- Published with mtpgraft {__version__}")
    out.append("- Verification: " + ("every file passed `mtpgraft inspect` and `mtpgraft check` (the "
                                     "check report lists its sha256)." if verified else
                                     "`mtpgraft inspect` only; **not checked with llama-server** "
                                     "(`--no-verify`)."))
    out.append("")
    return out


def _quality_cells(m: ModelEntry) -> str:
    q = m.quality
    if q is None:
        return "– | – | – | "
    ret = f"{q.retention:.3f}" if q.retention is not None else "–"
    return f"{md(q.figures.get('kld', '–'))} | {md(q.figures.get('ppl_ratio', '–'))} | {ret} | "


def _quality_note(models: Sequence[ModelEntry]) -> list[str]:
    """How the quality columns were made, once per distinct setting."""
    out = []
    for how in {json.dumps(m.quality.how, sort_keys=True): m.quality for m in models if m.quality}.values():
        h = how.how
        text = PurePosixPath(str(h.get("text") or "")).name
        out.append(f"KLD (mean KL divergence), PPL ratio (PPL(Q)/PPL(base)) and their inputs were measured with "
                   f"llama.cpp's `llama-perplexity` (build {md(h.get('build') or 'unknown')}) against "
                   f"{md_code(how.reference)}: `--kl-divergence-base` on it once, `--kl-divergence` per file, over "
                   f"{md_code(text)} with context {md(h.get('ctx_size'))}"
                   + (f", {md(h.get('chunks'))} chunks" if h.get("chunks") else "")
                   + "; figures exactly as the tool printed them. MTP retention is the file's draft acceptance "
                   "divided by the reference's, both from `mtpgraft check` with the same settings.")
    return out + [""] + _synthetic_note(models)


def _synthetic_note(models: Sequence[ModelEntry]) -> list[str]:
    """A card of mtpgraft's own tiny test models says its figures come from a synthetic model."""
    names = [m.metadata.get("general.name") for m in models]
    if not any(isinstance(n, str) and n.startswith("mtpgraft tiny") for n in names):
        return []
    return ["_Measured on a synthetic model: mtpgraft's tiny test model, built in code "
            "(`mtpgraft.testmodels`; the calibrated one has soft logits and a head whose acceptance "
            "differs by task), not a trained model. The figures show how the tools measure, not how "
            "well any real model quantizes._", ""]


def _prov(models: Sequence[ModelEntry], label: str, get: Any) -> list[str]:
    vals = [(m, get(m)) for m in models]
    distinct = {v for _, v in vals if v}
    if not distinct:
        return []
    if len(distinct) == 1:
        return [f"- {label}: {distinct.pop()}"]
    return [f"- {label}:"] + [f"  - {md(PurePosixPath(m.name).name)}: {v}" for m, v in vals if v]


def _architecture(arch: str | None) -> str | None:
    """llama.cpp's name for the architecture, and the family people know it by."""
    rule = rule_for(arch) if arch else None
    return f"{md_code(arch)} ({md(rule.family)})" if arch and rule and rule.family else md_code(arch) if arch else None


def _md_or_none(value: Any) -> str | None:
    return md(value) if value else None


def _mtp_source(meta: dict[str, Any]) -> str | None:
    src = meta.get("mtpgraft.mtp.source")
    if not src:
        return None
    sha = meta.get("mtpgraft.mtp.source_sha256")
    return md_code(src) + (f" (sha256 {md_code(sha)})" if sha else "")


def _imatrix(meta: dict[str, Any]) -> str | None:
    ds = meta.get("quantize.imatrix.dataset")
    f = meta.get("quantize.imatrix.file")
    if not ds and not f:
        return None
    parts = [f"dataset {md_code(ds)}" if ds else f"file {md_code(f)}"]
    sha = meta.get("mtpgraft.imatrix.dataset_sha256")
    if sha:
        parts.append(f"sha256 {md_code(sha)}")
    if meta.get("quantize.imatrix.chunks_count"):
        parts.append(f"{md(meta['quantize.imatrix.chunks_count'])} chunks")
    return ", ".join(parts)
