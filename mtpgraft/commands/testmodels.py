"""`mtpgraft testmodels OUTDIR`: write the tiny qwen35 / qwen35moe / glm4moe / gemma4 test models (see
mtpgraft.testmodels)."""

from __future__ import annotations

from pathlib import Path

import click

from ..testmodels import DTYPES, FAMILY_ARCHES
from .common import emit_json, error_boundary
from .options import standard_options


@click.command("testmodels")
@click.argument("outdir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--arch", type=click.Choice(FAMILY_ARCHES), default="qwen35", show_default=True,
              help="Architecture of the models (gemma4: the target and its gemma4-assistant drafters).")
@click.option("--dtype", type=click.Choice(DTYPES), default="f16", show_default=True,
              help="Type of the 2-D weights (1-D tensors stay F32).")
@standard_options(force=True)
@error_boundary
def testmodels_cmd(outdir: Path, arch: str, dtype: str, force: bool, as_json: bool) -> None:
    """Write tiny models with known MTP acceptance (full-aligned 1.0, full-mixed lower on prose,
    full-random ~0, base, mtp-only sidecars, gemma4 assistants, ...) into OUTDIR, one file per variant."""
    from ..testmodels import build_test_set

    paths = build_test_set(outdir, arch=arch, dtype=dtype, force=force)
    if as_json:
        emit_json({name: str(p) for name, p in paths.items()})
    else:
        for p in paths.values():
            click.echo(str(p))
