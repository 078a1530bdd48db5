"""The command line: parse, call one library function, render. Every MtpgraftError becomes one
line on stderr and a non-zero exit; --debug shows the traceback instead."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from . import __version__
from .errors import MtpgraftError


class _State:
    debug = False
    quiet = False


STATE = _State()


def _fail(message: str, code: int) -> None:
    click.echo(f"mtpgraft: error: {message}", err=True)
    sys.exit(code)


def error_boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map typed errors (and the few OS errors a user can cause) to one line and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MtpgraftError as e:
            if STATE.debug:
                raise
            msg = str(e)
            _fail(msg, e.exit_code)
        except KeyboardInterrupt:
            if STATE.debug:
                raise
            _fail("interrupted", 130)
        except OSError as e:
            if STATE.debug:
                raise
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            _fail(f"{e.strerror or e}{where}", 1)

    return wrapper


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(fn)


def force_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--force", is_flag=True, help="Overwrite the output if it exists.")(fn)


def llama_cpp_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--llama-cpp", "llama_cpp", metavar="DIR", default=None,
                        help="Directory holding the llama.cpp tools (else $MTPGRAFT_LLAMA_CPP, PATH, "
                             "then the toolchain cache).")(fn)


def hub_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--token and --endpoint, for commands that read from the Hub."""
    fn = click.option("--endpoint", default=None, metavar="URL", help="Hub endpoint (else $HF_ENDPOINT).")(fn)
    return click.option("--token", default=None, metavar="TOKEN",
                        help="Hugging Face token (else $HF_TOKEN, else the stored `hf auth login`).")(fn)


class FetchBar:
    """Bytes fetched from the Hub, as a progress bar on stderr (mtpgraft.sources.FetchProgress)."""

    def __init__(self, desc: str = "fetch") -> None:
        self.desc, self.bar = desc, None

    def total(self, nbytes: int) -> None:
        self.close()
        self.bar = progress_bar(nbytes, desc=self.desc)

    def update(self, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def layout_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--layout and --no-reflink, for every command that writes a GGUF through gguf_io's writer."""
    fn = click.option("--no-reflink", "no_reflink", is_flag=True,
                      help="Copy every byte, even where the filesystem could share the base's blocks.")(fn)
    return click.option("--layout", type=click.Choice(["reflink", "converter"]), default="reflink",
                        show_default=True,
                        help="reflink: the copied body keeps its offsets modulo the block size (a padding key "
                             "sizes the header) and new tensors follow it, so btrfs/XFS/ZFS share its blocks "
                             "with the base; converter: convert_hf_to_gguf.py's order and no padding.")(fn)


def layout_from(layout: str, no_reflink: bool):
    from .gguf_io import Layout

    return Layout(align=layout == "reflink", clone=not no_reflink)


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def emit_dry_run(plan: Any, text: str, as_json: bool) -> None:
    """What every --dry-run prints: the plan as JSON (`--json`) or as text."""
    if as_json:
        emit_json({"dry_run": True, **plan.to_dict()})
    else:
        click.echo(text)


def show_progress() -> bool:
    return not STATE.quiet and sys.stderr.isatty()


def progress_bar(total: int, *, unit: str = "B", desc: str = ""):
    """A tqdm bar on stderr, off with --quiet or when stderr is not a terminal (bytes scale to KiB/MiB)."""
    from tqdm import tqdm

    scale = unit == "B"
    return tqdm(total=total, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000, desc=desc,
                disable=not show_progress(), file=sys.stderr, leave=False)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mtpgraft")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info messages.")
@click.option("-v", "--verbose", is_flag=True, help="Log the commands mtpgraft runs.")
def cli(debug: bool, quiet: bool, verbose: bool) -> None:
    """Graft, quantize, verify and publish GGUF models with multi-token prediction (MTP) heads."""
    STATE.debug = debug
    STATE.quiet = quiet
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="mtpgraft: %(message)s", stream=sys.stderr)


def warn(msg: str) -> None:
    click.echo(f"mtpgraft: warning: {msg}", err=True)


def info(msg: str) -> None:
    if not STATE.quiet:
        click.echo(f"mtpgraft: {msg}", err=True)


def main() -> None:
    # Commands live in their own modules and register on `cli` when imported.
    from . import commands  # noqa: F401

    cli(prog_name="mtpgraft")


if __name__ == "__main__":
    main()
