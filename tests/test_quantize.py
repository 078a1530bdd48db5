"""`mtpgraft imatrix` / `quantize` on the real llama-imatrix, llama-quantize, llama-gguf-split and
llama-server, with the tiny qwen35 models (mtpgraft.testmodels: "aligned" MTP head, acceptance 1.0)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtpgraft.errors import QuantizeError, ToolFailedError, UsageError
from mtpgraft.gguf_io import GGUFModel
from mtpgraft.graft import execute_graft, plan_attach
from mtpgraft.hashing import sha256_file
from mtpgraft.imatrix import execute_imatrix, plan_imatrix, read_imatrix
from mtpgraft.inspection import inspect_model
from mtpgraft.quantize import (
    NEEDS_IMATRIX,
    REQUANTIZE_WARNING,
    canonical_type,
    check_name,
    default_name,
    execute_quantize,
    parse_size,
    parse_types,
    plan_quantize,
    verify_output,
)
from mtpgraft.testmodels import CODE_PROMPT, build_tiny_model
from mtpgraft.tools import find_tool, run_tool

CALIBRATION = Path(__file__).resolve().parents[1] / "mtpgraft" / "data" / "calibration-tiny.txt"
BATCH = ("Q8_0", "Q4_K_M", "IQ4_XS", "IQ2_XXS")
MTP_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "nextn.eh_proj")


def run_cli(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtpgraft", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def mtp_types(path: Path | str) -> dict[str, str]:
    m = GGUFModel(path)
    return {r.name.split(".", 2)[2].removesuffix(".weight"): r.info.type_name
            for r in m.refs if r.name.startswith("blk.4.") and len(r.info.ne) >= 2}


def acceptance(model: Path | str, n_max: int = 3) -> tuple[int, int]:
    from mtpgraft.check.server import LlamaServer

    with LlamaServer(model, spec_type="mtp", draft_n_max=n_max, ctx_size=1024) as s:
        t = s.completion(CODE_PROMPT, n_predict=48, temperature=0.0)["timings"]
    return int(t.get("draft_n_accepted", 0)), int(t.get("draft_n", 0))


# --------------------------------------------------------------------------- offline units


def test_type_names_and_sizes() -> None:
    assert parse_types("q4_k_m, Q8_0,Q4_K") == ("Q4_K_M", "Q8_0")
    assert canonical_type("q5_k") == "Q5_K_M"
    with pytest.raises(QuantizeError, match="unknown quant type 'Q4_K_X'"):
        parse_types("Q4_K_X")
    with pytest.raises(QuantizeError, match="no quant types"):
        parse_types(" , ")
    assert parse_size("50G") == 50 * 10**9 and parse_size("3M") == 3 * 10**6
    for bad in ("50", "1.5G", "0G", "50GB", "10K"):
        with pytest.raises(QuantizeError, match="not N followed by M or G"):
            parse_size(bad)
    assert {"IQ2_XXS", "IQ1_S", "IQ3_XXS", "Q2_K_S"} <= NEEDS_IMATRIX and "Q2_K" not in NEEDS_IMATRIX


def test_names() -> None:
    assert default_name("/m/Qwen3.6-27B-BF16.gguf") == "Qwen3.6-27B"
    assert default_name("x/Model-F16-00001-of-00003.gguf") == "Model"
    assert default_name("tiny.gguf") == "tiny"
    check_name("Qwen3.6-27B-MTP")  # llama.cpp's "mtp-" test is case-sensitive
    for bad, what in (("model-mtp", "mtp-"), ("my-imatrix", "imatrix"), ("a/b", "plain file name")):
        with pytest.raises(QuantizeError, match=what):
            check_name(bad)


# --------------------------------------------------------------------------- with the real tools


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tinyq")
    full = build_tiny_model(d / "tiny-full-F16.gguf", dtype="f16", layout="full", head="aligned")
    base = build_tiny_model(d / "tiny-base-F16.gguf", dtype="f16", layout="base")
    imx = execute_imatrix(plan_imatrix(full, CALIBRATION, d / "tiny.imatrix.gguf", ctx=128, chunks=8, batch=128))
    return {"dir": d, "full": full, "base": base, "imatrix": Path(imx.info.path)}


@pytest.fixture(scope="module")
def batch(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("quants")
    events: list[tuple[str, str]] = []
    plan = plan_quantize(tiny["full"], ",".join(BATCH), imatrix=tiny["imatrix"], out_dir=out,
                         name="tiny", split_max_size="3M")
    res = execute_quantize(plan, on_event=lambda t, m: events.append((t, m)))
    return {"out": out, "plan": plan, "result": res, "events": events}


@pytest.mark.tools
def test_imatrix_records_calibration(tiny) -> None:
    info = read_imatrix(tiny["imatrix"])
    assert info.datasets == ("calibration-tiny.txt",)  # the name only: no local path recorded
    assert info.dataset_sha256 == sha256_file(CALIBRATION, use_cache=False)
    assert info.chunk_count == 8 and info.chunk_size == 128
    assert info.entries > 0
    g = GGUFModel(tiny["imatrix"])
    assert not [r for r in g.refs if r.name.startswith("blk.4.")]  # llama-imatrix never covers MTP


@pytest.mark.tools
def test_imatrix_cli(tiny, tmp_path: Path) -> None:
    out = tmp_path / "im.gguf"
    p = run_cli("imatrix", tiny["full"], "-f", CALIBRATION, "-o", out, "-c", "128", "--chunks", "4",
                "-b", "128", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["imatrix"]["dataset_sha256"] == sha256_file(CALIBRATION, use_cache=False)
    assert d["imatrix"]["chunk_count"] == 4 and out.is_file()
    again = run_cli("imatrix", tiny["full"], "-f", CALIBRATION, "-o", out)
    assert again.returncode == 4 and "exists; pass --force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    short = tmp_path / "short.txt"
    short.write_text("too short\n")
    bad = run_cli("imatrix", tiny["full"], "-f", short, "-o", tmp_path / "x.gguf", "-c", "128")
    assert bad.returncode == 3 and "you need at least 256 tokens" in bad.stderr
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))


@pytest.mark.tools
def test_batch_with_imatrix_loads_with_mtp_and_full_acceptance(tiny, batch) -> None:
    res, out = batch["result"], batch["out"]
    assert [o.status for o in res.outputs] == ["done"] * 4, [o.reason for o in res.outputs]
    by = {o.quant_type: o for o in res.outputs}
    # Q8_0 (~4 MB) is over 3M: split into a per-type folder, named as `llama-server -hf` expects
    q8 = by["Q8_0"]
    assert q8.split and Path(q8.path) == out / "Q8_0" / "tiny-Q8_0-00001-of-00002.gguf"
    assert sorted(p.name for p in (out / "Q8_0").iterdir()) == ["tiny-Q8_0-00001-of-00002.gguf",
                                                                "tiny-Q8_0-00002-of-00002.gguf"]
    assert sorted(p.name for p in out.iterdir()) == [  # only verified outputs; no partial files
        "Q8_0", "tiny-IQ2_XXS.gguf", "tiny-IQ4_XS.gguf", "tiny-Q4_K_M.gguf"]
    cal_sha = sha256_file(CALIBRATION, use_cache=False)
    for t in BATCH:
        o = by[t]
        rep = inspect_model(o.path)
        assert rep.consistent and rep.mtp_present and rep.mtp_layers == [4], (t, rep.problems)
        assert rep.file_type == t
        assert mtp_types(o.path) == {w: "Q8_0" for w in MTP_WEIGHTS}, t
        m = GGUFModel(o.path)
        assert m.get("quantize.imatrix.file") == "tiny.imatrix.gguf"  # the name, not a local path
        assert m.get("quantize.imatrix.dataset") == "calibration-tiny.txt"
        assert m.get("mtpgraft.imatrix.dataset_sha256") == cal_sha
        assert m.get("mtpgraft.quantize.mtp_type") == "q8_0"
    # the trunk really is the requested type: IQ2_XXS tensors in the IQ2_XXS file
    assert "IQ2_XXS" in {r.info.type_name for r in GGUFModel(by["IQ2_XXS"].path).refs}
    for t in BATCH:
        accepted, drafted = acceptance(by[t].path)
        assert drafted > 0 and accepted == drafted, (t, accepted, drafted)
    # progress per type
    assert ("IQ2_XXS", "quantizing") in batch["events"]
    assert any(t == "Q8_0" and m.startswith("splitting") for t, m in batch["events"])


@pytest.mark.tools
def test_without_the_mtp_rules_iq2_xxs_aborts_and_leaves_a_zeroed_file(tiny, batch, tmp_path: Path) -> None:
    """The same llama-quantize command minus mtpgraft's --tensor-type rules reproduces llama.cpp's
    abort on the MTP block, and the file it leaves behind is the zeroed-header trap."""
    job = next(j for j in batch["plan"].jobs if j.quant_type == "IQ2_XXS")
    cmd = list(job.command)
    i = cmd.index("--tensor-type")
    assert cmd[i + 1] == r"^blk\.4\.=q8_0"
    del cmd[i:i + 2]
    bare = tmp_path / "bare-IQ2_XXS.gguf"
    cmd[cmd.index(job.tmp_path)] = str(bare)
    with pytest.raises(ToolFailedError) as e:
        run_tool(cmd, cwd=job.cwd)
    assert "Missing importance matrix for tensor blk.4.attn_k.weight in a very low-bit quantization" in \
        e.value.output_tail
    assert bare.exists() and bare.read_bytes()[:4] == b"\0\0\0\0"
    v = verify_output(bare, job.expect)
    assert not v.ok and "header is zeroed" in v.problems[0]


@pytest.fixture
def corrupting_quantize(tmp_path: Path) -> Path:
    """A llama.cpp dir whose llama-quantize runs the real one, then zeroes its output's header."""
    d = tmp_path / "fakebin"
    d.mkdir()
    real = find_tool("llama-quantize")
    script = d / "llama-quantize"
    script.write_text(f"""#!/bin/sh
"{real}" "$@" || exit $?
for a in "$@"; do case "$a" in *.partial) out="$a";; esac; done
dd if=/dev/zero of="$out" bs=4096 count=1 conv=notrunc 2>/dev/null
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    os.symlink(find_tool("llama-gguf-split"), d / "llama-gguf-split")
    return d


@pytest.mark.tools
def test_a_corrupted_output_is_caught_removed_and_reported(tiny, corrupting_quantize, tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = plan_quantize(tiny["full"], "Q4_K_M", out_dir=out, name="tiny", llama_cpp=corrupting_quantize)
    res = execute_quantize(plan)
    (o,) = res.outputs
    assert o.status == "failed" and not res.ok
    assert "bad output removed" in o.reason and "zeroed" in o.reason
    assert list(out.iterdir()) == []  # neither the output nor the partial file is left
    p = run_cli("quantize", tiny["full"], "--types", "Q4_K_M", "--out-dir", out, "--name", "tiny",
                "--llama-cpp", corrupting_quantize)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith("mtpgraft: error: 1 of 1 type(s) failed: Q4_K_M: bad output")
    assert "Traceback" not in p.stderr


@pytest.mark.tools
def test_rerun_skips_verified_outputs_and_refuses_bad_ones(tiny, batch, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(batch["out"], out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.gguf")}
    plan = plan_quantize(tiny["full"], ",".join(BATCH), imatrix=tiny["imatrix"], out_dir=out, name="tiny",
                         split_max_size="3M")
    res = execute_quantize(plan)
    assert [o.status for o in res.outputs] == ["skipped"] * 4
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.gguf")} == before
    # a zeroed header in place: reported, left alone without --force
    bad = out / "tiny-Q4_K_M.gguf"
    with open(bad, "r+b") as f:
        f.write(b"\0" * 64)
    res = execute_quantize(plan_quantize(tiny["full"], "Q4_K_M", imatrix=tiny["imatrix"], out_dir=out, name="tiny"))
    assert res.outputs[0].status == "failed" and "pass force=True to redo it" in res.outputs[0].reason
    cli = run_cli("quantize", tiny["full"], "--types", "Q4_K_M", "--imatrix", tiny["imatrix"], "--out-dir", out,
                  "--name", "tiny")  # the same refusal as the command says it
    assert cli.returncode == 1 and "; pass --force to redo it" in cli.stdout + cli.stderr
    assert "force=True" not in cli.stdout + cli.stderr
    assert bad.read_bytes()[:4] == b"\0\0\0\0"
    res = execute_quantize(plan_quantize(tiny["full"], "Q4_K_M", imatrix=tiny["imatrix"], out_dir=out, name="tiny",
                                     force=True))
    assert res.outputs[0].status == "done" and verify_output(bad, plan.jobs[1].expect).ok
    # a different MTP type than the existing file has: it does not verify "as planned"
    res = execute_quantize(plan_quantize(tiny["full"], "Q4_K_M", imatrix=tiny["imatrix"], out_dir=out, name="tiny",
                                     mtp_type="q6_k"))
    assert res.outputs[0].status == "failed" and "planned Q6_K" in res.outputs[0].reason


@pytest.mark.tools
def test_mtp_type_policies(tiny, tmp_path: Path) -> None:
    out = tmp_path / "out"
    plan = plan_quantize(tiny["full"], "Q4_K_M", imatrix=tiny["imatrix"], out_dir=out, name="t",
                         mtp_type={"default": "q8_0", "Q4_K_M": "q6_k"})
    assert plan.jobs[0].mtp_rules[0].arg == r"^blk\.4\.=q6_k"
    assert any("without importance data" in w for w in plan.warnings)  # q6_k uses one; none exists for MTP
    res = execute_quantize(plan)
    assert res.ok and set(mtp_types(res.outputs[0].path).values()) == {"Q6_K"}
    # match: llama.cpp's own Q4_K_M mixture for the MTP block (no rule), quantized types verified
    plan = plan_quantize(tiny["full"], "Q4_K_M", imatrix=tiny["imatrix"], out_dir=out, name="m", mtp_type="match")
    assert plan.jobs[0].mtp_rules == () and "--tensor-type" not in plan.jobs[0].command
    res = execute_quantize(plan)
    types = mtp_types(res.outputs[0].path)
    assert res.ok and set(types.values()) <= {"Q4_K", "Q6_K"} and types["attn_v"] == "Q6_K"
    with pytest.raises(QuantizeError, match="^mtp_type='match' cannot make IQ2_XXS"):
        plan_quantize(tiny["full"], "IQ2_XXS", imatrix=tiny["imatrix"], out_dir=out, mtp_type="match")
    with pytest.raises(QuantizeError, match="^mtp_type='iq2_xxs' needs importance data for the MTP block"):
        plan_quantize(tiny["full"], "Q4_K_M", imatrix=tiny["imatrix"], out_dir=out, mtp_type="iq2_xxs")
    with pytest.raises(UsageError, match="^mtp_type .q9_9. is not q8_0, match or a ggml tensor type"):
        plan_quantize(tiny["full"], "Q4_K_M", out_dir=out, mtp_type="q9_9")
    with pytest.raises(QuantizeError, match="IQ2_XXS needs an importance matrix"):
        plan_quantize(tiny["full"], "Q4_K_M,IQ2_XXS", out_dir=out)


@pytest.mark.tools
def test_requantizing_needs_the_flag_and_warns(batch, tmp_path: Path) -> None:
    src = Path(next(o.path for o in batch["result"].outputs if o.quant_type == "IQ4_XS"))
    with pytest.raises(QuantizeError, match="allow_requantize=True") as e:
        plan_quantize(src, "Q4_K_M", out_dir=tmp_path)
    assert "IQ4_XS" in str(e.value) and "Q8_0" not in str(e.value)  # the q8_0 MTP block stays as it is
    plan = plan_quantize(src, "Q4_K_M", out_dir=tmp_path, allow_requantize=True)
    assert plan.warnings[0] == REQUANTIZE_WARNING
    assert "--allow-requantize" in plan.jobs[0].command
    res = execute_quantize(plan)
    assert res.ok and set(mtp_types(res.outputs[0].path).values()) == {"Q8_0"}
    p = run_cli("quantize", src, "--types", "Q4_K_M", "--out-dir", tmp_path / "x")
    assert p.returncode == 3 and "--allow-requantize" in p.stderr and len(p.stderr.strip().splitlines()) == 1


@pytest.mark.tools
def test_trunk_first_then_attach_keeps_the_head_in_another_type(tiny, tmp_path: Path) -> None:
    """The other order: quantize a trunk-only file to IQ2_XXS, then graft the head in as Q6_K."""
    plan = plan_quantize(tiny["base"], "IQ2_XXS", imatrix=tiny["imatrix"], out_dir=tmp_path, name="trunk")
    assert plan.mtp_layers == () and any("no MTP block" in w for w in plan.warnings)
    res = execute_quantize(plan)
    assert res.ok and not inspect_model(res.outputs[0].path).mtp_present
    out = tmp_path / "grafted-IQ2_XXS.gguf"
    execute_graft(plan_attach(res.outputs[0].path, tiny["full"], out, mtp_type="q6_k"))
    rep = inspect_model(out)
    assert rep.consistent and set(mtp_types(out).values()) == {"Q6_K"}
    accepted, drafted = acceptance(out)
    assert drafted > 0 and accepted == drafted


@pytest.mark.tools
def test_dry_run_prints_exact_commands_and_writes_nothing(tiny, tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = run_cli("quantize", tiny["full"], "--types", "Q4_K_M,IQ2_XXS", "--imatrix", tiny["imatrix"],
                "--out-dir", out, "--split-max-size", "50G", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count(r"--tensor-type '^blk\.4\.=q8_0'") == 2
    assert f"cd {tiny['dir']} && " in p.stdout and "--imatrix tiny.imatrix.gguf" in p.stdout
    assert "llama-gguf-split --split --split-max-size 50G" in p.stdout
    assert "Q4_K_M/tiny-full-Q4_K_M-0000i-of-0000N.gguf" in p.stdout
    assert not out.exists()
    j = run_cli("quantize", tiny["full"], "--types", "Q8_0", "--out-dir", out, "--dry-run", "--json")
    d = json.loads(j.stdout)
    assert d["dry_run"] and d["plan"]["jobs"][0]["command"][-1] == "Q8_0" and d["plan"]["jobs"][0]["mtp_type"] == "q8_0"


@pytest.mark.tools
def test_cli_errors_are_one_line(tiny, tmp_path: Path) -> None:
    # a bad option value is a usage error (2) in every command; what the inputs cannot do is bad input (3)
    cases = [
        (["--types", "IQ2_XXS"], "IQ2_XXS needs an importance matrix", 3),
        (["--types", "Q4_K_Q"], "unknown quant type 'Q4_K_Q'", 2),
        (["--types", "Q4_K_M", "--split-max-size", "50GB"], "not N followed by M or G", 2),
        (["--types", "Q4_K_M", "--name", "x-mtp"], "file names containing 'mtp-'", 2),
        (["--types", "Q4_K_M", "--jobs", "0"], "--jobs must be >= 1", 2),
    ]
    for args, msg, code in cases:
        p = run_cli("quantize", tiny["full"], *args, "--out-dir", tmp_path)
        assert p.returncode == code, args
        assert msg in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    zero = tmp_path / "zero.gguf"
    zero.write_bytes(b"\0" * 4096)
    p = run_cli("quantize", zero, "--types", "Q4_K_M")
    assert p.returncode == 3 and "header is zeroed" in p.stderr


def _quantizing_into(out_dir: Path) -> list[int]:
    """The pids of the llama-quantize processes (past the launcher's exec) writing into `out_dir`."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if d.name.isdigit() and cmd[0].endswith(b"llama-quantize") and str(out_dir).encode() in b"\0".join(cmd):
            pids.append(int(d.name))
    return sorted(pids)


@pytest.mark.tools
def test_jobs_run_types_in_parallel(tiny, tmp_path: Path) -> None:
    """--jobs 2: the second type's llama-quantize starts while the first one still runs (each is
    frozen as soon as it is seen, so neither can finish first); run one after another, the second
    never starts and this fails."""
    p = subprocess.Popen([sys.executable, "-m", "mtpgraft", "quantize", tiny["full"], "--types", "Q8_0,Q4_K_M",
                          "--out-dir", tmp_path, "--name", "j", "--jobs", "2", "--json"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    frozen: list[int] = []
    try:
        deadline = time.monotonic() + 30
        while len(frozen) < 2 and p.poll() is None and time.monotonic() < deadline:
            for pid in set(_quantizing_into(tmp_path)) - set(frozen):
                os.kill(pid, signal.SIGSTOP)
                frozen.append(pid)
            time.sleep(0.002)
        both_ran = len(frozen) == 2 and set(_quantizing_into(tmp_path)) == set(frozen)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    out, err = p.communicate(timeout=120)
    assert both_ran, f"not two llama-quantize at once (seen: {frozen}): {err}"
    assert p.returncode == 0, err
    d = json.loads(out)
    assert [o["status"] for o in d["outputs"]] == ["done", "done"]
    assert "[1/2] Q8_0: quantizing" in err and "[2/2] Q4_K_M: quantizing" in err
    with pytest.raises(QuantizeError, match="would overwrite the input"):
        plan_quantize(tmp_path / "j-Q8_0.gguf", "Q8_0", out_dir=tmp_path, name="j", allow_requantize=True)


@pytest.mark.tools
@pytest.mark.parametrize("cpus,jobs,threads", [(8, 2, "4"), (8, 3, "2"), (3, 2, "1"), (1, 4, "1"), (None, 2, "1")])
def test_jobs_share_the_cpus(tiny, tmp_path: Path, monkeypatch, cpus, jobs, threads) -> None:
    """With jobs and no threads given, each llama-quantize gets the CPUs divided among the jobs."""
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    plan = plan_quantize(tiny["full"], ["Q8_0", "Q4_K_M"], out_dir=tmp_path, name="j", jobs=jobs)
    assert [j.command[-1] for j in plan.jobs] == [threads, threads]
    assert plan_quantize(tiny["full"], ["Q8_0"], out_dir=tmp_path, name="j", jobs=jobs, threads=5).jobs[0].command[-1] == "5"


def test_imatrix_refuses_to_overwrite_its_own_input(tmp_path):
    """Even with --force, an output that is the model (or the calibration file) is refused."""
    from mtpgraft.errors import OutputExistsError
    from mtpgraft.imatrix import plan_imatrix
    from mtpgraft.testmodels import build_tiny_model

    model = build_tiny_model(tmp_path / "m.gguf", dtype="f16")
    cal = tmp_path / "cal.txt"
    cal.write_text("some calibration text\n" * 20)
    before = model.read_bytes()
    for out in (model, cal):
        with pytest.raises(OutputExistsError, match="one of the inputs"):
            plan_imatrix(model, cal, out, force=True)
    assert model.read_bytes() == before


@pytest.mark.tools
def test_zero_first_rows_are_not_a_zeroed_output(tiny, tmp_path: Path) -> None:
    """Issue 9 class 15: a vocabulary whose first rows are zero (unused or padding tokens at its start)
    quantizes, with the real llama-quantize, to tensors whose first blocks are all zero. Such outputs
    are valid: every type of the batch verifies and is installed (a first-512-bytes rule refused all)."""
    src = tmp_path / "zrows-F16.gguf"
    shutil.copyfile(tiny["full"], src)
    m = GGUFModel(src)
    zeroed = ("token_embd.weight", "output.weight")
    with open(src, "r+b") as f:
        for n in zeroed:
            r = m.by_name[n]
            f.seek(r.abs_offset)
            f.write(b"\0" * (r.info.nbytes // r.info.ne[1] * 100))  # the first 100 of 512 rows
    types = ("Q4_K_M", "IQ4_XS", "IQ2_XXS")
    res = execute_quantize(plan_quantize(src, ",".join(types), imatrix=tiny["imatrix"], out_dir=tmp_path / "q",
                                     name="zrows"))
    assert [(o.quant_type, o.status) for o in res.outputs] == [(t, "done") for t in types], \
        [o.reason for o in res.outputs]
    zero_heads = []
    for o in res.outputs:
        q = GGUFModel(o.path)
        assert inspect_model(o.path).consistent
        for n in zeroed:
            r = q.by_name[n]
            with open(r.path, "rb") as f:
                f.seek(r.abs_offset)
                if r.info.type_name not in ("F32", "F16", "BF16") and not any(f.read(512)):
                    zero_heads.append(f"{o.quant_type}:{n}")
    # the outputs really start with zero blocks, so the old rule would have refused them
    assert zero_heads, "no quantized tensor starts with 512 zero bytes: the test proves nothing"
