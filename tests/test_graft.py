"""attach / detach / extract / inspect on small generated GGUFs: offline, seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import quants
from helpers import tensor_bytes

from mtpgraft.errors import GGUFFormatError, GraftError, OutputExistsError, OutputWriteError
from mtpgraft.ggml_types import llama_quantizes as quantizable
from mtpgraft.gguf_io import CONVERTER, GGUFModel
from mtpgraft.graft import execute_graft, plan_attach, plan_detach, plan_extract
from mtpgraft.inspection import inspect_model
from mtpgraft.testmodels.synthetic import make_model, rewrite, split_model


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtpgraft", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def attach(base: Path, src: Path, out: Path, **kw) -> list[Path]:
    return execute_graft(plan_attach(base, src, out, **kw))


def assert_same_model(a: Path, b: Path, *, ignore_prefix: str = "mtpgraft.", ignore_keys=(),
                      ordered: bool = True) -> None:
    """Same keys (in order), same tensors byte for byte; `ordered`: in the same tensor order too (the
    reflink layout moves new tensors after the copied body, so only the converter layout keeps it)."""
    ma, mb = GGUFModel(a), GGUFModel(b)
    names_a, names_b = [r.name for r in ma.refs], [r.name for r in mb.refs]
    assert names_a == names_b if ordered else sorted(names_a) == sorted(names_b)
    for r in ma.refs:
        rb = mb.by_name[r.name]
        assert (r.info.ne, r.info.ggml_type) == (rb.info.ne, rb.info.ggml_type), r.name
        assert tensor_bytes(ma, r.name) == tensor_bytes(mb, r.name), r.name
    ka = [k for k in ma.kv if not k.startswith(ignore_prefix) and k not in ignore_keys]
    kb = [k for k in mb.kv if not k.startswith(ignore_prefix) and k not in ignore_keys]
    assert ka == kb
    for k in ka:
        assert ma.kv[k].raw == mb.kv[k].raw, k


@pytest.fixture(params=["qwen35", "qwen35moe"])
def models(request, tmp_path: Path) -> dict[str, Path]:
    arch = request.param
    return {
        "arch": arch,
        "full": make_model(tmp_path / "full.gguf", arch=arch),
        "base": make_model(tmp_path / "base.gguf", arch=arch, layout="base"),
        "mtp-only": make_model(tmp_path / "mtp-only.gguf", arch=arch, layout="mtp-only"),
        "base-q8": make_model(tmp_path / "base-q8.gguf", arch=arch, layout="base", wtype=Q.Q8_0),
    }


# ----------------------------------------------------------------------------- round trips


def test_detach_then_attach_reproduces_full_model_byte_for_byte(models, tmp_path):
    det = tmp_path / "det.gguf"
    execute_graft(plan_detach(models["full"], det), layout=CONVERTER)
    # detach in the converter's layout gives exactly what the converter's --no-mtp gives (our generated base)
    assert det.read_bytes() == models["base"].read_bytes()
    # the default (reflink) layout holds the same model, only its header is padded
    det2 = tmp_path / "det2.gguf"
    execute_graft(plan_detach(models["full"], det2))
    assert_same_model(models["base"], det2)
    assert det2.stat().st_size > det.stat().st_size
    out = tmp_path / "re.gguf"
    execute_graft(plan_attach(det, models["full"], tmp_path / "re-conv.gguf"), layout=CONVERTER)
    assert_same_model(models["full"], tmp_path / "re-conv.gguf")
    attach(det, models["full"], out)
    assert_same_model(models["full"], out, ordered=False)
    rep = inspect_model(out)
    assert rep.consistent and rep.mtp_present and rep.problems == []
    assert rep.block_count == 5 and rep.nextn_predict_layers == 1 and rep.trunk_layers == 4
    assert rep.provenance["mtpgraft.mtp.source"] == "full.gguf"
    assert len(rep.provenance["mtpgraft.mtp.source_sha256"]) == 64


def test_attach_from_mtp_only_sidecar_matches_full(models, tmp_path):
    out = tmp_path / "out.gguf"
    attach(models["base"], models["mtp-only"], out, mtp_type="keep")
    full, got = GGUFModel(models["full"]), GGUFModel(out)
    assert sorted(r.name for r in full.refs) == sorted(r.name for r in got.refs)
    for r in full.refs:
        assert tensor_bytes(full, r.name) == tensor_bytes(got, r.name)
    assert inspect_model(out).consistent


def test_extract_gives_converter_mtp_layout_and_attaches_back(models, tmp_path):
    side = tmp_path / "mtp-side.gguf"
    execute_graft(plan_extract(models["full"], side))
    m = GGUFModel(side)
    names = [r.name for r in m.refs]
    assert {"token_embd.weight", "output_norm.weight", "output.weight"} <= set(names)
    assert all(n.startswith("blk.4.") for n in names if n.startswith("blk."))
    rep = inspect_model(side)
    assert rep.layout == "mtp-only" and rep.consistent and rep.block_count == 5
    out = tmp_path / "out.gguf"
    attach(models["base"], side, out)
    assert inspect_model(out).consistent


def test_extract_default_name(models, tmp_path):
    plan = plan_extract(models["full"])
    assert Path(plan.outputs[0]).name == "mtp-full.gguf"


@pytest.mark.parametrize("mtp_type", ["keep", "q8_0"])
def test_sha256_provenance_is_of_copied_bytes(models, tmp_path, mtp_type):
    import hashlib

    out = tmp_path / "out.gguf"
    attach(models["base"], models["full"], out, mtp_type=mtp_type)
    full = GGUFModel(models["full"])
    h = hashlib.sha256()
    for r in full.refs:
        if r.name.startswith("blk.4."):
            h.update(tensor_bytes(full, r.name))
    assert GGUFModel(out).get("mtpgraft.mtp.source_sha256") == h.hexdigest()


# ----------------------------------------------------------------------------- types


def test_default_type_is_q8_0_on_quantized_base(models, tmp_path):
    out = tmp_path / "out.gguf"
    plan = plan_attach(models["base-q8"], models["full"], out)
    execute_graft(plan)
    m = GGUFModel(out)
    for a in plan.tensors:
        r = m.by_name[a.name]
        # 1-D stay F32; routers (ffn_gate_inp) keep their type, as llama-quantize leaves them
        want = "F32" if len(r.info.ne) == 1 else "Q8_0" if quantizable(a.name, r.info.ne) else a.from_type
        assert r.info.type_name == want, a.name
    # the converted values are a faithful Q8_0 of the source's F16
    full = GGUFModel(models["full"])
    src = np.frombuffer(tensor_bytes(full, "blk.4.attn_q.weight"), dtype=np.float16).astype(np.float32)
    got = quants.dequantize(np.frombuffer(tensor_bytes(m, "blk.4.attn_q.weight"), dtype=np.uint8), Q.Q8_0)
    assert np.allclose(got.reshape(-1), src, atol=np.abs(src).max() / 100)
    assert inspect_model(out).consistent


def test_default_keeps_float_type_on_unquantized_base(models, tmp_path):
    f32_src = make_model(tmp_path / "full32.gguf", arch=models["arch"], wtype=Q.F32)
    out = tmp_path / "out.gguf"
    plan = plan_attach(models["base"], f32_src, out)  # base is F16
    assert "F16" in plan.mtp_type
    execute_graft(plan)
    m = GGUFModel(out)
    assert m.by_name["blk.4.nextn.eh_proj.weight"].info.type_name == "F16"
    assert m.by_name["blk.4.nextn.enorm.weight"].info.type_name == "F32"


@pytest.mark.parametrize("mtp_type", ["f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "f32"])
def test_numpy_types(tmp_path, mtp_type):
    base = make_model(tmp_path / "base.gguf", layout="base", wtype=Q.Q8_0)
    full = make_model(tmp_path / "full.gguf")
    out = tmp_path / "out.gguf"
    attach(base, full, out, mtp_type=mtp_type)
    m = GGUFModel(out)
    assert m.by_name["blk.4.attn_q.weight"].info.type_name == mtp_type.upper()
    assert m.by_name["blk.4.attn_norm.weight"].info.type_name == "F32"
    assert inspect_model(out).consistent


def test_keep_copies_bytes_unchanged(models, tmp_path):
    out = tmp_path / "out.gguf"
    attach(models["base-q8"], models["full"], out, mtp_type="keep")
    full, got = GGUFModel(models["full"]), GGUFModel(out)
    for r in full.refs:
        if r.name.startswith("blk.4."):
            assert got.by_name[r.name].info.ggml_type == r.info.ggml_type
            assert tensor_bytes(got, r.name) == tensor_bytes(full, r.name)


def test_match_takes_types_of_the_last_trunk_layer(tmp_path):
    base = make_model(tmp_path / "base.gguf", layout="base", wtype=Q.Q4_0)
    full = make_model(tmp_path / "full.gguf")
    out = tmp_path / "out.gguf"
    plan = plan_attach(base, full, out, mtp_type="match")
    execute_graft(plan)
    m = GGUFModel(out)
    assert m.by_name["blk.4.ffn_down.weight"].info.type_name == "Q4_0"
    assert m.by_name["blk.4.attn_q.weight"].info.type_name == "Q4_0"  # twin in blk.3 (full attention)
    # no twin: eh_proj gets the type of the base's attn_output
    assert m.by_name["blk.4.nextn.eh_proj.weight"].info.type_name == "Q4_0"
    assert m.by_name["blk.4.nextn.enorm.weight"].info.type_name == "F32"


def test_k_quant_target_needs_llama_quantize(tmp_path, monkeypatch):
    """Q6_K for rows that fit its 256-wide blocks is llama-quantize's job (numpy cannot make K-quants):
    with no tool anywhere, attach says so at plan time (exit 1, one line, nothing written). Rows of 64
    do not fit: those tensors fall back, and then no tool is needed."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("MTPGRAFT_LLAMA_CPP", str(tmp_path / "nothing"))
    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    wide_base = make_model(tmp_path / "wbase.gguf", layout="base", n_embd=256)
    wide_full = make_model(tmp_path / "wfull.gguf", n_embd=256)
    r = run_cli("attach", wide_base, "--mtp-from", wide_full, "-o", tmp_path / "w.gguf", "--mtp-type", "q6_k")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 5 and len(lines) == 1, r.stderr
    assert lines[0].startswith("mtpgraft: error: ") and "llama-quantize" in lines[0], r.stderr
    assert not (tmp_path / "w.gguf").exists()
    plan = plan_attach(wide_base, wide_full, tmp_path / "w.gguf", mtp_type="keep")  # no tool needed
    assert not any(a.method == "llama-quantize" for a in plan.tensors)

    base = make_model(tmp_path / "base.gguf", layout="base")
    full = make_model(tmp_path / "full.gguf")
    r = run_cli("attach", base, "--mtp-from", full, "-o", tmp_path / "o.gguf", "--mtp-type", "q6_k")
    # rows of 64 don't fit K-quant blocks of 256 in this small model: falls back, no tool needed
    assert r.returncode == 0, r.stderr
    assert "does not fit Q6_K" in r.stderr


