"""Hostile config.json fields and tensor names for the converted heads: each is refused in one line
naming the checkpoint and the field (a SourceError, exit 3), never a traceback, an error from the GGUF
writer, a key the converter would not write, or an unbounded plan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft.cli import cli
from mtpgraft.errors import EXIT_INPUT, SourceError
from mtpgraft.parsing import number_field
from mtpgraft.sources.convert import plan_head
from mtpgraft.sources.safetensors import STensor
from mtpgraft.testmodels.checkpoints import (
    HEAD_DIM,
    HEADS,
    HIDDEN,
    KV_HEADS,
    VARIANTS,
    build_checkpoint,
    config,
)
from mtpgraft.testmodels.synthetic import make_model


def _plan(variant: str, names: dict[str, tuple[int, ...]], **config_edit):
    cfg = {**config(VARIANTS[variant]), **config_edit}
    return plan_head(cfg, [("model.safetensors", {n: STensor(n, "BF16", s, 0, 2 * _n(s)) for n, s in names.items()})],
                     label="ck")


def _n(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def _refused(variant: str, names: dict[str, tuple[int, ...]], message: str, **config_edit) -> None:
    with pytest.raises(SourceError) as e:
        _plan(variant, names, **config_edit)
    assert str(e.value) == message


NEMOTRON_HEAD = {"mtp.layers.0.enorm.weight": (HIDDEN,)}
MIMO_HEAD = {"model.mtp.layers.0.enorm.weight": (HIDDEN,)}
STEP_HEAD = {"model.layers.2.enorm.weight": (HIDDEN,), "model.layers.2.eh_proj.weight": (HIDDEN, 2 * HIDDEN)}
NEMOTRON_EH = {"mtp.layers.0.eh_proj.weight": (HIDDEN, 2 * HIDDEN)}


@pytest.mark.parametrize(("edit", "message"), [
    ({"hybrid_override_pattern": ["M", ["*"], "E"]}, "ck: config.json: hybrid_override_pattern ['M', ['*'], 'E'] "
     "is not one of M, * and E per layer (3 layers)"),
    ({"hybrid_override_pattern": None, "layers_block_type": ["mamba", {}, "moe"]}, "ck: config.json: "
     "layers_block_type ['mamba', {}, 'moe'] is not one of M, * and E per layer (3 layers)"),
    ({"hybrid_override_pattern": "M*E" * 1000}, "ck: config.json: hybrid_override_pattern 'M*EM*EM*EM*EM*EM*EM*EM*E"
     "M*EM*EM*EM*EM*EM*EM*EM*EM*EM*EM*EM*... is not one of M, * and E per layer (3 layers)"),
])
def test_nemotron_pattern_is_a_string_or_a_list_of_strings_shown_short(edit, message):
    _refused("nemotron3-bf16", NEMOTRON_HEAD, message, **edit)


@pytest.mark.parametrize(("value", "why"), [
    ("abc", "'abc': not an integer"), ([1], "[1]: not an integer"), ("2", "'2': not an integer"),
    (1.5, "1.5: not an integer"), (-1, "-1: out of range (mtpgraft takes 0 to 65,536)")])
def test_mimo2_swa_kv_heads_is_a_checked_count(value, why):
    _refused("mimo2-bf16", MIMO_HEAD, f"ck: config.json swa_num_key_value_heads = {why}", swa_num_key_value_heads=value)


@pytest.mark.parametrize("pattern", [[1.0, 0], [0, 1.0], [0.0, 1], [True, 0], [0, [1]]])
def test_mimo2_hybrid_layer_pattern_takes_ints_only(pattern):
    """The converter writes the list as it is: a 1.0 first would make sliding_window_pattern FLOAT32."""
    _refused("mimo2-bf16", MIMO_HEAD, "ck: config.json: hybrid_layer_pattern is not 2 entries of 0 or 1 (one per "
             "num_hidden_layers)", hybrid_layer_pattern=pattern)


@pytest.mark.parametrize("value", [10 ** 400, 1e300, -0.5], ids=["10**400", "1e300", "-0.5"])
def test_scales_out_of_range_are_refused_naming_the_field(value):
    shown = "1" + "0" * 36 + "..." if isinstance(value, int) else str(value)
    _refused("mimo2-bf16", MIMO_HEAD, f"ck: config.json attention_value_scale = {shown}: out of range (mtpgraft "
             "takes 0.0 to 1000000.0)", attention_value_scale=value)
    _refused("step35-bf16", STEP_HEAD, f"ck: config.json moe_router_scaling_factor = {shown}: out of range "
             "(mtpgraft takes 0.0 to 1000000.0)", moe_router_scaling_factor=value)


@pytest.mark.parametrize("key", ["swiglu_limits", "swiglu_limits_shared"])
@pytest.mark.parametrize("value", [10 ** 400, 1e300, "7"], ids=["10**400", "1e300", "str"])
def test_step35_swiglu_limits_out_of_range_are_refused(key, value):
    _refused("step35-bf16", STEP_HEAD, f"ck: config.json: {key} is not a list of numbers from -1e+06 to 1e+06",
             **{key: [None, value]})


def test_step35_moe_layers_enum_past_any_layer_is_refused_naming_it():
    """It was the GGUF writer's "does not fit its type uint32", without the checkpoint or the field."""
    _refused("step35-bf16", _eh("model.layers", range(2, 5)), "ck: config.json: moe_layers_enum starts at layer 99999999999999, past the "
             "4,096 layers mtpgraft takes", moe_layers_enum="99999999999999,100000000000000")


