"""mtpgraft: graft, quantize, verify and publish GGUF models with MTP (NextN) heads."""

from __future__ import annotations

__version__ = "0.1.0"
