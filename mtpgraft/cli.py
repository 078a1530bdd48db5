"""The command line: the `mtpgraft` group and the list of its commands.

Each command lives in its own module under mtpgraft/commands/ (parse, call one library function,
render) and is registered here, explicitly; what they share is mtpgraft/commands/common.py (the
error boundary, renderers) and mtpgraft/commands/options.py (the options several commands take).
"""

from __future__ import annotations

import logging
import sys

import click

from . import __version__
from .commands import (
    card,
    check,
    doctor,
    graft,
    imatrix,
    inspection,
    push,
    quality,
    quantize,
    run,
    testmodels,
    toolchain,
)
from .commands.common import STATE, RedactingFormatter, say


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mtpgraft")
@click.option("--debug", is_flag=True, help="Show the traceback before the one-line error (same exit code).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info messages.")
@click.option("-v", "--verbose", is_flag=True,
              help="Log the commands mtpgraft runs; show a failed tool's output tail.")
def cli(debug: bool, quiet: bool, verbose: bool) -> None:
    """Graft, quantize, verify and publish GGUF models with multi-token prediction (MTP) heads."""
    STATE.debug = debug
    STATE.quiet = quiet
    STATE.verbose = verbose
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter("mtpgraft: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


# The pipeline's order: inspect and graft, quantize, check, publish; then the helpers.
COMMANDS = (
    inspection.inspect_cmd, graft.attach_cmd, graft.detach_cmd, graft.extract_cmd, graft.sidecar_cmd,
    imatrix.imatrix_cmd, quantize.quantize_cmd, run.run_cmd, check.check_cmd, quality.quality_cmd,
    card.card_cmd, push.push_cmd,
    testmodels.testmodels_cmd, toolchain.toolchain_cmd, doctor.doctor_cmd,
)
for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    """Run the CLI. click's own usage errors (a missing or unknown option, a bad choice) get the same
    one line and exit code as every other usage error instead of click's multi-line usage block."""
    try:
        code = cli.main(prog_name="mtpgraft", standalone_mode=False)
    except click.exceptions.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        _fail(f"{e.format_message()}{hint}", 2)
    except click.exceptions.Abort:
        _fail("interrupted", 130)
    except click.ClickException as e:
        _fail(e.format_message(), e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    click.echo("mtpgraft: error: " + say(" ".join(message.split())), err=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