def test_number_field_compares_a_huge_int_without_float():
    with pytest.raises(SourceError, match=r"^x = 1000000000000000000000000000000000000\.\.\.: out of range"):
        number_field(10 ** 400, "x", 0.0, 1.0)
    assert number_field(3, "x", 0.0, 4.0) == 3.0


def test_cohere2moe_mlp_layer_types_is_one_per_layer():
    """The converter counts leading dense layers over the whole list: 100 "dense" would give 100 for 3 blocks."""
    _refused("cohere2moe-bf16", {"model.layers.2.enorm.weight": (HIDDEN,)}, "ck: config.json: mlp_layer_types has "
             "100 entries, num_hidden_layers is 2", mlp_layer_types=["dense"] * 100)


def test_mla_split_sizes_of_zero_say_so():
    names = {"model.layers.2.self_attn.kv_b_proj.weight": (64, 32)}
    _refused("glm47flash-bf16", names, "ck: config.json qk_nope_head_dim = 0; the MLA head's kv_b_proj split needs "
             "at least 1", qk_nope_head_dim=0)


# ------------------------------------------------------------------ Nemotron-H q and k, permuted per head

Q, K = "mtp.layers.0.mixer.q_proj.weight", "mtp.layers.0.mixer.k_proj.weight"


@pytest.mark.parametrize("shape", [(HEADS * HEAD_DIM,), (1, HEADS * HEAD_DIM, HIDDEN), (HEADS * HEAD_DIM, 1),
                                   (2 * HEADS * HEAD_DIM, HIDDEN), (2097152, 1)])
def test_nemotron_q_shape_is_heads_times_head_dim_by_hidden(shape):
    """A 1-D or 3-D q is the checkpoint's fault (it was an 'internal error ... 0 bytes'), and a tall one
    is refused before a plan of a piece per row is built."""
    _refused("nemotron3-bf16", {Q: shape}, f"ck: {Q} has shape {list(shape)}, not [{HEADS * HEAD_DIM}, {HIDDEN}] "
             "(num_attention_heads x head_dim, hidden_size)")


def test_nemotron_q_and_k_are_one_piece_per_head():
    plan = _plan("nemotron3-bf16", {Q: (HEADS * HEAD_DIM, HIDDEN), K: (KV_HEADS * HEAD_DIM, HIDDEN), **NEMOTRON_EH})
    pieces = {t.name: [(p.r0, p.r1, p.interleaved) for p in t.pieces] for t in plan.tensors if "attn" in t.name}
    assert pieces == {"blk.3.attn_q.weight": [(h * HEAD_DIM, (h + 1) * HEAD_DIM, True) for h in range(HEADS)],
                      "blk.3.attn_k.weight": [(h * HEAD_DIM, (h + 1) * HEAD_DIM, True) for h in range(KV_HEADS)]}


def test_nemotron_odd_head_dim_is_refused():
    _refused("nemotron3-bf16", {Q: (HEADS * 3, HIDDEN)}, "ck: config.json gives num_attention_heads = 2, head_dim = "
             f"3 and hidden_size = {HIDDEN}; permuting {Q} needs heads, an even head_dim and hidden_size", head_dim=3)


# ------------------------------------------------------------------ layer numbers in tensor names

BIG = "9" * 5000  # int() refuses more than 4,300 digits (a ValueError); \d also takes other scripts' digits


@pytest.mark.parametrize("name", [f"model.mtp.layers.{BIG}.enorm.weight", "model.mtp.layers.\u0661.enorm.weight"])
def test_mtp_layer_numbers_are_ascii_and_short(name):
    _refused("mimo2-bf16", {**MIMO_HEAD, name: (HIDDEN,)}, f"ck: cannot map MTP tensor {name[:80]}"
             + ("..." if len(name) > 80 else ""))  # the name shortened (gguf_io.shown)


