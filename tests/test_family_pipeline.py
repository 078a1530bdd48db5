"""Every command on each family (tests/test_families.FAMILIES) with the real tools, end to end:
attach --mtp-type match onto a quantized body; one recipe run (graft -> imatrix -> quantize to a type
that needs an imatrix, the head at its rule -> check -> push with the card to the loopback Hub); and
`mtpgraft check` on the aligned and the random head. The families' mixed heads at n-max 3 last.

A glm-dsa file whose shared indexer layers (attention.indexer.types false) carry indexer weights the
graph never runs cannot make a very-low-bit quant: llama-imatrix never records them and llama-quantize
aborts on the first one ("Missing importance matrix"); mtpgraft warns before it runs, naming them.
The family's own test model has none there (GLM-5.2's layout), so its recipe goes through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGUFReader
from helpers import hub_api, quick_check_section
from test_families import FAMILIES, _keys, _tensors, mtpgraft
from tinyserve import rate, run, serve

from mtpgraft import commands as _commands  # noqa: F401 - registers the commands
from mtpgraft import testmodels as tm
from mtpgraft.arch import ARCH_RULES
from mtpgraft.cli import cli
from mtpgraft.recipe import load_recipe, run_recipe
from mtpgraft.testmodels.families import SPECS

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

LOW_BIT = "IQ2_XXS"  # a type llama-quantize refuses without an imatrix (recipes/tiny.toml makes it for qwen35)
BUILT = {"full-aligned": dict(layout="full", head="aligned"), "full-random": dict(layout="full", head="random"),
         "base": dict(layout="base"), "mtp-only-aligned": dict(layout="mtp-only", head="aligned")}


@pytest.fixture(scope="module", params=FAMILIES)
def fam(request, tmp_path_factory) -> tuple[str, dict[str, Path]]:
    arch = request.param
    d = tmp_path_factory.mktemp(f"pipe-{arch}")
    return arch, {n: tm.build_tiny_model(d / f"{n}.gguf", arch=arch, dtype="f16", **kw) for n, kw in BUILT.items()}


def _imatrix(path: Path, entries: dict[str, int]) -> Path:
    """An imatrix GGUF with one flat NAME.in_sum2 of that many values (and NAME.counts) per entry."""
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(path, arch="imatrix")
    for name, n in entries.items():
        w.add_tensor(f"{name}.in_sum2", np.ones(n, dtype=np.float32))
        w.add_tensor(f"{name}.counts", np.ones(1, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_an_imatrix_entry_fits_a_3d_tensor_as_llama_quantize_reads_it(tmp_path):
    """MLA's attn_k_b is [64, 256, 4]: llama-imatrix writes 256 values for it, and llama-quantize takes
    an entry of ne[0] x ne[2] values; one of ne[0] values it would reject, and quantize refuses it."""
    from mtpgraft.errors import QuantizeError
    from mtpgraft.gguf_io import GGUFModel
    from mtpgraft.quantize.plan import check_imatrix_fits, read_imatrix_coverage

    model = GGUFModel(tm.build_tiny_model(tmp_path / "b.gguf", arch="deepseek2", dtype="f16", layout="base"))
    assert list(model.by_name["blk.0.attn_k_b.weight"].info.ne) == [64, 256, 4]
    good = {"blk.0.attn_k_b.weight": 256, "blk.0.attn_v_b.weight": 1024, "blk.0.attn_q_a.weight": 256}
    check_imatrix_fits(read_imatrix_coverage(_imatrix(tmp_path / "good.gguf", good)), model)
    for entry, n, why in (("blk.0.attn_k_b.weight", 64, "has 64 values, the tensor's 64 x 4"),
                          ("blk.0.attn_q_a.weight", 512, "has 512 columns, the tensor's rows 256")):
        bad = _imatrix(tmp_path / f"bad-{n}.gguf", {**good, entry: n})
        with pytest.raises(QuantizeError, match=f"its {entry} entry {why}"):
            check_imatrix_fits(read_imatrix_coverage(bad), model)


def _types(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


def _head_prefixes(arch: str) -> tuple[str, ...]:
    spec = SPECS[arch]
    return tuple(f"blk.{spec.trunk_layers + k}." for k in range(spec.nextn))


def _kin(types: dict[str, str], arch: str, head_tensor: str) -> set[str]:
    """The types of a head tensor's namesakes in the trunk layers (blk.N.attn_q.weight -> each blk.i.attn_q.weight)."""
    suffix = head_tensor.split(".", 2)[2]
    return {types[n] for i in range(SPECS[arch].trunk_layers) if (n := f"blk.{i}.{suffix}") in types}


