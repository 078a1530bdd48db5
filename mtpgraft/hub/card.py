"""The model card (README.md) of a pushed repo: YAML metadata and a body built from the push plan,
the check reports' measurements and the GGUF metadata. Deterministic: the same inputs give the same
bytes, so re-pushing unchanged files leaves the card unchanged too."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from .. import naming
from ..arch import ARCH_RULES, rule_for
from ..check.tables import positions_table
from ..errors import redact
from .markdown import human_size, md, md_code
from .sections import (
    DEFAULT_N_MAX,
    HUB_URL,
    files_section,
    measurements_section,
    pct,
    provenance_section,
    recommended_n,
    task_flags_section,
    usage_section,
)
from .types import CheckMatch, ModelEntry, RemoteFile

BASE_TAGS = ("gguf", "llama.cpp", "mtp", "speculative-decoding")

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
    out += files_section(repo_id, models, other_files, revision)
    out += measurements_section(models, verified)
    out += _positions_section(models)
    out += task_flags_section(repo_id, models)
    out += usage_section(repo_id, models, revision)
    out += provenance_section(models, verified, base, base_link)
    return out


def _positions_section(models: Sequence[ModelEntry]) -> list[str]:
    """Each draft position's acceptance and the head block that drafts it, where the heads are
    chained (check.tables.positions_table; nothing for one head, which drafts every position)."""
    rows = [{"quant": md(m.quant or PurePosixPath(m.name).name), "name": md(PurePosixPath(m.name).name),
             "by_config": list(m.check.by_config)} for m in models if m.check is not None]
    table = positions_table(rows, md)
    if not table:
        return []
    return ["Draft acceptance per position (all tasks): the model's MTP heads are chained, head k "
            "drafting position k (`blk.N` beside each rate), and llama-server drafts at most one "
            "position per head whatever `--spec-draft-n-max` asks. A position's rate is the share of "
            "drafts accepted up to it.", "", table, ""]


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
                f"acceptance {pct(c.acceptance)}, verdict {md(c.verdict)}.", ""]
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
