"""The families written from data (mtpgraft.testmodels.families.SPECS, built by testmodels.family) on
the real llama-server: each drafts at its known acceptance, inspect judges every layout, and attach /
detach / extract / quantize give the converter's files (keys array by array, tensors byte for byte)
that draft. One module-scoped test set per family; every server start is one case."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGUFReader
from helpers import gguf_keys as _keys
from helpers import gguf_tensors as _tensors
from tinyserve import rate, run, serve

from mtpgraft import testmodels as tm
from mtpgraft.arch import ARCH_RULES
from mtpgraft.errors import ServerError
from mtpgraft.testmodels import family
from mtpgraft.testmodels.dims import SPEC_ARCHES
from mtpgraft.testmodels.families import SPECS
from mtpgraft.testmodels.synthetic import rewrite

FAMILIES = ("deepseek2", "deepseek32", "glm-dsa", "step35", "mimo2", "hy_v3", "cohere2moe", "qwen3next", "nemotron_h_moe",
            "bailingmoe3", "deepseek4")
VARIANTS = ("full-aligned", "full-random", "base", "base-key", "mtp-only-aligned")


def mtpgraft(*args, code: int = 0) -> str:
    import mtpgraft.commands  # noqa: F401 - registers the commands
    from mtpgraft.cli import cli

    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res.stdout


def _heads(arch: str) -> range:
    spec = SPECS[arch]
    return range(spec.trunk_layers, spec.trunk_layers + spec.nextn)


def _down(arch: str) -> str:
    """The heads' FFN down projection (shared expert or dense FFN)."""
    return SPECS[arch].flip.format("down")


@pytest.fixture(scope="session")
def family_sets(tmp_path_factory) -> dict[str, dict[str, Path]]:
    """Each family's test set, built once per session (pytest may set `fam` up more than once)."""
    return {}


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, family_sets, tmp_path_factory) -> tuple[str, dict[str, Path]]:
    arch = request.param
    if arch not in family_sets:
        d = tmp_path_factory.mktemp(f"fam-{arch}")
        variants = tm.variants_for(arch)
        family_sets[arch] = {n: tm.build_tiny_model(d / tm.variant_filename(arch, n), arch=arch, dtype="f16",
                                                    **variants[n]) for n in VARIANTS}
    return arch, family_sets[arch]


# ------------------------------------------------------------------------------------- offline


# sha256 (first 16 hex digits) of the f16 test set the hand-written glm4moe generator wrote before
# glm4moe became a FamilySpec: the spec writes the same bytes.
GLM4MOE_BEFORE_THE_SPEC = {
    "full-aligned": "f2cb0dcb9d80b7dd",
    "full-mixed": "83fdb78ac2adc57e",
    "full-random": "b64d6c6d05804179",
    "base": "808cac828e27e723",
    "base-key": "ad04a9002f36b29f",
    "mtp-only-aligned": "d98986483a383a8c",
    "mtp-only-mixed": "233b73d1e23fbe1a",
}


def test_the_glm4moe_spec_writes_what_the_generator_wrote(tiny_glm_models):
    import hashlib

    got = {n: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for n, p in tiny_glm_models.items()}
    assert got == GLM4MOE_BEFORE_THE_SPEC
    assert set(SPEC_ARCHES) == set(SPECS)


