"""Grafts proven on the real llama.cpp tools: llama-server with draft-mtp, llama-quantize,
llama-gguf-split. The tiny models have known acceptance (mtpgraft.testmodels)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from gguf import GGUFValueType as V

from mtpgraft.check.server import LlamaServer
from mtpgraft.errors import ServerError
from mtpgraft.gguf_io import GGUFModel
from mtpgraft.graft import execute_graft, plan_attach, plan_extract
from mtpgraft.inspection import inspect_model
from mtpgraft.testmodels import CODE_PROMPT, PROSE_PROMPT, build_tiny_model
from mtpgraft.testmodels.synthetic import rewrite
from mtpgraft.tools import find_tool

pytestmark = pytest.mark.tools
N_PREDICT = 48


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    out = {}
    for name, kw in {
        "full-aligned": dict(layout="full", head="aligned"),
        "full-mixed": dict(layout="full", head="mixed"),
        "full-random": dict(layout="full", head="random"),
        "base": dict(layout="base"),
        "base-norec": dict(layout="base", recurrent_layers_array=False),
    }.items():
        out[name] = build_tiny_model(d / f"{name}.gguf", dtype="f16", **kw)
    return out


def draft_stats(model: Path, prompt: str = CODE_PROMPT, *, draft_model: Path | None = None,
                n_max: int = 3, mtp: bool = True) -> tuple[int, int, str]:
    """(accepted, drafted, content) of one greedy completion."""
    with LlamaServer(model, spec_type="mtp" if mtp else None, draft_model=draft_model,
                     draft_n_max=n_max if mtp else None) as s:
        r = s.completion(prompt, n_predict=N_PREDICT, temperature=0.0)
    t = r["timings"]
    return int(t.get("draft_n_accepted", 0)), int(t.get("draft_n", 0)), r["content"]


def graft(base: Path, donor: Path, out: Path, **kw) -> Path:
    return execute_graft(plan_attach(base, donor, out, **kw))[0]


def quantize(src: Path, out: Path, qtype: str) -> Path:
    subprocess.run([str(find_tool("llama-quantize")), str(src), str(out), qtype], check=True,
                   capture_output=True, timeout=300)
    return out


# ----------------------------------------------------------------------------- acceptance after a graft


def test_attach_aligned_head_gives_full_acceptance(tiny, tmp_path):
    out = graft(tiny["base"], tiny["full-aligned"], tmp_path / "g.gguf")
    acc, drafted, _ = draft_stats(out)
    assert drafted > 0 and acc == drafted


def test_attach_mixed_head_is_lower_on_prose_than_code(tiny, tmp_path):
    out = graft(tiny["base"], tiny["full-mixed"], tmp_path / "g.gguf")
    acc_c, n_c, _ = draft_stats(out, CODE_PROMPT)
    acc_p, n_p, _ = draft_stats(out, PROSE_PROMPT)
    assert n_c > 0 and n_p > 0
    assert acc_c / n_c == 1.0
    assert acc_p / n_p < 0.7


def test_attach_random_head_gives_no_acceptance(tiny, tmp_path):
    out = graft(tiny["base"], tiny["full-random"], tmp_path / "g.gguf")
    acc, drafted, _ = draft_stats(out)
    assert drafted > 0 and acc / drafted < 0.1


def test_attach_onto_base_without_recurrent_array(tiny, tmp_path):
    out = graft(tiny["base-norec"], tiny["full-aligned"], tmp_path / "g.gguf")
    assert "qwen35.attention.recurrent_layers" not in GGUFModel(out).kv
    acc, drafted, _ = draft_stats(out)
    assert drafted > 0 and acc == drafted


def test_greedy_output_with_mtp_equals_output_without(tiny, tmp_path):
    for head in ("aligned", "mixed", "random"):
        out = graft(tiny["base"], tiny[f"full-{head}"], tmp_path / f"{head}.gguf")
        for prompt in (CODE_PROMPT, PROSE_PROMPT):
            *_, with_mtp = draft_stats(out, prompt)
            *_, without = draft_stats(out, prompt, mtp=False)
            assert with_mtp == without and len(without) > 0, (head, prompt)


# ----------------------------------------------------------------------------- quantized bases


@pytest.fixture(scope="module")
def quant_bases(tiny, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("qbase")
    return {q: quantize(tiny["base"], d / f"base-{q}.gguf", q) for q in ("Q4_K_M", "Q4_0", "Q8_0")}


@pytest.mark.parametrize("qtype", ["Q4_K_M", "Q4_0", "Q8_0"])
@pytest.mark.parametrize("mtp_type", ["q8_0", "keep", "match"])
def test_attach_onto_quantized_base(tiny, quant_bases, tmp_path, qtype, mtp_type):
    base = quant_bases[qtype]
    plan = plan_attach(base, tiny["full-aligned"], tmp_path / "g.gguf", mtp_type=mtp_type)
    out = execute_graft(plan)[0]
    m = GGUFModel(out)
    b = GGUFModel(base)
    for a in plan.tensors:
        got = m.by_name[a.name].info.type_name
        assert got == a.to_type
        if len(a.shape) == 1:
            assert got == "F32"
        elif mtp_type == "q8_0":
            assert got == "Q8_0"
        elif mtp_type == "keep":
            assert got == "F16"
        elif mtp_type == "match" and not a.name.split(".", 2)[2].startswith("nextn"):
            twin = a.name.replace("blk.4.", "blk.3.")
            assert got == b.by_name[twin].info.type_name
    if mtp_type == "match" and qtype == "Q4_K_M":
        assert any(a.method == "llama-quantize" for a in plan.tensors)  # K-quants need the real tool
    rep = inspect_model(out)
    assert rep.consistent, rep.problems
    acc, drafted, _ = draft_stats(out)
    assert drafted > 0 and acc == drafted


def test_quantize_after_attach_keeps_mtp_working(tiny, tmp_path):
    """The other order: graft at F16, then the real llama-quantize (MTP block pinned to q8_0)."""
    full = graft(tiny["base"], tiny["full-aligned"], tmp_path / "g.gguf")
    out = tmp_path / "q.gguf"
    subprocess.run([str(find_tool("llama-quantize")), "--tensor-type", r"blk\.4\.=q8_0", str(full), str(out),
                    "Q4_K_M"], check=True, capture_output=True, timeout=300)
    assert inspect_model(out).consistent
    acc, drafted, _ = draft_stats(out)
    assert drafted > 0 and acc == drafted


# ----------------------------------------------------------------------------- split sets and sidecars


def test_split_base_made_by_gguf_split(tiny, tmp_path):
    split = find_tool("llama-gguf-split")
    subprocess.run([str(split), "--split", "--split-max-tensors", "20", str(tiny["base"]), str(tmp_path / "base")],
                   check=True, capture_output=True, timeout=120)
    shards = sorted(tmp_path.glob("base-0000*-of-*.gguf"))
    assert len(shards) >= 3
    outs = execute_graft(plan_attach(shards[0], tiny["full-aligned"], tmp_path / "g.gguf"))
    assert len(outs) == len(shards)
    rep = inspect_model(outs[0])
    assert rep.consistent and rep.mtp_present
    acc, drafted, _ = draft_stats(outs[0])
    assert drafted > 0 and acc == drafted
    # and the grafted split set merges back with the real tool
    merged = tmp_path / "merged.gguf"
    subprocess.run([str(split), "--merge", str(outs[0]), str(merged)], check=True, capture_output=True, timeout=120)
    assert inspect_model(merged).consistent


def test_extracted_sidecar_works_with_md(tiny, tmp_path):
    side = execute_graft(plan_extract(tiny["full-aligned"], tmp_path / "mtp-tiny.gguf"))[0]
    acc, drafted, _ = draft_stats(tiny["base"], draft_model=side)
    assert drafted > 0 and acc == drafted


def test_attach_from_sidecar(tiny, tmp_path):
    side = execute_graft(plan_extract(tiny["full-aligned"], tmp_path / "mtp-tiny.gguf"))[0]
    out = graft(tiny["base"], side, tmp_path / "g.gguf", mtp_type="keep")
    acc, drafted, _ = draft_stats(out)
    assert drafted > 0 and acc == drafted


# ----------------------------------------------------------------------------- broken grafts


def test_broken_grafts_are_caught_by_inspect_and_refused_by_llama_server(tiny, tmp_path):
    full = tiny["full-aligned"]
    mtp = [r.name for r in GGUFModel(full).refs if r.name.startswith("blk.4.")]
    rec4 = (V.ARRAY, [True, True, True, False], V.BOOL)
    cases = {
        "tensors without key": (rewrite(full, tmp_path / "a.gguf", drop_keys=["qwen35.nextn_predict_layers"]),
                                "nextn_predict_layers is missing", "not found|wrong number of tensors"),
        "block_count not bumped": (rewrite(full, tmp_path / "b.gguf", set_kv={
            "qwen35.block_count": (V.UINT32, 4, None), "qwen35.attention.recurrent_layers": rec4}),
            "does not count the MTP block", "blk.3.nextn.eh_proj.weight' not found"),
        "key without tensors": (rewrite(full, tmp_path / "c.gguf", drop_tensors=mtp),
                                "has no tensors", "blk.4.attn_norm.weight' not found"),
        "array too short": (rewrite(full, tmp_path / "d.gguf", set_kv={"qwen35.attention.recurrent_layers": rec4}),
                            "wrong array length", "wrong array length"),
    }
    import re

    for name, (path, problem, server_says) in cases.items():
        rep = inspect_model(path)
        assert not rep.consistent, name
        assert any(problem in p for p in rep.problems), (name, rep.problems)
        with pytest.raises(ServerError) as ei:
            LlamaServer(path, spec_type="mtp", startup_timeout=60).start()
        assert re.search(server_says, str(ei.value) + ei.value.log_tail), (name, str(ei.value))
        # and grafting again repairs it: consistent, loads, every draft accepted
        fixed = graft(path, tiny["full-aligned"], tmp_path / f"fixed-{len(name)}-{name[:3]}.gguf",
                      replace=name != "key without tensors")
        assert inspect_model(fixed).consistent, name
        acc, drafted, _ = draft_stats(fixed)
        assert drafted > 0 and acc == drafted, name


def test_wrong_split_tensor_count_is_caught_and_refused(tiny, tmp_path):
    split = find_tool("llama-gguf-split")
    subprocess.run([str(split), "--split", "--split-max-tensors", "40", str(tiny["full-aligned"]),
                    str(tmp_path / "m")], check=True, capture_output=True, timeout=120)
    shards = sorted(tmp_path.glob("m-0000*-of-*.gguf"))
    n = GGUFModel(shards[0]).get("split.tensors.count")
    for s in shards:  # every shard agrees on the wrong count, as a careless graft would leave it
        tmp = s.with_suffix(".tmp")
        rewrite(s, tmp, set_kv={"split.tensors.count": (V.INT32, n - 15, None)})
        tmp.replace(s)
    rep = inspect_model(shards[0])
    assert not rep.consistent and any("split.tensors.count" in p for p in rep.problems)
    with pytest.raises(ServerError) as ei:
        LlamaServer(shards[0], startup_timeout=60).start()
    assert "tensors expected" in str(ei.value) + ei.value.log_tail or "corrupted" in str(ei.value) + ei.value.log_tail


def test_model_without_mtp_fails_with_mtp_requested(tiny):
    with pytest.raises(ServerError, match="MTP"):
        LlamaServer(tiny["base"], spec_type="mtp", startup_timeout=60).start()
