"""Safetensors MTP heads converted by mtpgraft equal what llama.cpp's convert_hf_to_gguf.py wrote.

The references were made by the real converter (scripts/make_convert_reference.py says how) and are
kept as fingerprints (tests/data/convert-ref/references.json: each key's and tensor's sha256, in
order); the trunks the whole-file test grafts onto are rebuilt from the checkpoint by the recipes in
trunks.json and checked against the converter file's sha256 (no GGUF is committed). Here the same
checkpoints are rebuilt from the same seed in numpy and converted by mtpgraft, then compared key by
key and tensor by tensor (name, shape, type, sha256 of the bytes, order)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft.cli import cli
from mtpgraft.errors import GraftError, SourceError
from mtpgraft.gguf_io import GGUFModel
from mtpgraft.sources import resolve_mtp_source
from mtpgraft.testmodels.checkpoints import build_checkpoint
from mtpgraft.testmodels.fingerprint import fingerprint
from mtpgraft.testmodels.synthetic import make_model
from mtpgraft.testmodels.trunks import rebuild

REF = Path(__file__).parent / "data" / "convert-ref"
REFS = json.loads((REF / "references.json").read_text())
TRUNKS = json.loads((REF / "trunks.json").read_text())
CASES = [("glm4moe-bf16", "auto"), ("dense-bf16", "auto"), ("dense-bf16", "f16"), ("dense-bf16", "q8_0"), ("dense-f16", "auto"),
         ("dense-f16", "bf16"), ("dense-f16", "f32"), ("moe-bf16", "auto"), ("moe-f16-per-expert", "auto"),
         ("qwen3next-bf16", "auto"), ("glm-dsa-bf16", "auto"), ("glm-dsa-bf16", "q8_0"), ("glm47flash-bf16", "auto"),
         ("deepseek32-bf16", "auto"), ("hy3-bf16", "auto")]
CASES += [("mimo2-bf16", "auto"), ("step35-bf16", "auto"), ("step35-bf16", "q8_0")]
CASES += [("ling3-bf16", "auto"), ("nemotron3-bf16", "auto"), ("cohere2moe-bf16", "auto")]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "cache"))


def tensors(path: Path) -> list[list]:
    """[name, shape, type, sha256 of the bytes] per tensor, in file order."""
    return fingerprint(path)["tensors"]


def head_kvs(path: Path) -> dict[str, str]:
    """The converter's metadata (sha256 of each raw encoded entry, in order), without mtpgraft's
    and the reference's own keys."""
    return {k: h for k, h in fingerprint(path)["keys"] if not k.startswith(("mtpgraft.", "reference."))}


def ref_tensors(name: str) -> list[list]:
    return REFS[name]["tensors"]


def ref_kvs(name: str) -> dict[str, str]:
    return {k: h for k, h in REFS[name]["keys"] if not k.startswith(("mtpgraft.", "reference."))}


E2E = ("dense-bf16", "moe-bf16", "glm4moe-bf16", "qwen3next-bf16", "glm-dsa-bf16", "glm47flash-bf16", "deepseek32-bf16",
       "hy3-bf16")
E2E += ("mimo2-bf16", "step35-bf16")
E2E += ("ling3-bf16", "nemotron3-bf16")


def test_references_exist_and_are_small():
    assert sorted(REFS) == sorted([f"{v}-{o}.gguf" for v, o in CASES] + [f"{v}-full.gguf" for v in E2E])
    assert sorted(TRUNKS) == sorted(E2E)
    assert sorted(p.name for p in REF.iterdir()) == ["references.json", "trunks.json"]  # no GGUF file
    assert sum(p.stat().st_size for p in REF.iterdir()) < 512 << 10


@pytest.mark.parametrize("variant", E2E)
def test_the_rebuilt_trunk_is_the_converters_file(tmp_path, variant):
    """The recipe rebuilds convert_hf_to_gguf.py --no-mtp's trunk byte for byte (its sha256, as the
    real converter wrote it), and a recipe step that is off by one bit is caught."""
    import copy

    ckpt = build_checkpoint(tmp_path / variant, variant, seed=0)
    recipe = TRUNKS[variant]
    out = rebuild(recipe, ckpt, tmp_path / "trunk.gguf")
    assert hashlib.sha256(out.read_bytes()).hexdigest() == recipe["sha256"]
    assert fingerprint(out) == recipe["fingerprint"]
    broken = copy.deepcopy(recipe)
    step = next(s for s in broken["tensors"] if s["op"] == "plus1" or s["op"] == "f32")
    step["op"] = "f32" if step["op"] == "plus1" else "plus1"
    bad = rebuild(broken, ckpt, tmp_path / "bad.gguf")
    assert fingerprint(bad)["tensors"] != recipe["fingerprint"]["tensors"]