def test_layouts_follow_the_converter(fam):
    arch, m = fam
    spec = SPECS[arch]
    trunk, nextn = spec.trunk_layers, spec.nextn
    full = _keys(m["full-aligned"])
    assert (full[f"{arch}.block_count"], full[f"{arch}.nextn_predict_layers"]) == (trunk + nextn, nextn)
    base, key = _keys(m["base"]), _keys(m["base-key"])
    assert f"{arch}.nextn_predict_layers" not in base and base[f"{arch}.block_count"] == trunk
    assert key == full  # trunk only, the key kept: every key as in the full file
    assert _keys(m["mtp-only-aligned"]) == full
    full_t = _tensors(m["full-aligned"])
    heads = [f"blk.{trunk + k}." for k in range(nextn)]
    mtp = {n for n in full_t if n.startswith(tuple(heads))}
    assert [sum(n.startswith(h) for n in mtp) for h in heads] == [spec.mtp_tensor_count(k) for k in range(nextn)]
    for r in (m["base"], m["base-key"]):
        assert list(_tensors(r)) == [n for n in full_t if n not in mtp]
        assert all(full_t[n] == b for n, b in _tensors(r).items())
    assert set(_tensors(m["mtp-only-aligned"])) == mtp | set(ARCH_RULES[arch].shared_tensors)
    for k in ARCH_RULES[arch].config_arrays:  # deepseek4's compress_ratios: the HF config's, in every layout
        assert len(base[f"{arch}.{k}"]) == len(full[f"{arch}.{k}"]) == trunk + nextn
    if arch == "glm-dsa":  # per TRUNK layer in every layout (the loader refuses block_count entries)
        assert all(len(k["glm-dsa.attention.indexer.types"]) == trunk for k in (full, base, key))
        assert not any(n.startswith(f"blk.{trunk}.indexer.") for n in mtp)
    if arch == "deepseek32":  # the NextN layer carries the indexer although graph_mtp never runs it
        assert {f"blk.{trunk}.indexer.proj.weight", f"blk.{trunk}.indexer.attn_q_b.weight"} <= mtp
    if arch == "step35":  # head k's shapes and entries follow its own index: blk.4 full, blk.5/6 sliding
        assert full["step35.attention.sliding_window_pattern"] == [False, True, True, True, False, True, True]
        assert full["step35.attention.head_count"] == [4, 8, 8, 8, 4, 8, 8]
        assert base["step35.attention.head_count"] == [4, 8, 8, 8]
        shapes = {t.name: list(t.shape) for t in GGUFReader(m["full-aligned"]).tensors}
        assert [shapes[f"blk.{i}.attn_q.weight"] for i in (0, 3, 4, 5)] == [[256, 256], [256, 512], [256, 256],
                                                                            [256, 512]]
    if arch == "mimo2":  # every head a sliding-window layer (4 KV heads), unlike the last trunk layer (2)
        assert full["mimo2.attention.sliding_window_pattern"] == [0, 1, 1, 0, 1, 1, 1]
        assert full["mimo2.attention.head_count_kv"] == [2, 4, 4, 2, 4, 4, 4]
        shapes = {t.name: list(t.shape) for t in GGUFReader(m["full-aligned"]).tensors}
        assert [shapes[f"blk.{i}.attn_qkv.weight"][1] for i in (2, 3, 4, 6)] == [768, 512, 768, 768]


def test_inspect_judges_every_layout(fam):
    arch, m = fam
    refused = not ARCH_RULES[arch].trunk_only_ok  # inspect exits 1 on a file llama.cpp would not load
    got = {n: json.loads(mtpgraft("inspect", "--json", p, code=int(refused and n == "base-key")))
           for n, p in m.items()}
    assert {n: r["layout"] for n, r in got.items()} == {
        "full-aligned": "full", "full-random": "full", "base": "trunk-only", "base-key": "trunk-only",
        "mtp-only-aligned": "mtp-only"}
    spec = SPECS[arch]
    assert got["full-aligned"]["mtp_layers"] == list(range(spec.trunk_layers, spec.trunk_layers + spec.nextn))
    if ARCH_RULES[arch].trunk_only_ok:
        assert all(r["consistent"] for r in got.values()), got
        assert any("ABORTS" in n and "draft-mtp" in n for n in got["base-key"]["notes"])
    else:  # the loader refuses a file that keeps the key without the block (the server says the same)
        assert not got["base-key"]["consistent"] and all(r["consistent"] for k, r in got.items() if k != "base-key")
        assert any(re.search(rf"'blk\.{spec.trunk_layers}\.[\w.]+' not found", p) for p in got["base-key"]["problems"])
    assert not any("ABORTS" in n for k, r in got.items() if k != "base-key" for n in r["notes"])


