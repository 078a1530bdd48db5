"""Tool discovery (flag > env > PATH > cache), `mtpgraft doctor` and `mtpgraft toolchain`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtpgraft.commands.common import flag
from mtpgraft.errors import ToolFailedError, ToolNotFoundError, spelled
from mtpgraft.pins import STAMP, cached_bin_dir
from mtpgraft.tools import error_line, locate_tool, probe_mtp_spec_type, run_tool, server_help


def fake_tool(d: Path, name: str, help_text: str = "") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / name
    p.write_text(f"#!/bin/sh\ncat <<'X'\n{help_text}\nX\n")
    p.chmod(0o755)
    return p


def test_lookup_order(tmp_path, monkeypatch):
    flag, env, path_dir = tmp_path / "flag", tmp_path / "env", tmp_path / "path"
    for d in (flag, env, path_dir):
        fake_tool(d, "llama-quantize")
    monkeypatch.setenv("PATH", f"{path_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("MTPGRAFT_LLAMA_CPP", str(env))
    assert locate_tool("llama-quantize", flag).source == "flag"
    assert locate_tool("llama-quantize").source == "env"
    monkeypatch.delenv("MTPGRAFT_LLAMA_CPP")
    loc = locate_tool("llama-quantize")
    assert (loc.source, loc.path) == ("PATH", path_dir / "llama-quantize")


def test_build_tree_layout_is_found(tmp_path):
    fake_tool(tmp_path / "build" / "bin", "llama-server")
    assert locate_tool("llama-server", tmp_path).path == tmp_path / "build" / "bin" / "llama-server"


def test_not_found_names_every_place(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("MTPGRAFT_LLAMA_CPP", str(tmp_path / "nope"))
    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(ToolNotFoundError) as e:
        locate_tool("llama-imatrix", tmp_path / "flagdir")
    assert f"looked in llama_cpp {tmp_path / 'flagdir'}," in str(e.value)  # the library's own name
    msg = spelled(e.value, lambda s: flag(s, "quantize"))  # what a command says
    for part in ("--llama-cpp", "$MTPGRAFT_LLAMA_CPP", "PATH", "toolchain cache", "mtpgraft toolchain"):
        assert part in msg


@pytest.mark.parametrize("help_text,want", [
    ("--spec-type [none|draft-simple|draft-mtp|ngram-cache]\n   speculative type", "draft-mtp"),
    ("--spec-type TYPE   one of: none, mtp, ngram\n-md FILE", "mtp"),
    ("--spec-type [none|draft-simple]\n--draft-max N  mtp is not here", None),
])
def test_probe_spec_type_reads_help(tmp_path, help_text, want):
    server_help.cache_clear()
    tool = fake_tool(tmp_path, "llama-server", help_text)
    assert probe_mtp_spec_type(tool) == want


def test_run_tool_raises_with_tail(tmp_path):
    script = tmp_path / "bad"
    script.write_text("#!/bin/sh\necho working\necho 'error: it broke' >&2\nexit 3\n")
    script.chmod(0o755)
    with pytest.raises(ToolFailedError) as e:
        run_tool([script])
    assert e.value.returncode == 3 and "it broke" in str(e.value) and "working" in e.value.output_tail


@pytest.mark.tools
def test_real_server_spelling_is_draft_mtp():
    assert probe_mtp_spec_type(locate_tool("llama-server").path) == "draft-mtp"


@pytest.mark.tools
def test_doctor_reports_every_tool():
    r = subprocess.run([sys.executable, "-m", "mtpgraft", "doctor", "--json"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] is True and d["mtp_spec_type"] == "draft-mtp"
    tools = {t["tool"]: t for t in d["tools"]}
    assert set(tools) == {"llama-server", "llama-quantize", "llama-imatrix", "llama-gguf-split", "llama-perplexity"}
    for t in tools.values():
        assert t["found"] and Path(t["path"]).is_file()
        assert "0c1e570" in (t["version"] or ""), t


def test_doctor_fails_when_nothing_is_found(tmp_path):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent), MTPGRAFT_CACHE_DIR=str(tmp_path / "c"))
    env.pop("MTPGRAFT_LLAMA_CPP", None)
    r = subprocess.run([sys.executable, "-m", "mtpgraft", "doctor"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 1
    assert "llama-server      NOT FOUND" in r.stdout and "not built" in r.stdout


@pytest.mark.tools
def test_toolchain_second_run_is_instant():
    """A built toolchain is found, not rebuilt: the run needs no cmake and no compiler (PATH holds
    only Python), and no file of the build changes."""
    bin_dir = cached_bin_dir()
    assert bin_dir is not None, "the toolchain must be built before the tests (scripts/test does it)"
    build = bin_dir.parent
    stamps = {f: f.stat().st_mtime_ns for f in [build / STAMP, *bin_dir.iterdir()]}
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    r = subprocess.run([sys.executable, "-m", "mtpgraft", "toolchain", "--json"], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["built"] is False and d["commit"] == "0c1e570" and Path(d["bin_dir"]) == bin_dir
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps


def test_toolchain_extra_cmake_flags_get_their_own_build_dir(tmp_path, monkeypatch):
    from mtpgraft.pins import build_dir_for

    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path))
    assert build_dir_for(()) == tmp_path / "toolchain" / "llama.cpp-0c1e570" / "build"
    # the same flags find the same build in every run (a recorded value, not the formula again);
    # other flags, or the same in another order, get another one
    root = tmp_path / "toolchain" / "llama.cpp-0c1e570"
    assert build_dir_for(["-DGGML_CUDA=ON"]) == build_dir_for(("-DGGML_CUDA=ON",)) == root / "build-faa95960cb"
    assert build_dir_for(["-DGGML_CUDA=ON", "-DGGML_NATIVE=OFF"]) == root / "build-bbc06c7507"
    assert build_dir_for(["-DGGML_NATIVE=OFF", "-DGGML_CUDA=ON"]) == root / "build-52e5f972c9"


@pytest.mark.parametrize("output,want", [
    # llama-quantize: the first error, not the trailer that only says it failed
    ("main: build = 1\n ERROR: this quantization requires an importance matrix!\n\n"
     "llama_model_quantize: failed to quantize: this quantization requires an imatrix!\n"
     "llama_quantize: failed to quantize model from 'm.gguf'\n", "ERROR: this quantization requires an importance matrix!"),
    ("llama_quantize: quantizing 'x.gguf' to 'y.gguf' as Q8_0\n"
     "gguf_init_from_file: failed to open GGUF file 'x.gguf' (No such file or directory)\n"
     "llama_model_quantize: failed to quantize: llama_model_loader: failed to load model from x.gguf\n",
     "gguf_init_from_file: failed to open GGUF file 'x.gguf' (No such file or directory)"),
    # a llama-server log: levels and timestamps dropped, the warning before the error is its cause
    ("0.00.102.232 W llama_init_from_model: context type MTP requested but model doesn't contain MTP layers\n"
     "0.00.102.232 E common_speculative_init_result: failed to create MTP context\n"
     "0.00.102.660 E srv  llama_server: exiting due to model loading error\n",
     "common_speculative_init_result: failed to create MTP context (llama_init_from_model: context type MTP "
     "requested but model doesn't contain MTP layers)"),
    # no error line: the last line that is not the model loader's listing
    ("working\nstill   working\nllama_model_loader: - kv 0: general.architecture str = qwen35\n\n", "still working"),
    ("", ""),
])
def test_error_line_picks_the_reason(output, want):
    assert error_line(output) == want
