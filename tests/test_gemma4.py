"""gemma4 + gemma4-assistant on the real llama-server: the tiny test models
(mtpgraft.testmodels.gemma4) and what every mtpgraft command does with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGUFReader
from gguf import GGUFValueType as V
from tinyserve import rate, run, serve

from mtpgraft import testmodels as tm
from mtpgraft.errors import ServerError
from mtpgraft.testmodels import gemma4 as g4
from mtpgraft.testmodels.synthetic import rewrite


def _kv(r: GGUFReader, key: str):
    arch = r.fields["general.architecture"].contents()
    f = r.fields.get(f"{arch}.{key}")
    return None if f is None else f.contents()


# ------------------------------------------------------------------------------------- offline


def test_target_and_assistant_layout(tiny_gemma_models):
    tgt = GGUFReader(tiny_gemma_models["base"])
    asst = GGUFReader(tiny_gemma_models["assistant-aligned"])
    assert tgt.fields["general.architecture"].contents() == "gemma4"
    assert asst.fields["general.architecture"].contents() == "gemma4-assistant"
    assert _kv(tgt, "nextn_predict_layers") is None
    assert _kv(tgt, "attention.sliding_window_pattern")[-2:] == [True, False]  # what the assistant reads
    n = _kv(asst, "block_count")
    assert _kv(asst, "nextn_predict_layers") == n == len(_kv(asst, "attention.sliding_window_pattern"))
    assert _kv(asst, "embedding_length_out") == _kv(tgt, "embedding_length") != _kv(asst, "embedding_length")
    assert _kv(asst, "attention.head_count_kv") == [2, 2, 2, 1]
    names = {t.name for t in asst.tensors}
    assert {"token_embd.weight", "output_norm.weight", "nextn.pre_projection.weight",
            "nextn.post_projection.weight", "rope_freqs.weight"} <= names
    assert not any(s in x for x in names for s in ("attn_k", "attn_v", "eh_proj", "enorm", "hnorm"))
    for i in range(n):
        assert {f"blk.{i}.attn_q.weight", f"blk.{i}.attn_q_norm.weight", f"blk.{i}.attn_output.weight",
                f"blk.{i}.layer_output_scale.weight", f"blk.{i}.ffn_down.weight"} <= names
    shapes = {t.name: [int(x) for x in t.shape] for t in asst.tensors}
    assert shapes["nextn.pre_projection.weight"] == [2 * g4.N_EMBD, g4.N_EMBD_ASSISTANT]
    assert shapes["nextn.post_projection.weight"] == [g4.N_EMBD_ASSISTANT, g4.N_EMBD]
    for r in (tgt, asst):
        for t in r.tensors:
            if len(t.shape) > 1:
                assert t.shape[0] % 256 == 0, t.name
    tok = {t.name: bytes(t.data) for t in tgt.tensors}
    assert tok["token_embd.weight"] != {t.name: bytes(t.data) for t in asst.tensors}["token_embd.weight"]


def test_mixed_head_drafts_wrong_exactly_on_the_wrong_tokens():
    v = tm.tiny_vocab(0)
    p = g4.drafted(v, "mixed")
    assert [t for t in range(tm.N_VOCAB) if p[t] != v.succ[t]] == sorted(v.wrong)
    assert all(p[t] != p[t ^ 256] for t in range(tm.N_VOCAB))
    assert g4.drafted(v, "aligned") == list(v.succ)


# ---------------------------------------------------------------------------------- llama-server


@pytest.mark.tools
def test_target_alone_is_the_successor_chain(tiny_gemma_models, llama_cpp_dir):
    vocab = tm.tiny_vocab(0)
    with serve(tiny_gemma_models["base"], llama_cpp_dir) as srv:
        for prompt in (tm.PROSE_PROMPT, tm.CODE_PROMPT):
            last = srv.tokenize(prompt)[-1]
            got = srv.completion(prompt, n_predict=32, temperature=0.0)["content"]
            assert got == vocab.detokenize(vocab.continuation(last, 32)), prompt


@pytest.mark.tools
def test_assistants_accept_at_the_known_rates(tiny_gemma_models, llama_cpp_dir):
    got = {}
    for head in tm.HEADS:
        with serve(tiny_gemma_models["base"], llama_cpp_dir, spec_type="mtp", draft_n_max=3,
                   draft_model=tiny_gemma_models[f"assistant-{head}"]) as srv:
            got[head] = [rate(run(srv, p, n_predict=64)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT)]
            if head == "aligned":  # lossless: the same text as the target alone
                vocab = tm.tiny_vocab(0)
                last = srv.tokenize(tm.PROSE_PROMPT)[-1]
                out = srv.completion(tm.PROSE_PROMPT, n_predict=32, temperature=0.0)["content"]
                assert out == vocab.detokenize(vocab.continuation(last, 32))
    assert got["aligned"] == [1.0, 1.0], got
    assert 0.25 <= got["mixed"][0] <= 0.45 and got["mixed"][1] == 1.0, got
    assert max(got["random"]) < 0.1, got


@pytest.mark.tools
def test_assistant_needs_the_target_and_the_spec_type(tiny_gemma_models, llama_cpp_dir):
    with pytest.raises(ServerError, match="requires ctx_other"):
        serve(tiny_gemma_models["assistant-aligned"], llama_cpp_dir).start()
    # -md alone is not enough: llama-server only auto-detects in-file nextn heads (eh_proj)
    with serve(tiny_gemma_models["base"], llama_cpp_dir,
               draft_model=tiny_gemma_models["assistant-aligned"]) as srv:
        assert run(srv, tm.PROSE_PROMPT, n_predict=32)["draft_n"] == 0
    with pytest.raises(ServerError, match="doesn't contain MTP layers"):
        serve(tiny_gemma_models["base"], llama_cpp_dir, spec_type="mtp").start()


# --------------------------------------------------------------- inspect / attach / detach / extract


def _mtpgraft(*args) -> tuple[int, str]:
    import mtpgraft.commands  # noqa: F401 - registers the commands
    from mtpgraft.cli import cli

    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.output


def test_inspect_knows_the_assistant(tiny_gemma_models, tmp_path):
    code, out = _mtpgraft("inspect", "--json", tiny_gemma_models["assistant-mixed"])
    rep = json.loads(out)
    assert code == 0 and rep["consistent"], rep["problems"]
    assert (rep["layout"], rep["mtp_present"], rep["mtp_layers"]) == ("mtp-only", True, [0, 1, 2, 3])
    assert {"nextn.pre_projection.weight", "nextn.post_projection.weight"} <= {t["name"] for t in rep["mtp_tensors"]}
    assert any("-md" in n and "--spec-type draft-mtp" in n for n in rep["notes"])
    rep = json.loads(_mtpgraft("inspect", "--json", tiny_gemma_models["base"])[1])
    assert rep["consistent"] and rep["layout"] == "trunk-only" and not rep["mtp_present"]

    src = tiny_gemma_models["assistant-aligned"]
    broken = {
        "same-width": rewrite(src, tmp_path / "a.gguf", set_kv={
            "gemma4-assistant.embedding_length_out": (V.UINT32, g4.N_EMBD_ASSISTANT, None)}),
        "no-pre": rewrite(src, tmp_path / "b.gguf", drop_tensors={"nextn.pre_projection.weight"}),
        "short-nextn": rewrite(src, tmp_path / "c.gguf", set_kv={
            "gemma4-assistant.nextn_predict_layers": (V.UINT32, 2, None)}),
        "no-q": rewrite(src, tmp_path / "d.gguf", drop_tensors={"blk.3.attn_q.weight"}),
    }
    want = {"same-width": "embedding_length_out (256) must be the target's hidden size",
            "no-pre": "tensor nextn.pre_projection.weight is missing",
            "short-nextn": "nextn_predict_layers is 2 but every one of the 4 blocks",
            "no-q": "assistant layer blk.3 lacks attn_q.weight"}
    from mtpgraft.cli import cli

    for name, path in broken.items():
        res = CliRunner().invoke(cli, ["inspect", "--json", str(path)])
        rep = json.loads(res.stdout)
        assert res.exit_code == 1, name  # inspect's exit status is the verdict
        assert not rep["consistent"] and any(want[name] in p for p in rep["problems"]), (name, rep["problems"])


def test_graft_commands_refuse_gemma4_with_the_reason(tiny_gemma_models, tmp_path):
    base, asst = tiny_gemma_models["base"], tiny_gemma_models["assistant-aligned"]
    for args in (("attach", base, "--mtp-from", asst, "-o", tmp_path / "x.gguf"),
                 ("extract", base, "-o", tmp_path / "x.gguf"),
                 ("detach", asst, "-o", tmp_path / "x.gguf")):
        code, out = _mtpgraft(*args)
        assert code == 3 and "separate assistant model" in out and "-md" in out, out
        assert "Traceback" not in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.tools
def test_broken_assistant_is_what_the_loader_refuses(tiny_gemma_models, llama_cpp_dir, tmp_path):
    bad = rewrite(tiny_gemma_models["assistant-aligned"], tmp_path / "bad.gguf", set_kv={
        "gemma4-assistant.embedding_length_out": (V.UINT32, g4.N_EMBD_ASSISTANT, None)})
    with pytest.raises(ServerError, match="embedding_length_out"):
        serve(tiny_gemma_models["base"], llama_cpp_dir, spec_type="mtp", draft_model=bad).start()


# ----------------------------------------------------------------------- imatrix / quantize / check

KNOWN_MIXED = {1: 1 / 3, 2: 1 / 2, 3: 1 / 3, 4: 1 / 4}  # creative (prose) acceptance by draft depth


def test_assistant_takes_no_imatrix(tiny_gemma_models, tmp_path):
    from mtpgraft.errors import QuantizeError
    from mtpgraft.imatrix import plan_imatrix
    from mtpgraft.quantize import plan_quantize

    asst = tiny_gemma_models["assistant-aligned"]
    cal = tmp_path / "cal.txt"
    cal.write_text(tm.PROSE_PROMPT * 200)
    with pytest.raises(QuantizeError, match="cannot run .* gemma4-assistant only runs next to"):
        plan_imatrix(asst, cal, tmp_path / "i.gguf")
    with pytest.raises(QuantizeError, match="no imatrix applies to it"):
        plan_quantize(asst, "Q4_K_M", imatrix=tmp_path / "any.gguf", out_dir=tmp_path)
    with pytest.raises(QuantizeError, match="IQ2_XXS need.* gemma4-assistant cannot have"):
        plan_quantize(asst, "Q8_0,IQ2_XXS", out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.txt"]


@pytest.fixture(scope="module")
def gemma_quants(tiny_gemma_models, tmp_path_factory) -> dict[str, Path]:
    """imatrix quants of the target and plain quants of the mixed assistant, made by mtpgraft."""
    d = tmp_path_factory.mktemp("gemma-quants")
    cal = d / "calibration.txt"
    cal.write_text((tm.PROSE_PROMPT + "\n" + tm.CODE_PROMPT) * 120)
    assert _mtpgraft("imatrix", tiny_gemma_models["base"], "-f", cal, "-o", d / "imatrix.gguf")[0] == 0
    code, out = _mtpgraft("quantize", tiny_gemma_models["base"], "--types", ",".join(TARGET_QUANTS),
                          "--imatrix", d / "imatrix.gguf", "--out-dir", d, "--name", "tgt")
    assert code == 0, out
    code, out = _mtpgraft("quantize", tiny_gemma_models["assistant-mixed"], "--types", ",".join(ASST_QUANTS),
                          "--out-dir", d, "--name", "mtp-tgt")
    assert code == 0, out
    return {p.stem: p for p in d.glob("*.gguf")}


TARGET_QUANTS = ("Q8_0", "Q4_K_M", "IQ4_XS", "IQ2_XXS")
ASST_QUANTS = ("Q8_0", "Q4_K_M", "IQ4_XS")


@pytest.mark.tools
def test_llama_quantize_quantizes_every_2d_weight_of_the_assistant(gemma_quants, tiny_gemma_models):
    src = {t.name: t for t in GGUFReader(tiny_gemma_models["assistant-mixed"]).tensors}
    two_d = {n for n, t in src.items() if len(t.shape) > 1}
    assert {"token_embd.weight", "nextn.pre_projection.weight", "nextn.post_projection.weight"} <= two_d
    for q in ASST_QUANTS:
        r = GGUFReader(gemma_quants[f"mtp-tgt-{q}"])
        assert r.fields["general.architecture"].contents() == "gemma4-assistant"
        types = {t.name: t.tensor_type.name for t in r.tensors}
        assert {n for n, t in types.items() if t != "F32"} == two_d, q  # norms, scales, rope_freqs: F32
        assert "quantize.imatrix.file" not in r.fields
        if q != "Q8_0":
            assert types["nextn.pre_projection.weight"] == {"Q4_K_M": "Q4_K", "IQ4_XS": "IQ4_XS"}[q]
    for q in TARGET_QUANTS:
        assert "quantize.imatrix.file" in GGUFReader(gemma_quants[f"tgt-{q}"]).fields, q


@pytest.mark.tools
def test_every_assistant_quant_drafts_for_the_target(gemma_quants, llama_cpp_dir):
    for q in ASST_QUANTS:
        with serve(gemma_quants["tgt-Q4_K_M"], llama_cpp_dir, spec_type="mtp", draft_n_max=3,
                   draft_model=gemma_quants[f"mtp-tgt-{q}"]) as srv:
            prose, code = (rate(run(srv, p, n_predict=64)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT))
        assert 0.25 <= prose <= 0.45 and code == 1.0, (q, prose, code)


@pytest.mark.tools
def test_one_check_gives_the_acceptance_by_quant_and_depth(gemma_quants, tmp_path):
    targets = [gemma_quants[f"tgt-{q}"] for q in TARGET_QUANTS]
    code, out = _mtpgraft("check", *targets, "--draft", gemma_quants["mtp-tgt-Q8_0"], "--n-max", "1,2,3,4",
                          "--mode", "raw", "--reps", "1", "--per-category", "1", "--n-predict", "64",
                          "--report", tmp_path / "report")
    assert code == 0, out
    rep = json.loads((tmp_path / "report" / "report.json").read_text())
    assert rep["verdict"] == "pass" and [m["quant"] for m in rep["models"]] == list(TARGET_QUANTS)
    for m in rep["models"]:
        assert m["mtp_active"], m["name"]
        for r in m["runs"]:
            if r["n_max"] is None:
                continue
            if r["category"] == "creative":
                assert abs(r["acceptance"] - KNOWN_MIXED[r["n_max"]]) < 0.06, (m["quant"], r["n_max"], r["acceptance"])
            else:
                assert r["acceptance"] == 1.0, (m["quant"], r["category"], r["n_max"])
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Acceptance per quant and draft depth" in md and "| IQ2_XXS |" in md


@pytest.mark.tools
def test_check_names_what_blocks_a_gemma4_pair(tiny_gemma_models, tiny_glm_models):
    tgt = tiny_gemma_models["base"]
    for draft, reason in ((None, "pass it with --draft"),
                          (tiny_glm_models["mtp-only-aligned"], "drafts only with its assistant")):
        args = ("check", tgt, "--quick", "--mode", "raw") + (("--draft", draft) if draft else ())
        code, out = _mtpgraft(*args)
        assert code == 1 and "MTP not active" in out and reason in out, out


# ------------------------------------------------------------------- published as users publish it


@pytest.mark.tools
@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_published_quants_and_assistant_sidecar_load_with_hf(gemma_quants, hub, hf_env, tmp_path,
                                                               monkeypatch):
    """imatrix quants of the target + the assistant as an `mtp-` sidecar, checked, pushed with the
    card to the loopback Hub; then `llama-server -hf REPO:TAG --spec-type draft-mtp` (the real
    downloader, via `mtpgraft check hf://`) finds the assistant and drafts at the known rates."""
    import shutil

    from fakehub import FakeHub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    out = tmp_path / "out"
    out.mkdir()
    for q in ("Q8_0", "Q4_K_M", "IQ4_XS"):
        shutil.copy(gemma_quants[f"tgt-{q}"], out / f"Tiny-Gemma4-{q}.gguf")
    shutil.copy(gemma_quants["mtp-tgt-Q8_0"], out / "mtp-Tiny-Gemma4-Q8_0.gguf")
    targets = sorted(p for p in out.glob("Tiny-*.gguf"))
    assert _mtpgraft("check", *targets, "--draft", out / "mtp-Tiny-Gemma4-Q8_0.gguf", "--quick", "--mode",
                     "raw", "--report", tmp_path / "report")[0] == 0
    code, text = _mtpgraft("push", out, "--repo", "tester/Tiny-Gemma4-GGUF", "--report", tmp_path / "report",
                           "--endpoint", hub.url, "--token", FakeHub.TOKEN)
    assert code == 0, text
    card = hub.head("tester/Tiny-Gemma4-GGUF").files["README.md"].content.decode()
    assert "gemma4-assistant" in card and "mtp-Tiny-Gemma4-Q8_0.gguf" in card
    assert "llama-server -hf tester/Tiny-Gemma4-GGUF:IQ4_XS --spec-type draft-mtp" in card
    shutil.rmtree(out)  # what is measured next comes from the Hub
    code, text = _mtpgraft("check", "hf://tester/Tiny-Gemma4-GGUF:IQ4_XS", "--endpoint", hub.url,
                           "--quick", "--mode", "raw", "--json")
    assert code == 0, text
    d = json.loads(text[text.index("{"):])
    (res,) = d["resolved"]
    assert (res["model"], res["mtp"], res["mismatches"]) == ("Tiny-Gemma4-IQ4_XS.gguf",
                                                            "mtp-Tiny-Gemma4-Q8_0.gguf", [])
    cats = d["models"][0]["categories"]
    assert cats["code"]["acceptance"] == 1.0 and abs(cats["creative"]["acceptance"] - 1 / 3) < 0.06, cats


def test_sidecar_of_a_gemma4_target_is_its_assistant(tiny_gemma_models, tmp_path):
    import hashlib

    tgt, asst = tiny_gemma_models["base"], tiny_gemma_models["assistant-mixed"]
    out = tmp_path / "mtp-Tiny-Gemma4-F16.gguf"
    code, text = _mtpgraft("sidecar", tgt, "--mtp-from", asst, "-o", out)
    assert code == 0, text
    got, want = GGUFReader(out), GGUFReader(asst)
    assert [(t.name, bytes(t.data)) for t in got.tensors] == [(t.name, bytes(t.data)) for t in want.tensors]
    digest = hashlib.sha256(b"".join(bytes(t.data) for t in want.tensors)).hexdigest()
    assert got.fields["mtpgraft.mtp.source_sha256"].contents() == digest
    assert json.loads(_mtpgraft("inspect", "--json", out)[1])["consistent"]
    other = tmp_path / "qwen-base.gguf"
    tm.build_tiny_model(other, layout="base")
    for args, msg, want in ((("sidecar", other, "--mtp-from", asst, "-o", tmp_path / "a.gguf"), "not qwen35", 3),
                            (("sidecar", tgt, "--mtp-from", asst, "--mtp-type", "q8_0", "-o", tmp_path / "b.gguf"),
                             "quantize it", 2)):  # bad input; a usage mistake
        code, text = _mtpgraft(*args)
        assert code == want and msg in text and "Traceback" not in text, text
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name, other.name]
