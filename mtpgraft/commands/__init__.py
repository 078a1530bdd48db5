"""CLI commands, one module per stage; importing this package registers them all on `cli`."""

from __future__ import annotations

from . import check, graft, hub, quality, quantize, run, testmodels, toolchain  # noqa: F401