@pytest.mark.parametrize(("variant", "outtype"), CASES)
def test_converted_head_equals_the_real_converter(tmp_path, variant, outtype):
    ckpt = build_checkpoint(tmp_path / variant, variant, seed=0)
    src = resolve_mtp_source(ckpt, outtype=outtype)
    ref = f"{variant}-{outtype}.gguf"
    got, want = tensors(src.path), ref_tensors(ref)
    assert [t[:3] for t in got] == [t[:3] for t in want]  # names, shapes, types, order
    for g, w in zip(got, want, strict=True):
        assert g[3] == w[3], f"{g[0]} differs from the converter's bytes"
    assert head_kvs(src.path) == ref_kvs(ref)
    assert list(head_kvs(src.path)) == list(ref_kvs(ref))  # key order too
    assert src.kind == "safetensors" and src.label == f"{variant}/"


def test_single_safetensors_file_and_folder_give_the_same_head(tmp_path):
    ckpt = build_checkpoint(tmp_path / "m", "moe-f16-per-expert")  # one shard: model.safetensors
    a = resolve_mtp_source(ckpt / "model.safetensors")
    b = resolve_mtp_source(ckpt)
    assert tensors(a.path) == tensors(b.path) == ref_tensors("moe-f16-per-expert-auto.gguf")
    assert a.label == "model.safetensors"


def test_conversion_is_cached_and_inputs_untouched(tmp_path):
    ckpt = build_checkpoint(tmp_path / "d", "dense-bf16")
    before = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    a = resolve_mtp_source(ckpt)
    b = resolve_mtp_source(ckpt)
    assert not a.cached and b.cached and a.path == b.path
    assert {p.name: p.read_bytes() for p in ckpt.iterdir()} == before


def _base(tmp_path: Path, **kw) -> Path:
    """A trunk-only qwen35 GGUF whose sizes fit the tiny checkpoints (2 layers, n_embd 64, 320 tokens)."""
    args = {"arch": "qwen35", "trunk": 2, "layout": "base", "n_embd": 64, "vocab": 320, "n_ff": 128} | kw
    return make_model(tmp_path / "base.gguf", **args)


def test_attach_from_a_snapshot_folder(tmp_path):
    ckpt = build_checkpoint(tmp_path / "Qwen-tiny", "dense-bf16")
    base = _base(tmp_path)
    out = tmp_path / "out.gguf"
    r = CliRunner().invoke(cli, ["attach", str(base), "--mtp-from", str(ckpt), "-o", str(out), "--mtp-type", "keep"])
    assert r.exit_code == 0, r.output
    m = GGUFModel(out)
    assert m.get("qwen35.block_count") == 3 and m.get("qwen35.nextn_predict_layers") == 1
    assert m.get("mtpgraft.mtp.source") == "Qwen-tiny/"
    assert m.get("qwen35.attention.recurrent_layers")[-1] is False
    mtp = [t for t in tensors(out) if t[0].startswith("blk.2.")]
    assert mtp == ref_tensors("dense-bf16-auto.gguf")
    # the converter writes the head after blk.1.attn_q_norm, which this base lacks: appended
    assert GGUFModel(resolve_mtp_source(ckpt).path).get("mtpgraft.cache.after") == "blk.1.attn_q_norm.weight"
    assert [r.name for r in m.refs][-len(mtp):] == [t[0] for t in mtp]


