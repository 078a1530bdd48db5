"""Recipes: parsing (offline) and the graft -> imatrix -> quantize -> check pipeline on the tiny
models with the real tools: one command end to end, interrupted and resumed, parallel processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from helpers import hub_api, quick_check_section, tiny_model_section

from mtpgraft.errors import RecipeError
from mtpgraft.gguf_io import GGUFModel
from mtpgraft.inspection import inspect_model
from mtpgraft.recipe import State, load_recipe, parse_recipe, plan_recipe, run_recipe, select_steps

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"

GOOD = """
[model]
name = "M"
base = "base.gguf"
mtp_from = "mtp-M.gguf"

[imatrix]
calibration = "cal.txt"
ctx = 128

[quantize]
types = ["Q8_0", "q4_k", "IQ2_XXS"]
mtp_type = { default = "q8_0", IQ2_XXS = "q6_k" }
split_max_size = "50G"

[check]
n_max = [2, 3]
min_acceptance = 0.5

[hub]
repo = "me/M-GGUF"
dry_run = true
"""

# A quick pipeline (no check step) for the resume and locking tests.
QUICK = tiny_model_section("q") + """
[imatrix]
calibration = "builtin:calibration-tiny"
ctx = 128
chunks = 4
batch = 128

[quantize]
types = ["Q8_0", "Q4_K_M"]
"""


# The tiny recipe's dry-run push must not depend on the network: point the Hub at a closed port.
NO_HUB = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}


def run_cli(*args: object, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtpgraft", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600, env=env)


def bad(text: str, match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        parse_recipe(text, path="r.toml", work_dir="/tmp/w")


# --------------------------------------------------------------------------- parsing (offline)


def test_parse_good_recipe() -> None:
    r = parse_recipe(GOOD, path="/r/x.toml", work_dir="/tmp/w")
    assert r.name == "M" and r.model.mtp_from == "mtp-M.gguf"
    assert r.quantize.types == ("Q8_0", "Q4_K_M", "IQ2_XXS")
    assert r.quantize.mtp_policy() == {"default": "q8_0", "IQ2_XXS": "q6_k"}
    assert r.check is not None and r.check.n_max == (2, 3) and r.check.min_acceptance == 0.5
    assert r.hub is not None and r.hub.dry_run and r.work_dir == "/tmp/w"
    assert r.input_path("base.gguf") == Path("/r/base.gguf")
    assert r.steps() == ("graft", "imatrix", "quantize:Q8_0", "quantize:Q4_K_M", "quantize:IQ2_XXS",
                         "check", "push")


def test_every_bad_field_is_named() -> None:
    bad("[model\nname=1", r"r.toml: not valid TOML")
    bad("[quantize]\ntypes=['Q8_0']", r"\[model\] is required")
    bad("[model]\nname='M'\nbase='b'\n", r"\[quantize\] is required")
    bad(GOOD.replace('name = "M"', 'name = 3'), r"\[model\] name: must be a string, got 3")
    bad(GOOD.replace('name = "M"', 'name = "m-mtp"'), r"\[model\] name: .*'mtp-'")
    bad(GOOD.replace('base = "base.gguf"\n', ""), r"\[model\] base: is required")
    bad(GOOD.replace("mtp_from", "mtp_form"), r"\[model\] mtp_form: unknown key \(known: name, base")
    bad(GOOD + "\n[extra]\n", r"unknown table \[extra\]")
    bad(GOOD.replace('"q4_k"', '"Q4_K_Q"'), r"\[quantize\] types: unknown quant type 'Q4_K_Q'")
    bad(GOOD.replace('types = ["Q8_0", "q4_k", "IQ2_XXS"]', "types = []"), r"\[quantize\] types: is required")
    bad(GOOD.replace('IQ2_XXS = "q6_k"', 'IQ2_XXS = "q9"'), r"\[quantize\] mtp_type.IQ2_XXS: .*'q9'")
    bad(GOOD.replace('IQ2_XXS = "q6_k"', 'Q6_K = "q6_k"'), r"mtp_type.Q6_K: Q6_K is not one of the recipe's types")
    bad(GOOD.replace('"50G"', '"50GB"'), r"\[quantize\] split_max_size: .*M or G")
    bad(GOOD.replace("ctx = 128", "ctx = 0"), r"\[imatrix\] ctx: must be >= 1, got 0")
    bad(GOOD.replace('calibration = "cal.txt"', 'file = "i.gguf"\ncalibration = "c.txt"'),
        r"\[imatrix\]: give exactly one of calibration")
    bad(GOOD.replace('[imatrix]\ncalibration = "cal.txt"\nctx = 128\n', ""),
        r"\[quantize\] types: IQ2_XXS need an importance matrix: add an \[imatrix\] section")
    bad(GOOD.replace("min_acceptance = 0.5", "min_acceptance = 5"), r"\[check\] min_acceptance: must be between 0 and 1")
    bad(GOOD.replace("n_max = [2, 3]", "n_max = ['3']"), r"\[check\] n_max: must be a non-empty list of integers")
    bad(GOOD.replace("[check]", "[check]\ntypes = ['Q6_K']"), r"\[check\] types: Q6_K not in \[quantize\] types")
    bad(GOOD.replace("[check]", "[check]\ntypes = ['Q8_0']"), r"\[hub\]: pushing needs a passing check of every type")
    bad(GOOD.replace('repo = "me/M-GGUF"', 'repo = "M-GGUF"'), r"\[hub\] repo: must be OWNER/NAME")
    bad(GOOD.replace("dry_run = true", "dry_run = 'yes'"), r"\[hub\] dry_run: must be true or false, got 'yes'")


def test_shipped_recipes_parse() -> None:
    names = sorted(p.name for p in RECIPES.glob("*.toml"))
    assert {"tiny.toml", "qwen3.6-27b.toml", "qwen3.6-35b-a3b.toml"} <= set(names)
    for p in RECIPES.glob("*.toml"):
        r = load_recipe(p, work_dir="/tmp/w")
        assert r.quantize.types and r.steps()[0] == "graft", p
    big = load_recipe(RECIPES / "qwen3.6-27b.toml")
    assert big.imatrix is not None and big.quantize.split_max_size == "50G" and big.hub is not None
    moe = load_recipe(RECIPES / "qwen3.6-35b-a3b.toml")
    assert isinstance(moe.quantize.mtp_policy(), dict)


def test_only_selects_steps_and_their_dependencies() -> None:
    r = parse_recipe(GOOD, path="x.toml", work_dir="/tmp/w")
    assert select_steps(r, ["Q4_K_M"]) == ("graft", "imatrix", "quantize:Q4_K_M")
    assert select_steps(r, ["q4_k"]) == ("graft", "imatrix", "quantize:Q4_K_M")
    assert select_steps(r, ["quantize:Q8_0"]) == ("graft", "imatrix", "quantize:Q8_0")
    assert select_steps(r, ["imatrix"]) == ("graft", "imatrix")
    assert select_steps(r, ["quantize"]) == ("graft", "imatrix", "quantize:Q8_0", "quantize:Q4_K_M",
                                             "quantize:IQ2_XXS")
    assert select_steps(r, ["push"]) == r.steps()
    # one check step over every type: it needs them all
    assert select_steps(r, ["check"]) == ("graft", "imatrix", "quantize:Q8_0", "quantize:Q4_K_M",
                                          "quantize:IQ2_XXS", "check")
    with pytest.raises(RecipeError, match="^only Q6_K: not a step of this recipe"):
        select_steps(r, ["Q6_K"])


def test_dry_run_prints_the_plan_without_tools_or_writes(tmp_path: Path) -> None:
    """The plan is data: every step, what it needs, what it asks a cluster for; nothing is looked up
    or written (no tools are needed for it)."""
    p = tmp_path / "r.toml"
    p.write_text(GOOD.replace("[hub]", "[run]\nresources = {quantize = {cpus = 4}}\n\n[hub]"))
    r = load_recipe(p, work_dir=tmp_path / "w")
    plan = plan_recipe(r, only=["IQ2_XXS", "check"])
    assert [s.step for s in plan.steps] == ["graft", "imatrix", "quantize:Q8_0", "quantize:Q4_K_M",
                                            "quantize:IQ2_XXS", "check"]
    by = {s.step: s for s in plan.steps}
    assert by["check"].needs == ("quantize:Q8_0", "quantize:Q4_K_M", "quantize:IQ2_XXS")
    assert by["quantize:IQ2_XXS"].needs == ("graft", "imatrix")
    assert "Q8_0, Q4_K_M, IQ2_XXS outputs" in by["check"].action
    assert by["quantize:IQ2_XXS"].cpus == 4 and "MTP type q6_k" in by["quantize:IQ2_XXS"].action
    assert (by["imatrix"].cpus, by["imatrix"].gpus, by["check"].gpus) == (1, 0, 0)
    gpu = parse_recipe(GOOD.replace("ctx = 128", "ctx = 128\nthreads = 6\nextra_args = ['-ngl', '99']")
                       .replace("[check]", "[check]\nserver_args = ['--n-gpu-layers=0']"), work_dir=tmp_path)
    by = {s.step: s for s in plan_recipe(gpu).steps}
    assert (by["imatrix"].cpus, by["imatrix"].gpus) == (1, 1) and (by["check"].cpus, by["check"].gpus) == (1, 0)
    res = run_cli("run", p, "--work-dir", tmp_path / "w", "--dry-run", "--json",
                  env={**os.environ, "PATH": "/nonexistent", "MTPGRAFT_LLAMA_CPP": "/nonexistent"})
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    assert d["dry_run"] and [s["step"] for s in d["plan"]["steps"]] == list(r.steps())
    assert not (tmp_path / "w").exists()


def test_ray_is_optional(tmp_path: Path) -> None:
    """The local executor never imports Ray; --executor ray without it is one line, not a traceback."""
    p = tmp_path / "r.toml"
    p.write_text(QUICK)
    work = tmp_path / "w"
    code = ("import sys; sys.modules['ray'] = None  # as if Ray were not installed\n"
            "from mtpgraft.cli import main; sys.argv = ['mtpgraft'] + sys.argv[1:]\n"
            "try:\n    main()\nfinally:\n    print('ray imported' if 'ray' in sys.modules and sys.modules['ray'] "
            "else 'no ray', file=sys.stderr)\n")
    res = subprocess.run([sys.executable, "-c", code, "run", str(p), "--work-dir", str(work), "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stderr.strip() == "no ray", res.stderr
    res = subprocess.run([sys.executable, "-c", code, "run", str(p), "--work-dir", str(work), "--executor", "ray"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 3 and res.stderr.splitlines()[0] == (
        "mtpgraft: error: --executor ray needs Ray on this machine and every node: pip install 'mtpgraft[ray]'")
    assert not work.exists()
    res = run_cli("run", p, "--work-dir", work, "--address", "127.0.0.1:1")
    assert res.returncode == 2 and res.stderr == "mtpgraft: error: --address is the Ray cluster to run on: it needs --executor ray\n"


def test_cli_recipe_errors_are_one_line(tmp_path: Path) -> None:
    p = tmp_path / "r.toml"
    p.write_text(GOOD.replace("ctx = 128", "ctx = -1"))
    res = run_cli("run", p, "--work-dir", tmp_path / "w")
    assert res.returncode == 3 and res.stderr.strip().splitlines() == [
        f"mtpgraft: error: {p.absolute()}: [imatrix] ctx: must be >= 1, got -1"]
    res = run_cli("run", tmp_path / "missing.toml")
    assert res.returncode == 3 and "recipe not found" in res.stderr


# --------------------------------------------------------------------------- the pipeline (real tools)


class Interrupt(BaseException):
    """Stands in for Ctrl-C at a chosen moment."""


@pytest.mark.tools
def test_tiny_recipe_interrupted_resumes_then_runs_end_to_end(tmp_path: Path) -> None:
    """The shipped tiny recipe, stopped while quantizing its third type, then resumed by the CLI:
    finished steps are not redone, and the run leaves only verified, checked files."""
    work = tmp_path / "work"
    recipe = load_recipe(RECIPES / "tiny.toml", work_dir=work)
    seen: list[tuple[str, str]] = []

    def stop_at_iq4(step: str, msg: str) -> None:
        seen.append((step, msg))
        if step == "quantize:IQ4_XS" and msg == "quantizing":
            raise Interrupt

    with pytest.raises(Interrupt):
        run_recipe(recipe, on_event=stop_at_iq4)
    st = State(work)
    assert sorted(r.step for r in st.records()) == ["graft", "imatrix", "quantize:Q4_K_M", "quantize:Q8_0"]
    assert ("quantize:IQ4_XS", "quantizing") == seen[-1]
    quants = work / "quants"
    assert not [p for p in quants.rglob("*") if p.name.startswith(".")]  # no partial file survives
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in
                [work / "tiny-qwen35.gguf", work / "tiny-qwen35.imatrix.gguf", *quants.rglob("*.gguf")]}
    assert len(finished) == 5  # graft, imatrix, Q8_0 (2 shards), Q4_K_M

    res = run_cli("run", RECIPES / "tiny.toml", "--work-dir", work)
    assert res.returncode == 3 and "pass --resume to continue it or --force" in res.stderr

    res = run_cli("run", RECIPES / "tiny.toml", "--work-dir", work, "--resume", "--json", env=NO_HUB)
    assert res.returncode == 0, res.stderr
    d = json.loads(res.stdout)
    status = {s["step"]: s["status"] for s in d["steps"]}
    assert status == {"graft": "finished-before", "imatrix": "finished-before",
                      "quantize:Q8_0": "finished-before", "quantize:Q4_K_M": "finished-before",
                      "quantize:IQ4_XS": "done", "quantize:IQ2_XXS": "done",
                      "check": "done", "quality": "done", "push": "dry-run"}
    push = d["steps"][-1]["message"]  # the Hub is unreachable here: the gate is applied locally
    assert push.startswith("would send 5 model file(s)") and "(Hub not consulted)" in push
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished
    assert sorted(str(p.relative_to(quants)) for p in quants.rglob("*") if p.is_file()) == [
        "Q8_0/tiny-qwen35-Q8_0-00001-of-00002.gguf", "Q8_0/tiny-qwen35-Q8_0-00002-of-00002.gguf",
        "tiny-qwen35-IQ2_XXS.gguf", "tiny-qwen35-IQ4_XS.gguf", "tiny-qwen35-Q4_K_M.gguf"]
    rep = json.loads((work / "checks" / "report.json").read_text())  # one report, every quant
    assert rep["verdict"] == "pass" and 0.5 < rep["acceptance"] < 0.9  # the calibrated model: no certainty
    assert [m["quant"] for m in rep["models"]] == ["Q8_0", "Q4_K_M", "IQ4_XS", "IQ2_XXS"]
    assert all(m["verdict"] == "pass" for m in rep["models"])  # numbers: tests/test_calibrated.py
    md = (work / "checks" / "report.md").read_text()
    assert len([x for x in md.splitlines() if x.startswith(("| Q8_0 |", "| IQ2_XXS |"))]) == 4
    for t in ("Q8_0", "Q4_K_M", "IQ4_XS", "IQ2_XXS"):
        out = st.abs(st.get(f"quantize:{t}").detail["path"])  # type: ignore[union-attr]
        ins = inspect_model(out)
        assert ins.consistent and ins.mtp_present and ins.file_type == t
    again = run_cli("run", RECIPES / "tiny.toml", "--work-dir", work, "--resume", "--json", env=NO_HUB)
    steps = json.loads(again.stdout)["steps"]
    assert {s["status"] for s in steps[:-1]} == {"finished-before"} and steps[-1]["status"] == "dry-run"


@pytest.fixture
def quick(tmp_path: Path) -> Path:
    p = tmp_path / "quick.toml"
    p.write_text(QUICK)
    return p


@pytest.mark.tools
def test_changed_inputs_redo_exactly_the_affected_steps(quick: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    assert run_recipe(load_recipe(quick, work_dir=work)).ok
    # a damaged output is not "finished": only its step runs again
    q4 = work / "quants" / "q-Q4_K_M.gguf"
    with open(q4, "ab") as f:
        f.write(b"\0")
    res = run_recipe(load_recipe(quick, work_dir=work), resume=True)
    assert {s.step: s.status for s in res.steps} == {"graft": "finished-before", "imatrix": "finished-before",
                                                     "quantize:Q8_0": "finished-before", "quantize:Q4_K_M": "done"}
    # an edited recipe (another MTP type for Q4_K_M) redoes that type only
    quick.write_text(QUICK.replace('types = ["Q8_0", "Q4_K_M"]',
                                   'types = ["Q8_0", "Q4_K_M"]\nmtp_type = {default = "q8_0", Q4_K_M = "q6_k"}'))
    res = run_recipe(load_recipe(quick, work_dir=work), resume=True)
    assert [s.step for s in res.steps if s.status == "done"] == ["quantize:Q4_K_M"]
    m = GGUFModel(q4)
    assert m.by_name["blk.4.attn_q.weight"].info.type_name == "Q6_K"


@pytest.mark.tools
def test_types_run_as_separate_processes_on_one_work_dir(quick: Path, tmp_path: Path) -> None:
    # Q5_K_M rather than Q8_0: both types take long enough on the tiny model (~0.7 s) for the
    # overlap below to be seen whenever they do run at once
    quick.write_text(QUICK.replace('"Q8_0", "Q4_K_M"', '"Q5_K_M", "Q4_K_M"'))
    work = tmp_path / "w"
    env = {**os.environ}
    procs = [subprocess.Popen([sys.executable, "-m", "mtpgraft", "run", str(quick), "--work-dir", str(work),
                               "--resume", "--only", t, "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for t in ("Q5_K_M", "Q4_K_M")]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    results = [{s["step"]: s["status"] for s in json.loads(o)["steps"]} for o, _ in outs]
    # the graft and the imatrix ran once: the other process waited for them, then found them finished
    for step in ("graft", "imatrix"):
        assert sorted(r[step] for r in results) == ["done", "finished-before"]
    assert results[0]["quantize:Q5_K_M"] == "done" and results[1]["quantize:Q4_K_M"] == "done"
    assert "quantize:Q4_K_M" not in results[0]
    recs = {r.step: r for r in State(work).records()}
    assert sorted(recs) == ["graft", "imatrix", "quantize:Q4_K_M", "quantize:Q5_K_M"]
    # and the two quantize steps ran at the same time, each in its own process: their intervals
    # (from taking the step's lock to recording it) overlap; one lock for both would serialize them
    spans = [(datetime.fromisoformat(recs[s].started).timestamp(),
              datetime.fromisoformat(recs[s].started).timestamp() + recs[s].seconds)
             for s in ("quantize:Q5_K_M", "quantize:Q4_K_M")]
    assert max(a for a, _ in spans) < min(b for _, b in spans), spans


@pytest.mark.tools
def test_dry_run_writes_nothing_and_foreign_outputs_are_not_overwritten(quick: Path, tmp_path: Path) -> None:
    work = tmp_path / "w"
    res = run_cli("run", quick, "--work-dir", work, "--dry-run")
    assert res.returncode == 0, res.stderr
    assert "graft" in res.stdout and "dry-run" in res.stdout and not work.exists()
    (work / "quants").mkdir(parents=True)
    (work / "quants" / "q-Q8_0.gguf").write_bytes(b"not ours")
    res = run_cli("run", quick, "--work-dir", work)
    assert res.returncode == 3 and "q-Q8_0.gguf exists and no run of this recipe is recorded" in res.stderr
    assert (work / "quants" / "q-Q8_0.gguf").read_bytes() == b"not ours"


@pytest.mark.tools
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_push_step_publishes_checked_outputs(hub, tmp_path: Path, monkeypatch) -> None:
    """graft -> imatrix -> quantize -> check -> push, the push going to a loopback Hub (tests/fakehub.py)
    through the real huggingface_hub client; a dry-run push first sends nothing."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # classic LFS upload to the fake
    text = QUICK + quick_check_section() + f"""
[hub]
repo = "tester/q-MTP-GGUF"
dry_run = true
endpoint = "{hub.url}"
"""
    p = tmp_path / "push.toml"
    p.write_text(text)
    work = tmp_path / "w"

    res = run_recipe(load_recipe(p, work_dir=work), hub_api=hub_api)
    assert res.ok, [(s.step, s.message) for s in res.failed]
    push = res.steps[-1]
    assert push.step == "push" and push.status == "dry-run" and push.message.startswith("would send")
    assert hub.writes() == []
    p.write_text(text.replace("dry_run = true", "dry_run = false"))
    res = run_recipe(load_recipe(p, work_dir=work), resume=True, hub_api=hub_api)
    assert res.ok, [(s.step, s.message) for s in res.failed]
    status = {s.step: s.status for s in res.steps}
    assert status["push"] == "done" and status["check"] == "finished-before"
    head = hub.head("tester/q-MTP-GGUF")
    assert {"q-Q8_0.gguf", "q-Q4_K_M.gguf", "README.md"} <= set(head.files)
    # one check across both quants: the card carries its matrix and acceptance table
    card = head.files["README.md"].content.decode()
    assert "| quant | code |" in card and "| quant | n=3 |" in card
    assert len([x for x in card.splitlines() if x.startswith(("| Q8_0 | ", "| Q4_K_M | "))]) == 4


def test_one_list_of_step_kinds() -> None:
    """schema.STEP_KINDS is the pipeline's order, and every kind has exactly one rule there."""
    from mtpgraft.recipe.pipeline import PIPELINE, RULES
    from mtpgraft.recipe.schema import STEP_KINDS

    assert [k.name for k in PIPELINE] == list(STEP_KINDS) == ["graft", "imatrix", "quantize", "check", "quality",
                                                               "push"]
    assert set(RULES) == set(STEP_KINDS)
