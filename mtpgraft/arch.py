"""Architecture rules: the one table of what differs per architecture for in-file MTP (NextN).

Read off llama.cpp 0c1e570 (src/models/*.cpp, src/llama-model.cpp). Every architecture below keeps
its MTP block(s) as the LAST `nextn_predict_layers` blocks (`blk.{trunk..block_count-1}.*`), each with
`nextn.eh_proj`, `nextn.enorm`, `nextn.hnorm` (+ optional `nextn.shared_head_norm`,
`nextn.embed_tokens`, `nextn.shared_head_head`) beside an ordinary transformer block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import GraftError

# Per-layer array keys the loader reads with get_key_or_arr(..., n_layer_all): when present as an
# array they must have exactly block_count entries, so a graft extends them (detach truncates).
COMMON_LAYER_ARRAYS = (
    "feed_forward_length",
    "attention.head_count",
    "attention.head_count_kv",
    "expert_used_count",
    "expert_feed_forward_length",
    "swiglu_clamp_exp",
    "swiglu_clamp_shexp",
    "attention.sliding_window_pattern",
    "attention.recurrent_layers",
    "attention.compress_ratios",
)

# MTP-only tensor suffixes (after `blk.N.`) every MTP layer must have.
NEXTN_REQUIRED = ("nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight")


@dataclass(frozen=True)
class ArchRule:
    name: str
    runs_mtp: bool = True
    # The loader accepts the nextn key with the MTP tensors absent ("trunk only"): a detached file
    # may keep the key. qwen35/qwen35moe/qwen3next and nemotron_h_moe have no such tolerance.
    trunk_only_ok: bool = True
    # ... and such a file makes llama-server ABORT when started with --spec-type draft-mtp
    # (graph_mtp's GGML_ASSERT(layer.nextn.eh_proj && "MTP block missing nextn.eh_proj")) instead of
    # refusing with "failed to create MTP context". deepseek4 resets the key instead (MTP just off).
    trunk_only_mtp_aborts: bool = True
    max_nextn: int | None = 1  # graph_mtp asserts n_layer_nextn == 1 for most archs
    # Value for the MTP block's entry in a per-layer array when the MTP source has none to give.
    mtp_array_defaults: dict[str, Any] = field(default_factory=dict)
    # Per-layer arrays sized to the trunk only (read with n_layer(), not n_layer_all): not extended.
    trunk_arrays: tuple[str, ...] = ()
    # Run with MTP on the pinned llama-server by the test suite (tiny models, known acceptance).
    proven: bool = False
    note: str = ""

    @property
    def layer_arrays(self) -> tuple[str, ...]:
        return tuple(k for k in COMMON_LAYER_ARRAYS if k not in self.trunk_arrays)


_QWEN = {"trunk_only_ok": False, "trunk_only_mtp_aborts": False,
         "mtp_array_defaults": {"attention.recurrent_layers": False}}

ARCH_RULES: dict[str, ArchRule] = {r.name: r for r in (
    ArchRule("qwen35", proven=True, **_QWEN,
             note="Qwen3.5/3.6 dense: gated-delta-net trunk, the MTP block is full attention "
                  "(recurrent_layers gets false); 15 MTP tensors"),
    ArchRule("qwen35moe", proven=True, **_QWEN,
             note="Qwen3.5/3.6 MoE (e.g. 35B-A3B): MTP block with MoE FFN, recurrent_layers gets false"),
    ArchRule("qwen3next", **_QWEN, note="Qwen3-Next: like qwen35moe"),
    ArchRule("glm4moe", proven=True,
             note="GLM-4.5/4.6/4.7: one MTP block, an MoE layer (the dense lead is trunk only); "
                  "trunk-only files load, but abort with --spec-type draft-mtp if they keep the key"),
    ArchRule("deepseek2", note="DeepSeek-V2/V3 layout; of these only GLM-4.7-Flash conversions keep MTP"),
    ArchRule("deepseek32", note="DeepSeek-V3.2"),
    ArchRule("deepseek4", trunk_only_mtp_aborts=False,
             note="DeepSeek-V4: attention.compress_ratios must cover block_count; "
                  "a missing MTP block silently disables MTP"),
    ArchRule("glm-dsa", trunk_arrays=("attention.indexer.types",),
             note="GLM-5 (DSA): attention.indexer.types is per trunk layer"),
    ArchRule("mimo2", max_nextn=None, note="MiMo-V2: sliding_window_pattern covers the MTP blocks too"),
    ArchRule("step35", max_nextn=None,
             note="Step-3.5: several chained MTP heads (nextn_predict_layers > 1)"),
    ArchRule("hy_v3", max_nextn=None, note="Hunyuan v3"),
    ArchRule("cohere2moe", note="Cohere 2 MoE"),
    ArchRule("bailingmoe3", note="Ling/Ring 3: MTP final norm is blk.N.layer_output_norm"),
    ArchRule("nemotron_h_moe", trunk_only_ok=False, trunk_only_mtp_aborts=False,
             note="Nemotron-H MoE: one MTP block"),
    # Loaded by llama.cpp but with no runnable MTP graph in 0c1e570.
    ArchRule("glm5-next", runs_mtp=False, max_nextn=None, note="graph_mtp is not implemented"),
    ArchRule("glm4", runs_mtp=False, max_nextn=None, note="MTP tensors load but no MTP graph runs"),
    ArchRule("exaone4", runs_mtp=False, max_nextn=None, note="MTP tensors load but no MTP graph runs"),
    ArchRule("exaone-moe", runs_mtp=False, max_nextn=None, note="MTP tensors load but no MTP graph runs"),
)}

GEMMA4_MESSAGE = (
    "gemma4 keeps its MTP head in a separate assistant model (arch gemma4-assistant) that llama.cpp "
    "uses with `-md assistant.gguf --spec-type draft-mtp`; nothing is grafted into a gemma4 file "
    "(verify the pair with `mtpgraft check MODEL --draft ASSISTANT`)"
)

# gemma4-assistant (src/models/gemma4-assistant.cpp): every block is an MTP layer (no trunk), no K/V
# (its layers read the target's KV cache), and none of the nextn.eh_proj/enorm/hnorm set.
ASSISTANT_ARCH = "gemma4-assistant"
ASSISTANT_TARGET_ARCH = "gemma4"
ASSISTANT_GLOBAL_TENSORS = ("token_embd.weight", "output_norm.weight", "nextn.pre_projection.weight",
                            "nextn.post_projection.weight")
ASSISTANT_LAYER_TENSORS = ("attn_norm.weight", "attn_q.weight", "attn_q_norm.weight",
                           "attn_output.weight", "post_attention_norm.weight",
                           "layer_output_scale.weight", "ffn_norm.weight", "ffn_gate.weight",
                           "ffn_up.weight", "ffn_down.weight", "post_ffw_norm.weight")
ASSISTANT_REQUIRED_KEYS = ("attention.sliding_window_pattern", "attention.sliding_window",
                           "attention.layer_norm_rms_epsilon", "attention.key_length_swa",
                           "attention.value_length_swa", "embedding_length_out")
ASSISTANT_NOTE = (
    "gemma4-assistant drafter: it only runs as `-md` next to its gemma4 target, with an explicit "
    "`--spec-type draft-mtp` (llama-server does not detect it by itself; served alone it fails: "
    "\"requires ctx_other\")"
)


def assistant_problems(get: Callable[[str], Any], names: set[str]) -> list[str]:
    """What llama.cpp's gemma4-assistant loader would refuse; `get(key)` reads a key (None if absent),
    `names` are the tensor names."""
    a = ASSISTANT_ARCH
    problems = [f"key {a}.{k} is missing" for k in ASSISTANT_REQUIRED_KEYS if get(f"{a}.{k}") is None]
    bc, nextn = get(f"{a}.block_count"), get(f"{a}.nextn_predict_layers")
    if bc is not None and nextn != bc:
        problems.append(f"{a}.nextn_predict_layers is {nextn} but every one of the {bc} blocks is an "
                        "assistant layer (they must be equal)")
    out, n_embd = get(f"{a}.embedding_length_out"), get(f"{a}.embedding_length")
    if out is not None and out == n_embd:
        problems.append(f"{a}.embedding_length_out ({out}) must be the target's hidden size, not the "
                        "assistant's own embedding_length (llama.cpp refuses it)")
    for k, v in (("key_length", "value_length"), ("key_length_swa", "value_length_swa")):
        if get(f"{a}.attention.{k}") != get(f"{a}.attention.{v}"):
            problems.append(f"{a}.attention.{k} differs from {v} (llama.cpp requires them equal)")
    problems += [f"tensor {n} is missing" for n in ASSISTANT_GLOBAL_TENSORS if n not in names]
    for i in range(int(nextn or bc or 0)):
        missing = [t for t in ASSISTANT_LAYER_TENSORS if f"blk.{i}.{t}" not in names]
        if missing:
            problems.append(f"assistant layer blk.{i} lacks {', '.join(missing)}")
    swa = get(f"{a}.attention.sliding_window_pattern")
    if isinstance(swa, list) and not all(swa) and "rope_freqs.weight" not in names:
        problems.append("tensor rope_freqs.weight is missing (the full-attention layers need it)")
    return problems


def rule_for(arch: str) -> ArchRule | None:
    return ARCH_RULES.get(arch)


def require_mtp_arch(arch: str) -> ArchRule:
    """The rule for an architecture that runs in-file MTP, or a GraftError saying why not."""
    if arch in ("gemma4", "gemma4-assistant"):
        raise GraftError(GEMMA4_MESSAGE)
    rule = ARCH_RULES.get(arch)
    if rule is None:
        runnable = ", ".join(n for n, r in ARCH_RULES.items() if r.runs_mtp)
        raise GraftError(f"architecture {arch!r} has no in-file MTP support in llama.cpp "
                         f"(supported: {runnable})")
    if not rule.runs_mtp:
        raise GraftError(f"llama.cpp loads MTP tensors for {arch!r} but cannot run them ({rule.note})")
    return rule
