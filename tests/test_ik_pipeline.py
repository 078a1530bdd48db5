"""ik_llama.cpp through mtpgraft's own commands (issue 23): `--runtime ik` for quantize, attach, check and
inspect, and the card. The unit tests need no tools; the `tools` ones run ik's real build (skipped
when it is absent, failed instead under MTPGRAFT_REQUIRE_IK=1, as CI runs them) and mainline's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtpgraft.errors import QuantizeError, QuantizeOptionError

# The lines ik_llama.cpp 0.1.5's llama-server prints per request with -mtp (server-context.cpp
# print_timing, common/speculative.cpp common_speculative_print_stats), as seen from its real build.
IK_LOG = """\
slot print_timing: id  0 | task 1 |
prompt eval time =      22.56 ms /     9 tokens (    2.51 ms per token,   398.99 tokens per second)
draft acceptance rate = 0.97143 (   34 accepted /    35 generated)
statistics mtp: #calls(b,g,a) = 1 12 12, #gen drafts = 12, #acc drafts = 12, #gen tokens = 36, #acc tokens = 35, dur(b,g,a) = 0.000, 2.584, 0.005 ms
slot print_timing: id  0 | task 15 |
statistics mtp: #calls(b,g,a) = 2 12 12, #gen drafts = 12, #acc drafts = 12, #gen tokens = 36, #acc tokens = 35, dur(b,g,a) = 0.001, 19.427, 0.008 ms
slot print_timing: id  0 | task 29 |
draft acceptance rate = 1.00000 (   20 accepted /    20 generated)
statistics mtp: #calls(b,g,a) = 3 19 19, #gen drafts = 19, #acc drafts = 19, #gen tokens = 57, #acc tokens = 55, dur(b,g,a) = 0.001, 20.1, 0.01 ms
slot print_timing: id  0 | task 40 |
draft acceptance rate = 1.00000 (    9 accepted /    9 generated)
"""


def test_ik_log_counters_add_up_finished_requests_only():
    from mtpgraft.check.counters import SpecCounters
    from mtpgraft.check.ik import read_log_counters

    c = read_log_counters(IK_LOG)
    # three requests finished (a "statistics mtp" line each; the second drafted nothing, so it has no
    # acceptance line); the fourth's acceptance line is not counted before its statistics line
    assert (c.requests, c.draft_tokens, c.accepted, c.drafts) == (3, 55, 54, 19)
    m = SpecCounters.from_metrics(c.as_metrics())
    assert (m.draft_tokens, m.accepted, m.drafts) == (55, 54, 19)
    assert read_log_counters("no mtp here\n").requests == 0


def test_server_argv_in_ik_spelling():
    from mtpgraft.runtimes import server_argv, server_option

    argv = ["llama-server", "-m", "x.gguf", "--no-webui", "-mtp", "--spec-draft-n-max", "3",
            "--spec-draft-p-min", "0.5", "--cache-ram", "0"]
    assert server_argv("ik", argv) == ["llama-server", "-m", "x.gguf", "--webui", "none", "-mtp", "--draft-max",
                                       "3", "--draft-p-min", "0.5", "--cache-ram", "0"]
    assert server_argv("mainline", argv) == argv
    assert server_option("ik", "--spec-draft-p-min") == "--draft-p-min"


def test_quantize_rules_in_each_runtimes_spelling():
    from mtpgraft.ggml_types import quantize_rules_argv

    rules = [(r"^blk\.4\.", "Q8_0"), (r"^blk\.5\.", "Q5_K"), (r"^x$", "IQ4_KS")]
    assert quantize_rules_argv("mainline", rules[:2]) == ["--tensor-type", r"^blk\.4\.=q8_0",
                                                          "--tensor-type", r"^blk\.5\.=q5_k"]
    # ik's --custom-q compares ggml's type names exactly: q5_K, not q5_k
    assert quantize_rules_argv("ik", rules) == ["--custom-q", r"^blk\.4\.=q8_0,^blk\.5\.=q5_K,^x$=iq4_ks"]
    assert quantize_rules_argv("ik", []) == []


@pytest.fixture(scope="module")
def glm(tmp_path_factory) -> dict[str, Path]:
    from mtpgraft.testmodels import build_tiny_model

    d = tmp_path_factory.mktemp("glm")
    return {layout: build_tiny_model(d / f"{layout}.gguf", arch="glm4moe", layout=layout)
            for layout in ("base", "full")}


def _plan(model: Path, types: str, runtime: str, **kw):  # noqa: ANN202
    from mtpgraft.quantize import QuantizeTools, plan_quantize

    return plan_quantize(model, types, out_dir=model.parent / "out", runtime=runtime,
                         tools=QuantizeTools("llama-quantize"), **kw)


def test_quantize_plan_takes_ik_types_with_their_rules(glm):
    plan = _plan(glm["full"], "IQ4_KS,iq4_kt", "ik")
    assert plan.types == ("IQ4_KS", "IQ4_KT") and plan.runtime == "ik"
    ks = plan.jobs[0]
    assert ks.command[1:3] == ("--custom-q", r"^blk\.4\.=q8_0") and "--tensor-type" not in ks.command
    assert ks.expect.file_type == 145 and plan.jobs[1].expect.file_type == 153  # ik's llama_ftype numbers
    assert ks.mtp_type == "q8_0"  # the head at q8_0 by default, as on mainline
    per_type = _plan(glm["full"], "IQ4_KS,Q4_K_M", "ik", mtp_type={"iq4_ks": "q6_k", "default": "q8_0"})
    assert [j.mtp_type for j in per_type.jobs] == ["q6_k", "q8_0"]
    assert per_type.jobs[0].command[1:3] == ("--custom-q", r"^blk\.4\.=q6_K")


def test_quantize_ik_types_and_imatrix_rules_per_runtime(glm):
    with pytest.raises(QuantizeOptionError) as e:
        _plan(glm["full"], "IQ4_KS", "mainline")
    assert "IQ4_KS is ik_llama.cpp's: pass runtime='ik'" in str(e.value)
    with pytest.raises(QuantizeError, match=r"IQ2_KT needs an importance matrix \(ik_llama.cpp's llama-quantize"):
        _plan(glm["full"], "IQ2_KT", "ik")
    # ik's llama-quantize makes IQ3_XXS without one (its very-low-bit list has no IQ3_XXS); mainline's does not
    assert _plan(glm["full"], "IQ3_XXS", "ik").types == ("IQ3_XXS",)
    with pytest.raises(QuantizeError, match="IQ3_XXS needs an importance matrix"):
        _plan(glm["full"], "IQ3_XXS", "mainline")


def test_preflight_blocks_an_architecture_the_ik_build_does_not_run(tmp_path):
    from mtpgraft.preflight import mtp_blocker
    from mtpgraft.testmodels import build_tiny_model

    qwen = build_tiny_model(tmp_path / "q.gguf", arch="qwen35", layout="full")
    why = mtp_blocker(qwen, runtime="ik", mtp_archs=("glm4moe",))
    assert why == ("q.gguf is a qwen35: this ik_llama.cpp build runs MTP for glm4moe only (read from the "
                   "source it was built from)")
    assert mtp_blocker(qwen, runtime="ik", mtp_archs=None) is None  # unknown: the server decides
    assert mtp_blocker(qwen, runtime="mainline", mtp_archs=("glm4moe",)) is None


def _entry(quant: str, runtimes: tuple[str, ...]):  # noqa: ANN202
    from mtpgraft.hub import plan as hubmod

    return hubmod.ModelEntry(
        name=f"M-{quant}.gguf", files=(hubmod.FileRef(f"M-{quant}.gguf", 10, "00" * 32),), size=10, quant=quant,
        architecture="glm4moe", nextn_predict_layers=1, mtp_head="1 layer, Q8_0", layout="full", metadata={},
        check=None, runtimes=runtimes)


def test_card_says_which_runtime_each_file_needs():
    from mtpgraft.hub import card

    both = _entry("Q4_K_M", ("mainline", "ik"))
    mixed = card.render_card(repo_id="o/M", models=[_entry("IQ4_KS", ("ik",)), both], verified=False)
    assert "| File | Quant type | MTP head | Runs on | Size | SHA256 |" in mixed
    assert "| ik_llama.cpp only | 10 B |" in mixed and "| llama.cpp and ik_llama.cpp | 10 B |" in mixed
    assert 'This repository mixes runtimes: the files marked "ik_llama.cpp only" hold' in mixed
    assert "llama-server -m M-IQ4_KS.gguf -mtp --draft-max 3  # ik_llama.cpp\n" in mixed
    assert "llama-server -hf o/M:Q4_K_M --spec-type draft-mtp --spec-draft-n-max 3\n" in mixed
    only_ik = card.render_card(repo_id="o/M", models=[_entry("IQ4_KS", ("ik",))], verified=False)
    assert "These files hold tensor types that only [ik_llama.cpp]" in only_ik and "-hf" not in only_ik.split(
        "## Usage")[1].split("Download")[0]
    plain = card.render_card(repo_id="o/M", models=[both], verified=False)
    assert "Runs on" not in plain and "ik_llama.cpp" not in plain  # a mainline repo's card is as before


def test_check_refuses_hub_refs_on_ik():
    r = subprocess.run([sys.executable, "-m", "mtpgraft", "check", "hf://o/m:Q4_K_M", "--runtime", "ik"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr == ("mtpgraft: error: hf:// models are loaded the way users load them, with mainline "
                        "llama-server -hf; ik_llama.cpp's has no -hf: download the files and check them by path\n")


def test_dat_imatrix_reader(tmp_path):
    import struct

    from mtpgraft.imatrix import read_dat_imatrix

    entry = lambda name, vals: (struct.pack("<i", len(name)) + name + struct.pack("<ii", 1, len(vals))  # noqa: E731
                                + struct.pack(f"<{len(vals)}f", *vals))
    good = tmp_path / "im.dat"
    good.write_bytes(struct.pack("<i", 2) + entry(b"blk.0.ffn_up.weight", [1.0] * 4) + entry(b"output.weight", [2.0])
                     + struct.pack("<ii", 7, 8) + b"cal.txt!")
    info = read_dat_imatrix(good)
    assert (info.entries, info.chunk_count, info.datasets) == (2, 7, ("cal.txt!",))
    bad = tmp_path / "bad.dat"
    bad.write_bytes(good.read_bytes()[:30])
    with pytest.raises(QuantizeError, match="is not an imatrix in the .dat format"):
        read_dat_imatrix(bad)


# ----------------------------------------------------------------------------- the real tools



def mtpgraft(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MTPGRAFT_IK_LLAMA_CPP", "MTPGRAFT_RUNTIME")}
    return subprocess.run([sys.executable, "-m", "mtpgraft", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=900)


# One thread, a short plan: the tiny models on a shared 2-core machine.
QUICK = ("--n-max", "3", "--reps", "1", "--n-predict", "32", "--per-category", "1", "--server-arg", "-t 1")


def checked(model: Path, runtime: str, cwd: Path) -> dict:
    r = mtpgraft("check", model, "--runtime", runtime, *QUICK, "--json", cwd=cwd)
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def ik_quants(ik_bin_dir, glm, tmp_path_factory) -> dict[str, Path]:
    """`mtpgraft quantize --runtime ik` of the tiny glm4moe trunk (IQ4_KS, IQ4_KT), then the aligned
    head grafted onto each by `mtpgraft attach` (q8_0, the default for a quantized base)."""
    d = tmp_path_factory.mktemp("ikq")
    r = mtpgraft("quantize", glm["base"], "--runtime", "ik", "--types", "IQ4_KS,IQ4_KT", "--out-dir", d, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)["outputs"]
    assert [(o["quant_type"], o["status"]) for o in out] == [("IQ4_KS", "done"), ("IQ4_KT", "done")]
    grafted = {}
    for qt in ("IQ4_KS", "IQ4_KT"):
        grafted[qt] = d / f"tiny-{qt}-mtp.gguf"
        r = mtpgraft("attach", d / f"base-{qt}.gguf", "--mtp-from", glm["full"], "-o", grafted[qt])
        assert r.returncode == 0, r.stderr
    return grafted


@pytest.mark.tools
@pytest.mark.parametrize("qtype", ["IQ4_KS", "IQ4_KT"])
def test_ik_quant_with_grafted_head_drafts_through_check(ik_quants, qtype, tmp_path):
    """The issue's proof: the ik quant made by `mtpgraft quantize --runtime ik`, its head grafted by
    mtpgraft, drafts every token on ik's llama-server through `mtpgraft check --runtime ik`, with the
    counters read from ik's log; its llama.log stays out of the caller's directory."""
    from mtpgraft.gguf_io import GGUFModel

    model = ik_quants[qtype]
    assert {r.info.type_name for r in GGUFModel(model).refs if r.name.startswith("blk.4.")} <= {"Q8_0", "F32"}
    d = checked(model, "ik", tmp_path)
    m = d["models"][0]
    assert (d["verdict"], m["mtp_active"], d["acceptance"]) == ("pass", True, 1.0), d["reasons"]
    assert m["counters"]["draft_tokens"] > 20 and m["counters"]["accepted"] == m["counters"]["draft_tokens"]
    assert sum(r["drafted"] for r in m["per_prompt"]) == m["counters"]["draft_tokens"]  # per request, from the log
    assert "ik-llama-cpp-python-0.1.5" in d["llama_cpp_build"]
    assert not (tmp_path / "llama.log").exists()


@pytest.mark.tools
def test_inspect_predicts_mainlines_refusal_and_mainline_refuses(ik_quants, tmp_path):
    model = ik_quants["IQ4_KS"]
    r = mtpgraft("inspect", model, "--json")
    rep = json.loads(r.stdout)
    predicted = rep["loader_refusals"]["mainline"]
    assert (r.returncode, rep["loads_with"], rep["runtimes"]) == (1, "ik_llama.cpp only", ["ik"])
    assert predicted == "tensor 'token_embd.weight' has invalid ggml type 144. should be in [0, 43)"
    assert rep["problems"] == [f"llama.cpp's loader refuses it: {predicted}"]
    ik = mtpgraft("inspect", model, "--runtime", "ik")
    assert ik.returncode == 0 and "loads with:      ik_llama.cpp only" in ik.stdout
    d = checked(model, "mainline", tmp_path)  # mainline's real llama-server refuses it, as predicted
    assert d["verdict"] == "fail" and predicted in d["reasons"][0], d["reasons"]


@pytest.mark.tools
@pytest.mark.parametrize("runtime", ["mainline", "ik"])
def test_mainline_type_graft_drafts_on_both_runtimes(ik_bin_dir, glm, runtime, tmp_path_factory):
    """A Q4_K_M quant from mainline's llama-quantize with the head grafted: both runtimes load it and
    both run glm4moe's MTP, each at the known rate."""
    d = tmp_path_factory.mktemp(f"both-{runtime}")
    assert mtpgraft("quantize", glm["base"], "--types", "Q4_K_M", "--out-dir", d).returncode == 0
    out = d / "tiny-Q4_K_M-mtp.gguf"
    assert mtpgraft("attach", d / "base-Q4_K_M.gguf", "--mtp-from", glm["full"], "-o", out).returncode == 0
    assert json.loads(mtpgraft("inspect", out, "--json").stdout)["loads_with"] == "llama.cpp and ik_llama.cpp"
    rep = checked(out, runtime, d)
    assert (rep["verdict"], rep["acceptance"]) == ("pass", 1.0), rep["reasons"]


