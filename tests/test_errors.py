"""The error model: one exit code per kind of failure (mtpgraft.errors.EXIT_CODES, the README's
table), one line on stderr for each, and `-v` showing a failed tool's output tail. The runner and
the atomic install on real processes and files."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from mtpgraft.cli import cli
from mtpgraft.errors import EXIT_CODES, OutputExistsError, OutputWriteError, ToolFailedError
from mtpgraft.outputs import PendingOutput, atomic_write, ensure_space, install
from mtpgraft.testmodels.synthetic import make_model
from mtpgraft.tools import live_children, run_tool, spawn, stop_process

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtpgraft", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtpgraft: error: ") and "Traceback" not in err, err
    return lines[0]


def test_readme_table_is_the_code_table():
    text = (ROOT / "README.md").read_text()
    rows = dict(re.findall(r"^\| ([\d, ]+) \| ([A-Za-z ]+) \|", text, re.M))
    assert rows == {"0": "success", "1": "the result is a fail", "2": "usage", "3": "bad input",
                    "4": "output", "5": "tool", "6": "Hub", "70": "internal error"} | {"130, 143, 129": "interrupted"}
    assert EXIT_CODES == {"ok": 0, "failed": 1, "usage": 2, "input": 3, "output": 4, "tool": 5, "hub": 6,
                          "internal": 70,
                          "interrupted (SIGINT)": 130, "interrupted (SIGTERM)": 143,
                          "interrupted (SIGHUP)": 129}


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    return make_model(tmp_path / "base.gguf", layout="base"), make_model(tmp_path / "src.gguf")


def test_usage_error_exits_2(pair, tmp_path):
    base, src = pair
    p = run_cli("attach", base, "--mtp-from", src, "-o", tmp_path / "o.gguf", "--mtp-type", "bogus")
    assert p.returncode == 2
    assert one_line(p.stderr).startswith("mtpgraft: error: --mtp-type 'bogus' is not keep, q8_0, match or a ggml")


@pytest.mark.parametrize("args, says", [
    (("attach",), "Missing argument 'BASE'. (see 'mtpgraft attach --help')"),
    (("attach", "x.gguf", "--bogus"), "No such option '--bogus'. (see 'mtpgraft attach --help')"),
    (("check", "x.gguf", "--mode", "nope"), "Invalid value for '--mode': 'nope' is not one of"),
    (("nosuch",), "No such command 'nosuch'. (see 'mtpgraft --help')"),
])
def test_click_usage_errors_are_one_line_exit_2(args, says):
    p = run_cli(*args)
    assert p.returncode == 2 and p.stdout == ""
    assert one_line(p.stderr).startswith("mtpgraft: error: " + says)


def test_help_and_version_still_exit_0():
    assert run_cli("--version").returncode == 0
    h = run_cli("attach", "--help")
    assert h.returncode == 0 and h.stdout.startswith("Usage: mtpgraft attach")


def test_bad_input_exits_3(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a model\n" * 20)
    p = run_cli("inspect", junk)
    assert p.returncode == 3
    assert one_line(p.stderr) == f"mtpgraft: error: {junk}: not a GGUF file (magic b'not ')"


def test_existing_output_exits_4(pair, tmp_path):
    base, src = pair
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    p = run_cli("attach", base, "--mtp-from", src, "-o", out)
    assert p.returncode == 4
    assert one_line(p.stderr) == f"mtpgraft: error: {out} exists; pass --force to overwrite it"
    assert out.read_bytes() == b"precious"


def test_hub_error_exits_6(pair):
    _, src = pair
    r = CliRunner().invoke(cli, ["push", str(src), "--repo", "o/n", "--no-verify", "--token", "x",
                                 "--endpoint", "http://127.0.0.1:9"])  # nothing listens on port 9
    assert r.exit_code == 6
    assert "127.0.0.1:9" in one_line(r.stderr)


@pytest.mark.tools
def test_tool_failure_exits_5_and_v_shows_its_output_tail(tiny_models, tmp_path):
    cal = ROOT / "mtpgraft" / "data" / "calibration-tiny.txt"
    args = ("imatrix", tiny_models["full-aligned"], "-f", cal, "-o", tmp_path / "x.gguf",
            "--imatrix-arg=--bogus-flag")  # the real llama-imatrix refuses it
    p = run_cli("-q", *args)
    assert p.returncode == 5
    assert one_line(p.stderr) == "mtpgraft: error: llama-imatrix failed: error: invalid argument: --bogus-flag"
    v = run_cli("-q", "-v", *args)
    assert v.returncode == 5
    err = v.stderr.splitlines()
    i = err.index(one_line(p.stderr))  # the same error line, then the command and the tail
    assert err[i + 1].startswith("mtpgraft: the failed command: ") and "--bogus-flag" in err[i + 1]
    assert err[i + 2] == "mtpgraft: the end of its output:"
    tail = err[i + 3:]
    assert tail and all(x.startswith("  | ") for x in tail) and any("invalid argument" in x for x in tail)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.tools
def test_failed_verdict_exits_1(tiny_models):
    p = run_cli("check", tiny_models["base"], "--n-max", "1", "--reps", "1", "--per-category", "1",
                "--n-predict", "16", "--ctx", "512", "--server-arg=-t 1")
    assert p.returncode == 1
    line = [x for x in p.stderr.splitlines() if x.startswith("mtpgraft: error:")]
    assert len(line) == 1 and line[0].startswith("mtpgraft: error: verdict: FAIL (acceptance")
    assert "MTP not active" in line[0]


# ---- the runner -------------------------------------------------------------------------------


def _script(tmp_path: Path, name: str, body: str) -> Path:
    p = tmp_path / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return p


def test_run_tool_streams_lines_and_keeps_no_child(tmp_path):
    seen: list[str] = []
    res = run_tool([_script(tmp_path, "ok", "echo one\necho two >&2\n")], on_line=seen.append)
    assert seen == ["one", "two"] and res.stdout == "one\ntwo\n" and res.returncode == 0
    assert live_children() == []


def test_run_tool_timeout_is_a_tool_failure_with_the_tail(tmp_path):
    slow = _script(tmp_path, "slow", "echo started\nexec sleep 30\n")
    t0 = time.monotonic()
    with pytest.raises(ToolFailedError, match=r"^slow timed out after 0\.5s$") as e:
        run_tool([slow], timeout=0.5)
    assert time.monotonic() - t0 < 10 and "started" in e.value.output_tail and live_children() == []


def test_stop_process_escalates_to_sigkill(tmp_path):
    stubborn = _script(tmp_path, "stubborn", "trap '' TERM\necho ready\nwhile :; do sleep 0.1; done\n")
    p = spawn([stubborn])
    assert p.stdout.readline() == "ready\n"
    assert stop_process(p, timeout=0.5) == -signal.SIGKILL
    p.stdout.close()


def test_children_run_in_place_in_a_session_of_their_own(tmp_path):
    # (The parent-death signal cannot be read from outside; test_signals.py SIGKILLs a parent.)
    p = spawn([_script(tmp_path, "idle", "exec sleep 30\n")])
    try:
        wait = time.monotonic() + 10
        while Path(f"/proc/{p.pid}/comm").read_text().strip() != "sleep" and time.monotonic() < wait:
            time.sleep(0.01)
        assert Path(f"/proc/{p.pid}/comm").read_text().strip() == "sleep"  # the launcher exec'd: same pid
        assert os.getsid(p.pid) == p.pid  # a terminal's Ctrl-C reaches mtpgraft only, which stops it
        assert live_children() == [p.pid]
    finally:
        stop_process(p)
        p.stdout.close()


# ---- the atomic install -----------------------------------------------------------------------


def test_install_never_replaces_without_force(tmp_path):
    target = tmp_path / "out"
    target.write_text("first")
    with PendingOutput(target) as p:
        p.path.write_text("second")
        with pytest.raises(OutputExistsError, match=f"^{re.escape(str(target))} exists; pass force=True"):
            p.install(force=False)
    assert target.read_text() == "first" and sorted(x.name for x in tmp_path.iterdir()) == ["out"]
    with atomic_write(target, force=True) as fh:
        fh.write(b"third")
    assert target.read_text() == "third" and sorted(x.name for x in tmp_path.iterdir()) == ["out"]


def test_install_of_folders_refuses_a_non_empty_target(tmp_path):
    target = tmp_path / "Q8_0"
    (target).mkdir()
    (target / "a.gguf").write_text("theirs")
    with PendingOutput(target, folder=True) as p:
        (p.path / "b.gguf").write_text("ours")
        with pytest.raises(OutputExistsError):
            install(p.path, target, force=False)
        p.install(force=True)
    assert sorted(x.name for x in target.iterdir()) == ["b.gguf"]
    assert sorted(x.name for x in tmp_path.iterdir()) == ["Q8_0"]


def test_free_space_is_checked_before_a_long_write(tmp_path):
    with pytest.raises(OutputWriteError, match=rf"^not enough space for {re.escape(str(tmp_path / 'x'))}: "
                                               r"needs 1,000,000,000,000,000,000 bytes \(.* MB\), [\d,]+ bytes"):
        ensure_space(tmp_path / "x", 10**18)
    assert list(tmp_path.iterdir()) == []


# ---- settings in messages: the library's names, the CLI's flags ------------------------------


def test_a_text_keeps_its_settings_through_joins_pickles_and_plans():
    import copy
    import pickle
    from dataclasses import asdict, dataclass

    from mtpgraft.commands.common import flag
    from mtpgraft.errors import Setting, Text, respelled, spelled

    t = Text("out.gguf exists; pass ", Setting("force", True), " to overwrite it")
    assert t == "out.gguf exists; pass force=True to overwrite it" and isinstance(t, str)
    assert t.spelled(lambda s: flag(s, "quantize")) == "out.gguf exists; pass --force to overwrite it"
    joined = "refusing: " + Text("; ").join([t, Text("or ", Setting("verify", False))])
    assert isinstance(joined, Text) and str(joined).endswith("; or verify=False")
    assert spelled(joined, lambda s: flag(s, "push")).endswith("overwrite it; or --no-verify")
    assert spelled(OutputExistsError(t), lambda s: flag(s, "push")) == "out.gguf exists; pass --force to overwrite it"
    for back in (pickle.loads(pickle.dumps(OutputExistsError(t))).args[0], copy.deepcopy(t)):
        assert isinstance(back, Text) and back.parts == t.parts

    @dataclass(frozen=True)
    class Plan:
        warnings: tuple[str, ...]

    d = asdict(Plan((Text(Setting("repo_id"), " 'x' is not OWNER/NAME"), "plain")))
    assert respelled(d, lambda s: flag(s, "push")) == {"warnings": ["--repo 'x' is not OWNER/NAME", "plain"]}
    assert flag(Setting("mtp_type", "q8_0"), "quantize") == "--mtp-type q8_0"
    assert flag(Setting("ctx_size"), "check") == "--ctx" and flag(Setting("ctx_size"), "quality") == "--ctx-size"


def test_library_messages_name_settings_and_the_cli_names_flags(pair, tmp_path):
    """The same mistake through the library (its parameter names) and through the CLI (its flags)."""
    from mtpgraft.outputs import check_outputs

    base, src = pair
    out = tmp_path / "o.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError) as e:
        check_outputs([out], [base], force=False)
    assert str(e.value) == f"{out} exists; pass force=True to overwrite it" and "--" not in str(e.value)
    r = CliRunner().invoke(cli, ["attach", str(base), "--mtp-from", str(src), "-o", str(out)])
    assert r.exit_code == 4 and r.output.strip() == f"mtpgraft: error: {out} exists; pass --force to overwrite it"


def _raised(call):
    with pytest.raises(Exception) as e:  # noqa: PT011 - each call below raises a typed MtpgraftError
        call()
    from mtpgraft.errors import MtpgraftError

    assert isinstance(e.value, MtpgraftError), repr(e.value)
    return str(e.value)


def _setting_cases(base: Path, tmp_path: Path):
    """(library call, its message, CLI args, the CLI's message) for one mistake per stage."""
    from mtpgraft.check import validate_settings
    from mtpgraft.hub import make_api, plan_push
    from mtpgraft.imatrix import plan_imatrix
    from mtpgraft.quality import plan_quality
    from mtpgraft.quantize import plan_quantize

    cal = tmp_path / "cal.txt"
    cal.write_text("calibration text " * 200)
    imx = tmp_path / "imatrix.gguf"
    check = dict(n_max=[3], temperatures=[0.0], reps=1, per_category=None, n_predict=32,
                 min_acceptance=0.3, min_speedup=None)
    return [
        (lambda: plan_quantize(base, "Q8_0", jobs=0), "jobs must be >= 1, got 0",
         ["quantize", base, "--types", "Q8_0", "-j", "0"], "--jobs must be >= 1, got 0"),
        (lambda: plan_quantize(base, "Q8_0", mtp_type="q9_9"), "mtp_type 'q9_9' is not q8_0, match",
         ["quantize", base, "--types", "Q8_0", "--mtp-type", "q9_9"], "--mtp-type 'q9_9' is not q8_0, match"),
        (lambda: plan_imatrix(base, cal, imx, ctx=0), "ctx must be >= 1, got 0",
         ["imatrix", base, "-f", cal, "-o", imx, "-c", "0"], "--ctx must be >= 1, got 0"),
        (lambda: validate_settings(ctx_size=8, **check), "ctx_size must be >= 256, got 8",
         ["check", base, "--ctx", "8"], "--ctx must be >= 256, got 8"),
        (lambda: plan_quality(base, [base], chunks=0), "chunks must be at least 1",
         ["quality", base, base, "--chunks", "0"], "--chunks must be at least 1"),
        (lambda: plan_push([base], repo_id="nobody", api=make_api(endpoint="http://127.0.0.1:9", token="x")),
         "repo_id 'nobody' is not OWNER/NAME",
         ["push", base, "--repo", "nobody", "--no-verify"], "--repo 'nobody' is not OWNER/NAME"),
        (lambda: plan_push([base], repo_id="o/n", api=make_api(endpoint="http://127.0.0.1:9", token="x"),
                           report_dirs=[tmp_path]),
         f"report_dirs {tmp_path}: no report.json there",
         ["push", base, "--repo", "o/n", "--report", tmp_path], f"--report {tmp_path}: no report.json there"),
    ]


def test_library_messages_name_no_cli_flag_and_each_command_renders_its_flag(pair, tmp_path):
    base, _ = pair
    for call, library, args, shown in _setting_cases(base, tmp_path):
        said = _raised(call)
        # another command to run may be named, in backticks (`mtpgraft check --report DIR`)
        assert said.startswith(library) and not re.search(r"(^|[\s(])--[a-z]", re.sub(r"`[^`]*`", "", said)), said
        r = CliRunner().invoke(cli, [str(a) for a in args])
        assert r.exit_code == 2 and r.output.startswith(f"mtpgraft: error: {shown}"), (args, r.output)
        assert r.output.count("\n") == 1, r.output


def test_tool_and_recipe_messages_name_settings(tmp_path):
    from mtpgraft.commands.common import flag
    from mtpgraft.errors import Setting, ToolNotFoundError, spelled
    from mtpgraft.recipe.pipeline import recipe_setting
    from mtpgraft.tools import find_tool

    with pytest.raises(ToolNotFoundError) as e:
        find_tool("llama-no-such-tool", tmp_path)
    assert f"looked in llama_cpp {tmp_path}, " in str(e.value) and "--llama-cpp" not in str(e.value)
    assert f"looked in --llama-cpp {tmp_path}, " in spelled(e.value, lambda s: flag(s, "quantize"))
    assert "or point --llama-cpp / $MTPGRAFT_LLAMA_CPP at" in spelled(e.value, lambda s: flag(s, "quantize"))
    # a stage's setting inside `mtpgraft run`: the recipe's key, or run's own flag
    assert recipe_setting(Setting("mtp_type", "iq2_xxs")) == 'mtp_type = "iq2_xxs"'
    assert recipe_setting(Setting("force", True)) == "--force" and recipe_setting(Setting("ctx")) == "ctx"


def test_gated_hub_message_names_the_token_setting_and_the_cli_spells_the_flag():
    from mtpgraft.commands.common import cli_text
    from mtpgraft.sources.hubfiles import gated_message

    msg = gated_message("o/r", has_token=False)
    assert "--token" not in str(msg) and "pass token," in str(msg)
    assert "pass --token, set HF_TOKEN" in cli_text(msg)
