"""`mtpgraft card`: the model card a push would write, rendered offline for review."""

from __future__ import annotations

import click

from .common import error_boundary, info, warn
from .options import base_model_option, check_reports_option, force_option


@click.command("card")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@check_reports_option("A `mtpgraft check --report` folder; may be repeated.")
@click.option("--repo", "repo_id", default="OWNER/REPO", show_default=True, metavar="OWNER/NAME",
              help="The repo the card is for (links and `llama-server -hf` lines).")
@base_model_option("The base model on the card when the GGUFs record none.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), metavar="FILE",
              help="Where to write the card (README.md).")
@force_option()
@error_boundary
def card_cmd(paths: tuple[str, ...], reports: tuple[str, ...], repo_id: str, base_model: str | None,
             output: str, force: bool) -> None:
    """Render the model card a push of PATHS would write, offline, for review before anything is sent."""
    from ..hub.plan import render_local_card
    from ..outputs import check_outputs, write_text

    check_outputs([output], paths, force=force)
    text, refusals = render_local_card(list(paths), repo_id=repo_id, report_dirs=list(reports),
                                       base_model=base_model)
    for r in refusals:
        warn(f"push would refuse {r}")
    info(f"wrote {write_text(output, text, force=force)}")