def test_an_imatrix_the_pinned_quantizer_cannot_take_is_refused_with_the_reason(tmp_path):
    """deepseek4's attn_output_a is 2-D in the file and 3-D (o_groups matrices) at run time: llama-imatrix
    writes ne[0] x o_groups values, which llama-quantize at the pin compares with the file's ne[0] and
    aborts on; `mtpgraft quantize` says so before llama-quantize runs, and writes nothing."""
    full = tm.build_tiny_model(tmp_path / "f.gguf", arch="deepseek4", dtype="f16", layout="full")
    ne0 = next(t.shape[0] for t in GGUFReader(full).tensors if t.name == "blk.0.attn_output_a.weight")
    im = _imatrix(tmp_path / "im.gguf", {"blk.0.attn_output_a.weight": 2 * int(ne0)})
    r = CliRunner().invoke(cli, ["quantize", str(full), "--imatrix", str(im), "--types", "Q4_K_M",
                                 "--out-dir", str(tmp_path / "q")])
    assert r.exit_code == 3 and r.stderr.strip().splitlines() == [
        f"mtpgraft: error: f.gguf: {ARCH_RULES['deepseek4'].imatrix_refused}"]
    assert not (tmp_path / "q").exists() or not list((tmp_path / "q").iterdir())


def test_only_the_reshaped_tensors_entry_gets_the_pinned_quantizers_reason(tmp_path):
    """The deepseek4 reason is about attn_output_a with ne[0] x k values (k > 1 matrices at run time);
    any other misfit on a deepseek4 model is an imatrix of another model, said as for any model."""
    from mtpgraft.errors import QuantizeError
    from mtpgraft.gguf_io import GGUFModel
    from mtpgraft.quantize.plan import check_imatrix_fits, read_imatrix_coverage

    model = GGUFModel(tm.build_tiny_model(tmp_path / "f.gguf", arch="deepseek4", dtype="f16", layout="full"))
    ne = {n: list(r.info.ne) for n, r in model.by_name.items()}
    out_a = "blk.0.attn_output_a.weight"
    other = next(n for n, x in ne.items() if len(x) == 2 and x[0] > 1 and n != out_a and n.startswith("blk.0."))
    refused = ARCH_RULES["deepseek4"].imatrix_refused
    for entry, n, why in ((out_a, 2 * ne[out_a][0], refused), (out_a, 3 * ne[out_a][0], refused),
                          (out_a, ne[out_a][0] + 1, f"its {out_a} entry has {ne[out_a][0] + 1} columns"),
                          (other, 2 * ne[other][0], f"its {other} entry has {2 * ne[other][0]} columns")):
        im = _imatrix(tmp_path / f"im-{n}.gguf", {entry: n})
        with pytest.raises(QuantizeError) as e:
            check_imatrix_fits(read_imatrix_coverage(im), model)
        assert why in str(e.value) and (why == refused) == (refused in str(e.value)), (entry, n, str(e.value))


