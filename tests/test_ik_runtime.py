"""ik_llama.cpp as a second runtime: its tools found apart from mainline's, its pinned build, and
`mtpgraft doctor` reporting both. Tests that need ik's real build skip when it is absent (it is
optional until CI builds it; MTPGRAFT_REQUIRE_IK=1 makes them fail instead, like the mainline tools)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mtpgraft.errors import ToolNotFoundError, UsageError
from mtpgraft.tools import locate_tool, server_help

MAINLINE_HELP = "--spec-type [none|draft-simple|draft-mtp|ngram-mod]\n   speculative type\n"
# as ik_llama.cpp 0.1.5's common.cpp prints them
IK_HELP = ("-mtp, --multi-token-prediction          whether to use multi-token-prediction (if supported)\n"
           "-no-mtp, --no-multi-token-prediction    whether to use multi-token-prediction (if supported)\n"
           "--spec-type Name [none | ngram - cache | ngram - simple | ngram - map - k | ngram - mod]\n")
TOOLS = ("llama-server", "llama-quantize", "llama-imatrix", "llama-gguf-split", "llama-perplexity")


def fake_tools(d: Path, help_text: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for name in TOOLS:
        p = d / name
        p.write_text(f"#!/bin/sh\ncat <<'X'\n{help_text if name == 'llama-server' else 'usage'}\nX\n")
        p.chmod(0o755)
    return d


def test_ik_tools_come_from_their_own_env_and_never_from_path(tmp_path, monkeypatch):
    path_dir = fake_tools(tmp_path / "path", MAINLINE_HELP)
    monkeypatch.setenv("PATH", f"{path_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MTPGRAFT_IK_LLAMA_CPP", raising=False)
    assert locate_tool("llama-server").source == "PATH"  # mainline's lookup is as before
    with pytest.raises(ToolNotFoundError) as e:
        locate_tool("llama-server", runtime="ik")  # mainline's llama-server on PATH is not taken for ik's
    msg = str(e.value)
    assert "PATH" not in msg.split("(looked in ")[1].split(")")[0]
    assert "the ik_llama.cpp toolchain cache" in msg and "mtpgraft toolchain --runtime ik" in msg
    assert "$MTPGRAFT_IK_LLAMA_CPP" in msg
    ik = fake_tools(tmp_path / "ik", IK_HELP)
    monkeypatch.setenv("MTPGRAFT_IK_LLAMA_CPP", str(ik))
    loc = locate_tool("llama-server", runtime="ik")
    assert (loc.source, loc.path) == ("env", ik / "llama-server")
    assert locate_tool("llama-server").path == path_dir / "llama-server"  # and mainline's is not ik's


def test_unknown_runtime_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown runtime 'ikk': one of mainline, ik"):
        locate_tool("llama-server", runtime="ikk")


def test_doctor_reports_both_runtimes_with_probed_flags(tmp_path):
    main, ik = fake_tools(tmp_path / "main", MAINLINE_HELP), fake_tools(tmp_path / "ik", IK_HELP)
    env = dict(os.environ, MTPGRAFT_LLAMA_CPP=str(main), MTPGRAFT_IK_LLAMA_CPP=str(ik),
               MTPGRAFT_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-m", "mtpgraft", "doctor", "--json"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    rts = d["runtimes"]
    assert (rts["mainline"]["mtp_flag"], rts["ik"]["mtp_flag"]) == ("--spec-type draft-mtp", "-mtp")
    assert d["mtp_spec_type"] == "draft-mtp" and rts["ik"]["mtp_spec_type"] is None
    assert {t["path"] for t in rts["ik"]["tools"]} == {str(ik / t) for t in TOOLS}
    # not a cached build: no source to read the architectures from, and doctor says so
    assert rts["ik"]["mtp_architectures"] is None
    text = subprocess.run([sys.executable, "-m", "mtpgraft", "doctor"], capture_output=True, text=True, env=env,
                          timeout=120).stdout
    assert "MTP flag: -mtp / --multi-token-prediction" in text
    assert "MTP architectures: unknown (no binary lists them" in text


def test_doctor_without_ik_still_passes_on_mainline(tmp_path):
    main = fake_tools(tmp_path / "main", MAINLINE_HELP)
    env = dict(os.environ, MTPGRAFT_LLAMA_CPP=str(main), MTPGRAFT_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("MTPGRAFT_IK_LLAMA_CPP", None)
    r = subprocess.run([sys.executable, "-m", "mtpgraft", "doctor"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "ik_llama.cpp (ik-llama-cpp-python==0.1.5):\nnot found (optional" in r.stdout


def test_probe_reads_the_ik_spelling(tmp_path):
    server_help.cache_clear()
    from mtpgraft.tools import probe_mtp_flag

    ik, main = fake_tools(tmp_path / "ik", IK_HELP), fake_tools(tmp_path / "m", MAINLINE_HELP)
    newer = fake_tools(tmp_path / "n", "--spec-type [none|mtp|ngram-mod]\n")
    plain = fake_tools(tmp_path / "p", "--draft-max N\n--spec-type [none|ngram-cache]\n")
    got = [probe_mtp_flag(d / "llama-server") for d in (ik, main, newer, plain)]
    assert got == ["-mtp", "--spec-type draft-mtp", "--spec-type mtp", None]


# ----------------------------------------------------------------------------- the pinned build


def _tar(path: Path, files: dict[str, str]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_ik_cache_is_its_own(tmp_path, monkeypatch):
    from mtpgraft.pins import build_dir_for, cached_bin_dir

    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path))
    assert build_dir_for((), "ik") == tmp_path / "toolchain" / "ik_llama.cpp-0.1.5" / "build"
    assert build_dir_for((), "ik") != build_dir_for(())
    assert cached_bin_dir("ik") is None


def test_a_wrong_sdist_is_refused(tmp_path, monkeypatch):
    from mtpgraft.toolchain import ensure_source

    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    fake = _tar(tmp_path / "ik_llama_cpp_python-0.1.5.tar.gz",
                {"ik_llama_cpp_python-0.1.5/vendor/ik_llama.cpp/CMakeLists.txt": "project(x)\n"})
    with pytest.raises(UsageError, match=r"is not the pinned ik-llama-cpp-python==0.1.5 sdist \(sha256 "):
        ensure_source(lambda s: None, fake, "ik")
    assert not (tmp_path / "cache" / "toolchain" / "ik_llama.cpp-0.1.5" / "src").exists()


def test_unpack_writes_the_missing_build_info_script(tmp_path):
    from mtpgraft.pins import PINS
    from mtpgraft.toolchain import _unpack

    fake = _tar(tmp_path / "s.tar.gz", {"ik_llama_cpp_python-0.1.5/vendor/ik_llama.cpp/CMakeLists.txt": "x\n",
                                        "ik_llama_cpp_python-0.1.5/README.md": "not vendored\n"})
    _unpack(PINS["ik"], fake, tmp_path / "src")
    assert sorted(p.relative_to(tmp_path / "src").as_posix() for p in (tmp_path / "src").rglob("*") if p.is_file()) \
        == ["CMakeLists.txt", "common/cmake/build-info-gen-cpp.cmake"]
    script = (tmp_path / "src" / "common" / "cmake" / "build-info-gen-cpp.cmake").read_text()
    assert 'set(BUILD_COMMIT "ik-llama-cpp-python-0.1.5")' in script and "build-info.cpp.in" in script


def test_mtp_architectures_read_from_the_source(tmp_path, monkeypatch):
    from mtpgraft.pins import toolchain_root
    from mtpgraft.toolchain import mtp_architectures

    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path))
    assert mtp_architectures("ik") is None  # no source, no answer
    src = toolchain_root("ik") / "src" / "src"
    src.mkdir(parents=True)
    (src / "llama-arch.cpp").write_text('{ LLM_ARCH_GLM4_MOE,  "glm4moe" },\n{ LLM_ARCH_QWEN3, "qwen3" },\n'
                                        '{ LLM_ARCH_DEEPSEEK2, "deepseek2" },\n')
    (src / "llama.cpp").write_text("    if (model->arch != LLM_ARCH_GLM4_MOE && model->arch != LLM_ARCH_DEEPSEEK2 "
                                   "&& cparams.mtp != 0) {\n        cparams.mtp = 0;\n    }\n")
    assert mtp_architectures("ik") == ["deepseek2", "glm4moe"]
    models = toolchain_root("mainline") / "src" / "src" / "models"
    models.mkdir(parents=True)
    (models.parent / "llama-arch.cpp").write_text((src / "llama-arch.cpp").read_text())
    (models / "glm4-moe.cpp").write_text("llama_model_glm4_moe::build_arch_graph() { make_unique<graph_mtp>(); }")
    (models / "qwen3.cpp").write_text("llama_model_qwen3::build_arch_graph() { make_unique<graph>(); }")
    (models.parent / "llama-model.cpp").write_text(
        "case LLM_ARCH_QWEN3:\n return new llama_model_qwen3(params);\ncase LLM_ARCH_GLM4_MOE:\n"
        "case LLM_ARCH_DEEPSEEK2:\n return new llama_model_glm4_moe(params);\n")
    assert mtp_architectures("mainline") == ["deepseek2", "glm4moe"]


# ----------------------------------------------------------------------------- ik's real build



@pytest.mark.tools
def test_real_doctor_lists_both_runtimes(ik_bin_dir):
    env = {k: v for k, v in os.environ.items() if k != "MTPGRAFT_IK_LLAMA_CPP"}
    r = subprocess.run([sys.executable, "-m", "mtpgraft", "doctor", "--json"], capture_output=True, text=True,
                       env=env, timeout=180)
    assert r.returncode == 0, r.stderr
    rts = json.loads(r.stdout)["runtimes"]
    assert rts["mainline"]["mtp_flag"] == "--spec-type draft-mtp"
    ik = rts["ik"]
    assert ik["ok"] and ik["mtp_flag"] == "-mtp" and ik["toolchain_cache"] == str(ik_bin_dir)
    assert {t["source"] for t in ik["tools"]} == {"cache"}
    assert "ik-llama-cpp-python-0.1.5" in (ik["build"] or ""), ik["build"]
    assert ik["mtp_architectures"] == ["glm4moe"]  # src/llama.cpp at 0.1.5: MTP for GLM4_MOE only
    assert "glm4moe" in rts["mainline"]["mtp_architectures"]


@pytest.mark.tools
def test_ik_toolchain_second_run_is_instant(ik_bin_dir):
    r = subprocess.run([sys.executable, "-m", "mtpgraft", "toolchain", "--runtime", "ik", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert (d["runtime"], d["built"], d["bin_dir"]) == ("ik", False, str(ik_bin_dir))


@pytest.mark.tools
@pytest.mark.parametrize("qtype,ftype", [("IQ4_KS", 145), ("IQ4_KT", 153), ("IQ4_KS_R4", 345), ("IQ2_KS", 147),
                                         ("Q8_KV", 149)])
def test_ik_quantize_parses_and_only_ik_loads_it(ik_bin_dir, tmp_path, qtype, ftype):
    """ik's own llama-quantize writes an IQ4_KS (and a KT, a repacked, a 2-byte-meta, an 8-byte-meta)
    quant of the tiny glm4moe; mtpgraft reads every tensor where ik's writer put it (its sizes are
    ik's), calls it ik-only, and mainline's llama-server refuses it with the line ggml_types predicts."""
    from mtpgraft import ggml_types as gt
    from mtpgraft.gguf_io import GGUFFile
    from mtpgraft.testmodels import build_tiny_model
    from mtpgraft.tools import find_tool, run_tool

    full = build_tiny_model(tmp_path / "glm.gguf", arch="glm4moe", layout="full")
    out = tmp_path / f"{qtype}.gguf"
    run_tool([ik_bin_dir / "llama-quantize", full, out, qtype], timeout=300)
    f = GGUFFile(out)
    assert f.defects == []  # each tensor starts where the previous one's size (ik's row_meta too) ends
    last = f.tensors[-1]
    assert 0 <= out.stat().st_size - (f.data_offset + last.offset + last.nbytes) < f.alignment
    made = [t for t in f.tensors if t.type_name == qtype]
    assert len(made) > 10  # row_meta bytes in every row: a wrong size would misplace every next tensor
    assert f.get("general.file_type") == gt.IK_FILE_TYPES[qtype] == ftype
    assert gt.file_type_name(f.get("general.file_type")) == qtype
    assert gt.runtimes_for_types(t.ggml_type for t in f.tensors) == {"ik"}
    predicted = gt.loadable_by((t.name, t.ggml_type, t.ne[0]) for t in f.tensors)["mainline"]
    assert predicted is not None
    r = run_tool([find_tool("llama-server"), "-m", out, "--port", "0", "-c", "256"], timeout=120, check=False)
    assert r.returncode != 0 and predicted in r.stdout, r.stdout[-2000:]


@pytest.mark.tools
@pytest.mark.parametrize("type_id,signal_no", [(34, 8), (500, 6)])  # TQ1_0: SIGFPE; past ik's ids: SIGABRT
def test_ik_loader_dies_on_types_it_lacks_as_predicted(ik_bin_dir, tmp_path, type_id, signal_no):
    """ik's GGUF reader has no type check mainline has: a mainline-only type (block size 0 there) ends
    it with SIGFPE, an id past its table with its GGML_ASSERT; loader_refusal says which."""
    from mtpgraft import ggml_types as gt
    from mtpgraft.gguf_io import OutTensor
    from mtpgraft.testmodels.synthetic import make_model, rewrite
    from mtpgraft.tools import run_tool

    src = make_model(tmp_path / "m.gguf", n_embd=256, n_ff=256, layout="base")
    n = 256 * 256 // 256 * 54  # as TQ1_0 (256 elements in 54 bytes); ik reads no further than the header

    def retype(ts: list[OutTensor]) -> list[OutTensor]:
        return [OutTensor(t.name, t.ne, type_id, n, produce=lambda: [bytes(n)]) if t.name == "blk.1.ffn_up.weight"
                else t for t in ts]

    out = rewrite(src, tmp_path / "t.gguf", tensors=retype)
    predicted = gt.loader_refusal("ik", "blk.1.ffn_up.weight", type_id, 256)
    r = run_tool([ik_bin_dir / "llama-server", "-m", out, "--port", "0"], timeout=120, check=False)
    assert r.returncode == -signal_no, r.stdout[-2000:]
    assert ("SIGFPE" in predicted) == (signal_no == 8)
    if signal_no == 6:
        assert predicted in r.stdout


@pytest.mark.tools
def test_head_grafted_on_ik_quant_drafts_on_ik_server(ik_bin_dir, tmp_path):
    """The issue's first proof, on ik 0.1.5: ik's llama-quantize makes an IQ4_KS trunk of the tiny
    glm4moe, mtpgraft grafts the aligned head onto it (q8_0, the default for a quantized base), and ik's
    llama-server with -mtp drafts with every draft token accepted (its log line, read from its source)."""
    import re
    import socket
    import time
    import urllib.request

    from mtpgraft.graft import execute_graft, plan_attach
    from mtpgraft.testmodels import build_tiny_model
    from mtpgraft.tools import run_tool, spawn, stop_process

    base = build_tiny_model(tmp_path / "base.gguf", arch="glm4moe", layout="base")
    full = build_tiny_model(tmp_path / "full.gguf", arch="glm4moe", layout="full")
    trunk = tmp_path / "base-iq4_ks.gguf"
    run_tool([ik_bin_dir / "llama-quantize", base, trunk, "IQ4_KS"], timeout=300)
    out = tmp_path / "grafted.gguf"
    execute_graft(plan_attach(trunk, full, out))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "server.log"
    with open(log, "w") as fh:
        proc = spawn([ik_bin_dir / "llama-server", "-m", out, "--host", "127.0.0.1", "--port", str(port),
                      "-c", "1024", "-np", "1", "-mtp", "--draft-max", "3"], stdout=fh,
                     cwd=tmp_path)  # ik's llama-server also writes llama.log into its working directory
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.5)
        req = urllib.request.Request(f"{url}/completion", data=json.dumps(
            {"prompt": "The quick brown fox", "n_predict": 48, "temperature": 0}).encode())
        urllib.request.urlopen(req, timeout=120).read()
    finally:
        stop_process(proc)
    m = re.search(r"draft acceptance rate = ([\d.]+) \(\s*(\d+) accepted /\s*(\d+) generated\)", log.read_text())
    assert m, log.read_text()[-2000:]
    assert float(m.group(1)) == 1.0 and int(m.group(2)) > 20, m.group(0)
