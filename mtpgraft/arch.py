"""Architecture rules: the one table of what differs per architecture for in-file MTP (NextN).

Read off llama.cpp 0c1e570 (src/models/*.cpp, src/llama-model.cpp). Every architecture below keeps
its MTP block(s) as the LAST `nextn_predict_layers` blocks (`blk.{trunk..block_count-1}.*`), each with
`nextn.eh_proj`, `nextn.enorm`, `nextn.hnorm` (+ optional `nextn.shared_head_norm`,
`nextn.embed_tokens`, `nextn.shared_head_head`) beside an ordinary transformer block.
"""

from __future__ import annotations

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

# MTP-only tensor suffixes (after `blk.N.`), and the two that may fall back to token_embd / output.
NEXTN_REQUIRED = ("nextn.eh_proj.weight", "nextn.enorm.weight", "nextn.hnorm.weight")
NEXTN_OPTIONAL = ("nextn.shared_head_norm.weight", "nextn.embed_tokens.weight", "nextn.shared_head_head.weight")


@dataclass(frozen=True)
class ArchRule:
    name: str
    runs_mtp: bool = True
    # The loader accepts the nextn key with the MTP tensors absent ("trunk only"): a detached file
    # may keep the key. qwen35/qwen35moe/qwen3next have no such tolerance.
    trunk_only_ok: bool = True
    max_nextn: int | None = None  # graph_mtp asserts a single MTP block for some archs
    # Value for the MTP block's entry in a per-layer array when the MTP source has none to give.
    mtp_array_defaults: dict[str, Any] = field(default_factory=dict)
    # Per-layer arrays sized to the trunk only (read with n_layer(), not n_layer_all): not extended.
    trunk_arrays: tuple[str, ...] = ()
    note: str = ""

    @property
    def layer_arrays(self) -> tuple[str, ...]:
        return tuple(k for k in COMMON_LAYER_ARRAYS if k not in self.trunk_arrays)


ARCH_RULES: dict[str, ArchRule] = {r.name: r for r in (
    ArchRule("qwen35", trunk_only_ok=False,
             mtp_array_defaults={"attention.recurrent_layers": False},
             note="Qwen3.5/3.6 dense: gated-delta-net trunk, the MTP block is full attention "
                  "(recurrent_layers gets false); 15 MTP tensors"),
    ArchRule("qwen35moe", trunk_only_ok=False,
             mtp_array_defaults={"attention.recurrent_layers": False},
             note="Qwen3.5/3.6 MoE (e.g. 35B-A3B): MTP block with MoE FFN, recurrent_layers gets false"),
    ArchRule("qwen3next", trunk_only_ok=False,
             mtp_array_defaults={"attention.recurrent_layers": False},
             note="Qwen3-Next: like qwen35moe"),
    ArchRule("glm4moe", max_nextn=1, note="GLM-4.5/4.6/4.7: one MTP block; trunk-only files load"),
    ArchRule("deepseek2", max_nextn=1,
             note="DeepSeek-V2/V3 layout; of these only GLM-4.7-Flash conversions keep MTP"),
    ArchRule("deepseek32", note="DeepSeek-V3.2"),
    ArchRule("deepseek4", note="DeepSeek-V4: attention.compress_ratios must cover block_count; "
                               "a missing MTP block silently disables MTP"),
    ArchRule("glm-dsa", trunk_arrays=("attention.indexer.types",),
             note="GLM-5 (DSA): attention.indexer.types is per trunk layer"),
    ArchRule("mimo2", note="MiMo-V2: sliding_window_pattern covers the MTP block too"),
    ArchRule("step35", note="Step-3.5: several chained MTP heads (nextn_predict_layers > 1)"),
    ArchRule("hy_v3", note="Hunyuan v3"),
    ArchRule("cohere2moe", note="Cohere 2 MoE"),
    ArchRule("bailingmoe3", note="Ling/Ring 3: MTP final norm is blk.N.layer_output_norm"),
    ArchRule("nemotron_h_moe", max_nextn=1, trunk_only_ok=False,
             note="Nemotron-H MoE: one MTP block"),
    # Loaded by llama.cpp but with no runnable MTP graph in 0c1e570.
    ArchRule("glm5-next", runs_mtp=False, note="graph_mtp is not implemented"),
    ArchRule("glm4", runs_mtp=False, note="MTP tensors load but no MTP graph runs"),
    ArchRule("exaone4", runs_mtp=False, note="MTP tensors load but no MTP graph runs"),
    ArchRule("exaone-moe", runs_mtp=False, note="MTP tensors load but no MTP graph runs"),
)}

GEMMA4_MESSAGE = (
    "gemma4 keeps its MTP head in a separate assistant model (arch gemma4-assistant) that llama.cpp "
    "uses with `-md assistant.gguf --spec-type draft-mtp`; nothing is grafted into a gemma4 file "
    "(verify the pair with `mtpgraft check MODEL --draft ASSISTANT`)"
)


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
