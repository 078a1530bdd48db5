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
from .runtimes import IK, MAINLINE

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


GEMMA4_MESSAGE = (
    "gemma4 keeps its MTP head in a separate assistant model (arch gemma4-assistant) that llama.cpp "
    "uses with `-md assistant.gguf --spec-type draft-mtp`; nothing is grafted into a gemma4 file "
    "(verify the pair with `mtpgraft check MODEL --draft ASSISTANT`)"
)

ASSISTANT_NOTE = (
    "gemma4-assistant drafter: it only runs as `-md` next to its gemma4 target, with an explicit "
    "`--spec-type draft-mtp` (llama-server does not detect it by itself; served alone it fails: "
    "\"requires ctx_other\")"
)

# How a family packages its draft (ArchRule.packaging).
IN_FILE = "in-file"  # the MTP block(s) are the last nextn_predict_layers blocks of the model file
DRAFTER_TARGET = "drafter-target"  # the model drafts with a separate drafter file (`-md`)
DRAFTER = "drafter"  # the drafter file itself: every block is a head, no trunk

# The tensors a draft borrows from its target: an `mtp-` sidecar carries them beside the head.
SHARED_TENSORS = ("token_embd.weight", "output_norm.weight", "output.weight")
# deepseek4's collapse of its hyper-connection streams (hc_head), which the MTP graph runs as well
DSV4_HC_HEAD = ("output_hc_fn.weight", "output_hc_base.weight", "output_hc_scale.weight")



