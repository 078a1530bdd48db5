"""MTP heads fetched from the (loopback) Hub, grafted, and run by the real llama-server.

The tiny qwen35 model with the "aligned" head accepts every draft (mtpgraft.testmodels). Its head is
written back as a Hugging Face checkpoint (the inverse of the converter: names, reversed shapes, the
norms' +1 taken off), served as a safetensors repo, grafted from hf:// onto the trunk-only model,
and must accept every draft again in llama-server; the GGUF donor path is run the same way.
(The aligned head's acceptance rests on eh_proj, so this proves llama.cpp loads and runs what the
Hub path builds; that every byte is the real converter's is proven in test_sources_convert.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft.check.server import LlamaServer
from mtpgraft.cli import cli
from mtpgraft.gguf_io import GGUFModel
from mtpgraft.sources.convert.rules import QWEN_MTP_TOP, QWEN_NAMES
from mtpgraft.sources.safetensors import write_safetensors
from mtpgraft.testmodels import CODE_PROMPT, build_tiny_model

pytestmark = pytest.mark.tools


@pytest.fixture(autouse=True)
def _hermetic(hf_hermetic, monkeypatch, llama_cpp_dir):
    """A private mtpgraft cache and HF home (conftest.hf_hermetic); the tools are found through
    $MTPGRAFT_LLAMA_CPP, as the toolchain cache is not where MTPGRAFT_CACHE_DIR now points."""
    monkeypatch.setenv("MTPGRAFT_LLAMA_CPP", str(llama_cpp_dir))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    return {"full": build_tiny_model(d / "full.gguf", layout="full", head="aligned", dtype="f16"),
            "base": build_tiny_model(d / "base.gguf", layout="base", dtype="f16")}


def as_checkpoint(model: Path, out: Path) -> dict[str, bytes]:
    """The model's MTP block as Qwen3.5 checkpoint files (config.json, model.safetensors)."""
    m = GGUFModel(model)
    a = m.arch
    trunk = m.get(f"{a}.block_count") - m.get(f"{a}.nextn_predict_layers")
    back = {v: k for k, v in QWEN_NAMES.items()}
    top = {f"{v}.weight": k for k, v in QWEN_MTP_TOP.items()}
    tensors: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    with open(model, "rb") as f:
        for r in m.refs:
            if not r.name.startswith(f"blk.{trunk}."):
                continue
            f.seek(r.abs_offset)
            raw = f.read(r.info.nbytes)
            hf = back[r.name.split(".", 2)[2]]
            name = (f"mtp.{top[hf]}.weight" if hf in top else f"mtp.layers.0.{hf}")
            if r.info.type_name == "F32":  # norms: the converter adds 1 in float32
                raw = (np.frombuffer(raw, np.float32) - np.float32(1)).astype(np.float32).tobytes()
            tensors[name] = (r.info.type_name, tuple(reversed(r.info.ne)), raw)
    text = {"num_hidden_layers": trunk, "mtp_num_hidden_layers": 1, "hidden_size": m.get(f"{a}.embedding_length"),
            "intermediate_size": m.get(f"{a}.feed_forward_length"),
            "num_attention_heads": m.get(f"{a}.attention.head_count"),
            "num_key_value_heads": m.get(f"{a}.attention.head_count_kv"), "head_dim": m.get(f"{a}.attention.key_length"),
            "vocab_size": m.kv["tokenizer.ggml.tokens"].count,
            "layer_types": ["linear_attention" if x else "full_attention"
                            for x in m.get(f"{a}.attention.recurrent_layers")[:trunk]],
            "full_attention_interval": m.get(f"{a}.full_attention_interval")}
    out.mkdir(parents=True)
    write_safetensors(out / "model.safetensors", dict(sorted(tensors.items())))
    (out / "config.json").write_text(json.dumps({"architectures": ["Qwen3_5ForConditionalGeneration"],
                                                 "text_config": text}))
    return {p.name: p.read_bytes() for p in out.iterdir()}


def accepted(model: Path) -> tuple[int, int]:
    with LlamaServer(model, spec_type="mtp", draft_n_max=3) as s:
        t = s.completion(CODE_PROMPT, n_predict=48, temperature=0.0)["timings"]
    return int(t.get("draft_n_accepted", 0)), int(t.get("draft_n", 0))


def test_head_from_a_hub_safetensors_repo_runs_in_llama_server(hub, tiny, tmp_path):
    commit = hub.put_files("tester/Tiny-HF", as_checkpoint(tiny["full"], tmp_path / "ckpt"))
    out = tmp_path / "grafted.gguf"
    r = CliRunner().invoke(cli, ["attach", str(tiny["base"]), "--mtp-from", "hf://tester/Tiny-HF", "-o", str(out),
                                 "--endpoint", hub.url])
    assert r.exit_code == 0, r.output
    g = GGUFModel(out)
    assert g.get("mtpgraft.mtp.source") == f"hf://tester/Tiny-HF@{commit}"
    acc, drafted = accepted(out)
    assert drafted > 0 and acc == drafted


def test_head_from_a_hub_gguf_runs_in_llama_server(hub, tiny, tmp_path):
    hub.put_files("tester/Tiny-GGUF", {"Tiny-F16.gguf": tiny["full"].read_bytes()})
    out = tmp_path / "grafted.gguf"
    r = CliRunner().invoke(cli, ["attach", str(tiny["base"]), "--mtp-from", "hf://tester/Tiny-GGUF:F16", "-o", str(out),
                                 "--endpoint", hub.url])
    assert r.exit_code == 0, r.output
    acc, drafted = accepted(out)
    assert drafted > 0 and acc == drafted
    assert hub.bytes_sent < tiny["full"].stat().st_size / 2