@pytest.mark.parametrize(("change", "message"), [
    ({"n_embd": 128}, "config.json hidden_size = 64, the base's qwen35.embedding_length = 128"),
    ({"vocab": 300}, "config.json vocab_size = 320, the base has 300 tokens"),
    ({"trunk": 3}, "config.json num_hidden_layers = 2, the base's trunk has 3 layers"),
    ({"arch": "qwen35moe"}, "Qwen3_5ForConditionalGeneration (qwen35); the base is qwen35moe"),
])
def test_config_that_does_not_fit_the_base_is_refused_before_converting(tmp_path, change, message):
    """The config check's own message: it runs before the head is converted (graft would refuse later,
    in other words); the Hub tests show no tensor byte is fetched."""
    ckpt = build_checkpoint(tmp_path / "ck", "dense-bf16")
    base = _base(tmp_path, **change)
    r = CliRunner().invoke(cli, ["attach", str(base), "--mtp-from", str(ckpt), "-o", str(tmp_path / "o.gguf")])
    assert r.exit_code == 3
    assert r.output.strip() == f"mtpgraft: error: ck/ does not fit the base: {message}" or \
        r.output.strip() == f"mtpgraft: error: ck/ is {message}"
    assert not (tmp_path / "o.gguf").exists()
    assert not list((tmp_path / "cache" / "mtp-sources").glob("*.gguf"))


def _edit_config(ckpt: Path, **text) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    for k, v in text.items():
        if k == "architectures":
            cfg[k] = v
        else:
            cfg["text_config"][k] = v
    (ckpt / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(("edit", "message"), [
    ({"mtp_num_hidden_layers": 0}, "ck: no MTP head: config.json gives mtp_num_hidden_layers = 0"),
    ({"architectures": ["LlamaForCausalLM"]}, "ck: no MTP head conversion for architecture LlamaForCausalLM "
     "(mtpgraft converts BailingMoeV3ForCausalLM, Cohere2MoeForCausalLM, DeepseekV32ForCausalLM, Glm4MoeForCausalLM, "
     "Glm4MoeLiteForCausalLM, GlmMoeDsaForCausalLM, HYV3ForCausalLM, MiMoV2FlashForCausalLM, MiMoV2ForCausalLM, "
     "NemotronHForCausalLM, Qwen3NextForCausalLM, Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration, "
     "Qwen3_5MoeForCausalLM, Qwen3_5MoeForConditionalGeneration, Step3p5ForCausalLM; use a GGUF donor for the "
     "others)"),
    ({"architectures": ["DeepseekV3ForCausalLM"]}, "ck: DeepseekV3ForCausalLM: llama.cpp's converter drops "
     "DeepSeek-V3's MTP layers (deepseek2 keeps MTP only for GLM-4.7-Flash), so there is no GGUF head to build"),
])
def test_unconvertible_checkpoints_are_refused_in_one_line(tmp_path, edit, message):
    ckpt = build_checkpoint(tmp_path / "ck", "dense-bf16")
    _edit_config(ckpt, **edit)
    with pytest.raises(SourceError) as e:
        resolve_mtp_source(ckpt)
    assert str(e.value).replace("ck/", "ck") == message


def test_checkpoint_without_mtp_tensors(tmp_path):
    ckpt = build_checkpoint(tmp_path / "ck", "dense-bf16")
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if not k.startswith("mtp.")}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(GraftError, match=r"^ck/ has no MTP tensors \(none of the tensors in "
                                         r"model\.safetensors\.index\.json is an MTP tensor\)$"):
        resolve_mtp_source(ckpt)


def test_missing_config_json(tmp_path):
    ckpt = build_checkpoint(tmp_path / "ck", "dense-bf16")
    (ckpt / "config.json").unlink()
    with pytest.raises(SourceError, match="config.json: not found; a safetensors source needs the model's config.json"):
        resolve_mtp_source(ckpt)


