"""Quantize a model with an MTP block into many types with the real llama-quantize, safely.

Two steps, like the graft: `plan_quantize` reads headers only, runs every check and returns a frozen
QuantizePlan holding the exact llama-quantize (and llama-gguf-split) commands, which `--dry-run`
prints; `execute_quantize` executes them. Why each part exists:

- llama-imatrix never runs the MTP graph, so an imatrix has no entries for the MTP block: the
  very-low-bit types (IQ1_*, IQ2_*, IQ3_XXS, IQ3_XS, Q2_K_S) abort on it ("Missing importance matrix
  for tensor blk.64.attn_k.weight ... bailing out") and every other type quantizes it unweighted,
  silently. Each command therefore carries an explicit `--tensor-type '^blk\\.64\\.=q8_0'` rule per
  MTP block (the MTP type policy: q8_0 by default, `match` for llama.cpp's own mixture, or a type).
- llama-quantize writes a zeroed header first and the real one last, so a failed run leaves a
  full-size file that is not a GGUF. Outputs go to a temporary name, are verified (magic, header,
  tensor count and names, file type, MTP block present and consistent, MTP types as planned, no
  zeroed tensor data) and only then renamed; a bad output is removed and reported.
- Outputs above the split size are split with llama-gguf-split into a per-type folder, named the way
  `llama-server -hf REPO:TYPE` finds them: `Name-Q4_K_M.gguf`, `Q8_0/Name-Q8_0-00001-of-00003.gguf`.

`options` checks the settings, `plan` makes the plan, `verify` checks an output, `run` executes the
plan; every name is re-exported here.
"""

from __future__ import annotations

from .options import (
    ALIASES,
    DEFAULT_MTP_TYPE,
    MTP_POLICIES,
    NEEDS_IMATRIX,
    REQUANTIZE_WARNING,
    canonical_type,
    check_mtp_policy,
    check_name,
    default_name,
    ggml_type,
    mtp_policy_for,
    name_problem,
    output_names,
    parse_size,
    parse_types,
    types_needing_imatrix,
)
from .plan import (
    ImatrixCoverage,
    MtpRule,
    OutputSpec,
    QuantizeJob,
    QuantizePlan,
    QuantizeTools,
    plan_quantize,
    read_imatrix_coverage,
    resolve_quantize_tools,
)
from .run import Event, OutputResult, QuantizeResult, execute_quantize
from .verify import Verification, _zero_data, existing_output, glob_escape, verify_output

__all__ = [
    "ALIASES", "DEFAULT_MTP_TYPE", "MTP_POLICIES", "NEEDS_IMATRIX", "REQUANTIZE_WARNING", "Event",
    "ImatrixCoverage", "MtpRule", "OutputResult", "OutputSpec", "QuantizeJob", "QuantizePlan", "QuantizeResult",
    "QuantizeTools", "Verification", "_zero_data", "canonical_type", "check_mtp_policy", "check_name",
    "default_name", "execute_quantize", "existing_output", "ggml_type", "glob_escape", "mtp_policy_for", "name_problem",
    "output_names", "parse_size", "parse_types", "plan_quantize", "read_imatrix_coverage",
    "resolve_quantize_tools", "types_needing_imatrix", "verify_output",
]
