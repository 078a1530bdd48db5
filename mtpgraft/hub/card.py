"""The model card (README.md) of a pushed repo: YAML metadata and a body built from the push plan,
the check reports' measurements and the GGUF metadata. Deterministic: the same inputs give the same
bytes, so re-pushing unchanged files leaves the card unchanged too."""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote

from .. import __version__, naming
from ..arch import ARCH_RULES, rule_for
from ..check.tables import (
    OFF_TEXT,
    acceptance_table,
    colour_basis,
    margin_text,
    speedup_matrix,
    task_flags,
)
from ..errors import redact
from ..ggml_types import runtimes_label
from ..runtimes import IK, IK_CARD_SERVER, LABELS, MAINLINE, RUNTIMES
from .types import CheckMatch, ModelEntry, RemoteFile

BASE_TAGS = ("gguf", "llama.cpp", "mtp", "speculative-decoding")
DEFAULT_N_MAX = 3  # suggested when nothing was measured
HUB_URL = "https://huggingface.co"

# License ids the Hub's metadata validation accepts; anything else becomes `other` + license_name.
HUB_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0
bigcode-openrail-m afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear
c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0
cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0
cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0 cdla-permissive-2.0 wtfpl
ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0
odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr
deepfloyd-if-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())


# --------------------------------------------------------------------------- text from files and servers

# Everything a GGUF, a report or the Hub says is text to show, never markup: it lands in the body
# escaped (one line, Markdown's and HTML's special characters neutralised, at most MAX_SHOWN chars).
MAX_SHOWN = 200
_BLANKS = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]+")
_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")


def plain_line(value: Any) -> str:
    """`value` on one line (control characters and runs of blanks as one space), at most MAX_SHOWN chars."""
    text = _BLANKS.sub(" ", str(value)).strip()
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 1] + "…"


def md(value: Any) -> str:
    """`value` as plain text in Markdown (a paragraph, a heading or a table cell): one line, HTML
    escaped, and \\ ` * [ ] | backslash-escaped (no link, image, code span or new table cell; an
    intraword `_` as in Q4_K_M stays as it is)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(plain_line(value), quote=False))


def md_code(value: Any) -> str:
    """`value` as an inline code span (outside tables): one line, fenced by more backticks than it holds."""
    text = plain_line(value)
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def url_path(path: str) -> str:
    """A repo path or revision as part of a link's URL (percent-encoded: no `)`, space or newline)."""
    return quote(path, safe="/")


def human_size(n: int) -> str:
    """Decimal units, as the Hub shows sizes."""
    for unit, div in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


def base_model_of(metadata: dict[str, Any]) -> str | None:
    """The base model's Hub id from general.base_model.0.*, when the GGUF records one."""
    url = metadata.get("general.base_model.0.repo_url")
    if isinstance(url, str):
        m = re.match(r"^https?://(?:www\.)?(?:huggingface\.co|hf\.co)/([\w.-]+/[\w.-]+)/?$", url.strip())
        if m:
            return m.group(1)
    org, name = metadata.get("general.base_model.0.organization"), metadata.get("general.base_model.0.name")
    if isinstance(org, str) and isinstance(name, str) and re.fullmatch(r"[\w.-]+", org + name):
        return f"{org}/{name}"
    return None


def license_fields(metadata: dict[str, Any]) -> dict[str, str]:
    lic = metadata.get("general.license")
    if not isinstance(lic, str) or not lic.strip():
        return {}
    value = lic.strip().lower()
    if value in HUB_LICENSES:
        return {"license": value}
    slug = re.sub(r"[^a-z0-9.-]+", "-", value).strip("-") or "custom"
    return {"license": "other", "license_name": slug}


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
    acc = acceptance_table(rows)
    if acc:
        out += ["Draft acceptance per quant and `--spec-draft-n-max` (all tasks, mean ± sd over "
                "repetitions):", "", acc, ""]
    return out