def test_dry_run_writes_nothing_and_reads_no_tensor(tmp_path):
    ckpt = build_checkpoint(tmp_path / "ck", "dense-bf16")
    base = _base(tmp_path)
    shutil.copy(ckpt / "config.json", tmp_path / "config.keep")
    r = CliRunner().invoke(cli, ["attach", str(base), "--mtp-from", str(ckpt), "-o", str(tmp_path / "o.gguf"),
                                 "--dry-run", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{"):])
    plan = d["plan"]
    assert d["dry_run"] is True and plan["mtp_layers"] == [2]
    assert {a["name"] for a in plan["tensors"]} == {t[0] for t in ref_tensors("dense-bf16-auto.gguf")}
    assert not (tmp_path / "o.gguf").exists()
    assert not list((tmp_path / "cache" / "mtp-sources").glob("*.gguf"))


def _without(ckpt: Path, prefix: str) -> None:
    """The one-shard checkpoint with the tensors named `prefix`* dropped (rewritten in place)."""
    from mtpgraft.sources.safetensors import write_safetensors

    raw = (ckpt / "model.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8:8 + n])
    keep = {k: (v["dtype"], tuple(v["shape"]), raw[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in head.items() if k != "__metadata__" and not k.startswith(prefix)}
    assert len(keep) < len(head) - 1
    write_safetensors(ckpt / "model.safetensors", keep)


@pytest.mark.parametrize("command", ["attach", "sidecar"])
def test_a_graft_refusal_names_the_checkpoint_not_the_converted_file(hub, hf_hermetic, tmp_path, command):
    """A Step-3.5 checkpoint without its middle MTP layer (model.layers.3.*) is refused in one line
    naming the user's checkpoint (its folder, or the Hub repo), never the converted file in the cache,
    in a run and in a dry run alike. The conversion's own check (each MTP layer the converter writes
    has its eh_proj) now refuses it before the graft would ("blk.2, blk.4 are not consecutive"); both
    name the source the same way (sources.resolve._naming)."""
    ckpt = build_checkpoint(tmp_path / "Step-tiny", "step35-bf16", seed=0)
    trunk = rebuild(TRUNKS["step35-bf16"], ckpt, tmp_path / "trunk.gguf")
    _without(ckpt, "model.layers.3.")
    for dry in ([], ["--dry-run"]):
        r = CliRunner().invoke(cli, [command, str(trunk), "--mtp-from", str(ckpt), "-o", str(tmp_path / "o.gguf"),
                                     *dry])
        assert r.exit_code == 3 and r.stderr.splitlines() == [
            "mtpgraft: error: Step-tiny/: MTP layer 1 of the 3 the converter writes has no eh_proj tensor "
            "(blk.3.nextn.eh_proj.weight), without which llama.cpp cannot use the head"], (dry, r.output)
    assert not (tmp_path / "o.gguf").exists()
    hub.put_files("tester/Step-tiny", {p.name: p.read_bytes() for p in ckpt.iterdir()})
    for dry in ([], ["--dry-run"]):  # from the Hub: the repo as resolved, as for a local checkpoint
        r = CliRunner().invoke(cli, [command, str(trunk), "--mtp-from", "hf://tester/Step-tiny", "-o",
                                     str(tmp_path / "o.gguf"), "--endpoint", hub.url, *dry])
        assert r.exit_code == 3 and len(r.stderr.splitlines()) == 1, (dry, r.output)
        assert re.fullmatch(r"mtpgraft: error: hf://tester/Step-tiny@[0-9a-f]{40}: MTP layer 1 of the 3 .*",
                            r.stderr.strip()), (dry, r.output)
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("variant", E2E)
def test_graft_onto_the_converters_trunk_gives_the_converters_full_file(tmp_path, variant):
    """convert_hf_to_gguf.py --no-mtp + mtpgraft's head = convert_hf_to_gguf.py (MTP kept): every key
    but the size label (recomputed by the converter from what it writes) and mtpgraft's provenance,
    every tensor's name, type, shape, bytes, and the tensor order."""
    ckpt = build_checkpoint(tmp_path / variant, variant, seed=0)
    trunk = rebuild(TRUNKS[variant], ckpt, tmp_path / f"{variant}-trunk.gguf")
    assert hashlib.sha256(trunk.read_bytes()).hexdigest() == TRUNKS[variant]["sha256"]  # the converter's trunk
    out = tmp_path / "graft.gguf"
    # --layout converter: the converter's tensor order (reflink's would lead with the head where, as for
    # MiMo-V2's three tiny heads, it holds more bytes than the tiny trunk)
    r = CliRunner().invoke(cli, ["attach", str(trunk), "--mtp-from", str(ckpt), "-o", str(out),
                                 "--mtp-type", "keep", "--layout", "converter"])
    assert r.exit_code == 0, r.output
    full, graft = dict(REFS[f"{variant}-full.gguf"]["keys"]), dict(fingerprint(out)["keys"])
    keys = [k for k in graft if not k.startswith("mtpgraft.")]
    assert keys == list(full)
    assert [k for k in keys if graft[k] != full[k]] == ["general.size_label"]
    assert tensors(out) == ref_tensors(f"{variant}-full.gguf")


def test_mla_head_from_the_hub_equals_the_converter(hub, hf_hermetic, tmp_path):
    """GLM-5's head read by ranges from the Hub (kv_b_proj's transposed attn_k_b slabs included) is the
    converter's, byte for byte, and only the head's tensors travel."""
    from mtpgraft.sources import HubOptions

    ckpt = build_checkpoint(tmp_path / "GLM-tiny", "glm-dsa-bf16")
    files = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    hub.put_files("tester/GLM-tiny", files)
    src = resolve_mtp_source("hf://tester/GLM-tiny", hub=HubOptions(endpoint=hub.url))
    assert tensors(src.path) == ref_tensors("glm-dsa-bf16-auto.gguf")
    assert head_kvs(src.path) == ref_kvs("glm-dsa-bf16-auto.gguf")
    assert hub.bytes_sent == src.fetched_bytes < sum(len(v) for v in files.values()) * 0.7


def test_qwen3next_counts_its_mtp_layers_as_the_converter_does():
    """config.json states no MTP layer count: the highest mtp.layers.K + 1 (so mtp.layers.1 alone means
    two layers, as _QwenMtpMixin counts), bounded before anything is sized by it."""
    from mtpgraft.sources.convert import plan_head
    from mtpgraft.sources.safetensors import STensor
    from mtpgraft.testmodels.checkpoints import VARIANTS, config

    cfg = config(VARIANTS["qwen3next-bf16"])

    def plan(*names: str):
        return plan_head(cfg, [("model.safetensors", {n: STensor(n, "BF16", (64,), 0, 128) for n in names})],
                         label="ck")

    head = ("mtp.fc.weight", "mtp.layers.1.input_layernorm.weight")
    assert plan(*head).kvs[-3] == ("qwen3next.nextn_predict_layers", "UINT32", 2)
    assert plan(*head).mtp_layers == [2, 3]
    with pytest.raises(SourceError, match=r"^ck: config.json gives num_hidden_layers = 2 and 100 mtp.layers "
                                          r"\(config.json gives no mtp_num_hidden_layers\); no model has more"):
        plan("mtp.layers.99.input_layernorm.weight")
    with pytest.raises(SourceError, match=r"^ck: no MTP head: config.json gives no mtp_num_hidden_layers and the "
                                          r"checkpoint has no mtp.layers$"):
        plan("model.norm.weight")


# ------------------------------------------------------------------------------------- MiMo-V2

def _mimo2_plan(tmp_path: Path, **edit):
    from mtpgraft.sources.convert import plan_head
    from mtpgraft.sources.safetensors import read_local_header

    ckpt = build_checkpoint(tmp_path / "mimo", "mimo2-bf16")
    cfg = json.loads((ckpt / "config.json").read_text()) | edit
    return plan_head(cfg, [("model.safetensors", read_local_header(ckpt / "model.safetensors").tensors)], label="ck")


def test_mimo2_heads_are_three_sliding_window_layers_config_json_does_not_count(tmp_path):
    """The converter's three MTP layers whatever config.json says, each a sliding-window entry of the
    per-layer arrays the head carries (head_count_kv's SWA count), the trunk's entries from the config."""
    plan = _mimo2_plan(tmp_path, num_nextn_predict_layers=1, mtp_num_hidden_layers=1)
    kvs = {k: v for k, _, v in plan.kvs}
    assert plan.mtp_layers == [2, 3, 4] and kvs["mimo2.nextn_predict_layers"] == 3
    assert kvs["mimo2.attention.head_count_kv"] == [1, 2, 2, 2, 2]
    assert kvs["mimo2.attention.sliding_window_pattern"] == [0, 1, 1, 1, 1]
    plan = _mimo2_plan(tmp_path, hybrid_layer_pattern=[1, 0], swa_num_key_value_heads=2, num_key_value_heads=2)
    assert {k: v for k, _, v in plan.kvs}["mimo2.attention.sliding_window_pattern"] == [1, 0, 1, 1, 1]


@pytest.mark.parametrize(("edit", "message"), [
    ({"hybrid_layer_pattern": [0, 1, 1]}, "config.json: hybrid_layer_pattern is not 2 entries of 0 or 1 "
     "(one per num_hidden_layers)"),
    ({"hybrid_layer_pattern": [0, 2]}, "config.json: hybrid_layer_pattern is not 2 entries of 0 or 1"),
    ({"swa_num_key_value_heads": None}, "config.json: no swa_num_key_value_heads, which the converter reads for "
     "a MiMo-V2 head"),
    ({"rope_parameters": {"full_attention": {"partial_rotary_factor": 0.5}}}, "config.json: no "
     "partial_rotary_factor in rope_parameters"),
    ({"attention_value_scale": "0.7"}, "config.json attention_value_scale = '0.7': not a number"),
])
def test_mimo2_config_fields_the_converter_reads_are_checked(tmp_path, edit, message):
    with pytest.raises(SourceError, match="^ck: " + re.escape(message)):
        _mimo2_plan(tmp_path, **edit)


def test_mimo2_a_fourth_mtp_layer_is_refused(tmp_path):
    """MimoV2Model.modify_tensors asserts an MTP index below its three; mtpgraft refuses it in one line."""
    from mtpgraft.sources.convert import plan_head
    from mtpgraft.sources.safetensors import STensor

    cfg = json.loads((build_checkpoint(tmp_path / "mimo", "mimo2-bf16") / "config.json").read_text())
    name = "model.mtp.layers.3.enorm.weight"
    with pytest.raises(SourceError, match=r"^ck: model.mtp.layers.3.enorm.weight is MTP layer 3; the converter "
                                          r"takes mimo2's 3 MTP layers only$"):
        plan_head(cfg, [("model.safetensors", {name: STensor(name, "BF16", (64,), 0, 128)})], label="ck")


# ------------------------------------------------------------------------------------- Step-3.5

def _step35_plan(tmp_path: Path, names: dict[str, tuple[int, ...]] | None = None, **edit):
    from mtpgraft.sources.convert import plan_head
    from mtpgraft.sources.safetensors import STensor, read_local_header

    ckpt = build_checkpoint(tmp_path / "step", "step35-bf16")
    cfg = json.loads((ckpt / "config.json").read_text()) | edit
    headers = read_local_header(ckpt / "model.safetensors").tensors
    if names is not None:
        headers = {n: STensor(n, "BF16", shape, 0, 2 * math.prod(shape)) for n, shape in names.items()}
    return plan_head(cfg, [("model.safetensors", headers)], label="ck")


def test_step35_per_layer_arrays_keep_the_mtp_entries_of_layer_types_and_pad_the_rest(tmp_path):
    """layer_types' entries for the MTP layers decide their head counts and sliding-window flags; a
    list cut to the trunk is padded with full attention (and partial_rotary_factors with 0.5), the
    SwiGLU clamps with 0, as Step35Model pads them."""
    kvs = {k: v for k, _, v in _step35_plan(tmp_path).kvs}
    assert kvs["step35.attention.head_count"] == [2, 4, 4, 4, 2]
    assert kvs["step35.attention.sliding_window_pattern"] == [False, True, True, True, False]
    assert kvs["step35.swiglu_clamp_exp"] == [0.0, 7.0, 0.0, 0.0, 0.0]
    kvs = {k: v for k, _, v in _step35_plan(tmp_path, layer_types=["full_attention", "sliding_attention"],
                                            partial_rotary_factors=[0.5, 1.0], swiglu_limits=None).kvs}
    assert kvs["step35.attention.head_count"] == [2, 4, 2, 2, 2]
    assert kvs["step35.attention.sliding_window_pattern"] == [False, True, False, False, False]
    assert "step35.swiglu_clamp_exp" not in kvs and kvs["step35.leading_dense_block_count"] == 1


def test_step35_squeezes_what_the_converter_squeezes(tmp_path):
    """A one-head g_proj [1, H] is written 1-D (so F32), as Step35Model.modify_tensors squeezes it; a
    norm gets +1; a tensor the converter does not squeeze keeps its size-1 dimension."""
    names = {"model.layers.2.self_attn.g_proj.weight": (1, 64), "model.layers.2.eh_proj.weight": (1, 128),
             "model.layers.2.enorm.weight": (64,)}
    got = {t.name: (t.ne, t.ggml_type, t.plus_one) for t in _step35_plan(tmp_path, names, num_nextn_predict_layers=1).tensors}
    assert got == {"blk.2.attn_gate.weight": ((64,), "F32", False),
                   "blk.2.nextn.eh_proj.weight": ((128, 1), "BF16", False),
                   "blk.2.nextn.enorm.weight": ((64,), "F32", True)}


@pytest.mark.parametrize(("edit", "message"), [
    ({"partial_rotary_factors": [0.5, 0.5, 1.0, 1.0, 0.5]}, "config.json: partial_rotary_factors is not 1.0 for "
     "each sliding_attention layer and 0.5 for the others, as the converter asserts"),
    ({"num_attention_groups": None}, "config.json: no num_attention_groups, which the converter reads for a "
     "Step-3.5 head"),
    ({"moe_top_k": 2.5}, "config.json: moe_top_k 2.5 is not a count"),
    ({"partial_rotary_factors": ["0.5"]}, "config.json: partial_rotary_factors is not a list of int/float entries"),
    ({"moe_layers_enum": "1,x"}, "config.json: moe_layers_enum '1,x' is not comma-separated layer numbers"),
    ({"norm_expert_weight": 1}, "config.json: norm_expert_weight is not true or false"),
])
def test_step35_config_fields_the_converter_reads_are_checked(tmp_path, edit, message):
    with pytest.raises(SourceError, match="^ck: " + re.escape(message)):
        _step35_plan(tmp_path, **edit)


@pytest.mark.parametrize("variant", ["mimo2-bf16", "step35-bf16"])
def test_heads_k_from_a_checkpoint_is_the_converted_file_pruned(hub, hf_hermetic, tmp_path, variant):
    """Three converted MTP layers, --heads 1 and 2: attach from the checkpoint (local, and on the Hub,
    where only the kept layers' tensors travel) equals the converter's full file pruned by detach
    --heads K (keys array by array, tensors byte for byte)."""
    ckpt = build_checkpoint(tmp_path / variant, variant, seed=0)
    trunk = rebuild(TRUNKS[variant], ckpt, tmp_path / "trunk.gguf")
    files = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    hub.put_files(f"tester/{variant}", files)

    def run(*args):
        r = CliRunner().invoke(cli, [str(a) for a in args])
        assert r.exit_code == 0, r.output

    full = tmp_path / "full.gguf"
    run("attach", trunk, "--mtp-from", ckpt, "-o", full, "--mtp-type", "keep", "--layout", "converter")
    sent = {}
    for k in (1, 2):
        want = tmp_path / f"pruned{k}.gguf"
        run("detach", full, "--heads", k, "-o", want)
        for where, src in (("local", ckpt), ("hub", f"hf://tester/{variant}")):
            before = hub.bytes_sent
            out = tmp_path / f"{where}{k}.gguf"
            run("attach", trunk, "--mtp-from", src, "--heads", k, "-o", out, "--mtp-type", "keep", "--layout",
                "converter", "--endpoint", hub.url)
            sent[(where, k)] = hub.bytes_sent - before
            assert tensors(out) == tensors(want), (where, k)
            assert list(head_kvs(out).items()) == list(head_kvs(want).items()), (where, k)  # in order too
    assert 0 < sent[("hub", 1)] < sent[("hub", 2)]  # the second layer's tensors travel only for K = 2


# ------------------------------------------------ Ling 3, Nemotron-3, Cohere 2 MoE


def _plan_of(variant: str, names: list[str], **config_edit):
    from mtpgraft.sources.convert import plan_head
    from mtpgraft.sources.safetensors import STensor
    from mtpgraft.testmodels.checkpoints import VARIANTS, config

    cfg = {**config(VARIANTS[variant]), **config_edit}
    return plan_head(cfg, [("model.safetensors", {n: STensor(n, "BF16", (64,), 0, 128) for n in names})], label="ck")


def test_ling3_head_count_kv_marks_kda_layers_as_the_converter_does():
    """BailingMoeV3Model writes head_count_kv per layer, 0 for a KDA layer and 1 for an MLA one (the MTP
    layer too), from layer_group_size: the reference checkpoint's 1 makes every layer MLA; with 2 the real
    converter wrote [0, 1, 1] for it (layer 0 KDA), and with 4 [1, 1, 1] (no whole group: all MLA)."""
    head = ["model.layers.2.enorm.weight", "model.layers.2.eh_proj.weight"]
    for group, want in ((2, [0, 1, 1]), (4, [1, 1, 1])):
        kvs = _plan_of("ling3-bf16", head, layer_group_size=group).kvs
        assert [kv for kv in kvs if kv[0].endswith("head_count_kv")] == [
            ("bailingmoe3.attention.head_count_kv", "ARRAY", want)]
    with pytest.raises(SourceError, match=r"^ck: config.json layer_group_size = 0: out of range \(mtpgraft takes 1 to 4,096\)$"):
        _plan_of("ling3-bf16", head, layer_group_size=0)
    with pytest.raises(SourceError, match=r"^ck: config.json: no norm_topk_prob, which the converter reads for a "
                                          r"Ling 3 head$"):
        _plan_of("ling3-bf16", head, norm_topk_prob=None)


def test_nemotron3_folds_exactly_one_mtp_head_of_a_moe_model():
    """NemotronHModel folds mtp.layers.0 and mtp.layers.1 into one block and asserts
    num_nextn_predict_layers == 1; it keeps the head of MoE models only (num_experts_per_tok); an
    mtp.layers.2 is not one it can map."""
    head = ["mtp.layers.0.enorm.weight", "mtp.layers.0.eh_proj.weight"]
    assert _plan_of("nemotron3-bf16", head).mtp_layers == [3]
    with pytest.raises(SourceError, match=r"^ck: config.json gives num_nextn_predict_layers = 2; llama.cpp's "
                                          r"converter folds exactly one MTP head for nemotron_h_moe$"):
        _plan_of("nemotron3-bf16", head, num_nextn_predict_layers=2)
    with pytest.raises(SourceError, match=r"^ck: config.json: no num_experts_per_tok, which the converter reads for a "
                                          r"Nemotron-H MoE head \(it keeps the MTP head of MoE models only\)$"):
        _plan_of("nemotron3-bf16", head, num_experts_per_tok=None)
    with pytest.raises(SourceError, match=r"^ck: config.json: hybrid_override_pattern 'M\*' is not one of M, \* and "
                                          r"E per layer \(3 layers\)$"):
        _plan_of("nemotron3-bf16", head, hybrid_override_pattern="M*")
    with pytest.raises(SourceError, match=r"^ck: cannot map MTP tensor mtp.layers.2.enorm.weight$"):
        _plan_of("nemotron3-bf16", [*head, "mtp.layers.2.enorm.weight"])


def test_cohere2moe_reads_config_json_as_transformers_fills_it():
    """The converter reads AutoConfig's dict: Cohere2MoeConfig fills in softmax routing and a null
    prefix_dense_intermediate_size (so no feed_forward_length), which the reference head shows; stated
    values win. The head's biases are dropped (the converter drops them, zero)."""
    names = ["model.layers.2.eh_proj.weight", "model.layers.2.enorm.weight", "model.layers.2.self_attn.q_proj.bias"]
    plan = _plan_of("cohere2moe-bf16", names)
    assert [t.name for t in plan.tensors] == ["blk.2.nextn.eh_proj.weight", "blk.2.nextn.enorm.weight"]
    kvs = {k: v for k, _, v in plan.kvs}
    assert kvs["cohere2moe.expert_gating_func"] == 1 and "cohere2moe.feed_forward_length" not in kvs
    kvs = {k: v for k, _, v in _plan_of("cohere2moe-bf16", names, expert_selection_fn="sigmoid",
                                         prefix_dense_intermediate_size=96).kvs}
    assert kvs["cohere2moe.expert_gating_func"] == 2 and kvs["cohere2moe.feed_forward_length"] == 96
    assert kvs["cohere2moe.leading_dense_block_count"] == 0
    kvs = {k: v for k, _, v in _plan_of("cohere2moe-bf16", names, mlp_layer_types=["dense", "sparse"]).kvs}
    assert kvs["cohere2moe.leading_dense_block_count"] == 1
