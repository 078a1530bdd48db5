"""What every command shares: the error boundary and the renderers (the shared options: options.py).

The boundary is the only place that turns an error into an exit: every MtpgraftError becomes one
line `mtpgraft: error: ...` and the exit code of its kind (mtpgraft.errors.EXIT_CODES); SIGINT,
SIGTERM and SIGHUP become Interrupted, which stops the children and removes the temporary outputs
before the line `mtpgraft: error: interrupted (SIGTERM)` and exit 128 + the signal number.

Library messages name settings as the library takes them (errors.Setting: `force=True`); everything
a command prints (errors, warnings, JSON) spells them as that command's flags (`--force`).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

import click

from ..errors import (
    EXIT_OUTPUT,
    Interrupted,
    MtpgraftError,
    ServerError,
    Setting,
    ToolFailedError,
    one_line,
    redact,
    respelled,
    spelled,
)


class _State:
    debug = False
    quiet = False
    verbose = False


STATE = _State()
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# A command's flag for a library setting, where it is not the setting's name with dashes
# (--force for force, --no-verify for verify=False, --mtp-type q8_0 for mtp_type="q8_0").
FLAG_NAMES: dict[str, dict[str, str]] = {
    "push": {"repo_id": "--repo", "report_dirs": "--report"},
    "card": {"repo_id": "--repo", "report_dirs": "--report"},
    "check": {"ctx_size": "--ctx", "temperatures": "--temperature", "spec_types": "--spec-type"},
    "quality": {"reports": "--check-report"},
}


def flag(setting: Setting, command: str | None = None) -> str:
    """`setting` as the flag of `command` (default: the command running now) that sets it."""
    if command is None:
        ctx = click.get_current_context(silent=True)
        command = ctx.command.name if ctx is not None else None
    name = FLAG_NAMES.get(command or "", {}).get(setting.name, "--" + setting.name.replace("_", "-"))
    value = setting.value
    if value is None or value is True:
        return name
    if value is False:
        return "--no-" + name.removeprefix("--")
    return f"{name} {value}"


def cli_text(message: object) -> str:
    """A library message (or error) as the running command says it: its settings as flags."""
    return spelled(message, flag)


def say(message: str) -> str:
    """What mtpgraft prints of a message: tokens redacted, one line (control characters escaped)."""
    return one_line(redact(message))


def say_lines(message: str) -> str:
    """An info or warning that may span lines (a log tail): each line as `say` prints it, and every
    line after the first indented, so that none can pass for a line of mtpgraft's own."""
    first, *rest = redact(message).split("\n")
    return "\n".join([one_line(first), *(one_line(x if x[:1] in (" ", "\t") else "  " + x) for x in rest)])


def _fail(message: str, code: int, error: BaseException | None = None) -> None:
    """The error line and the exit. --debug prints the traceback first; the exit code stays."""
    if STATE.debug and sys.exc_info()[0] is not None:
        click.echo(redact(traceback.format_exc()).rstrip(), err=True)
    click.echo(f"mtpgraft: error: {say(message)}", err=True)
    if isinstance(error, (ToolFailedError, ServerError)):
        _show_tail(error)
    sys.exit(code)


class RedactingFormatter(logging.Formatter):
    """Log lines as `mtpgraft: MESSAGE`, with tokens redacted (a logged command may carry one)."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _on_signal(signum: int, frame: Any) -> None:
    from ..tools import interrupt_children

    first = not _interrupted.is_set()
    _interrupted.set()
    interrupt_children(signum, kill=not first)
    if first:  # later signals only hurry the children: the first one's cleanup must finish
        raise Interrupted(signum)


_interrupted = threading.Event()


def _install_handlers() -> dict[int, Any] | None:
    if threading.current_thread() is not threading.main_thread():
        return None
    _interrupted.clear()
    return {s: signal.signal(s, _on_signal) for s in _SIGNALS}


def _restore_handlers(old: dict[int, Any] | None) -> None:
    for s, h in (old or {}).items():
        signal.signal(s, h)


def _show_tail(e: MtpgraftError) -> None:
    """-v: the end of what the failed tool (or llama-server) printed, after the error line."""
    tail = getattr(e, "output_tail", "") or getattr(e, "log_tail", "")
    if not (STATE.verbose and tail):
        return
    cmd = getattr(e, "cmd", None)
    if cmd:
        from ..tools import format_cmd

        click.echo(f"mtpgraft: the failed command: {say(format_cmd(cmd))}", err=True)
    click.echo("mtpgraft: the end of its output:", err=True)
    for line in tail.splitlines():
        click.echo(f"  | {say(line)}", err=True)


def error_boundary(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map typed errors (and the OS errors a user can cause) to one line and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        old = _install_handlers()
        try:
            result = fn(*args, **kwargs)
        except KeyboardInterrupt as e:  # Interrupted, or a SIGINT that came before our handler
            from ..tools import clean_up_after_interrupt

            clean_up_after_interrupt()
            _restore_handlers(old)
            intr = e if isinstance(e, Interrupted) else Interrupted(signal.SIGINT)
            _fail(str(intr), intr.exit_code)
        except MtpgraftError as e:
            _restore_handlers(old)
            _fail(cli_text(e), e.exit_code, e)
        except OSError as e:
            _restore_handlers(old)
            where = f": {e.filename}" if getattr(e, "filename", None) else ""
            what = "no space left on the device" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or e)
            _fail(f"{what}{where}", EXIT_OUTPUT)
        _restore_handlers(old)
        return result

    return wrapper


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


def emit_json(obj: Any) -> None:
    click.echo(redact(json.dumps(respelled(obj, flag), indent=2, sort_keys=False, default=str)))


def emit_dry_run(plan: Any, text: str, as_json: bool) -> None:
    """What every --dry-run prints: {"dry_run": true, "plan": plan.to_dict()} (`--json`) or text."""
    if as_json:
        emit_json({"dry_run": True, "plan": plan.to_dict()})
    else:
        click.echo(redact(cli_text(text)))


def show_progress() -> bool:
    return not STATE.quiet and sys.stderr.isatty()


def progress_bar(total: int, *, unit: str = "B", desc: str = ""):
    """A tqdm bar on stderr, off with --quiet or when stderr is not a terminal (bytes scale to KiB/MiB)."""
    from tqdm import tqdm

    scale = unit == "B"
    return tqdm(total=total, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000, desc=desc,
                disable=not show_progress(), file=sys.stderr, leave=False)


def warn(msg: str) -> None:
    click.echo(f"mtpgraft: warning: {say_lines(cli_text(msg))}", err=True)


def info(msg: str) -> None:
    if not STATE.quiet:
        click.echo(f"mtpgraft: {say_lines(cli_text(msg))}", err=True)