def render_card(*, repo_id: str, models: Sequence[ModelEntry], verified: bool,
                other_files: Sequence[RemoteFile] = (), revision: str = "main",
                base_model: str | None = None) -> str:
    """The whole card. `base_model` (OWNER/NAME) is used when no GGUF records its base model."""
    from huggingface_hub import ModelCardData

    meta: dict[str, Any] = {}
    for m in models:  # the first model that knows a value wins
        for k, v in m.metadata.items():
            meta.setdefault(k, v)
    base = next((b for m in models if (b := base_model_of(m.metadata))), None) or base_model
    imatrix = any("quantize.imatrix.file" in m.metadata or "quantize.imatrix.dataset" in m.metadata
                  for m in models)
    tags = list(BASE_TAGS) + (["imatrix"] if imatrix else [])
    data = ModelCardData(
        base_model=base, **({"base_model_relation": "quantized"} if base else {}),
        quantized_by=repo_id.split("/")[0], **license_fields(meta),
        pipeline_tag="text-generation", tags=tags)
    body = "\n".join(_body(repo_id=repo_id, models=models, verified=verified, base=base,
                           other_files=other_files, revision=revision))
    return redact("---\n" + data.to_yaml() + "\n---\n\n" + body.rstrip() + "\n")  # no token, whatever a file says


def _title(models: Sequence[ModelEntry], repo_id: str) -> str:
    for m in models:
        for k in ("general.basename", "general.name"):
            v = m.metadata.get(k)
            if isinstance(v, str) and v.strip():
                size = m.metadata.get("general.size_label")
                if k == "general.basename" and isinstance(size, str) and size and size not in v:
                    return f"{v}-{size}"
                return v.strip()
    return repo_id.split("/")[1]


def _pct(x: Any) -> str:
    return f"{float(x) * 100:.0f}%" if isinstance(x, (int, float)) else "–"


def _num(x: Any, fmt: str = "{:.1f}") -> str:
    return fmt.format(float(x)) if isinstance(x, (int, float)) else "–"


def _intro(models: Sequence[ModelEntry], base_link: str) -> str:
    drafter = next((r for m in models if (r := rule_for(m.architecture)) and r.is_drafter), None)
    if drafter is not None:
        family = ARCH_RULES[str(drafter.target_arch)].family
        return (f"GGUF quantizations of {base_link} with its {family} assistant (`mtp-*.gguf`, arch "
                f"{drafter.name}): the multi-token-prediction drafter {family} ships as a separate "
                "model, which reads the target's KV cache. With `--spec-type draft-mtp`, `llama-server "
                "-hf` downloads the assistant next to the quant and drafts with it (locally: `-m "
                "QUANT.gguf -md mtp-....gguf --spec-type draft-mtp`).")
    return (f"GGUF quantizations of {base_link} that keep the model's multi-token-prediction (MTP, "
            "NextN) head, for llama.cpp. With `--spec-type draft-mtp` llama-server drafts tokens with "
            "that head and verifies them in one pass: speculative decoding without a separate draft "
            "model.")


def _body(*, repo_id: str, models: Sequence[ModelEntry], verified: bool, base: str | None,
          other_files: Sequence[RemoteFile], revision: str) -> list[str]:
    title = _title(models, repo_id)
    base_link = f"[{base}]({HUB_URL}/{base})" if base else md_code(title)
    out = [f"# {md(title)} MTP GGUF", "", _intro(models, base_link), ""]
    if not verified:
        out += ["> **Not verified.** These files were pushed with `mtpgraft push --no-verify`: they "
                "passed `mtpgraft inspect`, but no llama-server check of their MTP acceptance was "
                "required before publishing.", ""]
    out += _files_section(repo_id, models, other_files, revision)
    out += _measurements_section(models, verified)
    out += _task_flags_section(repo_id, models)
    out += _usage_section(repo_id, models, revision)
    out += _provenance_section(models, verified, base, base_link)
    return out