@pytest.fixture(scope="module")
def grafted(fam, tmp_path_factory) -> dict[str, Path]:
    arch, m = fam
    d = tmp_path_factory.mktemp(f"fam-graft-{arch}")
    out = {k: d / f"{k}.gguf" for k in ("attach", "attach-key", "attach-q8", "detach", "extract", "sidecar")}
    mtpgraft("attach", m["base"], "--mtp-from", m["full-aligned"], "--mtp-type", "keep", "-o", out["attach"])
    # onto the trunk-only file that keeps the key, where the loader takes one (else onto the keyless one)
    key_base = m["base-key"] if ARCH_RULES[arch].trunk_only_ok else m["base"]
    mtpgraft("attach", key_base, "--mtp-from", m["mtp-only-aligned"], "--mtp-type", "keep", "--layout",
             "converter", "-o", out["attach-key"])
    mtpgraft("attach", m["base"], "--mtp-from", m["mtp-only-aligned"], "--mtp-type", "q8_0", "-o", out["attach-q8"])
    mtpgraft("detach", m["full-aligned"], "-o", out["detach"])
    mtpgraft("extract", m["full-aligned"], "-o", out["extract"])
    mtpgraft("sidecar", m["base"], "--mtp-from", m["full-aligned"], "--mtp-type", "keep", "-o", out["sidecar"])
    return out


def test_graft_round_trips_give_the_converter_files(fam, grafted):
    arch, m = fam
    full_t, full_k = _tensors(m["full-aligned"]), _keys(m["full-aligned"])
    for made in ("attach", "attach-key"):
        assert _keys(grafted[made]) == full_k, made  # every key, array by array
        assert _tensors(grafted[made]) == full_t, made  # byte for byte
    assert list(_tensors(grafted["attach-key"])) == list(full_t)  # the converter's order too
    q8 = _keys(grafted["attach-q8"])
    assert {k: v for k, v in q8.items() if k != "general.file_type"} == {
        k: v for k, v in full_k.items() if k != "general.file_type"}
    assert _tensors(grafted["detach"]) == _tensors(m["base"]) and _keys(grafted["detach"]) == _keys(m["base"])
    assert _tensors(grafted["extract"]) == _tensors(m["mtp-only-aligned"])
    # the sidecar for the trunk-only file: the converter's --mtp file of the same model
    assert _tensors(grafted["sidecar"]) == _tensors(m["mtp-only-aligned"])
    assert _keys(grafted["sidecar"]) == _keys(m["mtp-only-aligned"])


@pytest.mark.parametrize("arch", [a for a in FAMILIES if ARCH_RULES[a].config_arrays])
def test_a_config_array_needs_block_count_entries_at_least(arch, tmp_path):
    """deepseek4's compress_ratios is the HF config's list, trunk + MTP entries in every layout: the
    loader wants at least block_count of them. inspect refuses a full file whose list stops at the
    trunk, takes such a trunk-only file, and attach gives that one the full file's list."""
    from gguf import GGUFValueType as V

    trunk = SPECS[arch].trunk_layers
    full = tm.build_tiny_model(tmp_path / "full.gguf", arch=arch, dtype="f16")
    base = tm.build_tiny_model(tmp_path / "base.gguf", arch=arch, layout="base", dtype="f16")
    for k in ARCH_RULES[arch].config_arrays:
        key = f"{arch}.{k}"
        cut = {key: (V.ARRAY, _keys(full)[key][:trunk], V.INT32)}
        short_full = rewrite(full, tmp_path / "short-full.gguf", set_kv=cut)
        got = json.loads(mtpgraft("inspect", "--json", short_full, code=1))
        assert got["problems"] == [f"key {key} has wrong array length; expected at least {trunk + 1}, got {trunk}"]
        short_base = rewrite(base, tmp_path / "short-base.gguf", set_kv=cut)
        assert json.loads(mtpgraft("inspect", "--json", short_base))["consistent"]
        mtpgraft("attach", short_base, "--mtp-from", full, "--mtp-type", "keep", "-o", tmp_path / "out.gguf")
        assert _keys(tmp_path / "out.gguf") == _keys(full)


# ---------------------------------------------------------------------------------- llama-server


@pytest.mark.tools
def test_heads_draft_at_the_known_rates(fam, llama_cpp_dir):
    _, m = fam
    got = {}
    for head in ("aligned", "random"):
        with serve(m[f"full-{head}"], llama_cpp_dir, spec_type="mtp", draft_n_max=3) as srv:
            got[head] = [rate(run(srv, p, n_predict=48)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT)]
    assert got["aligned"] == [1.0, 1.0], got
    assert max(got["random"]) < 0.1, got