def test_k_quant_head_runs_the_resolved_llama_quantize_with_its_argv(tmp_path, monkeypatch):
    """The tool is a value of the plan (`tools=`: nothing is looked up, PATH holds none), and the
    head's llama-quantize command is the one llama-quantize command line: --pure, a rule per tensor,
    F32 in, the first type, one thread. A failed run leaves nothing."""
    import mtpgraft.graft.write as write
    from mtpgraft.errors import ToolFailedError
    from mtpgraft.quantize import QuantizeTools

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setenv("MTPGRAFT_LLAMA_CPP", str(tmp_path / "nothing"))
    wide_base = make_model(tmp_path / "wbase.gguf", layout="base", n_embd=256)
    wide_full = make_model(tmp_path / "wfull.gguf", n_embd=256)
    plan = plan_attach(wide_base, wide_full, tmp_path / "w.gguf", mtp_type="q6_k", tools=QuantizeTools("/x/quant"))
    assert plan.llama_quantize == "/x/quant" and "llama_quantize" not in plan.to_dict()
    quantized = [a.name for a in plan.tensors if a.method == "llama-quantize"]
    assert quantized and "blk.4.attn_q.weight" in quantized
    seen: list[list[str]] = []

    def run_tool(cmd, **kw):
        seen.append(cmd)
        raise ToolFailedError("llama-quantize failed", cmd=cmd, returncode=1)

    monkeypatch.setattr(write, "run_tool", run_tool)
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(ToolFailedError):
        execute_graft(plan)
    (cmd,) = seen
    rules = [x for name in quantized for x in ("--tensor-type", "^" + name.replace(".", "\\.") + "$=q6_k")]
    assert cmd[:3] == ["/x/quant", "--allow-requantize", "--pure"] and cmd[3:-4] == rules
    assert Path(cmd[-4]).name == "mtp-f32.gguf" and Path(cmd[-3]).name == "mtp-quant.gguf"
    assert cmd[-2:] == ["Q6_K", "1"]
    _no_outputs(tmp_path, before)