@pytest.mark.tools
def test_match_onto_a_quantized_body_takes_its_types_and_drafts(fam, llama_cpp_dir, tmp_path):
    """The base quantized to Q4_K_M by `mtpgraft quantize`, then the head attached with match: each head
    weight takes the type of a namesake in the body (exactly it where the body's namesakes agree;
    nextn.eh_proj, which has none, one of attn_output's); norms stay F32; the file drafts at 1.0."""
    arch, m = fam
    mtpgraft("quantize", m["base"], "--types", "Q4_K_M", "--out-dir", tmp_path, "--name", "b")
    out = tmp_path / "match.gguf"
    mtpgraft("attach", tmp_path / "b-Q4_K_M.gguf", "--mtp-from", m["mtp-only-aligned"], "--mtp-type", "match",
             "-o", out)
    body, src, got = _types(tmp_path / "b-Q4_K_M.gguf"), _types(m["mtp-only-aligned"]), _types(out)
    heads = {n: t for n, t in got.items() if n.startswith(_head_prefixes(arch))}
    assert {n: got[n] for n in body} == body  # the body as it was
    quantized = {n for n, t in heads.items() if t not in ("F16", "F32")}
    assert {n for n, t in heads.items() if t != src[n]} == quantized  # only quantized ones changed
    # nextn.eh_proj: attn_output's type, or where the family has no attn_output (deepseek4's is split
    # in two) the body's dominant type, one of its quantized ones
    other = _kin(body, arch, "blk.0.attn_output.weight") or set(body.values()) - {"F16", "F32"}
    kin = {n: _kin(body, arch, n) or other for n in quantized}
    assert all(heads[n] in kin[n] for n in quantized), {n: (heads[n], kin[n]) for n in quantized}
    assert any(len(k) == 1 for k in kin.values()) and len(quantized) > 2, kin
    assert all(heads[n] == "F32" for n in heads if n.endswith("norm.weight"))
    with serve(out, llama_cpp_dir, spec_type="mtp", draft_n_max=3) as srv:
        assert [rate(run(srv, p, n_predict=48)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT)] == [1.0, 1.0]


IMATRIX = """
[imatrix]
calibration = "builtin:calibration-tiny"
ctx = 128
chunks = 4
batch = 128
"""


def _recipe(arch: str, m: dict[str, Path], hub_url: str, qtype: str = LOW_BIT, imatrix: bool = True) -> str:
    return f"""
[model]
name = "tiny-{arch}"
base = "{m['base']}"
mtp_from = "{m['full-aligned']}"
graft_mtp_type = "keep"
{IMATRIX if imatrix else ""}
[quantize]
types = ["{qtype}"]
mtp_type = "q8_0"
""" + quick_check_section(server_args=["-t", "1"], mode="raw") + f"""
[hub]
repo = "tester/tiny-{arch}-MTP-GGUF"
dry_run = false
endpoint = "{hub_url}"
"""


