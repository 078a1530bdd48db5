"""Which head drafts each draft position (mtpgraft.check.positions), and the draft depth llama-server
really runs: the mapping per architecture row offline, then `mtpgraft check` on the real llama-server
with heads of known rates, so each position's acceptance is known in advance and its attribution to a
block is proven (a random head drafts ~nothing, an aligned one ~everything)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from mtpgraft.arch import ARCH_RULES
from mtpgraft.check import CheckResult, judge_model
from mtpgraft.check.counters import SpecCounters
from mtpgraft.check.plan import CheckPlan, ModelSpec
from mtpgraft.check.positions import CHAIN, SHARED, SINGLE, DraftHeads, draft_heads
from mtpgraft.check.prompts import builtin_prompts, select_prompts
from mtpgraft.check.records import Cell, RequestRecord, ServerRun
from mtpgraft.check.report import format_table, render_markdown
from mtpgraft.check.servertool import ServerTool
from mtpgraft.check.tables import acceptance_table, positions_table
from mtpgraft.gguf_io import MAX_LAYERS
from mtpgraft.hub.markdown import md
from mtpgraft.runtimes import IK
from mtpgraft.testmodels import family
from mtpgraft.testmodels.families import SPECS

# Read off llama.cpp 0c1e570 per row (see check/positions.py): chain = graph_mtp runs block
# n_layer() + nextn_layer_offset and takes several heads; single = one head (graph_mtp asserts
# n_layer_nextn == 1, or runs il = n_layer()); shared = a drafter whose layers all run each step;
# None = no head in the file (gemma4 drafts with its assistant) or no MTP graph at all.
MODE = {
    "qwen35": SINGLE, "qwen35moe": SINGLE, "qwen3next": SINGLE, "glm4moe": SINGLE, "deepseek2": SINGLE,
    "deepseek32": SINGLE, "deepseek4": SINGLE, "glm-dsa": SINGLE, "mimo2": CHAIN, "step35": CHAIN,
    "hy_v3": CHAIN, "cohere2moe": SINGLE, "bailingmoe3": SINGLE, "nemotron_h_moe": SINGLE,
    "gemma4": None, "gemma4-assistant": SHARED, "glm5-next": None, "glm4": None, "exaone4": None,
    "exaone-moe": None,
}
# (block_count, nextn_predict_layers) of a file of each mode: a trunk of 4 and its heads.
FILE = {CHAIN: (7, 3), SINGLE: (5, 1), SHARED: (4, 4), None: (5, 1)}


def test_every_architecture_row_has_its_mapping():
    assert set(MODE) == set(ARCH_RULES)


@pytest.mark.parametrize("arch", sorted(MODE))
def test_position_to_head_per_architecture_row(arch):
    mode = MODE[arch]
    blocks, nextn = FILE[mode] if arch != "gemma4" else (4, 0)
    h = draft_heads(arch, blocks, nextn)
    if mode is None:
        assert h is None
        return
    assert h is not None and h.mode == mode
    at = {n: [h.blocks_at(p, n) for p in range(5)] for n in (1, 3, 4)}
    if mode == CHAIN:  # head k drafts position k; n-max is clamped to the 3 heads
        assert at[4] == at[3] == [(4,), (5,), (6,), (), ()] and at[1] == [(4,), (), (), (), ()]
        assert [h.n_effective(n) for n in (1, 3, 4, 9)] == [1, 3, 3, 3]
        assert h.clamp_note(4) == "n=4 drafts 3 positions: llama-server clamps the draft depth to the 3 chained heads"
        assert h.clamp_note(3) == ""
    elif mode == SINGLE:  # the one head, run again for every position, at any depth
        assert at[4] == [(4,), (4,), (4,), (4,), ()] and at[1] == [(4,), (), (), (), ()]
        assert h.n_effective(9) == 9 and h.clamp_note(9) == ""
    else:  # the assistant's four layers draft every position together, at any depth
        assert at[4] == [(0, 1, 2, 3)] * 4 + [()] and h.n_effective(9) == 9


def test_several_heads_where_the_graph_takes_one_have_no_mapping():
    # glm4-moe.cpp: GGML_ASSERT(hparams.n_layer_nextn == 1): llama-server would abort, nothing drafts.
    assert draft_heads("glm4moe", 7, 3) is None
    assert draft_heads("step35", 7, 0) is None and draft_heads("step35", 2, 3) is None
    # A chain family with one head runs it for every position (chain_heads needs n_mtp_layers > 1).
    assert draft_heads("hy_v3", 5, 1) == DraftHeads(SINGLE, (4,), "")
    # An architecture the table does not know follows the driver: several heads chain.
    assert draft_heads("future", 6, 2) == DraftHeads(CHAIN, (4, 5), "")


def test_a_header_past_llama_cpps_layers_has_no_heads():
    # the header's values are not trusted: llama.cpp loads at most MAX_LAYERS blocks, and a header
    # claiming 10**12 must not build a range of that size
    assert draft_heads("future", MAX_LAYERS, 2) == DraftHeads(CHAIN, (MAX_LAYERS - 2, MAX_LAYERS - 1), "")
    assert draft_heads("future", MAX_LAYERS + 1, 2) is None
    assert draft_heads("future", 10**12, 10**11) is None


def test_the_tables_render_every_report_value_through_the_given_text():
    # a card passes hub.markdown.md: a value from report.json opens no table cell, line or markup
    run = {"n_max": "2 | x\n# pwn", "p_min": None, "acceptance_reps": {"mean": 0.5, "std": None},
           "positions": [{"position": 0, "head_blocks": [3], "acceptance": 0.5},
                         {"position": 1, "head_blocks": [4], "acceptance": 0.25}]}
    rows = [{"quant": "Q8_0", "by_config": [run]}]
    for table in (positions_table(rows, md), acceptance_table(rows, md)):
        assert "n=2 \\| x # pwn" in table and "\n#" not in table
    assert positions_table(rows, md).splitlines()[-1] == "| Q8_0 | n=2 \\| x # pwn | 0.50 (blk.3) | 0.25 (blk.4) |"


def test_ik_llama_cpp_runs_the_last_block_for_every_position():
    h = draft_heads("glm4moe", 5, 1, runtime=IK)
    assert h == DraftHeads(SINGLE, (4,), "") and h.blocks_at(2, 3) == (4,)
    assert draft_heads("step35", 7, 3, runtime=IK) == DraftHeads(SINGLE, (6,), "")


# --------------------------------------------------------------------- judge and report, offline


def _judged(tmp_path: Path, spec: ModelSpec, per_pos: tuple[int, ...], n: int):
    """One code prompt at draft depth n: 10 verification steps, per_pos[i] accepted up to position i."""
    model = tmp_path / spec.path.name
    model.write_bytes(b"GGUF")
    prompts = tuple(select_prompts(builtin_prompts(), ["code"], per_category=1))
    plan = CheckPlan(models=(spec,), prompts=prompts, server=ServerTool(Path("/bin/llama-server"), "draft-mtp"),
                     n_max=(n,), reps=1, n_predict=16)
    pid = prompts[0].id
    cells = [Cell(None, 0.0, "code", 0, SpecCounters(), (RequestRecord(pid, "code", None, 0.0, 0, 0, 20, 10.0, 16,
                                                                       100.0, 0, 0, 0, "x"),)),
             Cell(n, 0.0, "code", 0, SpecCounters(10 * len(per_pos), sum(per_pos), 10, per_pos),
                  (RequestRecord(pid, "code", n, 0.0, 0, 0, 20, 10.0, 16, 50.0, 0, 10 * len(per_pos),
                                 sum(per_pos), "x"),))]
    m = judge_model(plan, spec, cells, [ServerRun(None), ServerRun(n, speculative_types="none,draft-mtp")])
    return m, plan


def _result(plan: CheckPlan, m) -> CheckResult:
    return CheckResult(plan=plan, models=(m,), verdict="pass", reasons=(), warnings=(), counters=m.counters,
                       llama_cpp_build="b0", wall_s=1.0, server_start_s=0.1, server_stop_s=0.1, generation_s=0.5)


def test_chained_heads_in_the_json_the_terminal_and_the_report(tmp_path):
    spec = ModelSpec(tmp_path / "s.gguf", (tmp_path / "s.gguf",), "step35", 3, block_count=7)
    m, plan = _judged(tmp_path, spec, (10, 9, 1), 4)
    run = m.to_dict()["runs"][0]
    assert run["n_max"] == 4 and run["n_max_effective"] == 3
    assert run["positions"] == [{"position": 0, "head_blocks": [4], "acceptance": 1.0},
                                {"position": 1, "head_blocks": [5], "acceptance": 0.9},
                                {"position": 2, "head_blocks": [6], "acceptance": 0.1}]
    assert m.to_dict()["draft_heads"] == {"mode": "chain", "head_blocks": [4, 5, 6], "source": ""}
    note = "n=4 drafts 3 positions: llama-server clamps the draft depth to the 3 chained heads"
    assert m.to_dict()["notes"] == [note]
    result = _result(plan, m)
    lines = format_table(result).splitlines()
    assert lines[1:3] == ["  draft heads: chained, one head per position: position 0 blk.4, position 1 "
                          "blk.5, position 2 blk.6", f"  note: {note}"]
    md = render_markdown(result)
    assert "| 1.00 (blk.4) / 0.90 (blk.5) / 0.10 (blk.6) |" in md and f"- Note: {note}" in md


def test_one_in_file_head_leaves_the_terminal_table_as_it_was(tmp_path):
    spec = ModelSpec(tmp_path / "q.gguf", (tmp_path / "q.gguf",), "qwen35", 1, block_count=5)
    m, plan = _judged(tmp_path, spec, (9, 7, 5), 3)
    assert [p["head_blocks"] for p in m.to_dict()["runs"][0]["positions"]] == [[4], [4], [4]]
    from dataclasses import replace

    def table(model):
        return format_table(_result(plan, model))

    unknown = replace(m, heads=None, configs=tuple(replace(c, heads=None) for c in m.configs))
    assert table(m) == table(unknown) and "0.90 0.70 0.50" in table(m)
    assert render_markdown(_result(plan, m)) == render_markdown(_result(plan, unknown))


# --------------------------------------------------------------------------- the real llama-server


def _check(*args) -> tuple[str, dict]:
    """`mtpgraft check` (one prompt, one rep, one thread); its stdout (the terminal table, or --json's
    output) and report.json."""
    import mtpgraft.commands  # noqa: F401 - registers the commands
    from mtpgraft.cli import cli

    report = Path(args[-1])
    res = CliRunner().invoke(cli, ["check", *map(str, args[:-1]), "--reps", "1", "--per-category", "1",
                                   "--categories", "code", "--n-predict", "48", "--ctx", "512",
                                   "--min-acceptance", "0", "--server-arg=-t 1", "--report", str(report)])
    assert res.exit_code == 0, res.output
    return res.stdout, json.loads((report / "report.json").read_text())


def _rates(run: dict) -> list[float]:
    return [p["acceptance"] for p in run["positions"]]


def _card(report: dict) -> str:
    """The model card of report.json's models, each published as quant Q<i>."""
    from mtpgraft.hub.card import render_card
    from mtpgraft.hub.types import CheckMatch, FileRef, ModelEntry

    entries = [ModelEntry(name=f"M-Q{i}.gguf", files=(FileRef(f"M-Q{i}.gguf", 1, "0" * 64),), size=1, quant=f"Q{i}",
                          architecture=m["arch"], nextn_predict_layers=m["nextn_predict_layers"], mtp_head="-",
                          layout="full", metadata={},
                          check=CheckMatch(report="report.json", verdict="pass", acceptance=m["acceptance"],
                                           mtp_active=True, categories=m["categories"], llama_cpp_build="b0",
                                           settings={}, mtpgraft_version=None, chart=None,
                                           by_config=tuple(m["by_config"])))
               for i, m in enumerate(report["models"])]
    return render_card(repo_id="me/M-GGUF", models=entries, verified=True)


