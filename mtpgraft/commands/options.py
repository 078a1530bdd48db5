"""The options several commands take, each defined once as a decorator (factory) composing click.option.

`--help` lists options in the order their decorators stand, so `standard_options` gives every command
the same tail: --force, --dry-run, --layout/--no-reflink, --token/--endpoint, --runtime, --llama-cpp,
--json.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import add_secret
from ..runtimes import MAINLINE, RUNTIMES

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

FORCE_HELP = "Overwrite the output if it exists."
DRY_RUN_HELP = "Print the plan and write nothing."
MTP_TYPE_METAVAR = "keep|q8_0|match|TYPE"


def _stack(decorators: list[Decorator]) -> Decorator:
    """One decorator applying `decorators` so that --help lists them in the given order."""

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for d in reversed(decorators):
            fn = d(fn)
        return fn

    return apply


def force_option(help: str = FORCE_HELP) -> Decorator:  # noqa: A002
    return click.option("--force", is_flag=True, help=help)


def dry_run_option(help: str = DRY_RUN_HELP) -> Decorator:  # noqa: A002
    """--dry-run: print the plan (with --json: {"dry_run": true, "plan": {...}}) and stop."""
    return click.option("--dry-run", is_flag=True, help=help)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")(fn)


def llama_cpp_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--llama-cpp", "llama_cpp", metavar="DIR", default=None,
                        help="Directory holding the llama.cpp tools (else $MTPGRAFT_LLAMA_CPP, PATH, "
                             "then the toolchain cache; with --runtime ik, $MTPGRAFT_IK_LLAMA_CPP, then "
                             "its cache).")(fn)


def runtime_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--runtime mainline|ik: whose tools run (llama.cpp's or ik_llama.cpp's); $MTPGRAFT_RUNTIME too."""
    return click.option("--runtime", type=click.Choice(RUNTIMES), default=MAINLINE, show_default=True,
                        envvar="MTPGRAFT_RUNTIME", show_envvar=True,
                        help="Which llama.cpp runs the tools: mainline llama.cpp, or ik_llama.cpp (its tools "
                             "from $MTPGRAFT_IK_LLAMA_CPP or `mtpgraft toolchain --runtime ik`).")(fn)


def _secret(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    add_secret(value)  # redacted from everything printed or written from now on, whatever fails
    return value


def hub_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--token and --endpoint, for commands that talk to the Hub."""
    return _stack([
        click.option("--token", default=None, metavar="TOKEN", callback=_secret,
                     help="Hugging Face token (else $HF_TOKEN, else the stored `hf auth login`)."),
        click.option("--endpoint", default=None, metavar="URL", help="Hub endpoint (else $HF_ENDPOINT)."),
    ])(fn)


def layout_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--layout and --no-reflink, for every command that writes a GGUF through gguf_io's writer."""
    return _stack([
        click.option("--layout", type=click.Choice(["reflink", "converter"]), default="reflink",
                     show_default=True,
                     help="reflink: the copied body keeps its offsets modulo the block size (a padding key "
                          "sizes the header) and new tensors follow it, so btrfs/XFS/ZFS share its blocks "
                          "with the base; converter: convert_hf_to_gguf.py's order and no padding."),
        click.option("--no-reflink", "no_reflink", is_flag=True,
                     help="Copy every byte, even where the filesystem could share the base's blocks."),
    ])(fn)


def layout_from(layout: str, no_reflink: bool):  # noqa: ANN201 - gguf_io.Layout, imported lazily
    """The gguf_io.Layout that --layout and --no-reflink ask for."""
    from ..gguf_io import Layout

    return Layout(align=layout == "reflink", clone=not no_reflink)


def standard_options(*, force: bool | str = False, dry_run: bool | str = False, layout: bool = False,
                     hub: bool = False, llama_cpp: bool = False, runtime: bool = False,
                     json: bool = True) -> Decorator:
    """The tail every command's options end with, in one order. A string for `force` or `dry_run` is
    that option's help text (True: the default one)."""
    chosen: list[Decorator] = []
    if force:
        chosen.append(force_option(force) if isinstance(force, str) else force_option())
    if dry_run:
        chosen.append(dry_run_option(dry_run) if isinstance(dry_run, str) else dry_run_option())
    chosen += [d for on, d in ((layout, layout_options), (hub, hub_options), (runtime, runtime_option),
                               (llama_cpp, llama_cpp_option), (json, json_option)) if on]
    return _stack(chosen)


def output_option(*, required: bool = False, help: str = "Output file.") -> Decorator:  # noqa: A002
    """-o/--output of the graft commands (attach, detach, extract, sidecar)."""
    return click.option("-o", "--output", "out", required=required, default=None,
                        type=click.Path(path_type=Path), help=help)


def mtp_from_option(help: str) -> Decorator:  # noqa: A002
    """--mtp-from SOURCE: where attach and sidecar take the MTP block from."""
    return click.option("--mtp-from", "source", required=True, metavar="SOURCE", help=help)


def mtp_type_option(help: str) -> Decorator:  # noqa: A002
    """--mtp-type of the graft commands (keep, q8_0, match or a ggml type)."""
    return click.option("--mtp-type", default=None, metavar=MTP_TYPE_METAVAR, help=help)


def check_reports_option(help: str) -> Decorator:  # noqa: A002
    """--report DIR (repeatable): the `mtpgraft check --report` folders push and card read."""
    return click.option("--report", "reports", multiple=True, type=click.Path(exists=True), metavar="DIR",
                        help=help)


def base_model_option(help: str) -> Decorator:  # noqa: A002
    """--base-model OWNER/NAME: the base model a card names when the GGUFs record none."""
    return click.option("--base-model", default=None, metavar="OWNER/NAME", help=help)
