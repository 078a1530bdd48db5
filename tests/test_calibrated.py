"""The calibrated tiny model (mtpgraft.testmodels.calibrated): numbers that can fail.

Offline: the file read back has soft logits (finite perplexity on the built-in text) whose argmax is
the successor map, and the built-in raw prompts end in their category's region. With the real tools
(one recipe run, Q8_0 / Q4_K_M / IQ2_XXS, ~1 minute on 2 cores): KLD and acceptance retention in
the order of the bits, acceptance falling with the draft depth and by category in the published
order, PPL ratio 1.000 and KLD 0 for the reference against itself, one-repetition speeds shown as
single runs, and the recommended n and the inconclusive rule on the measured acceptance."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mtpgraft.check.counters import SpecCounters
from mtpgraft.check.judge import judge_model
from mtpgraft.check.plan import CheckPlan, ModelSpec
from mtpgraft.check.prompts import builtin_prompts, select_prompts
from mtpgraft.check.records import Cell, RequestRecord, ServerRun
from mtpgraft.check.servertool import ServerTool
from mtpgraft.errors import RecipeError
from mtpgraft.hub.sections import recommended_n
from mtpgraft.recipe import load_recipe, run_recipe
from mtpgraft.recipe.steps import resolve_builtin_model
from mtpgraft.testmodels import build_tiny_model
from mtpgraft.testmodels.calibrated import REGIONS, Calibration, calibrated_vocab, tokenize

ROOT = Path(__file__).resolve().parents[1]
TYPES = ("Q8_0", "Q4_K_M", "IQ2_XXS")


def _trunk_logits(path: Path) -> np.ndarray:
    """Logits after each token, from the file: rms-normed embedding x output_norm, times output
    (the trunk's blocks add a few percent: left out)."""
    import gguf
    from gguf.quants import dequantize

    tensors = {t.name: t for t in gguf.GGUFReader(path).tensors}

    def get(name: str) -> np.ndarray:
        t = tensors[name]
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(
            [int(x) for x in reversed(t.shape)])

    e = get("token_embd.weight")
    h = e / np.sqrt((e ** 2).mean(1, keepdims=True) + 1e-6) * get("output_norm.weight")
    return h @ get("output.weight").T


def test_calibrated_model_has_soft_logits_led_by_the_successor(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "c.gguf", layout="full", dtype="f16", calibration=Calibration())
    cv = calibrated_vocab(0, Calibration())
    logits = _trunk_logits(path)
    generated = [t for t, r in enumerate(cv.region) if r is not None]
    assert len(generated) > 300 and all(logits[t].argmax() == cv.vocab.succ[t] for t in generated)
    top2 = np.sort(logits[generated], axis=1)[:, -2:]
    assert 0.01 < (top2[:, 1] - top2[:, 0]).min() and (top2[:, 1] - top2[:, 0]).max() < 0.4
    ids = tokenize((ROOT / "mtpgraft" / "data" / "quality-small.txt").read_text(), cv.vocab)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    ppl = float(np.exp(-np.mean([logp[a, b] for a, b in zip(ids, ids[1:], strict=False)])))
    assert 50 < ppl < 512  # finite and better than chance (the bigram background), not saturated


def test_builtin_raw_prompts_end_in_their_category_region() -> None:
    cv = calibrated_vocab(0, Calibration())
    # what the demo runs: the categories the model has a region for (edit has none: it copies text)
    first = select_prompts(builtin_prompts(), list(REGIONS), per_category=1)
    assert [cv.region[tokenize(p.text, cv.vocab)[-1]] for p in first] == list(REGIONS)
    assert {p.category for p in first} == set(REGIONS)


def test_builtin_calibrated_names(tmp_path: Path) -> None:
    p = resolve_builtin_model("builtin:tiny-qwen35-calibrated-base", tmp_path)
    assert p.name == "tiny-qwen35-calibrated-base.gguf" and p.is_file()
    with pytest.raises(RecipeError, match="unknown built-in model.*calibrated-full"):
        resolve_builtin_model("builtin:tiny-qwen35moe-calibrated-full", tmp_path)


# --------------------------------------------------------------------------- with the real tools


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """recipes/tiny.toml with three types and no push: graft, imatrix, quantize, check, quality."""
    text = (ROOT / "recipes" / "tiny.toml").read_text()
    text = text.replace('types = ["Q8_0", "Q4_K_M", "IQ4_XS", "IQ2_XXS"]', f"types = {json.dumps(list(TYPES))}")
    text = text[:text.index("[hub]")] + text[text.index("[run]"):]
    assert f"types = {json.dumps(list(TYPES))}" in text
    work = tmp_path_factory.mktemp("demo")
    recipe = work / "tiny.toml"
    recipe.write_text(text)
    assert run_recipe(load_recipe(recipe, work_dir=work / "w")).ok
    return work / "w"


def _report(demo: Path) -> dict:
    return json.loads((demo / "checks" / "report.json").read_text())


def _quality(demo: Path) -> dict[str, dict]:
    """{type: its quality.json entry, with its pooled acceptance retention as "retention"}."""
    q = json.loads((demo / "checks" / "quality.json").read_text())
    return {t: m | {"retention": q["retention"][m["name"]]["*"]}
            for t in TYPES for m in q["models"] if t in m["name"]}


@pytest.mark.tools
def test_kld_and_retention_fall_as_bits_fall(demo: Path) -> None:
    q = _quality(demo)
    kld = [q[t]["figures"]["kld"]["value"] for t in TYPES]
    assert kld[0] < 1e-4 < kld[1] < kld[2] and kld[2] > 5 * kld[1]  # Q8_0 ~ F16 > Q4_K_M > IQ2_XXS
    same_top = [q[t]["figures"]["same_top_p"]["value"] for t in TYPES]
    assert same_top[0] > same_top[1] > same_top[2] > 80.0
    ratio = [q[t]["figures"]["ppl_ratio"]["value"] for t in TYPES]
    assert abs(ratio[0] - 1.0) < 0.002 and ratio[2] > 1.01
    retention = [q[t]["retention"] for t in TYPES]
    assert retention[0] >= 0.98 and retention[0] >= retention[1] > retention[2] and retention[2] < 0.95


@pytest.mark.tools
def test_acceptance_falls_with_depth_and_bits_and_follows_categories(demo: Path) -> None:
    models = {m["quant"]: m for m in _report(demo)["models"]}

    def by_n(m: dict) -> list[float]:
        return [r["acceptance"] for r in sorted(m["by_config"], key=lambda r: r["n_max"])]

    for t in TYPES:
        acc = by_n(models[t])
        assert len(acc) == 3 and 1.0 > acc[0] > acc[1] > acc[2] > 0.3, (t, acc)
    assert by_n(models["Q8_0"])[2] > by_n(models["IQ2_XXS"])[2] + 0.05
    at3 = {r["category"]: r["acceptance"] for r in models["Q8_0"]["runs"] if r["n_max"] == 3}
    assert at3["code"] > at3["factual"] > at3["analysis"] > at3["creative"], at3


@pytest.mark.tools
def test_reference_against_itself_gives_ppl_ratio_one_and_kld_zero(demo: Path) -> None:
    ref = demo / "tiny-qwen35.gguf"
    res = subprocess.run([sys.executable, "-m", "mtpgraft", "quality", str(ref), str(ref), "-c", "128", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    fig = d["models"][0]["figures"]
    assert d["logits_reused"] and 50 < d["reference_ppl"]["value"] < 512
    assert f"{fig['ppl_ratio']['value']:.3f}" == "1.000" and fig["kld"]["text"] == "0.000000"
    assert fig["same_top_p"]["value"] == 100.0


@pytest.mark.tools
def test_one_repetition_shows_single_runs_not_colours(demo: Path) -> None:
    rep = _report(demo)
    cats = [c for m in rep["models"] for c in m["categories"].values()]
    assert len(cats) == 4 * len(TYPES)
    assert all(c["speedup_reps"] == 1 and c["speedup_requests"] == 1 and c["status"] == "single" for c in cats)
    md = (demo / "checks" / "report.md").read_text()
    matrix = [line for line in md.splitlines() if line.startswith(tuple(f"| {t} | ⬜" for t in TYPES))]
    assert len(matrix) == len(TYPES) and not any(d in line for line in matrix for d in "🟢🟡🔴")
    assert "Each colour stands on 1 repetition; a speedup from one repetition" in md


def _cells_from(model: dict, plan: CheckPlan, draft_cost: float, noise: float) -> list[Cell]:
    """Two reps per config from a measured model's counters, decode speed from a cost model: MTP
    makes mean_accept_len tokens per step at (1 + draft_cost x n) the cost of one; each rep's MTP
    speed is off by +-noise."""
    runs = {(r["n_max"], r["category"]): r["counters"] for r in model["runs"]}
    cells = []
    for rep in range(2):
        for p in plan.prompts:
            for n in (None, *plan.n_max):
                c = runs[(n, p.category)] if n else {"draft_tokens": 0, "accepted": 0, "drafts": 0,
                                                     "accepted_per_pos": []}
                counters = SpecCounters(c["draft_tokens"], c["accepted"], c["drafts"], tuple(c["accepted_per_pos"]))
                tps = 100.0 if n is None else \
                    100.0 * counters.mean_accept_len / (1 + draft_cost * n) * (1 + noise * (-1) ** rep)
                req = RequestRecord(p.id, p.category, n, 0.0, rep, rep, 20, 10.0, 64, 64000.0 / tps, 0,
                                    c["draft_tokens"], c["accepted"], "same")
                cells.append(Cell(n, 0.0, p.category, rep, counters, (req,)))
    return cells


@pytest.mark.tools
def test_recommended_n_and_inconclusive_rule_on_measured_acceptance(demo: Path, tmp_path: Path) -> None:
    model = next(m for m in _report(demo)["models"] if m["quant"] == "Q4_K_M")
    gguf_path = tmp_path / "m.gguf"
    gguf_path.write_bytes(b"GGUF")
    plan = CheckPlan(models=(ModelSpec(gguf_path, (gguf_path,), "qwen35", 1),),
                     prompts=tuple(select_prompts(builtin_prompts(), list(REGIONS), per_category=1)),
                     server=ServerTool(Path("/bin/llama-server"), "draft-mtp"), n_max=(1, 2, 3), reps=2,
                     n_predict=64)
    servers = [ServerRun(None)] + [ServerRun(n, speculative_types="none,draft-mtp") for n in plan.n_max]
    judged = judge_model(plan, plan.models[0], _cells_from(model, plan, 0.5, 0.08), servers)
    cats = judged.categories
    # measured acceptance is highest on code, lowest on creative: deeper drafts pay only on code
    assert cats["code"].best_n == 3 and cats["creative"].best_n == 1
    assert cats["code"].status == "green" and cats["code"].speedup_reps == 2
    assert cats["creative"].status == "inconclusive" and "over 2 reps" in cats["creative"].why
    # code and factual gain most from n = 3, analysis peaks at 2, creative at 1: the card recommends 3
    assert [cats[c].best_n for c in REGIONS] == [3, 3, 2, 1]
    votes = {c: s.to_dict() for c, s in cats.items()}
    assert recommended_n(SimpleNamespace(categories=votes)) == 3  # type: ignore[arg-type]


@pytest.mark.tools
def test_demo_card_says_synthetic_and_shows_single_runs(demo: Path, tmp_path: Path) -> None:
    files = sorted(str(p) for p in (demo / "quants").rglob("*.gguf"))
    out = tmp_path / "README.md"
    res = subprocess.run([sys.executable, "-m", "mtpgraft", "card", *files, "--report", str(demo / "checks"),
                          "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    card = out.read_text()
    assert card.count("_Measured on a synthetic model: mtpgraft's tiny test model") == 1
    rows = {t: line for line in card.splitlines() for t in TYPES if line.startswith(f"| [tiny-qwen35-{t}")}
    kld = [float(rows[t].split(" | ")[4]) for t in TYPES]  # the KLD column, as the tool printed it
    assert 0 < kld[0] < kld[1] < kld[2]
    assert "| Q4_K_M | ⬜ single run: " in card and "× (single run) |" in card
