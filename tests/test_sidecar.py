"""`mtpgraft sidecar BASE --mtp-from SOURCE`: the MTP-only file in convert_hf_to_gguf.py's --mtp layout.
The tiny test models' `mtp-only` layout is that layout, so the sidecar of base + full must equal it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft.cli import cli
from mtpgraft.gguf_io import GGUFModel

PROVENANCE = ("mtpgraft.",)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    from mtpgraft.testmodels import build_tiny_model

    d = tmp_path_factory.mktemp("tiny-sidecar")
    return {"base": build_tiny_model(d / "Tiny-F32.gguf", layout="base"),
            "full": build_tiny_model(d / "full.gguf", layout="full", head="aligned"),
            "ref": build_tiny_model(d / "ref-mtp-only.gguf", layout="mtp-only", head="aligned"),
            "moe-full": build_tiny_model(d / "moe.gguf", arch="qwen35moe", layout="full", head="aligned")}


def tensor_bytes(path: Path) -> list[tuple[str, list[int], int, bytes]]:
    out = []
    for r in GGUFModel(path).refs:
        with open(r.path, "rb") as f:
            f.seek(r.abs_offset)
            out.append((r.name, list(r.info.ne), r.info.ggml_type, f.read(r.info.nbytes)))
    return out


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_sidecar_equals_the_converters_mtp_layout(tiny, tmp_path):
    out = tmp_path / "side.gguf"
    r = run("sidecar", str(tiny["base"]), "--mtp-from", str(tiny["full"]), "-o", str(out), "--layout", "converter")
    assert r.exit_code == 0, r.stderr
    assert tensor_bytes(out) == tensor_bytes(tiny["ref"])  # names, order, shapes, types, bytes
    # the default (reflink) layout puts the tensors copied from the bigger input first: same tensors
    side = tmp_path / "side-reflink.gguf"
    assert run("sidecar", str(tiny["base"]), "--mtp-from", str(tiny["full"]), "-o", str(side)).exit_code == 0
    assert sorted(tensor_bytes(side)) == sorted(tensor_bytes(tiny["ref"]))
    got, want = GGUFModel(out), GGUFModel(tiny["ref"])
    differ = sorted(k for k in set(got.kv) | set(want.kv)
                    if not k.startswith(PROVENANCE) and (k not in got.kv or k not in want.kv
                                                         or got.kv[k].raw != want.kv[k].raw))
    assert differ == ["general.name"]  # the reference model is named after its layout
    assert got.get("mtpgraft.mtp.source") and len(got.get("mtpgraft.mtp.source_sha256")) == 64


def test_default_name_is_mtp_name_type_beside_the_base(tiny, tmp_path):
    base = tmp_path / "Tiny-Q4_K_M.gguf"
    base.write_bytes(tiny["base"].read_bytes())
    r = run("sidecar", str(base), "--mtp-from", str(tiny["full"]), "--mtp-type", "f16")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "mtp-Tiny-F16.gguf")
    assert {t for n, _, t, _ in tensor_bytes(tmp_path / "mtp-Tiny-F16.gguf") if n == "blk.4.attn_q.weight"} == {1}


def test_refusals_are_one_line_and_write_nothing(tiny, tmp_path):
    out = tmp_path / "side.gguf"
    out.write_bytes(b"keep")
    r = run("sidecar", str(tiny["base"]), "--mtp-from", str(tiny["full"]), "-o", str(out))
    assert r.exit_code == 4 and "exists; pass --force" in r.stderr and out.read_bytes() == b"keep"
    r = run("sidecar", str(tiny["base"]), "--mtp-from", str(tiny["moe-full"]), "-o", str(tmp_path / "x.gguf"))
    assert r.exit_code == 3 and r.stderr.count("\n") == 1
    assert "architecture mismatch: base is qwen35, MTP source is qwen35moe" in r.stderr
    assert not (tmp_path / "x.gguf").exists()
    r = run("sidecar", str(tiny["base"]), "--mtp-from", str(tiny["full"]), "-o", str(tmp_path / "d.gguf"),
            "--dry-run", "--json")
    assert r.exit_code == 0 and not (tmp_path / "d.gguf").exists()
    d = json.loads(r.stdout)
    plan = d["plan"]
    assert d["dry_run"] is True and plan["operation"] == "sidecar" and plan["outputs"] == [str(tmp_path / "d.gguf")]
    assert [p for p in tmp_path.iterdir() if "mtpgraft" in p.name] == []


@pytest.mark.tools
def test_sidecar_for_a_trunk_only_quant_drafts_at_1_with_md(tiny, tmp_path, llama_cpp_dir):
    base = tmp_path / "Tiny-Q4_K_M.gguf"
    subprocess.run([str(llama_cpp_dir / "llama-quantize"), str(tiny["base"]), str(base), "Q4_K_M"],
                   check=True, capture_output=True)
    r = run("sidecar", str(base), "--mtp-from", str(tiny["full"]), "--llama-cpp", str(llama_cpp_dir))
    assert r.exit_code == 0, r.stderr
    side = tmp_path / "mtp-Tiny-Q8_0.gguf"  # a quantized base gets a q8_0 head by default
    assert r.stdout.strip() == str(side)
    r = run("check", str(base), "--draft", str(side), "--quick", "--categories", "code", "--n-predict", "32",
            "--ctx", "512", "--json", "--llama-cpp", str(llama_cpp_dir))
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["verdict"] == "pass" and d["acceptance"] == 1.0
    assert d["models"][0]["draft"]["name"] == side.name  # the report lists the sidecar it ran with


def test_plan_sidecar_plans_from_base_and_source_as_frozen_data(tiny, tmp_path):
    """plan_sidecar(base, source) plans on its own (no attach plan, no temporary path): one shard
    holding the base's shared tensors and the source's MTP block, public and immutable, and left
    out of what the plan prints."""
    import dataclasses

    from mtpgraft.arch import SHARED_TENSORS
    from mtpgraft.sidecar import plan_sidecar

    out = tmp_path / "s.gguf"
    plan = plan_sidecar(tiny["base"], tiny["full"], out, mtp_type="keep")
    (shard,) = plan.shards
    assert shard.path == out and isinstance(shard.kvs, tuple) and isinstance(shard.tensors, tuple)
    assert sorted(t.name for t in shard.tensors) == sorted(r.name for r in GGUFModel(tiny["ref"]).refs)
    assert {t.src_path for t in shard.tensors if t.name in SHARED_TENSORS} == {tiny["base"]}
    assert {r.path for r in plan.source_refs} == {tiny["full"]}
    assert {"shards", "source_refs", "llama_quantize"}.isdisjoint(plan.to_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.shards = ()  # type: ignore[misc]
    assert not out.exists() and list(tmp_path.iterdir()) == []
    default = plan_sidecar(tiny["base"], tiny["full"], out_dir=tmp_path)
    assert default.outputs == [str(tmp_path / "mtp-Tiny-F32.gguf")]