@pytest.mark.tools
def test_attach_match_on_ik_base_makes_ik_types_with_iks_quantize(ik_quants, glm, tmp_path):
    """--mtp-type match on an IQ4_KS base: the head's weights get the trunk's ik types, made by ik's
    llama-quantize (mainline's cannot), and the file drafts on ik's server."""
    from mtpgraft.gguf_io import GGUFModel

    base = ik_quants["IQ4_KS"].parent / "base-IQ4_KS.gguf"
    out = tmp_path / "match.gguf"
    r = mtpgraft("attach", base, "--mtp-from", glm["full"], "-o", out, "--mtp-type", "match")
    assert r.returncode == 0, r.stderr
    trunk, head = GGUFModel(base), GGUFModel(out)
    for name in ("attn_q.weight", "ffn_up_exps.weight", "ffn_down_shexp.weight"):
        assert head.by_name[f"blk.4.{name}"].info.type_name == trunk.by_name[f"blk.3.{name}"].info.type_name
    assert head.by_name["blk.4.attn_q.weight"].info.type_name == "IQ4_KS"
    d = checked(out, "ik", tmp_path)
    assert (d["verdict"], d["acceptance"]) == ("pass", 1.0), d["reasons"]


@pytest.mark.tools
def test_ik_imatrix_then_an_ik_type_that_needs_it(ik_bin_dir, glm, tmp_path):
    """ik's llama-imatrix (the .dat format) through `mtpgraft imatrix --runtime ik`, then IQ2_KT (which
    ik refuses without one) by `mtpgraft quantize --runtime ik`: the head stays q8_0, the output verifies."""
    from mtpgraft.gguf_io import GGUFModel

    cal = Path(__file__).parent.parent / "mtpgraft" / "data" / "calibration-tiny.txt"
    im = tmp_path / "im.dat"
    r = mtpgraft("imatrix", glm["base"], "--runtime", "ik", "-f", cal, "-o", im, "-c", "64", "--chunks", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["imatrix"]["entries"] > 20 and im.read_bytes()[:4] != b"GGUF"
    r = mtpgraft("quantize", glm["full"], "--runtime", "ik", "--types", "IQ2_KT", "--imatrix", im, "--out-dir", tmp_path)
    assert r.returncode == 0, r.stderr
    m = GGUFModel(tmp_path / "full-IQ2_KT.gguf")
    assert m.get("general.file_type") == 151 and "quantize.imatrix.file" in m.kv
    assert m.by_name["blk.1.ffn_up_exps.weight"].info.type_name == "IQ2_KT"
    assert {r.info.type_name for r in m.refs if r.name.startswith("blk.4.")} <= {"Q8_0", "F32"}


@pytest.mark.tools
def test_check_refuses_an_architecture_ik_runs_no_mtp_for_before_any_server(ik_bin_dir, tmp_path):
    """ik 0.1.5 switches -mtp off for all but glm4moe (src/llama.cpp): check says so, from the source the
    cached build was made from, before a server starts."""
    from mtpgraft.testmodels import build_tiny_model

    qwen = build_tiny_model(tmp_path / "qwen.gguf", arch="qwen35", layout="full")
    r = mtpgraft("check", qwen, "--runtime", "ik", *QUICK, cwd=tmp_path)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr == ("mtpgraft: error: qwen.gguf is a qwen35: this ik_llama.cpp build runs MTP for glm4moe "
                        "only (read from the source it was built from)\n")


def test_recipe_run_runtime_checks_types_with_that_runtime():
    from mtpgraft.errors import RecipeError
    from mtpgraft.recipe.schema import parse_recipe

    text = ('[model]\nname = "M"\nbase = "base.gguf"\n\n[quantize]\ntypes = ["IQ4_KS", "q4_k"]\n'
            'mtp_type = { default = "q8_0", IQ4_KS = "q6_k" }\n')
    r = parse_recipe(text + '\n[run]\nruntime = "ik"\n', work_dir="/tmp/w")
    assert (r.runtime, r.quantize.types) == ("ik", ("IQ4_KS", "Q4_K_M"))
    with pytest.raises(RecipeError, match=r"\[quantize\] types: unknown quant type 'IQ4_KS'.*IQ4_KS is ik_llama.cpp's"):
        parse_recipe(text, work_dir="/tmp/w")
    with pytest.raises(RecipeError, match=r"\[run\] runtime: unknown runtime 'ikk': one of mainline, ik"):
        parse_recipe(text + '\n[run]\nruntime = "ikk"\n', work_dir="/tmp/w")


def test_quality_refuses_ik_before_running_anything(glm):
    from mtpgraft.errors import UsageError
    from mtpgraft.quality import plan_quality

    with pytest.raises(UsageError, match="ik_llama.cpp's llama-perplexity is not supported yet"):
        plan_quality(glm["full"], [glm["base"]], runtime="ik")