@dataclass(frozen=True)
class ArchRule:
    """Every fact mtpgraft branches on for one architecture. A new family is one row of ARCH_RULES
    (plus its test model and, if mtpgraft converts its HF head, a HeadRule in sources/convert.py)."""

    name: str
    runs_mtp: bool = True
    packaging: str = IN_FILE
    drafter_arch: str | None = None  # DRAFTER_TARGET: the drafter's architecture
    target_arch: str | None = None  # DRAFTER: the architecture it drafts for
    # The loader accepts the nextn key with the MTP tensors absent ("trunk only"): a detached file
    # may keep the key. qwen35/qwen35moe/qwen3next and nemotron_h_moe have no such tolerance.
    trunk_only_ok: bool = True
    # ... and such a file makes llama-server ABORT when started with --spec-type draft-mtp
    # (graph_mtp's GGML_ASSERT(layer.nextn.eh_proj && "MTP block missing nextn.eh_proj")) instead of
    # refusing with "failed to create MTP context".
    trunk_only_mtp_aborts: bool = True
    # The loader drops nextn_predict_layers when blk.{block_count - nextn}.nextn.eh_proj is absent
    # (deepseek4's load_arch_hparams): a file whose key names a block without nextn tensors loads with
    # that block run as one more trunk layer and MTP off (draft-mtp: "failed to create MTP context").
    stray_key_loads: bool = False
    max_nextn: int | None = 1  # graph_mtp asserts n_layer_nextn == 1 for most archs
    # How several heads draft: "single" (one head), "chain" (head k drafts position k; n_max is
    # clamped to the number of heads: step35, hy_v3, mimo2 through its nextn layer offset).
    heads: str = "single"
    # Value for the MTP block's entry in a per-layer array when the MTP source has none to give.
    mtp_array_defaults: dict[str, Any] = field(default_factory=dict)
    # Per-layer arrays sized to the trunk only (read with n_layer(), not n_layer_all): not extended.
    trunk_arrays: tuple[str, ...] = ()
    # Per-layer arrays the converter copies from the HF config, trunk + MTP layers long in every layout
    # (the loader wants at least block_count entries): a graft extends a short one, never cuts one.
    config_arrays: tuple[str, ...] = ()
    shared_tensors: tuple[str, ...] = SHARED_TENSORS  # what a sidecar holds besides the blocks
    # Root tensors that are the head's own in an MTP-only file (the converter's --mtp file: deepseek4's
    # mtp.0.hc_head_* become output_hc_*): a sidecar takes them from its source, not the base; one
    # file holds one set, so attach keeps the base's (its trunk's, which the in-file head then runs).
    head_globals: tuple[str, ...] = ()
    # llama-imatrix runs the trunk graph only: it never sees the head. A drafter cannot run alone.
    imatrix_sees_head: bool = False
    imatrix_runs: bool = True
    # Why llama-quantize at the pin refuses llama-imatrix's own data for this architecture (a tensor
    # the loader reshapes gets an entry sized for its runtime shape), or "" where it takes it.
    imatrix_refused: str = ""
    # The name endings of the tensors it is about: only an entry of one of them sized ne[0] x k
    # (k > 1 matrices at run time) gets that reason; any other misfit is an imatrix of another model.
    imatrix_reshaped: tuple[str, ...] = ()
    # The head's type when a quantized body is grafted or quantized ("match": the file type applies to
    # the whole file, as for a drafter that is all head).
    head_type: str = "q8_0"
    # The Hugging Face architectures whose MTP layers mtpgraft converts (sources/convert.HEAD_RULES),
    # or why it refuses them.
    hf_conversion: str = "not converted: the pinned convert_hf_to_gguf.py has no MTP mapping checked here"
    runtimes: frozenset[str] = frozenset({MAINLINE})  # which runtimes run its MTP draft
    # Run with MTP on the pinned llama-server by the test suite (tiny models, known acceptance).
    proven: bool = False
    note: str = ""
    family: str = ""  # the name people know the models by (cards, messages)
    # Tensor-name parts llama-quantize leaves unquantized for this architecture only (quantize.cpp).
    quantize_keeps: tuple[str, ...] = ()
    # A drafter's own loader rules: `file_problems(get, names)` lists what its loader refuses.
    file_problems: Callable[[Callable[[str], Any], set[str]], list[str]] | None = None
    # The per-index rule of families whose layers differ by kind (step35: full-attention and SWA layers
    # have different head counts): the per-layer arrays whose entries make a layer's kind, and the
    # family's pattern giving those entries for layer il (used for a head when the source gives none).
    # A head's shapes and per-layer entries follow the last trunk layer of ITS kind, not the last one.
    kind_arrays: tuple[str, ...] = ()
    kind_of: Callable[[int], tuple[Any, ...]] | None = None

    @property
    def layer_arrays(self) -> tuple[str, ...]:
        return tuple(k for k in COMMON_LAYER_ARRAYS if k not in self.trunk_arrays)

    def array_length_ok(self, suffix: str, count: int, block_count: int) -> bool:
        """Whether the loader takes per-layer array `suffix` with `count` entries (config arrays: at
        least block_count; the others: exactly)."""
        return count >= block_count if suffix in self.config_arrays else count == block_count

    @property
    def in_file(self) -> bool:
        return self.packaging == IN_FILE

    @property
    def is_drafter(self) -> bool:
        return self.packaging == DRAFTER

    @property
    def has_drafter(self) -> bool:
        return self.packaging == DRAFTER_TARGET




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


# llama-quantize (tools/quantize/quantize.cpp) keeps these glm5-next tensors unquantized.
_GLM5_NEXT_KEEPS = (
    "hc_", "indexer.attn_q_b", "indexer.attn_k", "indexer.proj", "indexer_compressor_gate",
    "indexer_compressor_ape", "ssm_f_a.weight", "ssm_f_b.weight", "ssm_g_a.weight", "ssm_g_b.weight",
    "ssm_beta.weight", "attn_kv_a_mqa.weight", "attn_k_b.weight", "attn_v_b.weight",
)
_QWEN = {"trunk_only_ok": False, "trunk_only_mtp_aborts": False,
         "mtp_array_defaults": {"attention.recurrent_layers": False}}
_CHAIN = {"max_nextn": None, "heads": "chain"}

def _step35_kind(il: int) -> tuple[Any, ...]:
    # Step-3.5's layer_types: every fourth layer full attention (the MTP layers continue the pattern)
    return (il % 4 != 0,)