def test_iq_types_needing_imatrix_are_refused(models, tmp_path):
    with pytest.raises(GraftError, match="importance matrix"):
        plan_attach(models["base"], models["full"], tmp_path / "o.gguf", mtp_type="iq2_xxs")


# ----------------------------------------------------------------------------- renumbering, arrays


def test_renumbers_when_trunks_differ(tmp_path):
    base = make_model(tmp_path / "base.gguf", layout="base", trunk=8)
    donor = make_model(tmp_path / "donor.gguf", trunk=4)
    out = tmp_path / "out.gguf"
    plan = plan_attach(base, donor, out)
    assert any("renumbered" in w for w in plan.warnings)
    execute_graft(plan)
    rep = inspect_model(out)
    assert rep.consistent, rep.problems
    assert rep.block_count == 9 and rep.mtp_layers == [8]
    assert GGUFModel(out).get("qwen35.attention.recurrent_layers")[-1] is False
    d = GGUFModel(donor)
    assert tensor_bytes(GGUFModel(out), "blk.8.nextn.eh_proj.weight") != b""
    assert d.by_name["blk.4.nextn.eh_proj.weight"].info.nbytes == GGUFModel(out).by_name["blk.8.nextn.eh_proj.weight"].info.nbytes


def test_recurrent_layers_gets_false_when_source_lacks_array(tmp_path):
    base = make_model(tmp_path / "base.gguf", layout="base")
    donor = make_model(tmp_path / "donor.gguf", recurrent_array=False)
    out = tmp_path / "out.gguf"
    attach(base, donor, out)
    assert GGUFModel(out).get("qwen35.attention.recurrent_layers") == [True, True, True, False, False]