@pytest.mark.tools
def test_trunk_only_with_the_key_behaves_as_the_row_says(fam, llama_cpp_dir, tmp_path):
    arch, m = fam
    rule = ARCH_RULES[arch]
    srv = serve(m["base-key"], llama_cpp_dir, spec_type="mtp", log_path=tmp_path / "s.log")
    # refused at load, whatever the flags (deepseek4: the loader drops the key, so blk.{trunk} is a trunk layer)
    if not rule.trunk_only_ok:
        for s in (srv, serve(m["base-key"], llama_cpp_dir)):
            with pytest.raises(ServerError, match=rf"'blk\.{SPECS[arch].trunk_layers}\.[\w.]+' not found"):
                s.start()
        return
    assert rule.trunk_only_mtp_aborts
    with pytest.raises(ServerError, match="SIGABRT") as exc:
        srv.start()
    assert "MTP block missing nextn.eh_proj" in str(exc.value)


@pytest.mark.tools
@pytest.mark.parametrize("arch", [a for a in FAMILIES if ARCH_RULES[a].stray_key_loads])
def test_a_key_over_a_block_without_nextn_tensors_turns_mtp_off(arch, llama_cpp_dir, tmp_path):
    """The loader drops nextn_predict_layers when the block it names lacks nextn.eh_proj: the full file
    without its nextn tensors loads (the head's layer runs as one more trunk layer, whose branches are
    tiny: the trunk's text), inspect says so, and draft-mtp refuses it as it refuses a keyless file."""
    trunk = SPECS[arch].trunk_layers
    full = tm.build_tiny_model(tmp_path / "full.gguf", arch=arch, dtype="f16")
    base = tm.build_tiny_model(tmp_path / "base.gguf", arch=arch, layout="base", dtype="f16")
    stray = rewrite(full, tmp_path / "stray.gguf", drop_tensors={
        n for n in _tensors(full) if n.startswith(f"blk.{trunk}.nextn.")})
    got = json.loads(mtpgraft("inspect", "--json", stray))
    assert (got["consistent"], got["layout"], got["mtp_layers"]) == (True, "trunk-only", []), got
    assert any("drops the key" in n and "MTP off" in n for n in got["notes"]), got["notes"]
    with pytest.raises(ServerError, match="failed to create MTP context"):
        serve(stray, llama_cpp_dir, spec_type="mtp").start()
    vocab, texts = tm.tiny_vocab(0), []
    for m in (stray, base):
        with serve(m, llama_cpp_dir) as srv:
            want = vocab.detokenize(vocab.continuation(srv.tokenize(tm.PROSE_PROMPT)[-1], 24))
            texts.append(srv.completion(tm.PROSE_PROMPT, n_predict=24, temperature=0.0)["content"])
    assert texts == [want, want], texts


@pytest.mark.tools
def test_the_mixed_head_passes_through_the_hyper_connections(llama_cpp_dir, tmp_path):
    """deepseek4's mixed head: its flip units sit in the shared expert, whose output reaches each of
    the four residual streams times hc_post's ~1, so the head is wrong on half the letter tokens:
    1/3 at n-max 3 on prose (1/3, 1/2, 1/3, 1/4 for n-max 1..4 measured), 1.0 on code."""
    mixed = tm.build_tiny_model(tmp_path / "mixed.gguf", arch="deepseek4", head="mixed", dtype="f16")
    with serve(mixed, llama_cpp_dir, spec_type="mtp", draft_n_max=3) as srv:
        got = [rate(run(srv, p, n_predict=64)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT)]
    assert abs(got[0] - 1 / 3) < 0.06 and got[1] == 1.0, got