ARCH_RULES: dict[str, ArchRule] = {r.name: r for r in (
    ArchRule("qwen35", proven=True, **_QWEN, family="Qwen3.5/3.6",
             hf_conversion="Qwen3_5ForConditionalGeneration, Qwen3_5ForCausalLM",
             note="Qwen3.5/3.6 dense: gated-delta-net trunk, the MTP block is full attention "
                  "(recurrent_layers gets false); 15 MTP tensors"),
    ArchRule("qwen35moe", proven=True, **_QWEN, family="Qwen3.5/3.6 MoE",
             hf_conversion="Qwen3_5MoeForConditionalGeneration, Qwen3_5MoeForCausalLM",
             note="Qwen3.5/3.6 MoE (e.g. 35B-A3B): MTP block with MoE FFN, recurrent_layers gets false"),
    ArchRule("qwen3next", **_QWEN, family="Qwen3-Next", proven=True, hf_conversion="Qwen3NextForCausalLM",
             note="Qwen3-Next: like qwen35moe (gated delta net trunk, MoE with a gated shared expert, a "
                  "full-attention MTP block: recurrent_layers gets false), beta/alpha fused in ssm_ba, no "
                  "rope sections; no trunk-only path: a file that keeps the key without the block is refused"),
    ArchRule("glm4moe", proven=True, family="GLM-4.5/4.6/4.7", hf_conversion="Glm4MoeForCausalLM",
             runtimes=frozenset({MAINLINE, IK}),
             note="GLM-4.5/4.6/4.7: one MTP block, an MoE layer (the dense lead is trunk only); "
                  "trunk-only files load, but abort with --spec-type draft-mtp if they keep the key"),
    ArchRule("deepseek2", family="GLM-4.7-Flash", proven=True,
             hf_conversion="Glm4MoeLiteForCausalLM",
             note="DeepSeek-V2/V3 layout; of these only GLM-4.7-Flash conversions keep MTP (the pinned "
                  "converter skips deepseek2 MTP layers); graph_mtp needs MLA with a q_lora and an MoE "
                  "NextN layer with a shared expert; trunk-only files load, but abort with "
                  "--spec-type draft-mtp if they keep the key"),
    ArchRule("deepseek32", proven=True, family="DeepSeek-V3.2",
             hf_conversion="DeepseekV32ForCausalLM",
             note="DeepSeek-V3.2: MLA (key_length_mla/value_length_mla needed: \"requires MLA\"), the DSA "
                  "indexer in every layer, the NextN layer's five indexer tensors included (graph_mtp never "
                  "runs them); the NextN layer is MoE with a shared expert (ffn_gate_inp asserted); "
                  "indexer.key_length a power of two >= 64; trunk-only files load, but abort with "
                  "--spec-type draft-mtp if they keep the key"),
    ArchRule("deepseek4", trunk_only_ok=False, trunk_only_mtp_aborts=False, stray_key_loads=True,
             proven=True, config_arrays=("attention.compress_ratios",), family="DeepSeek-V4",
             imatrix_refused="llama.cpp 0c1e570 cannot quantize DeepSeek-V4 with an imatrix: its loader "
                             "reshapes attn_output_a to 3-D (o_groups matrices), llama-imatrix records "
                             "ne[0] x o_groups values for it, and llama-quantize compares them with the "
                             "file's 2-D tensor and aborts ('imatrix size ... is different from tensor "
                             "size'); quantize without --imatrix (the types that need one cannot be made)",
             imatrix_reshaped=(".attn_output_a.weight",),
             hf_conversion="not converted: a full conversion drops DeepseekV4ForCausalLM's mtp.* head (only "
                           "--mtp writes it, head only)",
             shared_tensors=(*SHARED_TENSORS, *DSV4_HC_HEAD), head_globals=DSV4_HC_HEAD,
             note="DeepSeek-V4: hyper-connections (hc_mult residual streams: the MTP input is hc_mult * "
                  "n_embd wide; a sidecar carries the head's own output_hc_* collapse, its source's); "
                  "attention.compress_ratios is the HF config's (trunk + MTP entries even without the block: at least block_count) "
                  "and the MTP layer's entry is 0; sqrt-softplus MoE with a shared "
                  "expert; one MTP block. A file that keeps the key without the block is refused (blk.N not "
                  "found); a key over a block without nextn tensors silently turns MTP off (the block runs "
                  "as a trunk layer)"),
    ArchRule("glm-dsa", trunk_arrays=("attention.indexer.types",), proven=True, family="GLM-5",
             hf_conversion="GlmMoeDsaForCausalLM",
             note="GLM-5 (DSA): deepseek32's layout; attention.indexer.types is per trunk layer (refused "
                  "with block_count entries) and layer 0 must be a full indexer layer; the NextN layer "
                  "skips the indexer (its indexer tensors optional), MoE with a shared expert; one head; "
                  "trunk-only files load, but abort with --spec-type draft-mtp if they keep the key"),
    ArchRule("mimo2", **_CHAIN, family="MiMo-V2", proven=True,
             hf_conversion="MiMoV2FlashForCausalLM, MiMoV2ForCausalLM",
             kind_arrays=("attention.sliding_window_pattern",), kind_of=lambda il: (1,),
             note="MiMo-V2/V2.5: three MTP heads (one KV cache each, head k drafts position k); each head "
                  "is a sliding-window layer (the converter extends the pattern with 1s and head_count_kv "
                  "with the SWA value) with a fused attn_qkv and a dense FFN (graph_mtp asserts both); "
                  "its final norm is blk.N.layer_output_norm; trunk-only files load, but abort with "
                  "--spec-type draft-mtp if they keep the key"),
    ArchRule("step35", **_CHAIN, family="Step-3.5", proven=True,
             hf_conversion="Step3p5ForCausalLM",
             kind_arrays=("attention.sliding_window_pattern",), kind_of=_step35_kind,
             note="Step-3.5: several chained MTP heads (nextn_predict_layers > 1; all required: head k "
                  "drafts position k, n_max clamped to the heads); full-attention and SWA layers have "
                  "different head counts, so each head follows its own index; head_count, head_count_kv, "
                  "expert arrays and swiglu_clamp_* have block_count entries, sliding_window_pattern too "
                  "(not length-checked: a short one silently turns the heads into full attention)"),
    ArchRule("hy_v3", **_CHAIN, family="Hy3", proven=True,
             hf_conversion="HYV3ForCausalLM",
             note="Hunyuan v3 (Hy3): q/k norms, rotary over the whole head; the router bias is the bare "
                  "blk.N.exp_probs_b (no .bias); any number of MTP blocks run as a chain; "
                  "nextn.shared_head_norm is HF's final_layernorm; trunk-only files load, but abort with "
                  "--spec-type draft-mtp if they keep the key"),
    ArchRule("cohere2moe", family="Cohere 2 MoE", proven=True,
             hf_conversion="Cohere2MoeForCausalLM",
             note="Cohere 2 MoE: parallel attention and FFN, routed + shared experts halved, logit_scale "
                  "required; one MTP block, a full-attention MoE layer (ffn_gate_inp asserted); trunk-only "
                  "files load, but abort with --spec-type draft-mtp if they keep the key"),
    ArchRule("bailingmoe3", family="Ling/Ring 3", proven=True,
             hf_conversion="BailingMoeV3ForCausalLM",
             note="Ling/Ring 3: KDA and MLA (gated) layers told apart by head_count_kv (0: KDA), MoE with a "
                  "shared expert; one MTP block, an MLA + MoE layer whose final norm is "
                  "blk.N.layer_output_norm; trunk-only files load, but abort with --spec-type draft-mtp if "
                  "they keep the key"),
    ArchRule("nemotron_h_moe", trunk_only_ok=False, trunk_only_mtp_aborts=False, family="Nemotron-3",
             hf_conversion="NemotronHForCausalLM",
             proven=True,
             note="Nemotron-H MoE: one MTP block (attention + relu^2 MoE with a shared expert; its entries "
                  "head_count_kv = n_head_kv, feed_forward_length = n_ff_exp); a layer's kind comes from "
                  "the per-layer arrays only; layer_norm_epsilon required (the head's final LayerNorm); a "
                  "trunk-only file that keeps the key does not load at all"),
    # Gemma 4: the draft is a separate model (src/models/gemma4-assistant.cpp) used with `-md`.
    ArchRule("gemma4", packaging=DRAFTER_TARGET, drafter_arch="gemma4-assistant", proven=True,
             family="Gemma 4", hf_conversion="not converted: the head is a separate assistant model",
             note=GEMMA4_MESSAGE),
    ArchRule("gemma4-assistant", packaging=DRAFTER, target_arch="gemma4", proven=True, max_nextn=None,
             imatrix_runs=False, head_type="match", family="Gemma 4 assistant",
             file_problems=assistant_problems,
             hf_conversion="not converted here: convert it with convert_hf_to_gguf.py",
             note=ASSISTANT_NOTE),
    # Loaded by llama.cpp but with no runnable MTP graph in 0c1e570.
    ArchRule("glm5-next", runs_mtp=False, max_nextn=None, quantize_keeps=_GLM5_NEXT_KEEPS,
             note="graph_mtp is not implemented"),
    ArchRule("glm4", runs_mtp=False, max_nextn=None, note="MTP tensors load but no MTP graph runs"),
    ArchRule("exaone4", runs_mtp=False, max_nextn=None, note="MTP tensors load but no MTP graph runs"),
    ArchRule("exaone-moe", runs_mtp=False, max_nextn=None, note="MTP tensors load but no MTP graph runs"),
)}


