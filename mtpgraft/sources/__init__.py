"""MTP sources: where `--mtp-from` takes the MTP head from, resolved into a local GGUF.

    src = resolve_mtp_source("hf://Qwen/Qwen3.6-27B", base="base.gguf")
    plan = graft.plan_attach("base.gguf", src.path, "out.gguf")   # provenance records src.label

Local GGUFs are used as they are; local or Hub safetensors are converted in numpy (convert.py);
Hub GGUFs are read by ranges (donor.py, hubfiles.py): only headers and the MTP tensors travel.
"""

from __future__ import annotations

from .resolve import (
           FetchProgress,
           HubOptions,
           ResolvedSource,
           plan_attach_from,
           resolve_base,
           resolve_mtp_source,
)
from .spec import HubRef, is_hub, parse_hub

__all__ = ["FetchProgress", "HubOptions", "HubRef", "ResolvedSource", "is_hub", "parse_hub", "plan_attach_from", "resolve_base",
           "resolve_mtp_source"]