@pytest.mark.tools
def test_grafted_and_sidecar_files_draft(fam, grafted, llama_cpp_dir):
    arch, m = fam
    types = {t.name: t.tensor_type.name for t in GGUFReader(grafted["attach-q8"]).tensors}
    for i in _heads(arch):
        assert types[f"blk.{i}.nextn.eh_proj.weight"] == types[f"blk.{i}.{_down(arch)}"] == "Q8_0"
    with serve(grafted["attach-q8"], llama_cpp_dir, spec_type="mtp", draft_n_max=3) as srv:
        assert rate(run(srv, tm.PROSE_PROMPT, n_predict=48)) == 1.0
    for side in ("extract", "sidecar"):
        with serve(m["base"], llama_cpp_dir, spec_type="mtp", draft_n_max=3, draft_model=grafted[side]) as srv:
            assert rate(run(srv, tm.CODE_PROMPT, n_predict=48)) == 1.0, side


@pytest.mark.tools
def test_q4_k_m_keeps_the_head_at_its_rule_and_drafts(fam, llama_cpp_dir, tmp_path):
    arch, m = fam
    mtpgraft("quantize", m["full-aligned"], "--types", "Q4_K_M", "--out-dir", tmp_path, "--name", "q")
    q = tmp_path / "q-Q4_K_M.gguf"
    types = {t.name: t.tensor_type.name for t in GGUFReader(q).tensors}
    head_type = ARCH_RULES[arch].head_type.upper()
    for i in _heads(arch):  # every quantizable MTP weight at the head's type
        assert types[f"blk.{i}.nextn.eh_proj.weight"] == types[f"blk.{i}.{_down(arch)}"] == head_type
        outs = [n for n in types if n.startswith(f"blk.{i}.attn_output")]  # deepseek4: attn_output_a / _b
        assert outs and all(types[n] == head_type for n in outs), outs
    assert types["blk.1.ffn_up_exps.weight"] not in (head_type, "F16")  # the trunk got Q4_K_M's types
    with serve(q, llama_cpp_dir, spec_type="mtp", draft_n_max=3) as srv:
        assert [rate(run(srv, p, n_predict=48)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT)] == [1.0, 1.0]


def test_a_head_short_of_its_pattern_entries_gets_them_from_its_own_index(tmp_path):
    """A step35 source whose sliding_window_pattern stops at the trunk (the loader does not check its
    length, so such a graft would load and draft with full-attention heads): attach writes each head's
    entry from its own index (blk.4 full, blk.5/6 sliding), so the keys equal the converter's."""
    import dataclasses

    spec, key = SPECS["step35"], "attention.sliding_window_pattern"
    short = dataclasses.replace(spec, keys=tuple(
        (k, t, family.per_layer(lambda il: il % 4 != 0)) if k == key else (k, t, v) for k, t, v in spec.keys))
    src = family.build(short, tmp_path / "short.gguf", layout="mtp-only", dtype="f16")
    assert len(_keys(src)[f"step35.{key}"]) == spec.trunk_layers
    base = family.build(spec, tmp_path / "base.gguf", layout="base", dtype="f16")
    full = family.build(spec, tmp_path / "full.gguf", layout="full", dtype="f16")
    mtpgraft("attach", base, "--mtp-from", src, "--mtp-type", "keep", "-o", tmp_path / "out.gguf")
    assert _keys(tmp_path / "out.gguf") == _keys(full)
    assert _tensors(tmp_path / "out.gguf") == _tensors(full)


@pytest.mark.tools
@pytest.mark.parametrize("arch", ["step35", "mimo2"])
def test_chained_heads_clamp_the_draft_depth_to_their_count(arch, llama_cpp_dir, tmp_path):
    """Three chained heads, each wrong on half the letter tokens: at n-max 2 the prose rate is a single
    head's 1/2, and at n-max 4 it stays at n-max 3's 1/3 (a single head gives 1/4): the draft loop
    runs head k at step k and clamps n_max to the three heads."""
    mixed = tm.build_tiny_model(tmp_path / "mixed.gguf", arch=arch, head="mixed", dtype="f16")
    got = {}
    for n in (2, 4):
        with serve(mixed, llama_cpp_dir, spec_type="mtp", draft_n_max=n) as srv:
            got[n] = [rate(run(srv, p, n_predict=64)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT)]
    assert abs(got[2][0] - 1 / 2) < 0.06 and abs(got[4][0] - 1 / 3) < 0.06, got
    assert got[2][1] == got[4][1] == 1.0, got
