"""`mtpgraft quality` on the tiny models with the real llama-perplexity and llama-server: the figures
are the tool's own printed ones, the reference's logits are computed once per text and reused, the
reference against itself gives KLD 0 and acceptance retention 1.0."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import hub_api, quick_check_section, tiny_model_section

from mtpgraft.errors import UsageError
from mtpgraft.quality import (
    QualityError,
    acceptance_retention,
    builtin_text,
    execute_quality,
    logits_size,
    parse_kld_output,
    plan_quality,
)

ARGS = ("-t", "1")
CTX = 128


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "cache"
    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(d))  # the logits go here, not the shared cache
    return d


def printed(log: str, label: str) -> list[str]:
    """The whitespace-separated fields after `label` on the line that holds it (info lines carry a
    timestamp prefix, the summary lines none)."""
    line = next(x for x in log.splitlines() if label in x)
    return line.split(label, 1)[1].replace("%", " ").split()


def test_parser_refuses_output_without_the_summary():
    with pytest.raises(QualityError, match="no ppl"):
        parse_kld_output("perplexity: calculating...\n")


def test_plan_refuses_bad_input(tmp_path, tiny_models):
    with pytest.raises(UsageError, match="too short"):
        short = tmp_path / "short.txt"
        short.write_text("a few words")
        plan_quality(tiny_models["full-aligned"], [tiny_models["full-aligned"]], text=short, ctx_size=CTX)
    with pytest.raises(UsageError, match="text file not found"):
        plan_quality(tiny_models["full-aligned"], [], text=tmp_path / "nope.txt")


@pytest.mark.tools
def test_figures_are_the_tools_and_reference_logits_are_made_once(tiny_models, llama_cpp_dir, cache, tmp_path):
    ref, quant = tiny_models["full-aligned"], tiny_models["full-mixed"]
    plan = plan_quality(ref, [ref, quant], ctx_size=CTX, extra_args=ARGS, llama_cpp=str(llama_cpp_dir))
    assert not plan.logits_cached and Path(plan.logits).parent == cache / "kld-logits"
    res = execute_quality(plan, log_dir=tmp_path / "logs1")
    assert not res.logits_reused
    # the logits file: the size promised before (an upper bound) and the format's exact size
    base_log = (tmp_path / "logs1" / "reference-base.log").read_text()
    n_chunk = int(re.search(r"calculating perplexity over (\d+) chunks", base_log)[1])
    assert res.logits_bytes == logits_size(plan.n_vocab, CTX, n_chunk) <= plan.logits_bytes_max
    if "Final estimate" in base_log:  # the line llama.cpp's logger may drop at exit (quality.ATTEMPTS)
        assert res.reference_ppl.text == printed(base_log, "Final estimate: PPL =")[0]
    for m in res.models:
        log = Path(m.log).read_text()
        f = m.figures
        assert [f["ppl"].text, f["ppl"].pm_text] == printed(log, "Mean PPL(Q)                   :")[0:3:2]
        assert f["ppl_ratio"].text == printed(log, "Mean PPL(Q)/PPL(base)         :")[0]
        assert [f["kld"].text, f["kld"].pm_text] == printed(log, "Mean    KLD:")[0:3:2]
        assert f["kld_99"].text == printed(log, "99.0%   KLD:")[0]
        assert f["kld_99_9"].text == printed(log, "99.9%   KLD:")[0]
        assert f["same_top_p"].text == printed(log, "Same top p:")[0]
        assert f["kld"].value == float(f["kld"].text)
    self_fig = res.models[0].figures
    assert self_fig["kld"].value == 0.0 and self_fig["kld_99_9"].value == 0.0
    assert self_fig["same_top_p"].value == 100.0
    # the reference against itself: its PPL is the reference run's own
    if res.reference_ppl is not None:
        assert self_fig["ppl"].text.startswith(res.reference_ppl.text)

    # a second run reuses the logits: llama-perplexity never runs on the reference again
    mtime = Path(plan.logits).stat().st_mtime_ns
    again = plan_quality(ref, [quant], ctx_size=CTX, extra_args=ARGS, llama_cpp=str(llama_cpp_dir))
    assert again.logits_cached and again.logits == plan.logits
    res2 = execute_quality(again, log_dir=tmp_path / "logs2")
    assert res2.logits_reused and not (tmp_path / "logs2" / "reference-base.log").exists()
    assert Path(plan.logits).stat().st_mtime_ns == mtime
    assert res2.models[0].figures == res.models[1].figures
    assert res2.reference_ppl == res.reference_ppl
    # another text is another cache entry
    text = tmp_path / "other.txt"
    text.write_text(builtin_text().read_text() + "\nOne more line.\n")
    other = plan_quality(ref, [quant], text=text, ctx_size=CTX, extra_args=ARGS, llama_cpp=str(llama_cpp_dir))
    assert other.logits != plan.logits and not other.logits_cached


@pytest.fixture(scope="module")
def check_report(tiny_models, llama_cpp_dir, tmp_path_factory) -> Path:
    from mtpgraft.check import execute_check, plan_check, resolve_server
    from mtpgraft.check.report import write_report

    plan = plan_check([tiny_models["full-aligned"], tiny_models["full-mixed"]], n_max=(3,), reps=1,
                      n_predict=32, per_category=1, ctx_size=1024, server_args=ARGS,
                      server=resolve_server(llama_cpp_dir), warmup=False)
    d = tmp_path_factory.mktemp("check")
    files = write_report(execute_check(plan, log_dir=d / "logs", hash_files=False), d)
    return Path(files.json)


@pytest.mark.tools
def test_acceptance_retention_from_check_reports(tiny_models, check_report, tmp_path):
    ref, quant = str(tiny_models["full-aligned"]), str(tiny_models["full-mixed"])
    rep = json.loads(check_report.read_text())
    by_name = {Path(m["path"]).name: m for m in rep["models"]}
    ret = acceptance_retention([check_report], ref, [ref, quant])
    assert all(v == 1.0 for v in ret[Path(ref).name].values())  # the reference keeps all of its own
    m, r = by_name[Path(quant).name], by_name[Path(ref).name]
    want = (m["counters"]["accepted"] / m["counters"]["draft_tokens"]) / \
           (r["counters"]["accepted"] / r["counters"]["draft_tokens"])
    assert ret[Path(quant).name]["*"] == pytest.approx(want) and want < 1.0
    # reports made with other settings or another build are refused
    for key, value, what in (("n_max", [2], "n_max"), ("temperature", [0.7], "temperature"),
                             ("prompts", "other.jsonl", "prompts")):
        other = json.loads(check_report.read_text())
        other["settings"][key] = value
        other["models"] = [m]
        only_ref = dict(rep, models=[r])
        a, b = tmp_path / f"a-{key}.json", tmp_path / f"b-{key}.json"
        a.write_text(json.dumps(only_ref))
        b.write_text(json.dumps(other))
        with pytest.raises(QualityError, match=what):
            acceptance_retention([a, b], ref, [quant])
    other = dict(rep, models=[m], llama_cpp_build="b9999")
    b = tmp_path / "b-build.json"
    b.write_text(json.dumps(other))
    a = tmp_path / "a-build.json"
    a.write_text(json.dumps(dict(rep, models=[r])))
    with pytest.raises(QualityError, match="builds"):
        acceptance_retention([a, b], ref, [quant])


@pytest.mark.tools
def test_cli_json_and_report(tiny_models, llama_cpp_dir, check_report, tmp_path, monkeypatch):
    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    ref, quant = tiny_models["full-aligned"], tiny_models["full-mixed"]
    base = [sys.executable, "-m", "mtpgraft", "quality", str(ref), str(ref), str(quant), "-c", str(CTX),
            "--perplexity-arg=-t", "--perplexity-arg=1", "--llama-cpp", str(llama_cpp_dir)]
    r = subprocess.run([*base, "--dry-run", "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["dry_run"]
    d = d["plan"]
    assert not d["logits_cached"] and d["logits_bytes_max"] > 0
    assert not Path(d["logits"]).exists()
    r = subprocess.run([*base, "--json", "--check-report", str(check_report), "-o", str(tmp_path / "q")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["retention"][ref.name]["*"] == 1.0
    assert d["models"][0]["figures"]["kld"]["text"] == "0.000000"
    md = (tmp_path / "q" / "report.md").read_text()
    assert "| " + quant.name + " |" in md and "KLD 99.9%" in md
    assert json.loads((tmp_path / "q" / "quality.json").read_text())["models"][1]["name"] == quant.name
    bad = subprocess.run([*base[:4], str(tmp_path / "missing.gguf"), str(quant)], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and bad.stderr.startswith("mtpgraft: error:") and "Traceback" not in bad.stderr


THREE = tiny_model_section("q3") + """
[quantize]
types = ["Q8_0", "Q6_K", "Q4_K_M"]
""" + quick_check_section(("code", "creative"), server_args=["-t", "1"]) + """
[quality]
ctx = 128
perplexity_args = ["-t", "1"]