def _files_section(repo_id: str, models: Sequence[ModelEntry], other_files: Sequence[RemoteFile],
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


def _measurements_section(models: Sequence[ModelEntry], verified: bool) -> list[str]:
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
           f"verdict **{md(c.verdict)}**, draft acceptance {_pct(c.acceptance)} overall"
           + (", MTP active" if c.mtp_active else "") + "."
           + (f" Settings: {'; '.join(how)}." if how else ""), "",
           "| Task | Draft acceptance | Speedup | Decode tok/s (MTP) | Decode tok/s (no MTP) "
           "| Prefill tok/s | Best `--spec-draft-n-max` |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for task, v in c.categories.items():
        if not isinstance(v, dict):
            continue
        single = " (single run)" if v.get("status") == "single" and v.get("speedup") is not None else ""
        out.append(f"| {md(task)} | {_pct(v.get('acceptance'))} | {_num(v.get('speedup'), '{:.2f}×')}{single} | "
                   f"{_num(v.get('decode_tps'))} | {_num(v.get('baseline_decode_tps'))} | "
                   f"{_num(v.get('prefill_tps'))} | {md(v.get('best_n', '–'))} |")
    out.append("")
    if c.chart:
        out += [f"![MTP speedup per task]({url_path(c.chart)})", ""]
    return out


_SAFE_COMMAND = re.compile(r"[\w ,.:/=+-]+")


def _task_flags_section(repo_id: str, models: Sequence[ModelEntry]) -> list[str]:
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


def _usage_section(repo_id: str, models: Sequence[ModelEntry], revision: str) -> list[str]:
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


def _provenance_section(models: Sequence[ModelEntry], verified: bool, base: str | None,
                        base_link: str) -> list[str]:
    out = ["## Provenance", ""]
    if base:
        out.append(f"- Base model: {base_link}")
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


SECTION_BEGIN = "<!-- mtpgraft:mtp-sidecar -->"
SECTION_END = "<!-- /mtpgraft:mtp-sidecar -->"


def with_sidecar_section(readme: str, *, repo_id: str, sidecars: Sequence[ModelEntry],
                         picks: Sequence[tuple[str, str | None]]) -> str:
    """`readme` with one section about the MTP sidecars (replacing the section of an earlier run):
    what each is, which quant loads which (llama.cpp's -hf rules), how to run it, what was measured."""
    names = {f.path for m in sidecars for f in m.files}
    out = [SECTION_BEGIN, "## MTP draft head (sidecar)", "",
           "MTP-only GGUF files (the multi-token-prediction head of the same model, converted and checked "
           "with mtpgraft). With `--spec-type draft-mtp`, `llama-server -hf` downloads the best one next "
           "to the quant and drafts with it: speculative decoding without a separate draft model.", "",
           "| Sidecar | MTP head | Size | SHA256 |", "|---|---|---:|---|"]
    out += [f"| {md(f.path)} | {md(m.mtp_head)} | {human_size(f.size)} | {md_code(f.sha256)} |"
            for m in sidecars for f in m.files]
    served = [(q, s) for q, s in picks if s in names]
    if served:
        out += ["", "| Quant | MTP draft `llama-server -hf` loads |", "|---|---|"]
        out += [f"| {md(q)} | {md(s)} |" for q, s in served]
    out += ["", "```sh"]
    out += [f"llama-server -hf {repo_id}:{(naming.hf_split_info(q) or naming.HfSplit('', '', 1, 1)).tag} "
            f"--spec-type draft-mtp --spec-draft-n-max {recommended_n(_check_of(sidecars)) or DEFAULT_N_MAX}"
            for q, _ in served[:3]]
    out += ["```", ""]
    c = _check_of(sidecars)
    if c is not None:
        out += [f"Measured with `mtpgraft check` (llama.cpp {md(c.llama_cpp_build or 'unknown build')}): draft "
                f"acceptance {_pct(c.acceptance)}, verdict {md(c.verdict)}.", ""]
    out.append(SECTION_END)
    section = "\n".join(out)
    text = readme.rstrip()
    if SECTION_BEGIN in text and SECTION_END in text:
        head, rest = text.split(SECTION_BEGIN, 1)
        text = head.rstrip() + "\n\n" + section + rest.split(SECTION_END, 1)[1]
        return text.rstrip() + "\n"
    return (text + "\n\n" if text else "") + section + "\n"


def _check_of(models: Sequence[ModelEntry]) -> CheckMatch | None:
    return next((m.check for m in models if m.check is not None), None)