@pytest.mark.tools
@pytest.mark.parametrize("arch", ["step35", "mimo2"])
def test_each_chained_head_drafts_its_own_position(arch, llama_cpp_dir, tmp_path):
    """Three chained heads (blk.4, 5, 6) of known rates: aligned, aligned, random accepts positions 0
    and 1 and never 2; aligned, random, aligned never gets past position 1. At n-max 4 llama-server
    drafts (and counts) three positions: the clamp is the server's, and check says so as a note.
    (mimo2 selects its head through the same nextn layer offset as step35.)"""
    files = {kinds: family.build(SPECS[arch], tmp_path / f"{'-'.join(kinds)}.gguf", head=kinds, dtype="f16")
             for kinds in (("aligned", "aligned", "random"), ("aligned", "random", "aligned"))}
    out, d = _check(*files.values(), "--n-max", "3,4", "--p-min", "0", "--llama-cpp", llama_cpp_dir,
                    tmp_path / "report")
    aar, ara = d["models"]
    note = "n=4 drafts 3 positions: llama-server clamps the draft depth to the 3 chained heads"
    for m in (aar, ara):
        assert m["draft_heads"] == {"mode": "chain", "head_blocks": [4, 5, 6], "source": ""}
        assert m["notes"] == [note]
        assert [r["n_max"] for r in m["runs"]] == [3, 4]
        for r in m["runs"]:
            assert r["n_max_effective"] == 3 and len(r["counters"]["accepted_per_pos"]) == 3, r
            assert [p["head_blocks"] for p in r["positions"]] == [[4], [5], [6]]
    for r in aar["runs"]:
        assert _rates(r)[0] >= 0.9 and _rates(r)[1] >= 0.9 and _rates(r)[2] <= 0.05, r
    for r in ara["runs"]:
        assert _rates(r)[0] >= 0.9 and _rates(r)[1] <= 0.05 and _rates(r)[2] <= 0.05, r
    heads = "  draft heads: chained, one head per position: position 0 blk.4, position 1 blk.5, position 2 blk.6"
    assert out.count(heads) == 2 and out.count(f"  note: {note}") == 2
    assert "(blk.4) / " in (tmp_path / "report" / "report.md").read_text()
    # The card: per quant and n, each position's rate (the report's) beside the block that drafts it.
    card = _card(d)
    assert "Draft acceptance per position" in card
    for i, m in enumerate((aar, ara)):
        for r in m["by_config"]:
            a = [f"{x:.2f}" for x in _rates(r)]
            n = "n=3 p-min 0" if r["n_max"] == 3 else "n=4 p-min 0 (drafts 3)"
            assert f"| Q{i} | {n} | {a[0]} (blk.4) | {a[1]} (blk.5) | {a[2]} (blk.6) |" in card, card