[hub]
repo = "tester/q3-MTP-GGUF"
endpoint = "{endpoint}"
"""


@pytest.mark.tools
def test_three_quant_run_card_carries_the_quality_columns(hub, tmp_path, monkeypatch, llama_cpp_dir):
    """graft -> quantize x3 -> check -> quality -> push to the loopback Hub: the card's file table has
    KLD, PPL ratio and MTP retention for every file, equal to quality.json, and says how they were made;
    a resumed run redoes nothing."""
    from huggingface_hub import constants

    from mtpgraft.recipe import load_recipe, run_recipe

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "cache"))  # the logits, not the shared cache
    monkeypatch.setenv("MTPGRAFT_LLAMA_CPP", str(llama_cpp_dir))  # ... which holds the tools
    p = tmp_path / "three.toml"
    p.write_text(THREE.format(endpoint=hub.url))
    work = tmp_path / "w"

    res = run_recipe(load_recipe(p, work_dir=work), hub_api=hub_api)
    assert res.ok, [(s.step, s.message) for s in res.failed]
    assert [s.step for s in res.steps][-2:] == ["quality", "push"]
    q = json.loads((work / "checks" / "quality.json").read_text())
    assert [m["name"] for m in q["models"]] == [f"q3-{t}.gguf" for t in ("Q8_0", "Q6_K", "Q4_K_M")]
    # the aligned head keeps all of the reference's acceptance in every quant
    assert all(r["*"] == 1.0 for r in q["retention"].values())
    card = hub.head("tester/q3-MTP-GGUF").files["README.md"].content.decode()
    assert "| KLD | PPL ratio | MTP retention |" in card
    for m in q["models"]:
        row = next(x for x in card.splitlines() if x.startswith(f"| [{m['name']}]"))
        f = m["figures"]
        assert f"| {f['kld']['text']} | {f['ppl_ratio']['text']} | 1.000 |" in row, row
    assert "llama-perplexity" in card and "--kl-divergence-base" in card and "q3.gguf" in card
    again = run_recipe(load_recipe(p, work_dir=work), resume=True, hub_api=hub_api)
    status = {s.step: s.status for s in again.steps}
    assert status["quality"] == "finished-before", status
