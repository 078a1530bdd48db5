"""`mtpgraft check hf://OWNER/REPO:TAG`: the REAL llama-server -hf downloads from the loopback Hub,
mtpgraft says what it resolved (checked against its own prediction) and measures the files.
Repos are laid out the way publishers lay them out; the tiny aligned head drafts at acceptance 1.0."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft.cli import cli

pytestmark = pytest.mark.tools
QUICK = ["--n-max", "3", "--reps", "1", "--per-category", "1", "--n-predict", "32", "--ctx", "512",
         "--categories", "code"]


@pytest.fixture(scope="module")
def quants(tmp_path_factory, llama_cpp_dir) -> dict[str, Path]:
    """Tiny qwen35 files made by the real tools: in-file MTP quants, trunk-only quants, a sidecar,
    and a Q8_0 split in 3 shards."""
    from mtpgraft.testmodels import build_tiny_model

    d = tmp_path_factory.mktemp("remote-quants")
    full = build_tiny_model(d / "full-f16.gguf", layout="full", head="aligned")
    base = build_tiny_model(d / "base-f16.gguf", layout="base")
    out = {"sidecar": build_tiny_model(d / "mtp-Tiny-F16.gguf", layout="mtp-only", head="aligned")}
    for tag in ("Q4_K_M", "Q8_0"):
        for kind, src in (("full", full), ("base", base)):
            dst = d / f"{kind}-Tiny-{tag}.gguf"
            subprocess.run([str(llama_cpp_dir / "llama-quantize"), str(src), str(dst), tag],
                           check=True, capture_output=True)
            out[f"{kind}-{tag}"] = dst
    split_dir = d / "split"
    split_dir.mkdir()
    subprocess.run([str(llama_cpp_dir / "llama-gguf-split"), "--split", "--split-max-tensors", "25",
                    str(out["full-Q8_0"]), str(split_dir / "Tiny-Q8_0")], check=True, capture_output=True)
    out["split"] = split_dir
    return out


def check_hf(hub, ref: str, *extra: str):
    r = CliRunner().invoke(cli, ["check", ref, "--endpoint", hub.url, "--json", *QUICK, *extra])
    assert r.exit_code == 0, r.output + r.stderr
    return json.loads(r.stdout)


def test_in_file_mtp_quant_resolves_and_drafts_at_1(hub, hf_env, quants):
    hub.put_files("me/Tiny-MTP-GGUF", {"Tiny-Q4_K_M.gguf": quants["full-Q4_K_M"].read_bytes(),
                                       "Tiny-Q8_0.gguf": quants["full-Q8_0"].read_bytes()})
    d = check_hf(hub, "hf://me/Tiny-MTP-GGUF:Q4_K_M")
    (res,) = d["resolved"]
    assert (res["model"], res["model_files"], res["mtp"]) == ("Tiny-Q4_K_M.gguf", ["Tiny-Q4_K_M.gguf"], None)
    assert res["mismatches"] == []
    assert Path(res["local_model"]).read_bytes() == quants["full-Q4_K_M"].read_bytes()
    assert str(hf_env) in res["local_model"]  # the standard cache
    assert d["verdict"] == "pass" and d["acceptance"] == 1.0
    assert [r.path for r in hub.downloads(r"/_cdn/")].__len__() == 1  # only the Q4_K_M file travelled


def test_trunk_only_quants_with_one_sidecar_each_tag_drafts_at_1(hub, hf_env, quants):
    sidecar = quants["sidecar"].read_bytes()
    hub.put_files("me/Tiny-GGUF", {"Tiny-Q4_K_M.gguf": quants["base-Q4_K_M"].read_bytes(),
                                   "Q8_0/Tiny-Q8_0.gguf": quants["base-Q8_0"].read_bytes(),
                                   "mtp-Tiny-F16.gguf": sidecar,
                                   "MTP/mtp-Tiny-Q8_0.gguf": sidecar})  # a sibling folder: never seen
    for tag, model in (("Q4_K_M", "Tiny-Q4_K_M.gguf"), ("Q8_0", "Q8_0/Tiny-Q8_0.gguf")):
        d = check_hf(hub, f"hf://me/Tiny-GGUF:{tag}")
        (res,) = d["resolved"]
        assert (res["model"], res["mtp"], res["mismatches"]) == (model, "mtp-Tiny-F16.gguf", [])
        assert d["verdict"] == "pass" and d["acceptance"] == 1.0
    sidecar_gets = [r for r in hub.downloads("/_cdn/") if r.sent == len(sidecar)]
    assert len(sidecar_gets) == 1  # the second tag found the sidecar in the cache


def test_split_quant_in_a_folder_resolves_every_shard(hub, hf_env, quants):
    shards = sorted(quants["split"].glob("*.gguf"))
    assert len(shards) == 3
    hub.put_files("me/Tiny-Split-GGUF", {f"Q8_0/{p.name}": p.read_bytes() for p in shards})
    d = check_hf(hub, "hf://me/Tiny-Split-GGUF:Q8_0")
    (res,) = d["resolved"]
    assert res["model"] == "Q8_0/Tiny-Q8_0-00001-of-00003.gguf"
    assert res["model_files"] == [f"Q8_0/{p.name}" for p in shards] and res["mismatches"] == []
    assert d["verdict"] == "pass" and d["acceptance"] == 1.0


def test_no_mtp_anywhere_is_one_line(hub, hf_env, quants):
    hub.put_files("me/Plain-GGUF", {"Tiny-Q8_0.gguf": quants["base-Q8_0"].read_bytes()})
    r = CliRunner().invoke(cli, ["check", "hf://me/Plain-GGUF:Q8_0", "--endpoint", hub.url, *QUICK])
    assert r.exit_code == 5  # llama-server refused the file (ServerError)
    assert r.stderr.startswith("mtpgraft: error: ") and "failed to create MTP context" in r.stderr


def test_https_endpoint_without_tls_is_refused_with_the_fix(hf_env, quants):
    from mtpgraft.check import resolve_server
    from mtpgraft.hub.remote import server_has_tls

    if server_has_tls(resolve_server().path):
        pytest.skip("this llama-server was built with TLS")
    r = CliRunner().invoke(cli, ["check", "hf://me/x:Q8_0", "--endpoint", "https://127.0.0.1:9", *QUICK])
    assert r.exit_code != 0 and "built without TLS" in r.stderr and "libssl-dev" in r.stderr


def test_doctor_says_whether_llama_server_downloads_over_https(llama_cpp_dir):
    """The toolchain builds llama.cpp with -DLLAMA_OPENSSL=OFF (pins.BASE_CMAKE_ARGS)."""
    from mtpgraft.pins import BASE_CMAKE_ARGS

    assert "-DLLAMA_OPENSSL=OFF" in BASE_CMAKE_ARGS
    r = CliRunner().invoke(cli, ["doctor", "--llama-cpp", str(llama_cpp_dir), "--json"])
    assert json.loads(r.stdout)["https_downloads"] is False
    r = CliRunner().invoke(cli, ["doctor", "--llama-cpp", str(llama_cpp_dir)])
    assert "llama-server -hf over https: no: built without TLS" in r.stdout and "libssl-dev" in r.stdout
