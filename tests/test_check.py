"""mtpgraft check: the prompt suite, the verdict logic and reports (offline), then the real
llama-server on the tiny test models (marked `tools`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mtpgraft.check import (
    M_ACCEPTED,
    M_DRAFT,
    M_DRAFTS,
    M_PER_POS,
    Cell,
    CheckPlan,
    CheckResult,
    ModelSpec,
    RequestRecord,
    ServerRun,
    ServerTool,
    SpecCounters,
    judge_model,
    speed_status,
)
from mtpgraft.check.prompts import CATEGORIES, builtin_prompts, load_prompts, select_prompts
from mtpgraft.check.report import format_table, render_markdown, write_report
from mtpgraft.errors import UsageError

# --------------------------------------------------------------------------- prompt suite


def test_builtin_suite_covers_every_category_and_task():
    prompts = builtin_prompts()
    by_cat = {c: [p for p in prompts if p.category == c] for c in CATEGORIES}
    assert all(len(v) >= 3 for v in by_cat.values()), {k: len(v) for k, v in by_cat.items()}
    tasks = {(p.category, p.task) for p in prompts}
    for want in [("code", "write"), ("code", "debug"), ("code", "refactor"), ("code", "review"),
                 ("factual", "definition"), ("factual", "translation"), ("factual", "math"),
                 ("analysis", "trade-offs"), ("analysis", "comparison"),
                 ("creative", "story"), ("creative", "poetry"), ("creative", "role-play")]:
        assert want in tasks
    assert len({p.id for p in prompts}) == len(prompts)


def test_builtin_code_prompts_end_in_a_non_letter_and_creative_ones_in_a_letter():
    # The mixed tiny head accepts everything after a non-letter and little after a letter; real
    # models also see code prompts stop where code begins, stories stop mid-sentence.
    for p in builtin_prompts():
        last = p.text[-1]
        is_letter = last.isascii() and last.isalpha()
        if p.category == "code":
            assert not is_letter, p.id
        if p.category == "creative":
            assert is_letter, p.id


def test_load_prompts_reads_jsonl_and_names_the_bad_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"category": "code", "prompt": "def f():\\n"}\n\n'
                 '{"category": "chat", "text": "Hello", "id": "hi"}\n')
    got = load_prompts(f)
    assert [(p.id, p.category, p.text) for p in got] == [
        ("code-1", "code", "def f():\n"), ("hi", "chat", "Hello")]
    f.write_text('{"category": "code", "prompt": "x"}\n{"prompt": "y"}\n')
    with pytest.raises(UsageError, match=r"p.jsonl:2: missing a \"category\""):
        load_prompts(f)
    f.write_text("{not json\n")
    with pytest.raises(UsageError, match=r"p.jsonl:1: not valid JSON"):
        load_prompts(f)


def test_prompt_files_are_size_checked_and_decoded_with_a_clear_error(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_bytes(b'{"category": "code", "prompt": "x"}\n\xff\xfe\x00binary')
    with pytest.raises(UsageError, match=r"^prompt file .*p.jsonl: not UTF-8 text \(line 2, byte 36\); save it as UTF-8$"):
        load_prompts(f)
    with open(f, "wb") as fh:  # sparse: 16 MB + 1 byte of zeros, not written
        fh.truncate((16 << 20) + 1)
    with pytest.raises(UsageError, match=r"p.jsonl is larger than 16 MB, the most mtpgraft reads$"):
        load_prompts(f)
    with pytest.raises(UsageError, match=r"^prompt file /dev/zero is larger than 16 MB"):
        load_prompts("/dev/zero")
    f.write_text('{"category": "code\\nmtpgraft: error: x", "prompt": "x"}\n')
    with pytest.raises(UsageError, match=r"p.jsonl:1: the category must be one line of at most 100 characters"):
        load_prompts(f)
    f.write_text('{"category": "code", "prompt": ' + "[" * 5000 + "]" * 5000 + "}\n")
    with pytest.raises(UsageError, match=r"p.jsonl:1: JSON nested more than 64 deep"):
        load_prompts(f)


def test_select_prompts_keeps_order_limits_and_rejects_unknown():
    prompts = builtin_prompts()
    got = select_prompts(prompts, ["creative", "code"], per_category=2)
    assert [p.category for p in got] == ["creative", "creative", "code", "code"]
    with pytest.raises(UsageError, match="no prompts in category poetry"):
        select_prompts(prompts, ["poetry"])


# --------------------------------------------------------------------------- counters and verdict


def test_spec_counters_parse_prometheus_samples_and_subtract():
    m = {M_DRAFT: 30.0, M_ACCEPTED: 21.0, M_DRAFTS: 10.0,
         M_PER_POS + '{position="0"}': 9.0, M_PER_POS + '{position="2"}': 5.0,
         M_PER_POS + '{position="1"}': 7.0, "llamacpp:prompt_tokens_total": 100.0}
    c = SpecCounters.from_metrics(m)
    assert c == SpecCounters(30, 21, 10, (9, 7, 5))
    assert c.acceptance == 0.7 and c.mean_accept_len == 3.1 and c.per_pos_rate == (0.9, 0.7, 0.5)
    assert c - SpecCounters.from_metrics({}) == c
    assert (c - SpecCounters(10, 1, 5, (1,))) == SpecCounters(20, 20, 5, (8, 7, 5))
    assert SpecCounters().acceptance is None


def test_speed_status_thresholds():
    assert [speed_status(x, 0.0, 2) for x in (None, 0.9, 1.0, 1.09, 1.10, 2.0)] == [
        None, "red", "yellow", "yellow", "green", "green"]


def _plan(tmp_path: Path, **kw) -> CheckPlan:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    prompts = select_prompts(builtin_prompts(), ["code", "creative"], per_category=1)
    base = dict(models=(ModelSpec(model, (model,), "qwen35", 1),), prompts=tuple(prompts),
                server=ServerTool(Path("/bin/llama-server"), "draft-mtp"), n_max=(1, 2),
                reps=2, n_predict=16)
    base.update(kw)
    return CheckPlan(**base)


def _cells(plan: CheckPlan, acc: dict[str, float], tps: dict[tuple[int | None, str], float]):
    """Synthetic cells: every n drafts 10 tokens per prompt, accepting acc[category] of them."""
    cells = []
    for n in (None, *plan.n_max):
        for rep, seed in enumerate(plan.seeds()):
            for cat in plan.categories:
                reqs = []
                counters = SpecCounters()
                for p in (q for q in plan.prompts if q.category == cat):
                    d = 10 if n else 0
                    a = round(d * acc[cat])
                    ms = 1000.0 * 16 / tps[(n, cat)]
                    reqs.append(RequestRecord(p.id, cat, n, 0.0, rep, seed, 20, 10.0, 16, ms, 0,
                                              d, a, "same"))
                    counters = counters + SpecCounters(d, a, d // max(1, n or 1),
                                                       (a,) if n else ())
                cells.append(Cell(n, 0.0, cat, rep, counters, tuple(reqs)))
    return cells


def _servers(plan: CheckPlan, error: str | None = None) -> list[ServerRun]:
    runs = [ServerRun(None)]
    if error:
        return runs + [ServerRun(plan.n_max[0], error=error, log_tail="...\n" + error)]
    return runs + [ServerRun(n, speculative_types="none,draft-mtp") for n in plan.n_max]


def test_verdict_passes_and_picks_best_n(tmp_path):
    plan = _plan(tmp_path)
    tps = {(None, "code"): 10.0, (1, "code"): 15.0, (2, "code"): 18.0,
           (None, "creative"): 10.0, (1, "creative"): 10.5, (2, "creative"): 9.0}
    m = judge_model(plan, plan.models[0], _cells(plan, {"code": 0.9, "creative": 0.5}, tps),
                    _servers(plan))
    assert m.verdict == "pass" and m.reasons == () and m.mtp_active
    assert m.acceptance == pytest.approx(0.7)
    code, creative = m.categories["code"], m.categories["creative"]
    assert (code.best_n, code.acceptance, code.status) == (2, 0.9, "green")
    assert code.speedup == pytest.approx(1.8) and code.baseline_decode_tps == pytest.approx(10.0)
    assert (creative.best_n, creative.status) == (1, "yellow")
    assert creative.speedup == pytest.approx(1.05)


def test_verdict_fails_on_low_acceptance_and_on_speed_only_when_asked(tmp_path):
    tps = {(n, c): 10.0 for n in (None, 1, 2) for c in ("code", "creative")}
    plan = _plan(tmp_path)
    m = judge_model(plan, plan.models[0], _cells(plan, {"code": 0.0, "creative": 0.0}, tps),
                    _servers(plan))
    assert m.verdict == "fail" and m.reasons == ("acceptance 0.00 < 0.30",)
    plan = _plan(tmp_path, min_speedup=1.2)
    m = judge_model(plan, plan.models[0], _cells(plan, {"code": 0.9, "creative": 0.9}, tps),
                    _servers(plan))
    assert m.reasons == ("code speedup 1.00 < 1.20",)


def test_verdict_mtp_not_active_when_the_mtp_server_dies(tmp_path):
    plan = _plan(tmp_path)
    tps = {(n, c): 10.0 for n in (None, 1, 2) for c in ("code", "creative")}
    cells = [c for c in _cells(plan, {"code": 1.0, "creative": 1.0}, tps) if c.n_max is None]
    m = judge_model(plan, plan.models[0], cells, _servers(plan, "failed to create MTP context"))
    assert m.verdict == "fail" and not m.mtp_active
    assert m.reasons == ("MTP not active: failed to create MTP context",)
    assert m.categories["code"].speedup is None
    assert m.categories["code"].baseline_decode_tps == pytest.approx(10.0)


def test_verdict_mtp_not_active_when_nothing_was_drafted(tmp_path):
    plan = _plan(tmp_path)
    tps = {(n, c): 10.0 for n in (None, 1, 2) for c in ("code", "creative")}
    cells = [Cell(c.n_max, c.temperature, c.category, c.rep, SpecCounters(), c.requests)
             for c in _cells(plan, {"code": 0.0, "creative": 0.0}, tps)]
    m = judge_model(plan, plan.models[0], cells, _servers(plan))
    assert m.reasons == ("MTP not active: llama-server drafted no tokens "
                         "(speculative.types = none,draft-mtp)",)


def _result(plan: CheckPlan, models) -> CheckResult:
    reasons = tuple(r for m in models for r in m.reasons)
    counters = SpecCounters()
    for m in models:
        counters = counters + m.counters
    return CheckResult(plan=plan, models=tuple(models), verdict="fail" if reasons else "pass",
                       reasons=reasons, warnings=(), counters=counters, llama_cpp_build="b0-0c1e570",
                       wall_s=2.0, server_start_s=0.5, server_stop_s=0.1, generation_s=1.2)


def test_report_files_follow_the_fixed_schema(tmp_path):
    plan = _plan(tmp_path)
    tps = {(None, "code"): 10.0, (1, "code"): 15.0, (2, "code"): 18.0,
           (None, "creative"): 10.0, (1, "creative"): 9.0, (2, "creative"): 8.0}
    m = judge_model(plan, plan.models[0], _cells(plan, {"code": 0.9, "creative": 0.5}, tps),
                    _servers(plan))
    result = _result(plan, [m])
    files = write_report(result, tmp_path / "rep")
    d = json.loads(files.json.read_text())
    assert {"mtpgraft_version", "verdict", "reasons", "acceptance", "llama_cpp_build", "settings",
            "thresholds", "models", "chart", "categories"} <= set(d)
    assert d["settings"]["n_max"] == [1, 2] and d["settings"]["reps"] == 2
    assert d["thresholds"] == {"min_acceptance": 0.3, "min_speedup": None,
                               "speedup_green": 1.1, "speedup_red": 1.0}
    model = d["models"][0]
    assert model["name"] == "m.gguf" and model["files"][0]["name"] == "m.gguf"
    assert model["files"][0]["size"] == 4 and model["mtp_active"] is True
    assert set(model["categories"]["code"]) >= {"acceptance", "speedup", "decode_tps",
                                                "baseline_decode_tps", "prefill_tps", "best_n"}
    assert d["categories"] == model["categories"]
    assert d["categories"]["code"]["best_n"] == 2 and d["categories"]["code"]["speedup"] == 1.8
    md = files.markdown.read_text()
    assert "| m.gguf | 🟢 +80% (n=2, acc 0.90) | 🔴 -10% (n=1, acc 0.50) |" in md
    assert "1.10x" in md and "< 1.00x" in md
    if files.chart is not None:
        assert files.chart.read_bytes()[:4] == b"\x89PNG" and d["chart"] == "speedup.png"
    else:
        assert d["chart"] is None and "matplotlib" in files.chart_note
    table = format_table(result)
    assert "verdict: PASS" in table and "code" in table
    assert "MTP not active" not in render_markdown(result)


def test_speed_status_says_inconclusive_when_one_sd_covers_no_speedup():
    from mtpgraft.check.judge import inconclusive_reason

    assert speed_status(1.05, 0.10, 3) == "inconclusive"
    assert speed_status(0.95, 0.10, 3) == "inconclusive"
    assert speed_status(1.30, 0.10, 3) == "green" and speed_status(0.80, 0.10, 3) == "red"
    assert speed_status(1.05, 0.01, 3) == "yellow"
    # one rep: no spread over reps; a colour only where its requests' spread separates it from 1.00x
    assert speed_status(1.05, 0.10, 1) == "single" and speed_status(2.10) == "single"
    assert speed_status(1.30, None, 1, 0.10, 4) == "green" and speed_status(0.80, None, 1, 0.10, 4) == "red"
    assert speed_status(1.05, None, 1, 0.10, 4) == "single"
    assert speed_status(1.30, None, 1, 0.0, 1) == "single"  # one request: no noise estimate
    assert inconclusive_reason(1.05, 0.10, 3) == "sd/mean 10% over 3 reps: 1.05x ± 0.10 includes 1.00x"
    assert inconclusive_reason(1.30, 0.10, 3) == ""


def test_plan_presets_cost_modes_and_ctx(tmp_path):
    from mtpgraft.check import plan_check
    from mtpgraft.check.plan import PRESETS

    assert PRESETS["quick"]["n_max"] == (3,) and PRESETS["thorough"]["reps"] == 3
    chat, raw = tmp_path / "chat.gguf", tmp_path / "raw.gguf"
    from mtpgraft.testmodels import build_tiny_model

    build_tiny_model(chat, head="aligned", dtype="f16")
    _strip_template(chat, raw)
    server = ServerTool(Path("/bin/llama-server"), "draft-mtp",
                        flags=frozenset({"--jinja", "--spec-draft-p-min"}))
    plan = plan_check([chat, raw], server=server, n_max=(1, 2), p_min=(0, 0.75), reps=2,
                      per_category=1, categories=["code"], context_depth=(0, 2048), n_predict=16,
                      ctx_size=512)
    assert [plan.mode_for(m) for m in plan.models] == ["chat", "raw"]
    assert [c.label for c in plan.configs] == ["baseline", "MTP n=1 p-min=0", "MTP n=1 p-min=0.75",
                                               "MTP n=2 p-min=0", "MTP n=2 p-min=0.75"]
    assert plan.n_servers == 10 and len(plan.conditions) == 2 and plan.n_requests == 40
    cost = plan.cost()
    assert cost["generate_tokens"] == 40 * 16 and cost["servers"] == 10
    assert cost["prefill_tokens"] >= 20 * 2048
    assert plan.server_ctx >= 2048 + 16 and plan.server_ctx % 256 == 0
    assert plan.estimate_s(1.0, 1000.0, 10.0) == pytest.approx(
        10 + cost["prefill_tokens"] / 1000 + cost["generate_tokens"] / 10)
    with pytest.raises(UsageError, match="raw.gguf runs in raw mode"):
        plan_check([chat, raw], server=server, reasoning=["on", "off"])
    # a context beyond the model's trained one and 32K is refused before any server starts
    assert plan_check([raw], server=server, ctx_size=32768).server_ctx == 32768
    with pytest.raises(UsageError, match=r"^the check needs a context of 1,048,576 tokens \(ctx_size, the deepest "
                       r"context_depth, the longest prompt and n_predict\); raw.gguf was trained for 4,096 tokens and "
                       r"mtpgraft asks for at most 32,768 \(llama-server allocates the KV cache"):
        plan_check([raw], server=server, ctx_size=1 << 20)
    with pytest.raises(UsageError, match="chat mode needs a chat template"):
        plan_check([raw], server=server, mode="chat")
    with pytest.raises(UsageError, match="no --spec-draft-p-min"):
        plan_check([chat], server=ServerTool(Path("/x/llama-server"), "draft-mtp"), p_min=[0.5])
    with pytest.raises(UsageError, match=r"^p_min values must be between 0 and 1"):
        plan_check([chat], server=server, p_min=[1.5])
    with pytest.raises(UsageError, match="^reasoning takes on and off, got maybe"):
        plan_check([chat], server=server, reasoning=["maybe"])


def _strip_template(src: Path, dst: Path) -> None:
    """A copy of a tiny model without tokenizer.chat_template (raw mode by default)."""
    from mtpgraft.testmodels.synthetic import rewrite

    rewrite(src, dst, drop_keys={"tokenizer.chat_template"})


def _req(pid, cat, n, rep, pred, ms, draft, acc, p_min=None):
    return RequestRecord(pid, cat, n, 0.0, rep, rep, 20, 5.0, pred, ms, 0, draft, acc, "x", p_min,
                         None, 0, ms + 7.0)


def test_per_prompt_lines_and_bench_json_add_up(tmp_path):
    from mtpgraft.check.report import bench_dict, format_per_prompt

    plan = _plan(tmp_path, n_max=(3,), reps=1)
    cells = [Cell(None, 0.0, "code", 0, SpecCounters(), (_req("a", "code", None, 0, 16, 100.0, 0, 0),)),
             Cell(3, 0.0, "code", 0, SpecCounters(12, 9, 4),
                  (_req("a", "code", 3, 0, 16, 50.0, 12, 9),)),
             Cell(None, 0.0, "creative", 0, SpecCounters(),
                  (_req("b", "creative", None, 0, 16, 100.0, 0, 0),)),
             Cell(3, 0.0, "creative", 0, SpecCounters(9, 3, 3),
                  (_req("b", "creative", 3, 0, 16, 80.0, 9, 3),))]
    m = judge_model(plan, plan.models[0], cells, [ServerRun(None), ServerRun(3)])
    result = _result(plan, [m])
    lines = format_per_prompt(result).splitlines()
    assert lines[1] == ("m.gguf MTP n=3 T=0 rep=1 a [code]: pred=16 draft=12 acc=9 rate=0.750 "
                        "tok/s=320.0")
    assert len(lines) == 4
    bench = bench_dict(result)
    assert {k: bench[k] for k in ("n_requests", "total_predicted", "total_draft",
                                  "total_draft_accepted", "aggregate_accept_rate")} == {
        "n_requests": 2, "total_predicted": 32, "total_draft": 21, "total_draft_accepted": 12,
        "aggregate_accept_rate": round(12 / 21, 6)}
    assert bench["wall_s_total"] == pytest.approx((57.0 + 87.0) / 1000)
    assert [(r["config"], r["n_requests"]) for r in bench["runs"]] == [("baseline", 2), ("MTP n=3", 2)]
    rows = m.to_dict()["per_prompt"]
    assert [(r["id"], r["drafted"], r["accepted"], r["rate"]) for r in rows if r["n_max"]] == [
        ("a", 12, 9, 0.75), ("b", 9, 3, 0.3333)]


def test_three_quants_give_one_matrix_and_acceptance_table(tmp_path):
    from dataclasses import replace as _replace

    from mtpgraft.check.tables import acceptance_table, speedup_matrix

    plan = _plan(tmp_path)
    tps = {(None, "code"): 10.0, (1, "code"): 15.0, (2, "code"): 18.0,
           (None, "creative"): 10.0, (1, "creative"): 9.0, (2, "creative"): 8.0}
    models = []
    for quant, acc in (("Q8_0", 0.9), ("Q4_K_M", 0.8), ("IQ2_XXS", 0.5)):
        spec = _replace(plan.models[0], file_type=quant)
        models.append(judge_model(plan, spec, _cells(plan, {"code": acc, "creative": 0.5}, tps),
                                  _servers(plan)).to_dict())
    matrix = speedup_matrix(models).splitlines()
    assert matrix[0] == "| quant | code | creative |"
    assert [r.split(" | ")[0] for r in matrix[2:]] == ["| Q8_0", "| Q4_K_M", "| IQ2_XXS"]
    assert "🟢 +80% (n=2, acc 0.90)" in matrix[2] and "🔴 -10% (n=1, acc 0.50)" in matrix[2]
    table = acceptance_table(models).splitlines()
    assert table[0] == "| quant | n=1 | n=2 |"
    assert table[2] == "| Q8_0 | 0.70 | 0.70 |" and table[4] == "| IQ2_XXS | 0.50 | 0.50 |"


# --------------------------------------------------------------------------- the real llama-server

# One thread: on a shared 2-core machine two spinning threads make the tiny models ~10x slower.
ONE_THREAD = ("-t", "1")
_LOG_ACCEPT = re.compile(r"draft acceptance = [\d.]+ \(\s*(\d+) accepted /\s*(\d+) generated\)")


@pytest.fixture(scope="module")
def checked(tiny_models, llama_cpp_dir, tmp_path_factory):
    """One check of four tiny models at n=3: aligned, mixed, random head, and no MTP at all."""
    from mtpgraft.check import execute_check, plan_check, resolve_server

    names = ("full-aligned", "full-mixed", "full-random", "base")
    plan = plan_check([tiny_models[n] for n in names], n_max=(3,), reps=1, n_predict=32,
                      per_category=2, ctx_size=1024, server_args=ONE_THREAD,
                      server=resolve_server(llama_cpp_dir), warmup=False)
    logs = tmp_path_factory.mktemp("check-logs")
    result = execute_check(plan, log_dir=logs, hash_files=False)
    return dict(zip(names, result.models, strict=True)), result, logs


@pytest.mark.tools
def test_aligned_head_passes_with_acceptance_one(checked):
    models, _, _ = checked
    m = models["full-aligned"]
    assert (m.verdict, m.reasons, m.mtp_active) == ("pass", (), True)
    assert m.acceptance == 1.0 and m.counters.draft_tokens > 0
    assert all(s.acceptance == 1.0 and s.best_n == 3 for s in m.categories.values())
    # Lossless at temperature 0 (no mismatch warning), prompt cache never used.
    assert m.warnings == ()
    assert all(r.cache_n == 0 and r.prompt_n > 0 for c in m.cells for r in c.requests)


@pytest.mark.tools
def test_random_head_fails_on_acceptance(checked):
    models, _, _ = checked
    m = models["full-random"]
    assert m.mtp_active and m.acceptance < 0.05
    assert (m.verdict, m.reasons) == ("fail", ("acceptance 0.00 < 0.30",))


@pytest.mark.tools
def test_mixed_head_accepts_less_on_creative_than_on_code(checked):
    models, _, _ = checked
    m = models["full-mixed"]
    code, creative = m.categories["code"].acceptance, m.categories["creative"].acceptance
    assert code == 1.0 and creative < 0.6, (code, creative)
    assert m.verdict == "pass"


@pytest.mark.tools
def test_model_without_mtp_fails_with_mtp_not_active(checked):
    models, result, _ = checked
    m = models["base"]
    assert m.verdict == "fail" and not m.mtp_active
    assert len(m.reasons) == 1 and m.reasons[0].startswith("MTP not active: ")
    assert "failed to create MTP context" in m.reasons[0]
    assert m.categories["code"].baseline_decode_tps > 0 and m.categories["code"].speedup is None
    # The call's verdict names each failing model.
    assert result.verdict == "fail"
    assert result.reasons == ("tiny-qwen35-full-random-f16.gguf: acceptance 0.00 < 0.30",
                              "tiny-qwen35-base-f16.gguf: " + m.reasons[0])


@pytest.mark.tools
def test_reported_numbers_equal_llama_servers_own_counters(checked):
    models, result, logs = checked
    total = SpecCounters()
    for name in ("full-aligned", "full-mixed", "full-random"):
        m = models[name]
        (run,) = [s for s in m.servers if s.n_max == 3]
        # /metrics read before the server stopped (nothing else ran on it: no warm-up here).
        assert run.counters_final == m.counters
        assert sum((c.counters for c in m.configs), SpecCounters()) == m.counters
        # llama-server's log prints each request's accepted / generated draft tokens.
        log_text = (logs / f"{m.spec.path.stem}.mtp-n3.log").read_text()
        pairs = [(int(a), int(d)) for a, d in _LOG_ACCEPT.findall(log_text)]
        assert sum(a for a, _ in pairs) == m.counters.accepted
        assert sum(d for _, d in pairs) == m.counters.draft_tokens
        for c in m.configs:
            assert (c.timings_draft_n, c.timings_draft_n_accepted) == (
                c.counters.draft_tokens, c.counters.accepted)
            assert c.acceptance == c.counters.accepted / c.counters.draft_tokens
        total = total + m.counters
    assert result.counters == total
    assert result.acceptance == total.accepted / total.draft_tokens


@pytest.mark.tools
def test_cli_passes_a_split_set_with_json_and_report(tiny_models, llama_cpp_dir, tmp_path):
    from click.testing import CliRunner

    from mtpgraft.cli import cli
    from mtpgraft.hashing import sha256_file
    from mtpgraft.tools import find_tool, run_tool

    split = find_tool("llama-gguf-split", llama_cpp_dir)
    run_tool([split, "--split-max-tensors", "20", tiny_models["full-aligned"], tmp_path / "aligned"])
    shards = sorted(tmp_path.glob("aligned-*-of-*.gguf"))
    assert len(shards) > 1
    report = tmp_path / "report"
    res = CliRunner().invoke(cli, [
        "check", str(shards[0]), "--n-max", "2", "--temperature", "0,0.7", "--reps", "2",
        "--per-category", "1", "--categories", "code,creative", "--n-predict", "16",
        "--ctx", "512", "--server-arg", "-t 1", "--llama-cpp", str(llama_cpp_dir), "--json",
        "--report", str(report)])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert (d["verdict"], d["reasons"], d["acceptance"]) == ("pass", [], 1.0)
    assert list(d["categories"]) == ["code", "creative"]
    assert d["categories"]["code"]["acceptance"] == 1.0 and d["categories"]["code"]["best_n"] == 2
    model = d["models"][0]
    assert [f["name"] for f in model["files"]] == [s.name for s in shards]
    assert [f["sha256"] for f in model["files"]] == [sha256_file(s) for s in shards]
    assert {(r["temperature"], r["category"]) for r in model["runs"]} == {
        (0.0, "code"), (0.0, "creative"), (0.7, "code"), (0.7, "creative")}
    assert all(r["acceptance_reps"]["n"] == 2 for r in model["runs"])
    saved = json.loads((report / "report.json").read_text())
    assert saved["verdict"] == "pass" and saved["models"][0]["files"] == model["files"]
    assert "Recommendation matrix" in (report / "report.md").read_text()


@pytest.mark.tools
def test_cli_exits_1_and_says_why(tiny_models, llama_cpp_dir):
    from click.testing import CliRunner

    from mtpgraft.cli import cli

    common = ["--n-max", "1", "--reps", "1", "--per-category", "1", "--n-predict", "16",
              "--ctx", "512", "--server-arg", "-t 1", "--llama-cpp", str(llama_cpp_dir)]
    res = CliRunner().invoke(cli, ["check", str(tiny_models["base"]), *common])
    assert res.exit_code == 1
    assert "verdict: FAIL" in res.stdout and "- MTP not active: " in res.stdout
    # Speed is gated only on request; the sidecar path (-md) measures like an in-file head.
    res = CliRunner().invoke(cli, ["check", str(tiny_models["base"]), "--draft",
                                   str(tiny_models["mtp-only-aligned"]), "--min-speedup", "100",
                                   "--json", *common])
    assert res.exit_code == 1
    d = json.loads(res.stdout)
    assert d["acceptance"] == 1.0 and len(d["reasons"]) == 1
    assert re.fullmatch(r"code speedup \d+\.\d\d < 100\.00", d["reasons"][0])


@pytest.fixture(scope="module")
def chatted(tiny_models, llama_cpp_dir, tmp_path_factory):
    """One check as people run MTP: chat template, thinking on and off, a 512-token context, and a
    p-min sweep; aligned and mixed heads; no warm-up, so /metrics holds only measured requests."""
    from mtpgraft.check import execute_check, plan_check, resolve_server

    names = ("full-aligned", "full-mixed")
    plan = plan_check([tiny_models[n] for n in names], n_max=(3,), p_min=(0, 0.75), reps=1,
                      n_predict=32, per_category=1, categories=["code", "creative"],
                      reasoning=["on", "off"], context_depth=(0, 512), ctx_size=512,
                      server_args=ONE_THREAD, server=resolve_server(llama_cpp_dir), warmup=False)
    logs = tmp_path_factory.mktemp("chat-logs")
    events: list[str] = []
    result = execute_check(plan, log_dir=logs, hash_files=False, events=events.append)
    return dict(zip(names, result.models, strict=True)), result, events


@pytest.mark.tools
def test_chat_mode_aligned_head_accepts_everything_with_thinking_on_and_off(chatted):
    models, result, _ = chatted
    m = models["full-aligned"]
    assert m.mode == "chat" and m.verdict == "pass" and m.warnings == ()
    assert {(s.reasoning, s.depth) for s in m.summaries} == {
        ("on", 0), ("off", 0), ("on", 512), ("off", 512)}
    assert all(s.acceptance == 1.0 for s in m.summaries)
    assert result.to_dict()["settings"]["reasoning_kwargs"] == {
        "on": {"enable_thinking": True}, "off": {"enable_thinking": False}}


@pytest.mark.tools
def test_chat_mode_mixed_head_is_lower_on_creative_than_on_code(chatted):
    models, _, _ = chatted
    m = models["full-mixed"]
    for s in m.summaries:
        if s.category == "code":
            assert s.acceptance == 1.0, s
        else:
            assert s.acceptance < 0.6, s


@pytest.mark.tools
def test_the_template_honours_the_thinking_switch_and_the_requests_carry_it(chatted):
    models, _, _ = chatted
    m = models["full-aligned"]
    assert [(t.reasoning, t.kwargs, t.honoured) for t in m.template] == [
        ("on", {"enable_thinking": True}, True), ("off", {"enable_thinking": False}, True)]
    assert m.template[0].prompt_tail.endswith("<think>\ndocstring.")
    assert m.template[1].prompt_tail.endswith("<think>\n\n</think>\n\ndocstring.")
    # What the server prefilled: thinking off renders the closed think block, so more tokens.
    by = {(r.prompt_id, r.reasoning, r.depth, r.config): r.prompt_n
          for c in m.cells for r in c.requests}
    for (pid, reasoning, depth, cfg), n in by.items():
        if reasoning == "off":
            assert n > by[(pid, "on", depth, cfg)], pid


@pytest.mark.tools
def test_context_depth_row_has_prefill_for_both_servers(chatted):
    models, result, _ = chatted
    for m in models.values():
        assert m.context_tokens == {"code@512": 512, "prose@512": 512}
        deep = [c for c in m.pooled if c.depth == 512]
        assert len(deep) == 2 * 2  # two p-min configs x two thinking settings
        for c in deep:
            assert c.prefill_tps.mean > 0 and c.baseline_prefill_tps.mean > 0
            assert c.prefill_ratio == pytest.approx(c.prefill_tps.mean / c.baseline_prefill_tps.mean)
        shallow = {(r.prompt_id, r.reasoning, r.config): r.prompt_n
                   for c in m.cells if c.depth == 0 for r in c.requests}
        for c in m.cells:
            for r in c.requests:
                if r.depth == 512:
                    assert r.prompt_n >= shallow[(r.prompt_id, r.reasoning, r.config)] + 512
    from mtpgraft.check.report import render_markdown

    md = render_markdown(result)
    assert "## Context depth" in md and "## Thinking on and off" in md
    assert "prose@512 = 512" in md
    for name in ("tiny-qwen35-full-aligned-f16.gguf", "tiny-qwen35-full-mixed-f16.gguf"):
        for thinking in ("on", "off"):
            assert f"| {name} | 512 | T=0 thinking {thinking} | n=3 p-min=0.75 | " in md


@pytest.mark.tools
def test_p_min_sweep_starts_one_server_per_value(chatted):
    models, _, _ = chatted
    for m in models.values():
        assert [s.config.label for s in m.servers] == ["baseline", "MTP n=3 p-min=0",
                                                       "MTP n=3 p-min=0.75"]
        for s in m.servers[1:]:
            i = s.cmd.index("--spec-draft-p-min")
            assert float(s.cmd[i + 1]) == s.p_min and s.error is None
        assert "--jinja" in m.servers[0].cmd


@pytest.mark.tools
def test_per_prompt_rows_add_up_to_llama_servers_metrics(chatted):
    from mtpgraft.check.report import bench_dict

    models, result, events = chatted
    for m in models.values():
        rows = m.to_dict()["per_prompt"]
        for s in m.servers[1:]:
            mine = [r for r in rows if r["config"] == s.config.label]
            assert len(mine) == 2 * 2 * 2  # prompts x thinking x depth
            # Rows come from each response's timings; /metrics was read before the server stopped.
            assert sum(r["drafted"] for r in mine) == s.counters_final.draft_tokens > 0
            assert sum(r["accepted"] for r in mine) == s.counters_final.accepted
    bench = bench_dict(result)
    total = sum((s.counters_final for m in models.values() for s in m.servers), SpecCounters())
    assert (bench["total_draft"], bench["total_draft_accepted"]) == (total.draft_tokens,
                                                                     total.accepted)
    assert bench["n_requests"] == 2 * 2 * 8
    assert len(events) == 1 and events[0].startswith("estimated time: ~")


@pytest.mark.tools
def test_cli_three_quants_one_report_per_prompt_and_bench_json(tiny_models, llama_cpp_dir, tmp_path):
    from click.testing import CliRunner

    import mtpgraft.commands.check  # noqa: F401  (registers `check` on the group)
    from mtpgraft.cli import cli
    from mtpgraft.tools import find_tool, run_tool

    quantize = find_tool("llama-quantize", llama_cpp_dir)
    quants = ("Q8_0", "Q6_K", "Q4_K_M")
    files = []
    for q in quants:
        out = tmp_path / f"tiny-{q}.gguf"
        run_tool([quantize, tiny_models["full-mixed"], out, q])
        files.append(str(out))
    report, bench = tmp_path / "report", tmp_path / "bench.json"
    args = ["check", *files, "--quick", "--categories", "code,creative", "--n-predict", "24",
            "--server-arg", "-t 1", "--llama-cpp", str(llama_cpp_dir), "--report", str(report),
            "--per-prompt", "--bench-json", str(bench)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    # --quick on a dense model: the baseline and MTP n=3 at p-min 0 and 0.75, per quant
    assert "9 llama-server runs, 18 requests, 432 tokens to generate" in res.stderr
    assert "estimated time: ~" in res.stderr
    lines = [x for x in res.stdout.splitlines() if " pred=" in x]
    assert len(lines) == 18
    assert all(re.search(r"pred=24 draft=\d+ acc=\d+ rate=(\d\.\d{3}|-) tok/s=\d+\.\d$", x)
               for x in lines)
    md = (report / "report.md").read_text()
    rows = [x for x in md.splitlines() if x.startswith(tuple(f"| {q} |" for q in quants))]
    assert len(rows) == 6  # three in the matrix, three in the acceptance table
    assert "| quant | n=3 p-min 0 | n=3 p-min 0.75 |" in md and "warm-up: one warm-up request" in md
    d = json.loads((report / "report.json").read_text())
    assert [m["quant"] for m in d["models"]] == list(quants)
    assert d["charts"] == ["speedup.png", "by-n.png"]
    assert (report / "by-n.png").read_bytes()[:4] == b"\x89PNG"
    for m in d["models"]:
        assert m["categories"]["code"]["acceptance"] == 1.0
        assert m["categories"]["creative"]["acceptance"] < 0.6
    b = json.loads(bench.read_text())
    assert b["n_requests"] == 12 and b["total_predicted"] == 12 * 24
    assert b["total_draft"] == sum(m["counters"]["draft_tokens"] for m in d["models"])
    assert b["total_draft_accepted"] == sum(m["counters"]["accepted"] for m in d["models"])
    # The bench file is never overwritten without --force.
    from mtpgraft.errors import OutputExistsError

    res = CliRunner().invoke(cli, args)
    assert res.exit_code == OutputExistsError.exit_code
    assert res.stderr == f"mtpgraft: error: {bench} exists; pass --force to overwrite it\n"


def test_cli_says_a_usage_mistake_before_looking_for_llama_server(tmp_path):
    from click.testing import CliRunner

    import mtpgraft.commands.check  # noqa: F401  (registers `check` on the group)
    from mtpgraft.cli import cli

    missing = tmp_path / "no-tools"
    for args, message in ((["--n-max", "0"], "--n-max values must be >= 1, got [0]"),
                          (["--p-min", "2"], "--p-min values must be between 0 and 1, got [2.0]"),
                          (["--reasoning", "maybe"], "--reasoning takes on and off, got maybe"),
                          (["--context-depth", "-1"], "--context-depth values must be >= 0, got [-1]"),
                          (["--n-predict", "1000000000"], "--n-predict must be <= 32,768, got 1,000,000,000 "
                           "(mtpgraft's bound, checked before a server starts)"),
                          (["--ctx", "1000000000"], "--ctx must be <= 4,194,304, got 1,000,000,000 "
                           "(mtpgraft's bound, checked before a server starts)"),
                          (["--reps", "100000000000000000000"], "--reps must be <= 1,000, got "
                           "100,000,000,000,000,000,000 (mtpgraft's bound, checked before a server starts)")):
        res = CliRunner().invoke(cli, ["check", str(tmp_path / "m.gguf"), *args,
                                       "--llama-cpp", str(missing)])
        assert res.exit_code == UsageError.exit_code, res.output
        assert res.stderr == f"mtpgraft: error: {message}\n"


def test_recipe_check_section_takes_the_new_settings():
    from mtpgraft.errors import RecipeError
    from mtpgraft.recipe import parse_recipe

    text = ('[model]\nname = "M"\nbase = "b.gguf"\n[quantize]\ntypes = ["Q8_0", "Q4_K_M"]\n'
            '[check]\nreasoning = ["on", "off"]\ncontext_depth = [0, 4096]\np_min = [0.0, 0.75]\n'
            'mode = "chat"\n')
    r = parse_recipe(text, path="r.toml", work_dir="/tmp/w")
    assert r.check is not None and (r.check.reasoning, r.check.context_depth, r.check.p_min,
                                    r.check.mode) == (("on", "off"), (0, 4096), (0.0, 0.75), "chat")
    assert r.steps()[-1] == "check"  # one check step over both types
    with pytest.raises(RecipeError, match=r"\[check\] reasoning: takes on and off, got maybe"):
        parse_recipe(text.replace('"on", "off"', '"maybe"'), path="r.toml", work_dir="/tmp/w")
