"""The graft: attach an MTP block to a base GGUF, detach it, or extract it as a sidecar.

Each operation is two steps: `plan_*` reads headers only, runs every check and returns a frozen
GraftPlan (what `--dry-run` prints); `execute_graft` streams the output tensor by tensor into
temporary files beside the target and renames them only when everything was written.

`types` holds the plan, `keys` the metadata it changes, `plan` attach's planning and `extract`
detach's and extract's, `write` the execution (with `digest`, the provenance hash, and `invariant`,
the check of every written file), `sharing` the block accounting, `render` the `--dry-run` text;
every public name is re-exported here.
"""

from __future__ import annotations

from .digest import Digest
from .extract import default_extract_name, plan_detach, plan_extract
from .invariant import check_written
from .keys import CACHE_AFTER, CACHE_ORIGIN, PROV, graft_provenance, provenance, source_label
from .plan import (
    ATTACH_POLICIES,
    GraftedBlock,
    attach_word,
    check_base,
    graft_block,
    plan_attach,
    quantize_tool,
)
from .render import describe_plan
from .sharing import BlockSharing, block_sharing
from .types import PRINTED, GraftPlan, KeyChange, ShardSpec, TensorAction
from .write import CONVERT_CHUNK_BYTES, DIGEST_KEY, convert_chunks, execute_graft

__all__ = [
    "ATTACH_POLICIES", "BlockSharing", "CACHE_AFTER", "CACHE_ORIGIN", "CONVERT_CHUNK_BYTES", "DIGEST_KEY", "Digest",
    "GraftPlan", "GraftedBlock", "KeyChange", "PRINTED", "PROV", "ShardSpec", "TensorAction", "attach_word",
    "block_sharing", "check_base", "check_written", "convert_chunks", "default_extract_name", "describe_plan",
    "execute_graft", "graft_block", "graft_provenance", "plan_attach", "plan_detach", "plan_extract", "provenance",
    "quantize_tool", "source_label",
]