def layer_kind(rule: ArchRule, arch: str, get: Callable[[str], Any], il: int,
               pattern_il: int | None = None) -> tuple[Any, ...] | None:
    """Layer il's kind: its entries of the rule's kind arrays as `get` (a key reader) gives them, else
    the family's pattern at `pattern_il` (default il); None where the rule has no kinds or nothing says."""
    if not rule.kind_arrays:
        return None
    vals = [get(f"{arch}.{k}") for k in rule.kind_arrays]
    if all(isinstance(v, list) and il < len(v) for v in vals):
        return tuple(v[il] for v in vals)  # type: ignore[index]
    if rule.kind_of is not None:
        return rule.kind_of(il if pattern_il is None else pattern_il)
    return None


def same_kind_layers(rule: ArchRule, arch: str, get: Callable[[str], Any], trunk: int,
                     kind: tuple[Any, ...] | None) -> list[int]:
    """The trunk layers (last first) of `kind`; every trunk layer where kinds do not apply."""
    layers = list(range(trunk - 1, -1, -1))
    if kind is None:
        return layers
    return [j for j in layers if layer_kind(rule, arch, get, j) == kind]


def rule_for(arch: str) -> ArchRule | None:
    return ARCH_RULES.get(arch)


def shared_tensors(arch: str) -> tuple[str, ...]:
    """The tensors a draft of this architecture borrows from its target (an unknown one: the usual three)."""
    rule = ARCH_RULES.get(arch)
    return rule.shared_tensors if rule is not None else SHARED_TENSORS


def head_globals(arch: str) -> tuple[str, ...]:
    """The root tensors an MTP-only file of this architecture carries as its head's own (none for most)."""
    rule = ARCH_RULES.get(arch)
    return rule.head_globals if rule is not None else ()


def is_drafter(arch: str) -> bool:
    """A separate drafter model (every block a head, no trunk), such as a gemma4-assistant."""
    rule = ARCH_RULES.get(arch)
    return rule is not None and rule.is_drafter


def require_mtp_arch(arch: str) -> ArchRule:
    """The rule for an architecture that runs in-file MTP, or a GraftError saying why not."""
    rule = ARCH_RULES.get(arch)
    if rule is not None and not rule.in_file:  # a drafter pair: nothing is grafted into either file
        raise GraftError(rule.note if rule.has_drafter else ARCH_RULES[str(rule.target_arch)].note)
    if rule is None:
        runnable = ", ".join(n for n, r in ARCH_RULES.items() if r.runs_mtp and r.in_file)
        raise GraftError(f"architecture {arch!r} has no in-file MTP support in llama.cpp "
                         f"(supported: {runnable})")
    if not rule.runs_mtp:
        raise GraftError(f"llama.cpp loads MTP tensors for {arch!r} but cannot run them ({rule.note})")
    return rule
