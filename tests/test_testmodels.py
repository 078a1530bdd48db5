"""The tiny test models (mtpgraft.testmodels) and the llama-server wrapper (mtpgraft.check.server).

Offline tests read the files back with GGUFReader; `tools` tests run the real llama-server and check
that each variant's MTP acceptance is what the module docstring promises.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGMLQuantizationType, GGUFReader
from tinyserve import M_POS0
from tinyserve import rate as _rate
from tinyserve import run as _run
from tinyserve import serve as _serve

from mtpgraft import testmodels as tm
from mtpgraft.check.server import parse_metrics
from mtpgraft.errors import OutputExistsError, ServerError, UsageError
from mtpgraft.tools import error_line

QWEN35_MTP = {"attn_norm", "post_attention_norm", "attn_q", "attn_k", "attn_v", "attn_output",
              "attn_q_norm", "attn_k_norm", "ffn_gate", "ffn_up", "ffn_down", "nextn.eh_proj",
              "nextn.enorm", "nextn.hnorm", "nextn.shared_head_norm"}


def _field(r: GGUFReader, key: str):
    return r.fields[key].contents()


def _stem(name: str) -> str:
    return name.split(".", 2)[2].removesuffix(".weight")


# ------------------------------------------------------------------------------------- offline


@pytest.mark.parametrize("arch", tm.ARCHES)
def test_layout_matches_the_converter(arch, tiny_models, tiny_moe_models):
    models = tiny_models if arch == "qwen35" else tiny_moe_models
    full = GGUFReader(models["full-aligned"])
    assert _field(full, "general.architecture") == arch
    assert _field(full, "general.file_type") == 1  # MOSTLY_F16
    assert _field(full, f"{arch}.block_count") == 5
    assert _field(full, f"{arch}.nextn_predict_layers") == 1
    assert _field(full, f"{arch}.attention.recurrent_layers") == [True, True, True, False, False]
    assert _field(full, f"{arch}.full_attention_interval") == 4
    assert _field(full, f"{arch}.rope.dimension_sections") == [3, 3, 2, 0]
    assert _field(full, "tokenizer.ggml.model") == "gpt2"
    assert _field(full, "tokenizer.ggml.pre") == "qwen35"
    assert len(_field(full, "tokenizer.ggml.tokens")) == tm.N_VOCAB
    names = [t.name for t in full.tensors]
    blocks = [int(n.split(".")[1]) for n in names if n.startswith("blk.")]
    assert blocks == sorted(blocks) and set(blocks) == {0, 1, 2, 3, 4}
    assert names[:2] == ["output.weight", "token_embd.weight"]
    assert names.index("output_norm.weight") == names.index("blk.4.nextn.eh_proj.weight") - 1
    mtp = [n for n in names if n.startswith("blk.4.")]
    assert len(mtp) == tm.MTP_TENSOR_COUNT[arch]
    if arch == "qwen35":
        assert {_stem(n) for n in mtp} == QWEN35_MTP
        assert len(names) == 2 + 3 * 14 + 11 + 1 + 15
    else:
        assert {"blk.4.ffn_gate_inp.weight", "blk.4.ffn_up_exps.weight", "blk.4.ffn_down_shexp.weight",
                "blk.4.ffn_gate_inp_shexp.weight"} <= set(mtp)
        assert _field(full, f"{arch}.expert_count") == 4 and _field(full, f"{arch}.expert_used_count") == 2
    for t in full.tensors:
        one_d = len(t.shape) == 1 or t.name.endswith("_norm.weight") or "ssm_conv1d" in t.name \
            or "ffn_gate_inp" in t.name or not t.name.endswith(".weight")
        want = GGMLQuantizationType.F32 if one_d else GGMLQuantizationType.F16
        assert t.tensor_type == want, t.name
        if not one_d:
            assert t.shape[0] % 256 == 0, t.name  # ne[0]: every quant type's block size divides it


@pytest.mark.parametrize("arch", tm.ARCHES)
def test_base_plus_mtp_block_is_full(arch, tiny_models, tiny_moe_models):
    models = tiny_models if arch == "qwen35" else tiny_moe_models
    base = GGUFReader(models["base"])
    assert _field(base, f"{arch}.block_count") == 4
    assert f"{arch}.nextn_predict_layers" not in base.fields
    assert len(_field(base, f"{arch}.attention.recurrent_layers")) == 4
    assert "qwen35.attention.recurrent_layers" not in GGUFReader(models["base-norec"]).fields
    heads = {h: GGUFReader(models[f"full-{h}"]) for h in tm.HEADS}
    base_t = {t.name: t for t in base.tensors}
    for head, full in heads.items():
        full_t = {t.name: t for t in full.tensors}
        assert [t.name for t in full.tensors][:len(base_t)] == list(base_t), head  # MTP appended
        assert set(full_t) - set(base_t) == {n for n in full_t if n.startswith("blk.4.")}
        for name, t in base_t.items():
            assert bytes(t.data) == bytes(full_t[name].data), (head, name)
    # heads differ only in the MTP block, and do differ there
    a, m = ({t.name: bytes(t.data) for t in heads[h].tensors} for h in ("aligned", "mixed"))
    assert {n for n in a if a[n] != m[n]} <= {n for n in a if n.startswith("blk.4.")}
    assert any(a[n] != m[n] for n in a)


def test_mtp_only_layout(tiny_models):
    full = {t.name: bytes(t.data) for t in GGUFReader(tiny_models["full-aligned"]).tensors}
    r = GGUFReader(tiny_models["mtp-only-aligned"])
    names = [t.name for t in r.tensors]
    assert names[:3] == ["output.weight", "token_embd.weight", "output_norm.weight"]
    assert {_stem(n) for n in names[3:]} == QWEN35_MTP and len(names) == 18
    assert all(bytes(t.data) == full[t.name] for t in r.tensors)
    assert _field(r, "qwen35.block_count") == 5 and _field(r, "qwen35.nextn_predict_layers") == 1


def test_vocab_contract():
    v = tm.tiny_vocab(0)
    specials = {v.tokens.index(s) for s in tm.SPECIAL_TOKENS}
    for t in range(tm.N_VOCAB):
        s = v.succ[t]
        assert s not in specials
        assert (s in v.letters) == (t in v.letters)
        assert s != v.succ[t ^ 256]  # else the output logits of t and its antipode cancel
        if s not in v.letters:
            assert all(32 <= b < 127 or b in (9, 10) for b in v.token_bytes[s])
    assert v.wrong <= v.letters and 0.4 < len(v.wrong) / len(v.letters) < 0.6
    assert tm.PROSE_PROMPT[-1].isalpha() and not tm.CODE_PROMPT[-1].isalpha()


def test_build_is_deterministic_and_checks_arguments(tmp_path):
    a = tm.build_tiny_model(tmp_path / "a.gguf", layout="mtp-only", dtype="bf16", seed=3)
    b = tm.build_tiny_model(tmp_path / "b.gguf", layout="mtp-only", dtype="bf16", seed=3)
    assert a.read_bytes() == b.read_bytes()
    assert _field(GGUFReader(a), "general.file_type") == 32  # MOSTLY_BF16
    with pytest.raises(UsageError, match="unknown head 'nope'"):
        tm.build_tiny_model(tmp_path / "c.gguf", head="nope")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf"]  # no temp file left


def test_cli_writes_the_set_and_refuses_to_overwrite(tmp_path, monkeypatch):
    from mtpgraft.cli import cli

    small = {k: tm.TEST_SET[k] for k in ("base", "mtp-only-aligned")}
    monkeypatch.setattr(tm.qwen35, "TEST_SET", small)  # where build_test_set looks a family's set up

    res = CliRunner().invoke(cli, ["testmodels", str(tmp_path)])
    assert res.exit_code == 0, res.output
    written = res.stdout.split()
    assert len(written) == len(small) and all(Path(p).is_file() for p in written)
    res = CliRunner().invoke(cli, ["testmodels", str(tmp_path)])
    assert res.exit_code == 4 and "use --force" in res.output
    assert CliRunner().invoke(cli, ["testmodels", "--force", str(tmp_path)]).exit_code == 0
    with pytest.raises(OutputExistsError):
        tm.build_test_set(tmp_path)


def test_parse_metrics_and_error_line():
    m = parse_metrics('# HELP x y\nllamacpp:n_decode_total 20\n'
                      'llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 1.6e+01\n')
    assert m == {"llamacpp:n_decode_total": 20.0, M_POS0: 16.0}
    log = ("0.00.102.211 I common_speculative_init_result: creating MTP draft context\n"
           "0.00.102.232 W llama_init_from_model: context type MTP requested but model doesn't contain MTP layers\n"
           "0.00.102.232 E common_speculative_init_result: failed to create MTP context\n"
           "0.00.102.234 E srv    load_model: failed to create MTP context\n"
           "0.00.102.660 E srv  llama_server: exiting due to model loading error\n")
    assert error_line(log) == ("common_speculative_init_result: failed to create MTP context (llama_init_"
                                     "from_model: context type MTP requested but model doesn't contain MTP layers)")
    assert "unknown speculative type: mtp" in error_line(
        'error while handling argument "--spec-type": unknown speculative type: mtp\nusage:\n')


# ---------------------------------------------------------------------------------- llama-server


@pytest.mark.tools
@pytest.mark.parametrize("name", ["full-aligned", "full-mixed", "full-random", "full-aligned-norec",
                                  "base", "base-norec"])
def test_every_variant_loads(name, tiny_models, llama_cpp_dir):
    with _serve(tiny_models[name], llama_cpp_dir) as srv:
        res = srv.completion(tm.CODE_PROMPT, n_predict=8)
        assert res["timings"]["predicted_n"] == 8
        assert srv.props()["model_path"] == str(tiny_models[name])
    assert not srv.running and srv.pid is None
    srv.stop()  # idempotent


@pytest.mark.tools
@pytest.mark.parametrize("name", ["full-aligned", "full-aligned-norec"])
def test_aligned_head_is_always_accepted(name, tiny_models, llama_cpp_dir):
    with _serve(tiny_models[name], llama_cpp_dir, spec_type="mtp", draft_n_max=3) as srv:
        assert "--spec-type" in srv.cmd and srv.cmd[srv.cmd.index("--spec-type") + 1] == "draft-mtp"
        # /props' default_generation_settings says "none" even so; each answer's settings say it right
        settings = srv.completion("x", n_predict=1)["generation_settings"]
        assert settings["speculative.types"] == "none,draft-mtp"
        for prompt in (tm.PROSE_PROMPT, tm.CODE_PROMPT):
            r = _run(srv, prompt, n_predict=64)
            assert r["draft_n"] > 30 and r["accepted"] == r["draft_n"], r
            assert (r["m_draft"], r["m_accepted"]) == (r["draft_n"], r["accepted"]), r
            assert r["m_pos0"] == r["m_drafts"] > 0, r  # every draft's first token accepted


@pytest.mark.tools
def test_greedy_output_is_the_successor_chain_with_and_without_mtp(tiny_models, llama_cpp_dir):
    vocab = tm.tiny_vocab(0)
    outputs = {}
    for spec in (None, "mtp"):
        with _serve(tiny_models["full-aligned"], llama_cpp_dir, spec_type=spec) as srv:
            last = srv.tokenize(tm.PROSE_PROMPT)[-1]
            outputs[spec] = srv.completion(tm.PROSE_PROMPT, n_predict=48, temperature=0.0)["content"]
    assert outputs[None] == outputs["mtp"] == vocab.detokenize(vocab.continuation(last, 48))
    assert all(vocab.succ[t] in vocab.letters for t in vocab.continuation(last, 48))


@pytest.mark.tools
def test_sampling_at_temperature_still_accepts_everything(tiny_models, llama_cpp_dir):
    with _serve(tiny_models["full-aligned"], llama_cpp_dir, spec_type="mtp") as srv:
        for seed in (1, 2):
            r = _run(srv, tm.PROSE_PROMPT, n_predict=64, temperature=0.7, seed=seed)
            assert _rate(r) >= 0.95, r


@pytest.mark.tools
def test_mixed_head_is_worse_on_prose_than_on_code(tiny_models, llama_cpp_dir):
    with _serve(tiny_models["full-mixed"], llama_cpp_dir, spec_type="mtp", draft_n_max=3) as srv:
        prose = _run(srv, tm.PROSE_PROMPT, n_predict=64)
        code = _run(srv, tm.CODE_PROMPT, n_predict=64)
    assert (prose["m_draft"], prose["m_accepted"]) == (prose["draft_n"], prose["accepted"])
    assert 0.2 <= _rate(prose) <= 0.6, prose
    assert _rate(code) == 1.0, code


@pytest.mark.tools
def test_random_head_is_almost_never_accepted(tiny_models, llama_cpp_dir):
    with _serve(tiny_models["full-random"], llama_cpp_dir, spec_type="mtp") as srv:
        for prompt in (tm.PROSE_PROMPT, tm.CODE_PROMPT):
            assert _rate(_run(srv, prompt, n_predict=64)) < 0.1


@pytest.mark.tools
def test_base_model_with_mtp_fails_to_start(tiny_models, llama_cpp_dir, tmp_path):
    srv = _serve(tiny_models["base"], llama_cpp_dir, spec_type="mtp",
                log_path=tmp_path / "server.log")
    with pytest.raises(ServerError, match="failed to create MTP context") as exc:
        srv.start()
    assert "exit code 1" in str(exc.value)
    assert "model doesn't contain MTP layers" in exc.value.log_tail
    assert not srv.running and "failed to create MTP context" in (tmp_path / "server.log").read_text()


@pytest.mark.tools
@pytest.mark.parametrize("spec_type", ["mtp", None])  # None: llama-server detects the MTP sidecar itself
def test_mtp_only_sidecar_drafts_for_the_base_model(spec_type, tiny_models, llama_cpp_dir):
    with _serve(tiny_models["base"], llama_cpp_dir, spec_type=spec_type,
                draft_model=tiny_models["mtp-only-aligned"]) as srv:
        r = _run(srv, tm.PROSE_PROMPT, n_predict=64)
    assert r["draft_n"] > 30 and r["accepted"] == r["draft_n"] == r["m_draft"], r


@pytest.mark.tools
def test_moe_models(tiny_moe_models, llama_cpp_dir):
    with _serve(tiny_moe_models["full-aligned"], llama_cpp_dir, spec_type="mtp") as srv:
        for prompt in (tm.PROSE_PROMPT, tm.CODE_PROMPT):
            r = _run(srv, prompt, n_predict=64)
            assert r["draft_n"] > 30 and r["accepted"] == r["draft_n"] == r["m_accepted"], r
    with _serve(tiny_moe_models["full-mixed"], llama_cpp_dir, spec_type="mtp") as srv:
        assert _rate(_run(srv, tm.PROSE_PROMPT)) < _rate(_run(srv, tm.CODE_PROMPT)) == 1.0
    with _serve(tiny_moe_models["base"], llama_cpp_dir) as srv:
        assert srv.completion(tm.CODE_PROMPT, n_predict=8)["timings"]["predicted_n"] == 8


@pytest.mark.tools
def test_quantized_model_keeps_full_acceptance(tiny_models, llama_cpp_dir, tmp_path):
    from mtpgraft.check.server import cpu_has_amx
    from mtpgraft.tools import find_tool, run_tool

    out = tmp_path / "q4_k_m.gguf"
    quantize = find_tool("llama-quantize", llama_cpp_dir)
    run_tool([quantize, tiny_models["full-aligned"], out, "Q4_K_M", "2"], timeout=120)
    # extra_args repeat -np as `mtpgraft check` does: llama-server takes the last one
    with _serve(out, llama_cpp_dir, spec_type="mtp",
                extra_args=("--parallel", "1", "--cache-ram", "0")) as srv:
        # llama.cpp's AMX matmul segfaults on repacked quantized weights (ggml-org/llama.cpp#20824)
        assert ("--no-repack" in srv.cmd) == cpu_has_amx()
        r = _run(srv, tm.PROSE_PROMPT, n_predict=64)
    assert r["draft_n"] > 30 and r["accepted"] == r["draft_n"], r


@pytest.mark.tools
def test_server_reports_a_dead_process_and_a_missing_file(tmp_path, llama_cpp_dir):
    srv = _serve(tmp_path / "missing.gguf", llama_cpp_dir)
    with pytest.raises(ServerError, match="failed to open GGUF file"):
        srv.start()
    assert srv.log_text()  # the log outlives the process



def test_synthetic_specs_are_the_runnable_layout(tmp_path):
    """The shape-only generator (graft tests, benchmarks) writes what build_tiny_model writes."""
    from mtpgraft.testmodels.synthetic import Dims, qwen35_specs

    for arch in tm.ARCHES:
        for layout in tm.LAYOUTS:
            path = tm.build_tiny_model(tmp_path / f"{arch}-{layout}.gguf", arch=arch, layout=layout)
            got = [(t.name, tuple(int(x) for x in t.shape)) for t in GGUFReader(path).tensors]
            assert got == qwen35_specs(arch, layout=layout), (arch, layout)
    small = qwen35_specs("qwen35moe", trunk=8, dims=Dims(n_embd=64, n_ff_exp=32, vocab=16))
    assert [n for n, _ in small if n.startswith("blk.8.")][0] == "blk.8.nextn.eh_proj.weight"
    assert dict(small)["blk.8.ffn_down_exps.weight"] == (32, 64, 4)
    assert "blk.7.attn_q.weight" in dict(small) and "blk.6.ssm_out.weight" in dict(small)


def test_make_model_writes_the_blocks_order_and_splits_evenly(tmp_path):
    """make_model (graft, Hub and signal tests) writes qwen35_specs(order="blocks") at small_dims: the
    MTP block starts with attn_norm, output comes last; shards=3 divides those tensors over 3 files."""
    from mtpgraft.gguf_io import GGUFModel
    from mtpgraft.testmodels.synthetic import make_model, qwen35_specs, small_dims

    for arch in tm.ARCHES:
        for layout in tm.LAYOUTS:
            path = make_model(tmp_path / f"{arch}-{layout}.gguf", arch=arch, layout=layout, trunk=5)
            got = [(t.name, tuple(int(x) for x in t.shape)) for t in GGUFReader(path).tensors]
            assert got == qwen35_specs(arch, trunk=5, layout=layout, dims=small_dims(), order="blocks"), (arch, layout)
            if layout != "base":
                assert [n for n, _ in got if n.startswith("blk.5.")][0] == "blk.5.attn_norm.weight"
            assert got[0][0] == "token_embd.weight" and got[-1][0] == "output.weight"
    (tmp_path / "split").mkdir()
    make_model(tmp_path / "split" / "M.gguf", shards=3)
    shards = sorted((tmp_path / "split").glob("*.gguf"))
    assert [s.name for s in shards] == [f"M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    whole = make_model(tmp_path / "whole.gguf")
    assert [r.name for r in GGUFModel(shards[0]).refs] == [r.name for r in GGUFModel(whole).refs]
