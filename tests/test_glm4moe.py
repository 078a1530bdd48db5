"""glm4moe (GLM-4.5/4.6/4.7) on the real llama-server: the tiny test models
(mtpgraft.testmodels.glm4moe) and what every mtpgraft command does with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGUFReader
from helpers import gguf_keys as _keys
from helpers import gguf_tensors as _tensors
from tinyserve import rate, run, serve

from mtpgraft import testmodels as tm
from mtpgraft.errors import ServerError
from mtpgraft.testmodels import glm4moe as glm

NEXTN = {"nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight", "nextn.shared_head_norm.weight"}
MOE = {"ffn_gate_inp.weight", "exp_probs_b.bias", "ffn_gate_exps.weight", "ffn_up_exps.weight",
       "ffn_down_exps.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight", "ffn_down_shexp.weight"}
DENSE = {"ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"}


def _kv(r: GGUFReader, key: str):
    f = r.fields.get(f"glm4moe.{key}")
    return None if f is None else f.contents()


def _blocks(r: GGUFReader) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for t in r.tensors:
        if t.name.startswith("blk."):
            _, i, rest = t.name.split(".", 2)
            out.setdefault(int(i), set()).add(rest)
    return out


# ------------------------------------------------------------------------------------- offline


def test_layouts_follow_the_converter(tiny_glm_models):
    full = GGUFReader(tiny_glm_models["full-aligned"])
    assert full.fields["general.architecture"].contents() == "glm4moe"
    assert (_kv(full, "block_count"), _kv(full, "nextn_predict_layers")) == (5, 1)
    assert (_kv(full, "leading_dense_block_count"), _kv(full, "expert_count"),
            _kv(full, "expert_used_count"), _kv(full, "expert_shared_count")) == (1, 4, 2, 1)
    assert _kv(full, "expert_gating_func") == 2 and _kv(full, "expert_weights_norm") is True
    blocks = _blocks(full)
    assert sorted(blocks) == [0, 1, 2, 3, 4]
    assert DENSE <= blocks[0] and not MOE & blocks[0]
    for i in (1, 2, 3, 4):  # MoE after the dense lead; the MTP block is an MoE layer too
        assert MOE <= blocks[i] and not DENSE & blocks[i], i
    assert {"attn_q.bias", "attn_k.bias", "attn_v.bias"} <= blocks[4]
    assert NEXTN <= blocks[4] and not any(NEXTN & blocks[i] for i in range(4))
    assert len(blocks[4]) == glm.MTP_TENSOR_COUNT
    for t in full.tensors:
        if len(t.shape) > 1 and "gate_inp" not in t.name:
            assert t.shape[0] % 256 == 0, t.name

    base, key = GGUFReader(tiny_glm_models["base"]), GGUFReader(tiny_glm_models["base-key"])
    assert (_kv(base, "block_count"), _kv(base, "nextn_predict_layers")) == (4, None)
    assert (_kv(key, "block_count"), _kv(key, "nextn_predict_layers")) == (5, 1)
    full_t = {t.name: bytes(t.data) for t in full.tensors}
    for r in (base, key):
        names = [t.name for t in r.tensors]
        assert names == [n for n in full_t if not n.startswith("blk.4.")]
        assert all(bytes(t.data) == full_t[t.name] for t in r.tensors)

    mtp = GGUFReader(tiny_glm_models["mtp-only-aligned"])
    assert sorted(_blocks(mtp)) == [4] and _kv(mtp, "block_count") == 5
    assert {t.name for t in mtp.tensors} - {f"blk.4.{s}" for s in blocks[4]} == {
        "token_embd.weight", "output_norm.weight", "output.weight"}
    assert all(bytes(t.data) == full_t[t.name] for t in mtp.tensors)


def test_heads_differ_only_in_the_mtp_block(tiny_glm_models):
    heads = [{t.name: bytes(t.data) for t in GGUFReader(tiny_glm_models[f"full-{h}"]).tensors}
             for h in tm.HEADS]
    for other in heads[1:]:
        differ = {n for n in heads[0] if heads[0][n] != other[n]}
        assert differ and all(n.startswith("blk.4.") for n in differ)


# ---------------------------------------------------------------------------------- llama-server


@pytest.mark.tools
@pytest.mark.parametrize("name", ["base", "base-key", "full-aligned"])
def test_greedy_output_is_the_successor_chain(name, tiny_glm_models, llama_cpp_dir):
    vocab = tm.tiny_vocab(0)
    with serve(tiny_glm_models[name], llama_cpp_dir) as srv:
        for prompt in (tm.PROSE_PROMPT, tm.CODE_PROMPT):
            last = srv.tokenize(prompt)[-1]
            got = srv.completion(prompt, n_predict=32, temperature=0.0)["content"]
            assert got == vocab.detokenize(vocab.continuation(last, 32)), (name, prompt)


@pytest.mark.tools
def test_in_file_heads_accept_at_the_known_rates(tiny_glm_models, llama_cpp_dir):
    got = {}
    for head in tm.HEADS:
        with serve(tiny_glm_models[f"full-{head}"], llama_cpp_dir, spec_type="mtp", draft_n_max=3) as srv:
            got[head] = [rate(run(srv, p, n_predict=64)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT)]
    assert got["aligned"] == [1.0, 1.0], got
    assert 0.25 <= got["mixed"][0] <= 0.45 and got["mixed"][1] == 1.0, got
    assert max(got["random"]) < 0.1, got


@pytest.mark.tools
@pytest.mark.parametrize("spec_type", ["mtp", None])  # None: llama-server detects the sidecar itself
def test_mtp_only_file_drafts_for_the_trunk(spec_type, tiny_glm_models, llama_cpp_dir):
    with serve(tiny_glm_models["base"], llama_cpp_dir, spec_type=spec_type,
               draft_model=tiny_glm_models["mtp-only-mixed"], draft_n_max=3) as srv:
        prose, code = (rate(run(srv, p, n_predict=64)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT))
    assert 0.25 <= prose <= 0.45 and code == 1.0, (prose, code)


@pytest.mark.tools
def test_trunk_only_with_the_key_aborts_with_mtp(tiny_glm_models, llama_cpp_dir, tmp_path):
    srv = serve(tiny_glm_models["base-key"], llama_cpp_dir, spec_type="mtp", log_path=tmp_path / "s.log")
    with pytest.raises(ServerError, match="SIGABRT") as exc:
        srv.start()
    assert 'MTP block missing nextn.eh_proj' in str(exc.value)
    srv = serve(tiny_glm_models["base"], llama_cpp_dir, spec_type="mtp")
    with pytest.raises(ServerError, match="failed to create MTP context"):
        srv.start()


# ------------------------------------------------------------------- attach / detach / extract / inspect


def mtpgraft(*args: str) -> str:
    """Run one mtpgraft command line in-process; return stdout (asserting exit 0)."""
    import mtpgraft.commands  # noqa: F401 - registers the commands
    from mtpgraft.cli import cli

    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.stdout


@pytest.fixture(scope="module")
def grafted(tiny_glm_models, tmp_path_factory) -> dict[str, Path]:
    """What attach / detach / extract make of the glm4moe test models."""
    d, m = tmp_path_factory.mktemp("glm-graft"), tiny_glm_models
    out = {"attach": d / "attach.gguf", "attach-key": d / "attach-key.gguf", "detach": d / "detach.gguf",
           "detach-key": d / "detach-key.gguf", "extract": d / "mtp-glm.gguf"}
    mtpgraft("attach", m["base"], "--mtp-from", m["full-mixed"], "-o", out["attach"])
    mtpgraft("attach", m["base-key"], "--mtp-from", m["mtp-only-aligned"], "-o", out["attach-key"])
    mtpgraft("detach", m["full-aligned"], "-o", out["detach"])
    mtpgraft("detach", m["base-key"], "-o", out["detach-key"])  # drops the key: no abort with MTP on
    mtpgraft("extract", m["full-aligned"], "-o", out["extract"])
    out["sidecar"] = d / "mtp-glm-F16.gguf"
    # the converter's order exactly: the default (reflink) layout puts the bigger input's copies first
    mtpgraft("sidecar", m["base"], "--mtp-from", m["full-mixed"], "-o", out["sidecar"], "--layout", "converter")
    return out


def test_graft_outputs_are_the_converter_layouts(grafted, tiny_glm_models):
    m = tiny_glm_models
    for made, want in (("attach", "full-mixed"), ("attach-key", "full-aligned"), ("detach", "base"),
                       ("detach-key", "base"), ("extract", "mtp-only-aligned"),
                       ("sidecar", "mtp-only-mixed")):
        assert _tensors(grafted[made]) == _tensors(m[want]), made
        assert list(_tensors(grafted[made])) == list(_tensors(m[want])), made  # order too
        assert _keys(grafted[made]) == _keys(m[want]), made


def test_inspect_judges_every_layout(tiny_glm_models):
    import json

    got = {n: json.loads(mtpgraft("inspect", "--json", p)) for n, p in tiny_glm_models.items()}
    assert {n: r["layout"] for n, r in got.items()} == {
        "full-aligned": "full", "full-mixed": "full", "full-random": "full", "base": "trunk-only",
        "base-key": "trunk-only", "mtp-only-aligned": "mtp-only", "mtp-only-mixed": "mtp-only"}
    assert all(r["consistent"] for r in got.values())
    assert got["full-aligned"]["mtp_layers"] == [4]
    assert len(got["full-aligned"]["mtp_tensors"]) == glm.MTP_TENSOR_COUNT
    assert any("ABORTS" in n and "draft-mtp" in n for n in got["base-key"]["notes"])
    assert not any("ABORTS" in n for r in got.values() if r is not got["base-key"] for n in r["notes"])


@pytest.mark.tools
def test_grafted_files_draft_at_the_known_rates(grafted, llama_cpp_dir):
    with serve(grafted["attach"], llama_cpp_dir, spec_type="mtp", draft_n_max=3) as srv:
        prose, code = (rate(run(srv, p, n_predict=64)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT))
    assert 0.25 <= prose <= 0.45 and code == 1.0, (prose, code)
    with serve(grafted["detach-key"], llama_cpp_dir, spec_type="mtp",
               draft_model=grafted["extract"]) as srv:
        assert rate(run(srv, tm.PROSE_PROMPT, n_predict=64)) == 1.0
    with serve(grafted["detach"], llama_cpp_dir, spec_type="mtp", draft_n_max=3,
               draft_model=grafted["sidecar"]) as srv:
        prose, code = (rate(run(srv, p, n_predict=64)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT))
    assert 0.25 <= prose <= 0.45 and code == 1.0, (prose, code)


# ----------------------------------------------------------------------- imatrix / quantize / check

QUANTS = ("Q8_0", "Q4_K_M", "IQ2_XXS")
KNOWN_MIXED = {1: 1 / 3, 2: 1 / 2, 3: 1 / 3, 4: 1 / 4}  # creative (prose) acceptance by draft depth


@pytest.fixture(scope="module")
def glm_quants(tiny_glm_models, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("glm-quants")
    cal = d / "calibration.txt"
    cal.write_text((tm.PROSE_PROMPT + "\n" + tm.CODE_PROMPT) * 120)
    mtpgraft("imatrix", tiny_glm_models["full-mixed"], "-f", cal, "-o", d / "imatrix.gguf")
    mtpgraft("quantize", tiny_glm_models["full-mixed"], "--types", ",".join(QUANTS), "--imatrix",
             d / "imatrix.gguf", "--out-dir", d, "--name", "glm")
    return {p.stem: p for p in d.glob("*.gguf")}


@pytest.mark.tools
def test_quants_keep_the_mtp_block_and_its_rates(glm_quants, tmp_path):
    for q in QUANTS:
        r = GGUFReader(glm_quants[f"glm-{q}"])
        types = {t.name: t.tensor_type.name for t in r.tensors}
        assert "quantize.imatrix.file" in r.fields
        mtp = {n: t for n, t in types.items() if n.startswith("blk.4.")}
        assert len(mtp) == glm.MTP_TENSOR_COUNT
        # the default MTP policy: every quantizable MTP weight at q8_0, the router kept F32
        assert mtp["blk.4.nextn.eh_proj.weight"] == mtp["blk.4.ffn_down_exps.weight"] == "Q8_0", q
        assert mtp["blk.4.ffn_gate_inp.weight"] == "F32" and types["blk.1.ffn_gate_inp.weight"] == "F32"
    rep_dir = tmp_path / "report"
    out = mtpgraft("check", *(glm_quants[f"glm-{q}"] for q in QUANTS), "--n-max", "1,2,3,4", "--mode",
                   "raw", "--reps", "1", "--per-category", "1", "--n-predict", "64", "--report", rep_dir)
    assert "verdict: PASS" in out
    rep = json.loads((rep_dir / "report.json").read_text())
    assert [m["quant"] for m in rep["models"]] == list(QUANTS)
    for m in rep["models"]:
        for r in (r for r in m["runs"] if r["n_max"]):
            want = KNOWN_MIXED[r["n_max"]] if r["category"] == "creative" else 1.0
            assert abs(r["acceptance"] - want) < 0.06, (m["quant"], r["category"], r["n_max"], r["acceptance"])


@pytest.mark.tools
def test_check_gives_a_verdict_on_the_aborting_layout(tiny_glm_models):
    import mtpgraft.commands  # noqa: F401
    from mtpgraft.cli import cli

    res = CliRunner().invoke(cli, ["check", str(tiny_glm_models["base-key"]), "--quick", "--mode", "raw"])
    assert res.exit_code == 1
    assert "MTP not active" in res.output and "aborts on it with --spec-type draft-mtp" in res.output
    assert "SIGABRT" not in res.output  # refused before a server was started
