"""mtpgraft check for what people switch on next: --spec-type lists (MTP with an n-gram drafter) and
llama.cpp's per-drafter counters, the edit category, the winner per quant x task with its margin
and the card's per-task flags, p-min for dense models, per-request speculative fields. Offline first,
then the real llama-server on the tiny models (marked `tools`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mtpgraft.check import (
    Cell,
    CheckPlan,
    ModelSpec,
    RequestRecord,
    ServerRun,
    ServerTool,
    SpecCounters,
    judge_model,
)
from mtpgraft.check.counters import DrafterCounters, drafter_delta, drafter_stats
from mtpgraft.check.plan import ServerConfig
from mtpgraft.check.prompts import builtin_prompts, select_prompts
from mtpgraft.check.servertool import offered_spec_types
from mtpgraft.check.tables import task_flags
from mtpgraft.errors import UsageError

# --------------------------------------------------------------------------- offline

# Two requests' lines as llama-server 0c1e570 prints them at --verbosity 4 (cumulative per drafter).
_LOG = """\
0.00.204.802 I spec common_specu: statistics        ngram-mod: #calls(b,g,a) =    1     10      1, #gen drafts =      1, #acc drafts =     1, #gen tokens =     38, #acc tokens =    28, #mean acc len = 29.00
0.00.204.819 I spec common_specu: statistics        draft-mtp: #calls(b,g,a) =    1      9      9, #gen drafts =      9, #acc drafts =     9, #gen tokens =     25, #acc tokens =    25, #mean acc len = 3.78
0.00.238.296 I spec common_specu: statistics        ngram-mod: #calls(b,g,a) =    2     14      2, #gen drafts =      2, #acc drafts =     2, #gen tokens =     90, #acc tokens =    80, #mean acc len = 41.00
0.00.238.312 I spec common_specu: statistics        draft-mtp: #calls(b,g,a) =    2     12     12, #gen drafts =     12, #acc drafts =    12, #gen tokens =     32, #acc tokens =    32
"""


def test_offered_spec_types_reads_mainline_and_ik_help():
    mainline = ("--spec-type none,draft-simple,draft-mtp,ngram-mod,ngram-cache\n"
                "                                        comma-separated list of types (default: none)\n"
                "--spec-ngram-mod-n-min N                minimum number of ngram tokens\n")
    ik = "  --spec-type Name [none | ngram - cache | ngram - mod]\n        type of speculative decoding\n"
    assert offered_spec_types(mainline) == ("draft-simple", "draft-mtp", "ngram-mod", "ngram-cache")
    assert offered_spec_types(ik) == ("ngram-cache", "ngram-mod")
    assert offered_spec_types("-m, --model FNAME\n") == ()


def test_drafter_stats_read_the_last_line_per_drafter_and_subtract():
    n, first = drafter_stats(_LOG.split("0.00.238.296")[0])
    assert n == 1 and first["ngram-mod"] == DrafterCounters("ngram-mod", 1, 38, 28, 1)
    n, latest = drafter_stats(_LOG)
    assert n == 2 and latest["draft-mtp"] == DrafterCounters("draft-mtp", 12, 32, 32, 12)
    delta = {d.type: d for d in drafter_delta(latest, first)}
    assert delta["ngram-mod"] == DrafterCounters("ngram-mod", 1, 52, 52, 1)
    assert delta["draft-mtp"].draft_tokens == 7 and delta["draft-mtp"].acceptance == 1.0


def test_edit_prompts_carry_the_text_they_ask_to_change():
    edit = [p for p in builtin_prompts() if p.category == "edit"]
    assert {p.task for p in edit} == {"rewrite", "typos", "reformat"}
    for p in edit:
        body = p.chat.split("\n\n", 1)[1]  # the instruction, then the text to edit
        assert len(body) > 200 and body in p.text, p.id
    assert "def moving_average(values, window):" in edit[0].chat
    assert json.loads(next(p for p in edit if p.task == "reformat").chat.split("\n\n", 1)[1])


def test_plan_sweeps_spec_type_lists_and_p_min_for_dense_models_only(tmp_path):
    from mtpgraft.check import plan_check, validate_settings
    from mtpgraft.testmodels import build_tiny_model

    dense = build_tiny_model(tmp_path / "dense.gguf", head="aligned", dtype="f16")
    moe = build_tiny_model(tmp_path / "moe.gguf", arch="qwen35moe", head="aligned", dtype="f16")
    server = ServerTool(Path("/x/llama-server"), "draft-mtp", flags=frozenset({"--spec-draft-p-min"}),
                        spec_types=("draft-mtp", "ngram-mod", "ngram-simple"))
    plan = plan_check([dense, moe], server=server, n_max=(3,), dense_p_min=(0, 0.75), mode="raw",
                      spec_types=["draft-mtp", "draft-mtp,ngram-mod"], categories=["edit"], per_category=1)
    d, m = plan.models
    assert (d.dense, m.dense, m.expert_count) == (True, False, 4)
    assert [c.label for c in plan.configs_for(d)] == [
        "baseline", "MTP n=3 p-min=0", "MTP n=3 p-min=0.75", "MTP+ngram-mod n=3 p-min=0",
        "MTP+ngram-mod n=3 p-min=0.75"]
    assert [c.label for c in plan.configs_for(m)] == ["baseline", "MTP n=3", "MTP+ngram-mod n=3"]
    assert plan.n_servers == 5 + 3 and plan.n_requests == 8 * 3  # one prompt, three reps
    assert plan.spec_type_of(plan.configs_for(d)[3]) == "draft-mtp,ngram-mod"
    assert plan.settings_dict()["spec_types"] == ["draft-mtp", "draft-mtp,ngram-mod"]
    with pytest.raises(UsageError, match=r"does not offer --spec-type ngram-map-k \(it offers: draft-mtp, "
                                         r"ngram-mod, ngram-simple\)"):
        plan_check([dense], server=server, spec_types=["draft-mtp,ngram-map-k"])
    with pytest.raises(UsageError, match=r"^spec_types each list must include MTP \(draft-mtp\), got 'ngram-mod'"):
        validate_settings(n_max=(3,), temperatures=(0,), reps=1, per_category=1, n_predict=16, ctx_size=512,
                          min_acceptance=0.3, min_speedup=None, spec_types=["ngram-mod"])


def _cell(cfg: ServerConfig, cat: str, rep: int, tps: float) -> Cell:
    """One category x rep on one server: 16 tokens at `tps`, 10 drafted, 8 accepted when MTP."""
    d, a = (10, 8) if cfg.mtp else (0, 0)
    req = RequestRecord("p", cat, cfg.n_max, 0.0, rep, rep, 20, 10.0, 16, 16000.0 / tps, 0, d, a, "x",
                        cfg.p_min, None, 0, 0.0, cfg.spec_types)
    return Cell(cfg.n_max, 0.0, cat, rep, SpecCounters(d, a, 5 if d else 0, ()), (req,), cfg.p_min,
                spec_types=cfg.spec_types)


def test_the_winner_per_task_names_its_flags_margin_and_noise(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    prompts = select_prompts(builtin_prompts(), ["code", "edit", "creative"], per_category=1)
    server = ServerTool(Path("/x/llama-server"), "draft-mtp", spec_types=("draft-mtp", "ngram-mod"))
    plan = CheckPlan(models=(ModelSpec(model, (model,), "qwen35", 1),), prompts=tuple(prompts),
                     server=server, n_max=(3,), reps=2, n_predict=16, p_min=(0.0, 0.75),
                     spec_lists=(None, "draft-mtp,ngram-mod"))
    base, p0, p75, ng0, ng75 = plan.configs
    # speeds per config and category over two reps (baseline 10 tok/s)
    speeds = {"code": {p0: (14, 14.2), p75: (13, 13.1), ng0: (12, 12.1), ng75: (12, 12)},
              "edit": {p0: (12, 12.2), p75: (11, 11), ng0: (15, 12), ng75: (13.5, 13)},
              "creative": {p0: (9, 9.2), p75: (8, 8), ng0: (7, 7), ng75: (7, 7)}}
    cells = [_cell(base, cat, r, 10.0) for cat in speeds for r in (0, 1)]
    cells += [_cell(cfg, cat, r, v[r]) for cat, by in speeds.items() for cfg, v in by.items() for r in (0, 1)]
    servers = [ServerRun(None)] + [ServerRun(c.n_max, p_min=c.p_min, spec_types=c.spec_types) for c in plan.configs[1:]]
    m = judge_model(plan, plan.models[0], cells, servers).to_dict()["categories"]
    code, edit, creative = m["code"], m["edit"], m["creative"]
    assert task_flags(code) == "--spec-type draft-mtp --spec-draft-n-max 3 --spec-draft-p-min 0"
    assert code["runner_up"] == "MTP n=3 p-min=0.75" and code["margin"] == pytest.approx(1.41 - 1.305)
    assert code["margin_in_noise"] is False  # 0.105 against sd ~0.016
    assert task_flags(edit) == "--spec-type draft-mtp,ngram-mod --spec-draft-n-max 3 --spec-draft-p-min 0"
    assert edit["runner_up"] == "MTP+ngram-mod n=3 p-min=0.75" and edit["margin_in_noise"] is True
    assert (creative["mtp_off"], task_flags(creative), creative["runner_up"]) == (True, "", "MTP n=3 p-min=0")
    assert creative["margin"] == pytest.approx(1.0 - 0.91)


def test_the_card_prints_the_flags_of_each_tasks_winner():
    from mtpgraft.hub.card import render_card
    from mtpgraft.hub.plan import CheckMatch, FileRef, ModelEntry

    cats = {"code": {"best_n": 2, "best_p_min": 0.75, "best_spec_type": "draft-mtp", "speedup": 1.3,
                     "runner_up": "MTP n=3 p-min=0.75", "margin": 0.1, "margin_sd": 0.02, "margin_in_noise": False},
            "edit": {"best_n": 3, "best_p_min": None, "best_spec_type": "draft-mtp,ngram-mod", "speedup": 1.5,
                     "runner_up": "MTP n=3", "margin": 0.2, "margin_sd": None, "margin_in_noise": None},
            "creative": {"best_n": 1, "speedup": 0.9, "mtp_off": True, "runner_up": "MTP n=1", "margin": 0.1}}
    check = CheckMatch(report="r.json", verdict="pass", acceptance=0.8, mtp_active=True, categories=cats,
                       llama_cpp_build="b1-0c1e570", settings={}, mtpgraft_version=None, chart=None)
    entry = ModelEntry(name="M-Q4_K_M.gguf", files=(FileRef("M-Q4_K_M.gguf", 4, "0" * 64),), size=4, quant="Q4_K_M", architecture="qwen35",
                       nextn_predict_layers=1, mtp_head="1 layer", layout="full", metadata={}, check=check)
    card = render_card(repo_id="me/M-GGUF", models=[entry], verified=True)
    section = card.split("## llama-server flags per task", 1)[1].split("\n## ", 1)[0]
    assert ("| code | Q4_K_M | `llama-server -hf me/M-GGUF:Q4_K_M --spec-type draft-mtp --spec-draft-n-max 2 "
            "--spec-draft-p-min 0.75` | +0.10x over MTP n=3 p-min=0.75, outside the noise (sd 0.02) |") in section
    assert ("| edit | Q4_K_M | `llama-server -hf me/M-GGUF:Q4_K_M --spec-type draft-mtp,ngram-mod "
            "--spec-draft-n-max 3` | +0.20x over MTP n=3, noise not measured (1 rep) |") in section
    assert "| creative | Q4_K_M | leave MTP off | +0.10x over MTP n=1" in section


# --------------------------------------------------------------------------- the real llama-server

ONE_THREAD = ("-t", "1")
N_PREDICT = 48


def _repeating_edit_prompt(model: Path, llama_cpp_dir: Path) -> str:
    """An edit prompt whose answer repeats the prompt: the tiny trunk's own continuation of the prose
    prompt, then that prompt again (the trunk continues any text from its last token alone), so an
    n-gram drafter finds the answer in the prompt, token for token (checked with /tokenize)."""
    from tinyserve import serve

    from mtpgraft.testmodels import PROSE_PROMPT

    with serve(model, llama_cpp_dir, ctx_size=1024) as srv:
        res = srv.completion(PROSE_PROMPT, n_predict=2 * N_PREDICT, return_tokens=True)
        prompt = res["content"] + "\n\n" + PROSE_PROMPT
        same = next((i for i, (a, b) in enumerate(zip(res["tokens"], srv.tokenize(prompt), strict=False))
                     if a != b), len(res["tokens"]))
    assert same >= N_PREDICT, same  # the answer's first N_PREDICT tokens are in the prompt as such
    return prompt


@pytest.fixture(scope="module")
def swept(tiny_models, llama_cpp_dir, tmp_path_factory):
    """One check of the aligned and random heads over MTP alone and MTP with ngram-mod, at p-min 0 and
    0.75, on an edit prompt that repeats and the code prompt; warm-up on (so the server is probed)."""
    from mtpgraft.check import execute_check, plan_check, resolve_server
    from mtpgraft.testmodels import CODE_PROMPT

    work = tmp_path_factory.mktemp("drafters")
    prompts = work / "prompts.jsonl"
    edit = _repeating_edit_prompt(tiny_models["full-aligned"], llama_cpp_dir)
    prompts.write_text("".join(json.dumps(x) + "\n" for x in (
        {"id": "edit-repeat", "category": "edit", "prompt": edit},
        {"id": "code", "category": "code", "prompt": CODE_PROMPT})))
    names = ("full-aligned", "full-random")
    plan = plan_check([tiny_models[n] for n in names], n_max=(3,), p_min=(0, 0.75), reps=1,
                      n_predict=N_PREDICT, prompts=prompts, mode="raw", ctx_size=1024,
                      spec_types=["draft-mtp", "draft-mtp,ngram-mod"], server_args=ONE_THREAD,
                      server=resolve_server(llama_cpp_dir))
    result = execute_check(plan, log_dir=work / "logs", hash_files=False)
    return dict(zip(names, result.models, strict=True)), result, work


def _stats(m, label: str, category: str):
    return next(c for c in m.configs if c.config.label == label and c.category == category)


@pytest.mark.tools
def test_an_edit_prompt_that_repeats_gets_ngram_drafts_counted_apart_from_mtps(swept):
    models, _, _ = swept
    m = models["full-aligned"]
    both = {d.type: d for d in _stats(m, "MTP+ngram-mod n=3 p-min=0", "edit").drafters}
    assert set(both) == {"ngram-mod", "draft-mtp"}
    assert both["ngram-mod"].draft_tokens > 0 and both["ngram-mod"].accepted > 0, both
    assert both["draft-mtp"].draft_tokens > 0 and both["draft-mtp"].accepted > 0, both
    # On code nothing repeats: MTP drafts alone; MTP alone never lists an n-gram drafter.
    code = {d.type: d for d in _stats(m, "MTP+ngram-mod n=3 p-min=0", "code").drafters}
    assert code["ngram-mod"].draft_tokens == 0 and code["draft-mtp"].draft_tokens > 0
    assert [d.type for d in _stats(m, "MTP n=3 p-min=0", "edit").drafters] == ["draft-mtp"]


@pytest.mark.tools
def test_the_drafters_add_up_to_llama_servers_totals(swept):
    models, _, _ = swept
    for m in models.values():
        for c in m.configs:
            assert c.drafters, c.config.label
            assert sum(d.draft_tokens for d in c.drafters) == c.counters.draft_tokens, c
            assert sum(d.accepted for d in c.drafters) == c.counters.accepted, c
        for s in m.servers[1:]:  # the whole life of each server, warm-up and probe included
            assert sum(d.draft_tokens for d in s.drafters_final) == s.counters_final.draft_tokens > 0
            assert sum(d.accepted for d in s.drafters_final) == s.counters_final.accepted


@pytest.mark.tools
def test_p_min_075_moves_the_random_heads_drafts_the_way_the_servers_counters_say(swept):
    models, _, _ = swept
    m = models["full-random"]
    low, high = (_stats(m, f"MTP n=3 p-min={p}", "code") for p in ("0", "0.75"))
    # p-min 0.75 stops the random head's unsure drafts: far fewer drafted tokens, none accepted at
    # either setting; what the check reports is llama-server's counters and llama.cpp's own per drafter.
    assert high.counters.draft_tokens * 2 < low.counters.draft_tokens, (high.counters, low.counters)
    for s in (low, high):
        (d,) = s.drafters
        assert (d.draft_tokens, d.accepted) == (s.counters.draft_tokens, s.counters.accepted)
        assert s.acceptance == s.counters.accepted / s.counters.draft_tokens
        assert (s.timings_draft_n, s.timings_draft_n_accepted) == (s.counters.draft_tokens, s.counters.accepted)
    aligned = models["full-aligned"]
    assert all(_stats(aligned, f"MTP n=3 p-min={p}", "code").acceptance == 1.0 for p in ("0", "0.75"))


@pytest.mark.tools
def test_the_pinned_server_ignores_per_request_fields_so_each_configuration_starts_its_own(swept):
    models, result, _ = swept
    ok, evidence = result.per_request
    assert not ok and "ignores per-request speculative fields" in evidence, evidence
    for m in models.values():
        assert [s.measured for s in m.servers] == [(s.config.label,) for s in m.servers]
        assert len(m.servers) == 5 and all(s.error is None for s in m.servers)
        assert all("--verbosity" in s.cmd for s in m.servers[1:])


@pytest.mark.tools
def test_the_report_and_card_flags_are_the_winners_of_the_measured_table(swept):
    from mtpgraft.check.report import write_report
    from mtpgraft.hub.card import render_card
    from mtpgraft.hub.plan import CheckMatch, FileRef, ModelEntry

    models, result, work = swept
    files = write_report(result, work / "report", chart=False)
    d = json.loads(files.json.read_text())
    md = files.markdown.read_text()
    for m in d["models"]:
        check = CheckMatch(report=str(files.json), verdict="pass", acceptance=m["acceptance"], mtp_active=True,
                           categories=m["categories"], llama_cpp_build=d["llama_cpp_build"], settings={},
                           mtpgraft_version=None, chart=None)
        entry = ModelEntry(name="M-Q8_0.gguf", files=(FileRef("M-Q8_0.gguf", 1, "0" * 64),), size=1,
                           quant="Q8_0", architecture="qwen35", nextn_predict_layers=1, mtp_head="1 layer",
                           layout="full", metadata={}, check=check)
        card = render_card(repo_id="me/M-GGUF", models=[entry], verified=True)
        for cat in ("edit", "code"):
            # the winner, read off the measured table: the fastest run, or MTP off below 1.00x
            runs = [r for r in m["runs"] if r["category"] == cat]
            top = max(runs, key=lambda r: r["speedup"]["mean"])
            flags = (f"--spec-type {top['spec_types'] or 'draft-mtp'} --spec-draft-n-max {top['n_max']} "
                     f"--spec-draft-p-min {top['p_min']:g}")
            off = top["speedup"]["mean"] < 1.0
            want = "leave MTP off" if off else f"`llama-server -hf me/M-GGUF:Q8_0 {flags}`"
            assert f"| {cat} | Q8_0 | {want} |" in card, (cat, card)
            assert f"| {cat} | {m['name']} | {'leave MTP off' if off else f'`{flags}`'} |" in md, (cat, md)
    # the category's recorded winner is the measured table's: its fastest MTP run, and MTP off when that
    # run is below 1.00x (which configuration wins is not asserted: a tiny model's speed on 2 shared
    # cores is noise; the drafters' counters are asserted in the tests above)
    m0 = d["models"][0]
    edit = m0["categories"]["edit"]
    top = max((r for r in m0["runs"] if r["category"] == "edit"), key=lambda r: r["speedup"]["mean"])
    assert edit["mtp_off"] == (top["speedup"]["mean"] < 1.0), edit
    assert edit["best_spec_type"] == (top["spec_types"] or "draft-mtp"), edit


@pytest.mark.tools
def test_ik_llama_cpps_server_takes_per_request_fields(tmp_path, monkeypatch):
    """The same probe on ik_llama.cpp 0.1.5's llama-server (MTP with -mtp; its request schema reads
    speculative.n_max), where the toolchain built it."""
    from mtpgraft.check.probe import probe_per_request
    from mtpgraft.check.server import LlamaServer
    from mtpgraft.pins import cache_dir
    from mtpgraft.testmodels import CODE_PROMPT, build_tiny_model

    found = sorted((cache_dir() / "toolchain").glob("ik_llama.cpp-*/build/bin/llama-server"))
    if not found:
        pytest.skip("ik_llama.cpp's llama-server is not built here (the ik runtime's toolchain)")
    monkeypatch.chdir(tmp_path)  # ik's server also writes llama.log into its working directory
    model = build_tiny_model(tmp_path / "glm.gguf", arch="glm4moe", head="aligned", dtype="f16")
    srv = LlamaServer(model, llama_cpp=found[-1].parent, threads=1, ctx_size=1024, startup_timeout=60,
                      extra_args=["-mtp", "--draft-max", "3", "--draft-p-min", "0"])
    srv.cmd.remove("--no-webui")  # mainline's option; ik's server has no web UI switch
    with srv:
        ok, evidence = probe_per_request(srv, lambda f: srv.completion(CODE_PROMPT, n_predict=16, **f))
    assert ok, evidence
    assert re.fullmatch(r"one request drafted \d+ tokens plain and 0 with speculative.n_max=0: the server "
                        r"applies per-request speculative fields", evidence)


def _ik_factory(ik_dir: Path):
    """LlamaServer for ik_llama.cpp's llama-server: its MTP switch (-mtp, --draft-max) instead of
    mainline's --spec-type draft-mtp / --spec-draft-n-max, and without mainline-only options."""
    from mtpgraft.check.server import LlamaServer

    def factory(*, spec_type=None, draft_n_max=None, extra_args=(), **kw):
        extra = [a for a in extra_args if a not in ("--cache-ram", "0")]
        if spec_type is not None:
            extra += ["-mtp", "--draft-max", str(draft_n_max), "--draft-p-min", "0"]
        srv = LlamaServer(llama_cpp=ik_dir, extra_args=extra, **{k: v for k, v in kw.items() if k != "llama_cpp"})
        srv.cmd.remove("--no-webui")
        return srv
    return factory