def test_replace_swaps_existing_block(tmp_path):
    a = make_model(tmp_path / "a.gguf", mtp_seed=1)
    b = make_model(tmp_path / "b.gguf", mtp_seed=2)
    with pytest.raises(GraftError, match="already has an MTP block"):
        plan_attach(a, b, tmp_path / "o.gguf")
    out = tmp_path / "o.gguf"
    attach(a, b, out, replace=True, mtp_type="keep")
    assert_same_model(b, out, ordered=False)


# ----------------------------------------------------------------------------- split sets


def test_split_base_keeps_sharding(tmp_path):
    base = make_model(tmp_path / "base.gguf", layout="base", wtype=Q.Q8_0)
    full = make_model(tmp_path / "full.gguf")
    shards = split_model(base, 3)
    out = tmp_path / "out.gguf"
    written = attach(shards[0], full, out)
    assert [p.name for p in written] == [f"out-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    rep = inspect_model(written[0])
    assert rep.consistent, rep.problems
    assert rep.mtp_present and rep.split["tensors_count"] == rep.tensor_count
    assert all(t.name in {r.name for r in GGUFModel(written[0]).shards[2].tensors} for t in rep.mtp_tensors)
    for p in written[1:]:
        m = GGUFModel(written[0])
        assert m.shards[written.index(p)].get("split.tensors.count") == rep.tensor_count


def test_split_source_is_accepted(tmp_path):
    base = make_model(tmp_path / "base.gguf", layout="base")
    full = make_model(tmp_path / "full.gguf")
    shards = split_model(full, 2)
    out = tmp_path / "out.gguf"
    attach(base, shards[0], out, mtp_type="keep")
    assert_same_model(full, out, ordered=False)


def test_inspect_catches_wrong_split_tensor_count(tmp_path):
    from gguf import GGUFValueType

    base = make_model(tmp_path / "base.gguf", layout="base")
    shards = split_model(base, 2)
    tmp = rewrite(shards[1], shards[1].with_suffix(".tmp"),
                  set_kv={"split.tensors.count": (GGUFValueType.INT32, 999, None)})
    tmp.replace(shards[1])
    rep = inspect_model(shards[0])
    assert not rep.consistent
    assert any("split.tensors.count" in p for p in rep.problems)


# ----------------------------------------------------------------------------- refusals


def _no_outputs(tmp_path: Path, before: set[str]) -> None:
    assert {p.name for p in tmp_path.iterdir()} == before, "a refusal left a file behind"


@pytest.mark.parametrize("case,message", [
    ("arch", "architecture mismatch"),
    ("gemma4", "separate assistant model"),
    ("unknown", "no in-file MTP support"),
    ("n_embd", "n_embd mismatch"),
    ("vocab_size", "vocabulary size mismatch"),
    ("tokens", "tokenizer tokens differ"),
    ("shape", "another model size"),
    ("no_mtp", "has no MTP block"),
    ("has_mtp", "already has an MTP block"),
    ("exists", "exists; pass --force"),
    ("self", "is one of the inputs"),
])
def test_refusals_exit_with_their_code_and_message_and_leave_nothing(tmp_path, case, message):
    base = make_model(tmp_path / "base.gguf", layout="base")
    src = tmp_path / "src.gguf"
    out = tmp_path / "out.gguf"
    if case == "arch":
        make_model(src, arch="qwen35moe")
    elif case == "gemma4":
        base = make_model(tmp_path / "base.gguf", layout="base", arch_name="gemma4")
        make_model(src, arch_name="gemma4")
    elif case == "unknown":
        base = make_model(tmp_path / "base.gguf", layout="base", arch_name="llama")
        make_model(src, arch_name="llama")
    elif case == "n_embd":
        make_model(src, n_embd=128)
    elif case == "vocab_size":
        make_model(src, vocab=64)
    elif case == "tokens":
        make_model(src, vocab_salt="x")
    elif case == "shape":
        make_model(src, n_ff=256)
    elif case == "no_mtp":
        make_model(src, layout="base")
    elif case == "has_mtp":
        base = make_model(tmp_path / "base.gguf")
        make_model(src)
    elif case == "exists":
        make_model(src)
        out.write_bytes(b"precious")
    elif case == "self":
        make_model(src)
        out = base
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli("attach", base, "--mtp-from", src, "-o", out)
    assert r.returncode == (4 if case in ("exists", "self") else 3)  # output refused / bad input
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    _no_outputs(tmp_path, before)
    if case == "exists":
        assert out.read_bytes() == b"precious"


def test_force_overwrites(tmp_path):
    base = make_model(tmp_path / "base.gguf", layout="base")
    src = make_model(tmp_path / "src.gguf")
    out = tmp_path / "out.gguf"
    out.write_bytes(b"old")
    r = run_cli("attach", base, "--mtp-from", src, "-o", out, "--force")
    assert r.returncode == 0, r.stderr
    assert inspect_model(out).consistent


@pytest.mark.parametrize("kind", ["truncated", "zero-header", "not-gguf", "empty", "missing", "directory"])
def test_bad_files_give_one_line_error(tmp_path, kind):
    good = make_model(tmp_path / "good.gguf")
    bad = tmp_path / "bad.gguf"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "zero-header":
        data = bytearray(good.read_bytes())
        data[:4096] = bytes(4096)
        bad.write_bytes(bytes(data))
    elif kind == "not-gguf":
        bad.write_text("hello, this is not a model\n" * 10)
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "directory":
        bad.mkdir()
    for args in (["inspect", bad], ["attach", bad, "--mtp-from", good, "-o", tmp_path / "o.gguf"],
                 ["attach", good, "--mtp-from", bad, "-o", tmp_path / "o.gguf"], ["detach", bad, "-o", tmp_path / "o.gguf"]):
        r = run_cli(*args)
        assert r.returncode == 3, args  # bad input
        assert "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stderr.startswith("mtpgraft: error: ")
    assert not (tmp_path / "o.gguf").exists()
    if kind == "zero-header":
        assert "zeroed" in run_cli("inspect", bad).stderr


def test_inputs_are_not_modified(tmp_path):
    base = make_model(tmp_path / "base.gguf", layout="base")
    src = make_model(tmp_path / "src.gguf")
    before = (base.read_bytes(), src.read_bytes(), base.stat().st_mtime_ns)
    attach(base, src, tmp_path / "out.gguf")
    assert (base.read_bytes(), src.read_bytes(), base.stat().st_mtime_ns) == before


# ----------------------------------------------------------------------------- inspect verdicts


def test_inspect_flags_each_broken_graft(tmp_path):
    from gguf import GGUFValueType as V

    full = make_model(tmp_path / "full.gguf")
    mtp_names = [r.name for r in GGUFModel(full).refs if r.name.startswith("blk.4.")]
    cases = {
        "no-key": (rewrite(full, tmp_path / "a.gguf", drop_keys=["qwen35.nextn_predict_layers"]), "nextn_predict_layers is missing"),
        "bc-not-bumped": (rewrite(full, tmp_path / "b.gguf", set_kv={"qwen35.block_count": (V.UINT32, 4, None),
                                                                       "qwen35.attention.recurrent_layers": (V.ARRAY, [True, True, True, False], V.BOOL)}),
                          "does not count the MTP block"),
        "no-tensors": (rewrite(full, tmp_path / "c.gguf", drop_tensors=mtp_names), "has no tensors"),
        "short-array": (rewrite(full, tmp_path / "d.gguf", set_kv={"qwen35.attention.recurrent_layers": (V.ARRAY, [True, True, True, False], V.BOOL)}),
                        "wrong array length; expected 5, got 4"),
    }
    for name, (path, msg) in cases.items():
        rep = inspect_model(path)
        assert not rep.consistent, name
        assert any(msg in p for p in rep.problems), (name, rep.problems)
        r = run_cli("inspect", path, "--json")
        assert r.returncode == 1  # the exit status is the verdict; the report is printed all the same
        d = json.loads(r.stdout)
        assert d["consistent"] is False and d["problems"]
        assert r.stderr == f"mtpgraft: error: {path}: llama.cpp would not load it: {d['problems'][0]}" + (
            f" (and {len(d['problems']) - 1} more)" if len(d["problems"]) > 1 else "") + "\n"
        r = run_cli("inspect", path)
        assert r.returncode == 1 and "verdict:         INCONSISTENT" in r.stdout


def test_inspect_json_fields(tmp_path):
    full = make_model(tmp_path / "full.gguf", arch="qwen35moe")
    r = run_cli("inspect", full, "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # consistent: exit 0
    assert run_cli("inspect", full).returncode == 0
    d = json.loads(r.stdout)
    for k in ("architecture", "block_count", "nextn_predict_layers", "trunk_layers", "mtp_present",
              "mtp_tensors", "consistent", "problems"):
        assert k in d
    assert d["architecture"] == "qwen35moe" and d["mtp_present"] is True and d["consistent"] is True
    assert d["trunk_layers"] == 4 and d["block_count"] == 5
    assert {"name", "type", "shape", "nbytes"} <= set(d["mtp_tensors"][0])
    assert any(t["name"] == "blk.4.ffn_gate_exps.weight" for t in d["mtp_tensors"])


def test_dry_run_writes_nothing_and_lists_the_plan(tmp_path):
    base = make_model(tmp_path / "base.gguf", layout="base", wtype=Q.Q8_0)
    src = make_model(tmp_path / "src.gguf")
    before = {p.name for p in tmp_path.iterdir()}
    r = run_cli("attach", base, "--mtp-from", src, "-o", tmp_path / "out.gguf", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "blk.4.nextn.eh_proj.weight" in r.stdout and "F16 -> Q8_0" in r.stdout
    assert "qwen35.block_count: 4 -> 5" in r.stdout
    _no_outputs(tmp_path, before)
    r = run_cli("attach", base, "--mtp-from", src, "-o", tmp_path / "out.gguf", "--dry-run", "--json")
    d = json.loads(r.stdout)
    assert d["dry_run"] is True and len(d["plan"]["tensors"]) == 15
    _no_outputs(tmp_path, before)


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import mtpgraft.graft.write as g

    base = make_model(tmp_path / "base.gguf", layout="base")
    src = make_model(tmp_path / "src.gguf")
    plan = plan_attach(base, src, tmp_path / "out.gguf", mtp_type="q8_0")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(g, "write_gguf", boom)
    before = {p.name for p in tmp_path.iterdir()}
    with pytest.raises(OutputWriteError, match=r"^no space left on the device writing .*out\.gguf \(\d"):
        execute_graft(plan)
    _no_outputs(tmp_path, before)


def test_reader_rejects_garbage_with_typed_error(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGUF" + b"\xff" * 40)
    with pytest.raises(GGUFFormatError):
        GGUFModel(p)


def test_output_exists_error_type(tmp_path):
    base = make_model(tmp_path / "base.gguf", layout="base")
    src = make_model(tmp_path / "src.gguf")
    (tmp_path / "o.gguf").write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        plan_attach(base, src, tmp_path / "o.gguf")


@pytest.mark.parametrize("arch", ["qwen35", "qwen35moe"])
@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_graft_of_converter_layout_models_equals_the_converted_full_model(tmp_path, arch, dtype):
    """testmodels writes keys, tensor names and order as convert_hf_to_gguf.py does (full and --no-mtp):
    base + MTP block grafted must be the converter's full file, tensor order included."""
    from mtpgraft.testmodels import build_tiny_model

    full = build_tiny_model(tmp_path / "full.gguf", arch=arch, layout="full", dtype=dtype)
    base = build_tiny_model(tmp_path / "base.gguf", arch=arch, layout="base", dtype=dtype)
    side = build_tiny_model(tmp_path / "mtp.gguf", arch=arch, layout="mtp-only", dtype=dtype)
    out = tmp_path / "out.gguf"
    attach(base, full, out)
    named = ("general.name",)  # each test model carries its variant's name; the graft keeps the base's
    assert_same_model(full, out, ignore_keys=named)
    out2 = tmp_path / "out2.gguf"
    attach(base, side, out2)
    assert_same_model(full, out2, ignore_keys=named)
    det = tmp_path / "det.gguf"
    execute_graft(plan_detach(full, det))
    assert_same_model(base, det, ignore_keys=named)


def test_replace_repairs_broken_grafts(tmp_path):
    """A published file with a bad graft is fixed by grafting again with --replace."""
    from gguf import GGUFValueType as V

    full = make_model(tmp_path / "full.gguf")
    rec4 = (V.ARRAY, [True, True, True, False], V.BOOL)
    broken = {
        "no-key": rewrite(full, tmp_path / "a.gguf", drop_keys=["qwen35.nextn_predict_layers"]),
        "bc-not-bumped": rewrite(full, tmp_path / "b.gguf", set_kv={"qwen35.block_count": (V.UINT32, 4, None),
                                                                    "qwen35.attention.recurrent_layers": rec4}),
        "short-array": rewrite(full, tmp_path / "d.gguf", set_kv={"qwen35.attention.recurrent_layers": rec4}),
    }
    for name, path in broken.items():
        assert not inspect_model(path).consistent
        out = tmp_path / f"fixed-{name}.gguf"
        attach(path, full, out, replace=True, mtp_type="keep")
        rep = inspect_model(out)
        assert rep.consistent, (name, rep.problems)
        assert_same_model(full, out, ordered=False)  # every trunk layer kept, the MTP block back in place
        det = tmp_path / f"det-{name}.gguf"
        execute_graft(plan_detach(path, det))
        assert inspect_model(det).consistent and inspect_model(det).block_count == 4


def test_copying_grafts_never_load_numpy_or_gguf_py(tmp_path):
    """attach (type kept), detach, extract and inspect read and copy GGUF with the struct module
    alone: importing numpy and gguf-py costs a tenth of a second, a third of a graft on btrfs. The
    paths that convert tensors load them (a q8_0 attach of an F32 head here), which this checks too."""
    full = make_model(tmp_path / "full.gguf", wtype=Q.F32)
    base = make_model(tmp_path / "base.gguf", layout="base", wtype=Q.F32)
    probe = ("import sys\nfrom mtpgraft.cli import main\nsys.argv = ['mtpgraft', '-q', *sys.argv[1:]]\n"
             "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "print(sorted(m for m in ('numpy', 'gguf') if m in sys.modules))\n")
    runs = {"attach keep": ["attach", base, "--mtp-from", full, "-o", tmp_path / "a.gguf", "--mtp-type", "keep"],
            "detach": ["detach", full, "-o", tmp_path / "d.gguf"],
            "extract": ["extract", full, "-o", tmp_path / "e.gguf"],
            "inspect": ["inspect", full, "--json"],
            "attach q8_0": ["attach", base, "--mtp-from", full, "-o", tmp_path / "q.gguf", "--mtp-type", "q8_0"]}
    loaded = {}
    for name, args in runs.items():
        r = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (name, r.stderr)
        loaded[name] = r.stdout.strip().splitlines()[-1]
    assert loaded == {**{n: "[]" for n in runs}, "attach q8_0": "['gguf', 'numpy']"}


# ----------------------------------------------------------------------------- the invariant


@pytest.mark.parametrize("how", ["corrupt", "drop", "key", "trunk-layer-replaced"])
def test_a_failed_invariant_removes_the_output_and_says_it_is_a_bug(tmp_path, monkeypatch, how):
    """A writer (or a plan) that loses a base tensor, changes a byte or a key: the output is removed and
    the error says it is a bug (exit 70), never the user's."""
    from click.testing import CliRunner

    import mtpgraft.commands  # noqa: F401 - registers the commands
    import mtpgraft.graft.plan as graft_plan
    import mtpgraft.graft.write as graft_write
    from mtpgraft.cli import cli
    from mtpgraft.gguf_io import GGUFFile

    base = make_model(tmp_path / "base.gguf", layout="base")
    src = make_model(tmp_path / "src.gguf")
    real_write, real_blocks = graft_write.write_gguf, graft_plan.blocks_of

    def write(fh, kvs, tensors, **kw):
        if how == "drop":
            tensors = [t for t in tensors if t.name != "blk.2.ffn_up.weight"]
        if how == "key":
            kvs = [kv for kv in kvs if kv.key != "general.name"]
        written = real_write(fh, kvs, tensors, **kw)
        if how == "corrupt":
            fh.flush()
            f = GGUFFile(fh.name)
            t = next(t for t in f.tensors if t.name == "blk.1.attn_norm.weight")
            pos = f.data_offset + t.offset + t.nbytes // 2
            fh.seek(pos)
            byte = open(fh.name, "rb").read()[pos]
            fh.write(bytes([byte ^ 0x40]))
            fh.flush()
        return written

    def blocks(model, st):  # the old bug: the last trunk layer taken for the MTP block
        b = real_blocks(model, st)
        return type(b)(b.trunk - 1, b.mtp, None, None, False) if model.path == base else b

    monkeypatch.setattr(graft_write, "write_gguf", write)
    if how == "trunk-layer-replaced":
        monkeypatch.setattr(graft_plan, "blocks_of", blocks)
    before = {p.name for p in tmp_path.iterdir()}
    res = CliRunner().invoke(cli, ["attach", str(base), "--mtp-from", str(src), "-o", str(tmp_path / "out.gguf")])
    assert res.exit_code == 70, res.output
    lines = [ln for ln in res.stderr.strip().splitlines() if not ln.startswith("mtpgraft: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("mtpgraft: error: internal error (a bug in mtpgraft"), lines
    assert "it was removed" in lines[0]
    want = {"corrupt": "blk.1.attn_norm.weight's bytes differ", "drop": "blk.2.ffn_up.weight",
            "key": "general.name", "trunk-layer-replaced": "base's tensor blk.3."}[how]
    assert want in lines[0], lines[0]
    _no_outputs(tmp_path, before)


def test_the_invariant_passes_every_graft_and_costs_no_second_body_read(tmp_path, monkeypatch):
    """attach (copy and convert), detach, extract and sidecar all pass the check; the copied body is
    read back only at the ends of each tensor (a window of invariant.WINDOW bytes at each end)."""
    import os as _os

    import mtpgraft.graft.invariant as inv
    from mtpgraft.sidecar import plan_sidecar

    base = make_model(tmp_path / "base.gguf", layout="base")
    full = make_model(tmp_path / "full.gguf")
    reads: list[int] = []
    real = _os.pread
    monkeypatch.setattr(inv.os, "pread", lambda fd, n, off: reads.append(n) or real(fd, n, off))
    attach(base, full, tmp_path / "a.gguf", mtp_type="keep")
    attach(base, full, tmp_path / "q.gguf", mtp_type="q8_0")
    execute_graft(plan_detach(full, tmp_path / "d.gguf"))
    execute_graft(plan_extract(full, tmp_path / "e.gguf"))
    execute_graft(plan_sidecar(base, full, tmp_path / "s.gguf"))
    assert reads and max(reads) <= inv.WINDOW
    for name in ("a", "q", "d", "e", "s"):
        assert inspect_model(tmp_path / f"{name}.gguf").consistent, name
