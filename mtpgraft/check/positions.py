"""Which MTP head drafts each draft position, and the draft depth llama-server really runs.

Read off llama.cpp 0c1e570 (common/speculative.cpp, `common_speculative_impl_draft_mtp`):
- the draft model is the model itself, or the `-md` file (`ctx_dft`); its heads are its last
  `nextn_predict_layers` blocks: `n_mtp_layers = max(1, llama_model_n_layer_nextn(...ctx_dft))`
  (the constructor, line 1378);
- `is_mem_shared = llama_get_ctx_other(ctx_dft) == ctx_tgt` (a gemma4 assistant, which reads the
  target's KV cache) and `chain_heads = n_mtp_layers > 1 && !is_mem_shared` (lines 1420-1421);
- chained heads clamp the draft depth: `params.n_max = std::min(params.n_max, n_mtp_layers)`
  (line 1424); `common_speculative_n_max` returns that n_max, and llama-server sizes its
  per-position counters to it (`n_accepted_per_pos`, tools/server/server-context.cpp:3966);
- draft step i selects head i: `llama_set_nextn_layer_offset(ctx_dft, i)` (draft(), line 1630),
  and a family's graph_mtp runs block `il = hparams.n_layer() + cparams.nextn_layer_offset`, where
  n_layer() is block_count - nextn_predict_layers (src/llama-hparams.cpp:349): src/models/
  step35.cpp:376, mimo2.cpp:276, hy-v3.cpp:247; glm4-moe.cpp:140 and the other single-head
  graphs assert `n_layer_nextn == 1`; qwen35.cpp:496 and nemotron-h-moe.cpp:18 run
  `il = hparams.n_layer()`;
- one head (chain_heads false, not shared) is run again for every position, the drafted token and
  its own hidden state fed back (`batch.add(id, dp.pos0 + i + 1, ...)`, line 1704); n_max is not
  clamped;
- a shared-memory drafter runs all its layers in one graph per step (src/models/
  gemma4-assistant.cpp:127, `for il < n_layer_nextn`): every block drafts every position, n_max
  not clamped.
ik_llama.cpp 0.1.5 builds its MTP graph from the last block only (src/llama-build-context.cpp:8031,
`il_mtp = hparams.n_layer - 1`) and runs it for every position.

Architecture names stay in arch.py: a family is known here only by its ArchRule (`heads`, drafter).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..arch import rule_for
from ..gguf_io import MAX_LAYERS
from ..runtimes import MAINLINE
from .plan import CheckPlan, ModelSpec

CHAIN = "chain"  # head k drafts position k; the draft depth is clamped to the heads
SINGLE = "single"  # one head drafts every position, run again for each
SHARED = "shared"  # a drafter whose layers all run together for every position (gemma4 assistant)


@dataclass(frozen=True)
class DraftHeads:
    """How llama-server drafts with one model's heads: `blocks` are the draft model's head blocks
    (`blk.N` of the file named `source`: the model, or the `-md` draft file)."""

    mode: str
    blocks: tuple[int, ...]
    source: str

    def n_effective(self, n_max: int) -> int:
        """The draft depth llama-server runs when asked for `n_max`."""
        return min(n_max, len(self.blocks)) if self.mode == CHAIN else n_max

    def blocks_at(self, position: int, n_max: int) -> tuple[int, ...]:
        """The blocks that draft `position` (0: the first drafted token) at `n_max`; () past the
        depth MTP runs (a position only another drafter of a --spec-type list reaches)."""
        if not 0 <= position < self.n_effective(n_max):
            return ()
        if self.mode == CHAIN:
            return (self.blocks[position],)
        return self.blocks if self.mode == SHARED else self.blocks[:1]

    def clamp_note(self, n_max: int) -> str:
        """'' or why `n_max` drafts fewer positions than asked."""
        n = self.n_effective(n_max)
        if n == n_max:
            return ""
        return (f"n={n_max} drafts {n} positions: llama-server clamps the draft depth to the "
                f"{len(self.blocks)} chained heads")

    def describe(self) -> str:
        """One line: which block drafts which position."""
        where = f" of {self.source}" if self.source else ""
        if self.mode == CHAIN:
            return (f"chained{where}, one head per position: "
                    + ", ".join(f"position {p} blk.{b}" for p, b in enumerate(self.blocks)))
        if self.mode == SHARED:
            span = f"{self.blocks[0]}-{self.blocks[-1]}" if len(self.blocks) > 1 else f"{self.blocks[0]}"
            return (f"blk.{span}{where} draft every position together (a drafter that reads the "
                    "target's KV cache)")
        return f"blk.{self.blocks[0]}{where} drafts every position (one head, run again for each)"

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "head_blocks": list(self.blocks), "source": self.source}


def draft_heads(arch: str, block_count: int, nextn: int, *, runtime: str = MAINLINE,
                source: str = "") -> DraftHeads | None:
    """The heads of a draft model (arch, block_count and nextn_predict_layers from its header), as
    llama-server at the pin runs them; None where it runs none (no head, or several heads in a
    family whose graph takes one: graph_mtp asserts n_layer_nextn == 1 there, and for a header past
    llama.cpp's MAX_LAYERS blocks, which it refuses to load)."""
    rule = rule_for(arch)
    if nextn < 1 or block_count < nextn or block_count > MAX_LAYERS or (rule is not None and not rule.runs_mtp):
        return None
    blocks = tuple(range(block_count - nextn, block_count))
    if runtime != MAINLINE:
        return DraftHeads(SINGLE, blocks[-1:], source)
    if rule is not None and rule.is_drafter:
        return DraftHeads(SHARED, blocks, source)
    if nextn == 1:
        return DraftHeads(SINGLE, blocks, source)
    if rule is not None and rule.heads != CHAIN:
        return None
    return DraftHeads(CHAIN, blocks, source)


def heads_for(plan: CheckPlan, spec: ModelSpec) -> DraftHeads | None:
    """The heads that draft for `spec` in `plan`: the `-md` draft's if there is one, else its own."""
    m = plan.draft_model or spec
    return draft_heads(m.arch, m.block_count, m.nextn_predict_layers, runtime=plan.server.runtime,
                       source=m.name if plan.draft_model is not None else "")