@pytest.mark.tools
def test_a_sidecars_chained_heads_draft_as_the_in_file_ones(llama_cpp_dir, tmp_path):
    """The -md case: the heads are the MTP-only file's blocks, named with the file."""
    spec = SPECS["step35"]
    base = family.build(spec, tmp_path / "base.gguf", layout="base", dtype="f16")
    side = family.build(spec, tmp_path / "mtp-s.gguf", layout="mtp-only", head=("aligned", "aligned", "random"),
                        dtype="f16")
    _, d = _check(base, "--draft", side, "--n-max", "3", "--llama-cpp", llama_cpp_dir, tmp_path / "report")
    (m,) = d["models"]
    assert m["draft_heads"] == {"mode": "chain", "head_blocks": [4, 5, 6], "source": "mtp-s.gguf"}
    (r,) = m["runs"]
    assert [p["head_blocks"] for p in r["positions"]] == [[4], [5], [6]]
    assert _rates(r)[1] >= 0.9 and _rates(r)[2] <= 0.05, r


@pytest.mark.tools
def test_one_head_drafts_every_position(tiny_glm_models, llama_cpp_dir, tmp_path):
    """glm4moe's one head (blk.4) drafts all three positions, run again for each; no note, and the
    card has no per-position table (the terminal's and report.md's sameness: offline above)."""
    out, d = _check(tiny_glm_models["full-aligned"], "--n-max", "3", "--json", "--llama-cpp", llama_cpp_dir,
                    tmp_path / "report")
    assert json.loads(out)["models"] == d["models"]  # --json prints what report.json holds
    (m,) = d["models"]
    assert m["draft_heads"] == {"mode": "single", "head_blocks": [4], "source": ""} and m["notes"] == []
    (r,) = m["runs"]
    assert r["n_max_effective"] == 3 and [p["head_blocks"] for p in r["positions"]] == [[4], [4], [4]]
    assert min(_rates(r)) >= 0.9, r
    assert "Draft acceptance per position" not in _card(d)  # one head: the acceptance table says all


@pytest.mark.tools
def test_an_assistant_drafts_every_position_with_all_its_layers(tiny_gemma_models, llama_cpp_dir, tmp_path):
    """gemma4's assistant shares the target's KV cache: its four layers run together for each
    position, and n-max 5 is not clamped to them (llama-server counts five positions)."""
    out, d = _check(tiny_gemma_models["base"], "--draft", tiny_gemma_models["assistant-aligned"], "--n-max", "5",
                    "--p-min", "0", "--mode", "raw", "--llama-cpp", llama_cpp_dir, tmp_path / "report")
    (m,) = d["models"]
    name = tiny_gemma_models["assistant-aligned"].name
    assert m["draft_heads"] == {"mode": "shared", "head_blocks": [0, 1, 2, 3], "source": name}
    (r,) = m["runs"]
    assert r["n_max_effective"] == 5 and len(r["counters"]["accepted_per_pos"]) == 5, r
    assert [p["head_blocks"] for p in r["positions"]] == [[0, 1, 2, 3]] * 5
    assert f"  draft heads: blk.0-3 of {name} draft every position together" in out