def test_trunk_layer_numbers_that_are_not_short_ascii_are_not_mtp_layers():
    plan = _plan("step35-bf16", {**STEP_HEAD, f"model.layers.{BIG}.enorm.weight": (HIDDEN,)}, num_nextn_predict_layers=1)
    assert [t.name for t in plan.tensors] == ["blk.2.nextn.eh_proj.weight", "blk.2.nextn.enorm.weight"]


def test_qwen_counted_mtp_layers_ignore_a_huge_number():
    with pytest.raises(SourceError, match=r"^ck: no MTP head: config.json gives no mtp_num_hidden_layers and the "
                                          r"checkpoint has no mtp.layers$"):
        _plan("qwen3next-bf16", {f"mtp.layers.{BIG}.input_layernorm.weight": (HIDDEN,)}, mtp_num_hidden_layers=None)


# ------------------------------------------------------------------ through the CLI


def test_a_hostile_config_is_one_line_and_exit_3(tmp_path: Path):
    ckpt = build_checkpoint(tmp_path / "ck", "nemotron3-bf16")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["hybrid_override_pattern"] = ["M", ["*"], "E"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    base = make_model(tmp_path / "base.gguf", arch="qwen35", trunk=2, layout="base", n_embd=64, vocab=320, n_ff=128)
    r = CliRunner().invoke(cli, ["attach", str(base), "--mtp-from", str(ckpt), "-o", str(tmp_path / "o.gguf")])
    assert r.exit_code == EXIT_INPUT, r.output
    assert re.fullmatch(r"mtpgraft: error: \S*ck/: config.json: hybrid_override_pattern \['M', \['\*'\], 'E'\] is "
                        r"not one of M, \* and E per layer \(3 layers\)", r.output.strip())
    assert not (tmp_path / "o.gguf").exists()


# ------------------------------------------------------------------ MTP layers on disk vs the converter's count


def _eh(prefix: str, layers: range) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{k}.eh_proj.weight": (HIDDEN, 2 * HIDDEN) for k in layers}


def test_an_mtp_layer_without_eh_proj_is_refused():
    """MimoV2Model writes 3 MTP layers whatever is on disk: with mtp.layers.0 alone its head has blocks
    llama.cpp cannot use (a graft took 1 head); Step-3.5 and Qwen likewise for the count config.json gives."""
    _refused("mimo2-bf16", _eh("model.mtp.layers", range(1)), "ck: MTP layer 1 of the 3 the converter writes has no "
             "eh_proj tensor (blk.3.nextn.eh_proj.weight), without which llama.cpp cannot use the head")
    _refused("step35-bf16", _eh("model.layers", range(2, 4)), "ck: MTP layer 2 of the 3 the converter writes has no "
             "eh_proj tensor (blk.4.nextn.eh_proj.weight), without which llama.cpp cannot use the head")
    _refused("qwen3next-bf16", {"mtp.layers.0.input_layernorm.weight": (HIDDEN,)}, "ck: MTP layer 0 of the 1 the "
             "converter writes has no eh_proj tensor (blk.2.nextn.eh_proj.weight), without which llama.cpp cannot "
             "use the head")
    assert _plan("mimo2-bf16", _eh("model.mtp.layers", range(3))).mtp_layers == [2, 3, 4]
    assert _plan("qwen3next-bf16", {"mtp.fc.weight": (HIDDEN, 2 * HIDDEN), "mtp.layers.1.input_layernorm.weight":
                                    (HIDDEN,)}).mtp_layers == [2, 3]  # one mtp.fc for the whole head


def test_an_mtp_layer_past_the_count_is_refused():
    """Step35Model's tensor map ends at num_hidden_layers + num_nextn_predict_layers: a fourth layer on disk
    makes the converter fail (mtpgraft converted 3 where config.json says 1)."""
    _refused("step35-bf16", _eh("model.layers", range(2, 5)), "ck: model.layers.3.eh_proj.weight is MTP layer 1; the "
             "converter takes 1 (config.json num_nextn_predict_layers) and fails on it", num_nextn_predict_layers=1)
    _refused("qwen3next-bf16", {"mtp.fc.weight": (HIDDEN, 2 * HIDDEN), "mtp.layers.1.input_layernorm.weight": (HIDDEN,)},
             "ck: mtp.layers.1.input_layernorm.weight is MTP layer 1; the converter takes 1 (config.json "
             "mtp_num_hidden_layers) and fails on it", mtp_num_hidden_layers=1)
