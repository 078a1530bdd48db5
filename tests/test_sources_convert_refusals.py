"""Hugging Face architectures whose MTP head mtpgraft does not convert are refused from config.json
alone: one line naming the architecture and what llama.cpp's converter does with its head, before any
safetensors byte (index, header or tensor) is read, locally or from the Hub."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft.arch import ARCH_RULES
from mtpgraft.cli import cli
from mtpgraft.errors import EXIT_INPUT, SourceError
from mtpgraft.pins import toolchain_root
from mtpgraft.sources import resolve_mtp_source
from mtpgraft.sources.convert import HEAD_RULES, REFUSED
from mtpgraft.testmodels.checkpoints import build_checkpoint
from mtpgraft.testmodels.synthetic import make_model

CONVERTER_SRC = toolchain_root() / "src" / "conversion"  # read before the fixture moves the cache


@pytest.fixture(autouse=True)
def _hermetic(hf_hermetic):
    """No real token or cache (conftest.hf_hermetic)."""


def _refused_checkpoint(path: Path, hf_arch: str) -> Path:
    """A tiny Qwen3.5 checkpoint whose config.json names `hf_arch` (its tensors never matter)."""
    ckpt = build_checkpoint(path, "dense-bf16")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = [hf_arch]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    return ckpt


def _converter_archs() -> dict[str, str]:
    """HF architecture -> the class the pinned convert_hf_to_gguf.py registers for it (its source)."""
    if not CONVERTER_SRC.is_dir():
        pytest.fail(f"{CONVERTER_SRC} is missing: run `mtpgraft toolchain`", pytrace=False)
    found: dict[str, str] = {}
    for f in sorted(CONVERTER_SRC.glob("*.py")):
        for m in re.finditer(r"@ModelBase\.register\(([^)]*)\)\s*(?:@[^\n]*\n\s*)*class (\w+)", f.read_text()):
            for name in re.findall(r'"([^"]+)"', m.group(1)):
                found.setdefault(name, m.group(2))
    return found


@pytest.mark.parametrize("hf_arch", sorted(REFUSED))
def test_a_refused_architecture_is_one_line_before_any_safetensors_byte(tmp_path, hf_arch):
    ckpt = _refused_checkpoint(tmp_path / "ck", hf_arch)
    for p in ckpt.glob("*.safetensors*"):
        p.write_bytes(b"\xff" * 64)  # reading the index or a shard header would fail with another message
    with pytest.raises(SourceError) as e:
        resolve_mtp_source(ckpt)
    assert str(e.value) == f"ck/: {hf_arch}: {REFUSED[hf_arch]}"
    assert not list((tmp_path / "mtpgraft_cache").rglob("*.gguf"))


@pytest.mark.parametrize("hf_arch", sorted(REFUSED))
def test_a_refused_architecture_on_the_hub_fetches_config_json_only(hub, tmp_path, hf_arch):
    ckpt = _refused_checkpoint(tmp_path / "ck", hf_arch)
    files = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    c = hub.put_files("tester/Refused", files)
    base = make_model(tmp_path / "base.gguf", arch="qwen35", trunk=2, layout="base", n_embd=64, vocab=320, n_ff=128)
    r = CliRunner().invoke(cli, ["attach", str(base), "--mtp-from", "hf://tester/Refused", "-o",
                                 str(tmp_path / "o.gguf"), "--endpoint", hub.url])
    assert r.exit_code == EXIT_INPUT
    assert r.output.strip().splitlines() == [
        f"mtpgraft: error: hf://tester/Refused@{c}: {hf_arch}: {REFUSED[hf_arch]}"]
    assert hub.bytes_sent == len(files["config.json"])  # no index, no header, no tensor
    assert not (tmp_path / "o.gguf").exists()


def test_every_refusal_says_what_the_converter_does():
    """A reason states the converter's handling of the head (kept, dropped, folded, appended), and the
    converted and refused architectures are disjoint."""
    assert not set(REFUSED) & set(HEAD_RULES)
    verbs = ("keeps", "drops", "folds", "appends")
    assert [a for a, why in REFUSED.items() if not why.startswith("llama.cpp's converter ")
            or not any(v in why for v in verbs)] == []


@pytest.mark.tools
def test_converted_and_refused_architectures_are_the_pinned_converters():
    """Every HF architecture the tables name is one the pinned convert_hf_to_gguf.py registers, and
    each converted one maps to the GGUF architecture llama.cpp's class for it writes."""
    registered = _converter_archs()
    assert sorted(a for a in [*HEAD_RULES, *REFUSED] if a not in registered) == []
    assert sorted(set(HEAD_RULES) & set(REFUSED)) == []  # converted or refused, never both
    assert registered["Glm4MoeForCausalLM"] == "Glm4MoeModel"
    assert registered["DeepseekV3ForCausalLM"] == "DeepseekV2Model"  # skip_mtp = True: the head is dropped
    # the classes whose MTP handling the mimo2 and step35 rows reproduce
    assert registered["MiMoV2FlashForCausalLM"] == registered["MiMoV2ForCausalLM"] == "MimoV2Model"
    assert registered["Step3p5ForCausalLM"] == "Step35Model"

    assert registered["BailingMoeV3ForCausalLM"] == "BailingMoeV3Model"
    assert registered["NemotronHForCausalLM"] == "NemotronHModel"
    assert registered["Cohere2MoeForCausalLM"] == "Cohere2MoeModel"
    # a rule's own keys are those of the class the converter registers for its architecture
    assert {a: r.own_keys for a, r in HEAD_RULES.items() if r.own_keys} == {
        a: registered[a] for a, r in HEAD_RULES.items() if r.own_keys}


def test_each_mtp_family_names_its_hf_conversion():
    """An in-file MTP family's hf_conversion lists the HF architectures converted to it, or says
    "not converted" and names a refused architecture (the refusal's reason is the verified one)."""
    wrong = []
    for r in ARCH_RULES.values():
        if not (r.runs_mtp and r.in_file):
            continue
        converted = sorted(a for a, h in HEAD_RULES.items() if h.arch == r.name)
        if converted:
            ok = sorted(x.strip() for x in r.hf_conversion.split(",")) == converted
        else:
            ok = r.hf_conversion.startswith("not converted") and any(a in r.hf_conversion for a in REFUSED)
        if not ok:
            wrong.append(r.name)
    assert wrong == []