@pytest.mark.tools
def test_recipe_grafts_imatrix_quantizes_checks_and_pushes(fam, hub, tmp_path, monkeypatch):
    """One recipe per family. The graft is the full file (keys; tensors byte for byte); the imatrix
    covers the trunk only (llama-imatrix never runs the head); LOW_BIT gives the trunk very-low-bit
    types and the head q8_0 wherever llama-quantize quantizes (the rest as converted); the check
    passes at 1.0 and the push lands the quant with a card that names the architecture and carries
    the check's tables."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # classic LFS upload to the fake
    arch, m = fam
    p = tmp_path / "r.toml"
    p.write_text(_recipe(arch, m, hub.url))
    work = tmp_path / "w"
    res = run_recipe(load_recipe(p, work_dir=work), hub_api=hub_api)
    status = {s.step: s.status for s in res.steps}
    graft = work / f"tiny-{arch}.gguf"
    assert (_keys(graft), _tensors(graft)) == (_keys(m["full-aligned"]), _tensors(m["full-aligned"]))
    im = {t.name.removesuffix(".in_sum2") for t in GGUFReader(work / f"tiny-{arch}.imatrix.gguf").tensors
          if t.name.endswith(".in_sum2")}
    heads = _head_prefixes(arch)
    assert im and not any(n.startswith(heads) for n in im)  # the trunk's graph only
    assert {n.split(".")[1] for n in im if n.startswith("blk.")} == {str(i) for i in range(SPECS[arch].trunk_layers)}
    qtype, low = LOW_BIT, LOW_BIT
    if refused := ARCH_RULES[arch].imatrix_refused:  # llama-quantize at the pin takes no imatrix of it
        assert status == {"graft": "done", "imatrix": "done", f"quantize:{LOW_BIT}": "failed", "check": "blocked",
                          "push": "blocked"} and hub.writes() == []
        assert refused in next(s.message for s in res.steps if s.step == f"quantize:{LOW_BIT}")
        qtype, low, work = "Q4_K_M", "Q4_K", tmp_path / "w2"  # the same recipe without an imatrix
        p.write_text(_recipe(arch, m, hub.url, qtype, imatrix=False))
        res = run_recipe(load_recipe(p, work_dir=work), hub_api=hub_api)
        status = {s.step: s.status for s in res.steps}
    assert res.ok, [(s.step, s.message) for s in res.failed]
    steps = ["graft", *(["imatrix"] if not refused else []), f"quantize:{qtype}", "check", "push"]
    assert status == dict.fromkeys(steps, "done"), status
    q = work / "quants" / f"tiny-{arch}-{qtype}.gguf"
    _head_at_its_rule(arch, _types(m["full-aligned"]), _types(q), low)
    rep = json.loads((work / "checks" / "report.json").read_text())
    assert (rep["verdict"], rep["acceptance"]) == ("pass", 1.0)
    assert [(x["quant"], x["arch"], x["verdict"], x["acceptance"]) for x in rep["models"]] == [
        (qtype, arch, "pass", 1.0)]
    head = hub.head(f"tester/tiny-{arch}-MTP-GGUF")
    assert head.files[q.name].content == q.read_bytes()
    card = head.files["README.md"].content.decode()
    assert f"- Architecture: `{arch}` ({ARCH_RULES[arch].family})\n" in card
    lines = card.splitlines()  # the check's measurements: acceptance per n, and per task
    assert lines[lines.index("| quant | n=3 |") + 2] == f"| {qtype} | 1.00 |"
    assert any(x.startswith("| code | 100% | ") for x in lines) and "verdict **pass**" in card


def _head_at_its_rule(arch: str, src: dict[str, str], q: dict[str, str], low: str = LOW_BIT) -> None:
    """Each head tensor llama-quantize touched (those whose namesake in the trunk it quantized too, and
    nextn.eh_proj: every F16 weight) is Q8_0; the others (F32 norms, biases, routers) are as converted;
    the trunk got `low` (the quant's own, very-low-bit) types."""
    heads = [n for n in q if n.startswith(_head_prefixes(arch))]
    touched = {n for n in heads if q[n] != src[n]}
    assert touched and {q[n] for n in touched} == {"Q8_0"}, {n: q[n] for n in heads}
    assert {src[n] for n in heads if n not in touched} == {"F32"}  # every F16 weight of the head touched
    for n in heads:
        if kin := _kin(q, arch, n):
            assert (n in touched) == bool(kin - {"F16", "F32"}), (n, kin)
    assert all(n in touched for n in heads if n.endswith("nextn.eh_proj.weight"))
    assert low in set(q.values()) - {q[n] for n in heads}


@pytest.mark.tools
def test_low_bit_warns_before_llama_quantize_aborts(tmp_path):
    """A glm-dsa file with indexer weights in its shared layers (which the graph never runs):
    `mtpgraft quantize` names the trunk tensors the imatrix lacks before llama-quantize aborts on the
    first one (exit 1, one line)."""
    import dataclasses

    from mtpgraft.testmodels import family

    spec = SPECS["glm-dsa"]
    every = dataclasses.replace(spec, trunk=tuple(
        parts if "indexer" in parts else (parts[0], "indexer", *parts[1:]) for parts in spec.trunk))
    full = family.build(every, tmp_path / "f.gguf", layout="full", head="aligned", dtype="f16")
    cal = Path(tm.__file__).parents[1] / "data" / "calibration-tiny.txt"
    mtpgraft("imatrix", full, "-f", cal, "-o", tmp_path / "im.gguf", "-c", "128", "--chunks", "4", "-b", "128")
    r = CliRunner().invoke(cli, ["quantize", str(full), "--imatrix", str(tmp_path / "im.gguf"), "--types", LOW_BIT,
                                 "--out-dir", str(tmp_path), "--name", "q"])
    assert r.exit_code == 1
    assert ("warning: the imatrix has no entries for 6 trunk tensor(s) (blk.2.indexer.proj.weight, "
            "blk.2.indexer.attn_k.weight, blk.2.indexer.attn_q_b.weight, ...)") in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("mtpgraft: error: 1 of 1 type(s) failed: IQ2_XXS: ")
    assert not list(tmp_path.glob("q-*"))


@pytest.mark.tools
def test_check_passes_the_aligned_head_and_fails_the_random(fam, llama_cpp_dir):
    """The real `mtpgraft check` on both full files: one report, exit 1 (the random fails)."""
    arch, m = fam
    out = mtpgraft("check", m["full-aligned"], m["full-random"], "--n-max", "3", "--reps", "1", "--categories",
                   "code", "--per-category", "1", "--n-predict", "32", "--mode", "raw", "--ctx", "1024",
                   "--server-arg=-t", "--server-arg=1", "--llama-cpp", llama_cpp_dir, "--json", code=1)
    rep = json.loads(out)
    got = {x["name"]: (x["arch"], x["verdict"], x["acceptance"]) for x in rep["models"]}
    assert got["full-aligned.gguf"] == (arch, "pass", 1.0)
    assert got["full-random.gguf"][:2] == (arch, "fail") and got["full-random.gguf"][2] < 0.1
    assert rep["verdict"] == "fail" and rep["reasons"] == [
        f"full-random.gguf: acceptance {got['full-random.gguf'][2]:.2f} < 0.30"]


# qwen3next is not among llama.cpp's llm_arch_supports_rs_rollback archs (qwen35/qwen35moe are): its
# recurrent state cannot drop rejected draft tokens, so after a partly rejected draft the server
# restores a full checkpoint and replays the accepted tokens (server-context.cpp, spec_is_replay)
# instead of drafting. Fewer drafts are made (31, not 46, over 64 tokens at n-max 1) and they fall
# elsewhere in the prose cycle: every draft's first token is accepted, and the prose rate is ~0.68 at
# n-max 3 (0.52 at 1, 0.51 at 2) where qwen35moe's, the same head on a server that rolls back, is 1/3.
MIXED_PROSE_RATE = {"qwen3next": 0.68}


@pytest.mark.tools
@pytest.mark.parametrize("arch", FAMILIES)
def test_the_mixed_head_drafts_at_its_known_rate(arch, llama_cpp_dir, tmp_path):
    """A mixed head (wrong on half the letter tokens) at n-max 3: 1/3 on prose, 1.0 on code."""
    mixed = tm.build_tiny_model(tmp_path / "mixed.gguf", arch=arch, head="mixed", dtype="f16")
    with serve(mixed, llama_cpp_dir, spec_type="mtp", draft_n_max=3) as srv:
        prose, code = (run(srv, p, n_predict=64) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT))
    assert abs(rate(prose) - MIXED_PROSE_RATE.get(arch, 1 / 3)) < 0.06 and rate(code) == 1.0, (prose, code)
    if arch in MIXED_PROSE_RATE:
        assert prose["m_pos0"] == prose["m_drafts"], prose