@pytest.mark.tools
def test_a_server_that_takes_per_request_fields_runs_every_n_on_one_start(tmp_path, monkeypatch):
    """On ik_llama.cpp 0.1.5 (where the toolchain built it) the check starts one MTP server for n=1 and
    n=3 and sends speculative.n_max per request; ik's own log says what each request drafted."""
    from mtpgraft.check import execute_check, plan_check
    from mtpgraft.pins import cache_dir
    from mtpgraft.testmodels import build_tiny_model

    found = sorted((cache_dir() / "toolchain").glob("ik_llama.cpp-*/build/bin/llama-server"))
    if not found:
        pytest.skip("ik_llama.cpp's llama-server is not built here (the ik runtime's toolchain)")
    monkeypatch.chdir(tmp_path)  # ik's server also writes llama.log into its working directory
    model = build_tiny_model(tmp_path / "glm.gguf", arch="glm4moe", head="aligned", dtype="f16")
    server = ServerTool(found[-1], "mtp")
    plan = plan_check([model], server=server, n_max=(1, 3), reps=1, n_predict=32, mode="raw",
                      categories=["code"], per_category=1, ctx_size=1024, server_args=ONE_THREAD)
    result = execute_check(plan, log_dir=tmp_path / "logs", hash_files=False,
                       server_factory=_ik_factory(found[-1].parent))
    assert result.per_request is not None and result.per_request[0], result.per_request
    (m,) = result.models
    assert [(s.config.label, s.measured) for s in m.servers] == [
        ("baseline", ("baseline",)), ("MTP n=3", ("MTP n=3", "MTP n=1"))]
    log = (tmp_path / "logs" / f"{model.stem}.mtp-n3.log").read_text()
    generated = [int(g) for g in re.findall(r"draft acceptance rate = [\d.]+ \(\s*\d+ accepted /\s*(\d+) generated", log)]
    # warm-up, the plain probe (the n_max=0 probe drafts nothing, so no line), then n=3, then n=1
    n3, n1 = generated[-2:]
    assert len(generated) == 4 and n3 > n1 > 0, generated


def test_cli_refuses_a_spec_type_list_without_mtp_before_looking_for_llama_server(tmp_path):
    from click.testing import CliRunner

    import mtpgraft.commands.check  # noqa: F401  (registers `check` on the group)
    from mtpgraft.cli import cli

    res = CliRunner().invoke(cli, ["check", str(tmp_path / "m.gguf"), "--spec-type", "ngram-mod",
                                   "--llama-cpp", str(tmp_path / "no-tools")])
    assert res.exit_code == UsageError.exit_code, res.output
    assert res.stderr == ("mtpgraft: error: --spec-type each list must include MTP (draft-mtp), got "
                          "'ngram-mod': the check compares MTP alone and MTP with other drafters against no MTP\n")
