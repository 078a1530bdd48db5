"""One error hierarchy and one table of exit codes.

Every error mtpgraft raises on purpose is an MtpgraftError whose class says what kind of failure it
is; the CLI maps it to one line on stderr and the exit code of its kind (EXIT_CODES, also in the
README). A signal is not an error: it raises Interrupted, which exits 128 + the signal number.

A message that tells the user which setting to change names it as the library takes it (a `Setting`
inside a `Text`): str() reads `pass force=True`, and each front end spells it its own way (the CLI's
error boundary `pass --force`, the recipe runner its recipe key or `run`'s flag).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# The exit code per kind of failure (the README's table is this one).
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and its result is a fail: check verdict, a quant type or recipe step failed
EXIT_USAGE = 2  # a bad option or combination (click's own usage errors exit 2 as well)
EXIT_INPUT = 3  # an input that cannot be used: not a GGUF, inputs that do not fit, a bad recipe
EXIT_OUTPUT = 4  # an output that cannot be written: it exists (no --force), no space, an OS error
EXIT_TOOL = 5  # a llama.cpp tool is missing, failed, or llama-server died / stopped responding
EXIT_HUB = 6  # the Hugging Face Hub refused or failed a request
EXIT_INTERNAL = 70  # a bug in mtpgraft (sysexits' EX_SOFTWARE): a written output failed its own check
EXIT_SIGNAL_BASE = 128  # interrupted: 128 + signal number (130 SIGINT, 143 SIGTERM, 129 SIGHUP)

EXIT_CODES: dict[str, int] = {
    "ok": EXIT_OK, "failed": EXIT_FAILED, "usage": EXIT_USAGE, "input": EXIT_INPUT,
    "output": EXIT_OUTPUT, "tool": EXIT_TOOL, "hub": EXIT_HUB, "internal": EXIT_INTERNAL,
    "interrupted (SIGINT)": EXIT_SIGNAL_BASE + signal.SIGINT,
    "interrupted (SIGTERM)": EXIT_SIGNAL_BASE + signal.SIGTERM,
    "interrupted (SIGHUP)": EXIT_SIGNAL_BASE + signal.SIGHUP,
}


@dataclass(frozen=True)
class Setting:
    """A setting a message names: the library's parameter and, when the message says what to set it
    to, the value (None: the setting itself). str() is a library caller's spelling: `force=True`."""

    name: str
    value: Any = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}={self.value!r}"


Spelling = Callable[[Setting], str]


class Text(str):
    """A message that names settings: a str whose value is the library's spelling, and which keeps
    its parts so that a front end can spell each Setting its own way (`spelled`). Joining or adding
    Texts keeps the parts; an f-string makes a plain str in the library's spelling."""

    parts: tuple[str | Setting, ...]

    def __new__(cls, *parts: str | Setting) -> Text:
        flat: list[str | Setting] = []
        for p in parts:
            flat.extend(p.parts if isinstance(p, Text) else (p,))
        self = super().__new__(cls, "".join(map(str, flat)))
        self.parts = tuple(flat)
        return self

    def spelled(self, spell: Spelling) -> str:
        return "".join(spell(p) if isinstance(p, Setting) else p for p in self.parts)

    def join(self, items: Any) -> Text:  # type: ignore[override]
        out: list[str | Setting] = []
        for i, item in enumerate(items):
            out += [self, item] if i else [item]
        return Text(*out)

    def __add__(self, other: str) -> Text:  # type: ignore[override]
        return Text(self, other)

    def __radd__(self, other: str) -> Text:
        return Text(other, self)

    def __reduce__(self) -> tuple[Any, ...]:  # pickle (Ray) and deepcopy (dataclasses.asdict)
        return (Text, self.parts)


def spelled(message: object, spell: Spelling) -> str:
    """`message` with its settings spelled by `spell` (a plain str or an error's text as it is)."""
    if isinstance(message, MtpgraftError):
        message = message.text
    return message.spelled(spell) if isinstance(message, Text) else str(message)


def respelled(obj: Any, spell: Spelling) -> Any:
    """A JSON-shaped value (dicts, lists, tuples) with every Text in it spelled by `spell`."""
    if isinstance(obj, Text):
        return obj.spelled(spell)
    if isinstance(obj, dict):
        return {k: respelled(v, spell) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [respelled(v, spell) for v in obj]
    return obj


# --------------------------------------------------------------------------- secrets and one-line text

# What a token looks like wherever it is echoed: an HF token, a `Bearer` credential, an Authorization
# header's value (`Authorization: ...`, `"authorization": "..."`), whatever the server or tool wrote.
_TOKEN_SHAPES = re.compile(
    r"(?P<keep>\bBearer\s+|\b(?i:authorization)[\"']?\s*[:=]\s*[\"']?(?:(?i:bearer)\s+)?)[^\s\"',;}]+"
    r"|\bhf_[A-Za-z0-9]{10,}")
_SECRETS: set[str] = set()
_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
REDACTED = "***"


def add_secret(value: str | None) -> None:
    """Remember a token mtpgraft was given or found, so that `redact` removes it from any text."""
    if value and len(value) >= 4:
        _SECRETS.add(value)


def redact(text: str, *, shapes: bool = True) -> str:
    """`text` with every known token (given, in HF_TOKEN, the stored login) and, with `shapes`, anything
    shaped like one replaced by ***. Applied where text leaves mtpgraft: the terminal, logs, the card
    (everything); the files it writes (known tokens only: a cache or state file may hold a path that
    merely looks like a token, and must read back as written)."""
    if not text:
        return text
    secrets = _SECRETS | {v for k in _TOKEN_ENV if len(v := os.environ.get(k, "")) >= 4}
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, REDACTED)
    return _TOKEN_SHAPES.sub(lambda m: (m.group("keep") or "") + REDACTED, text) if shapes else text


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text: str) -> str:
    """`text` as one terminal line: control characters (newlines included) written as escapes, so
    text from a file or a server can never start a line of its own (a fake `mtpgraft: error:`)."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


class MtpgraftError(Exception):
    """Base of every error mtpgraft raises on purpose. `exit_code` is what the CLI exits with.

    The message is one str, or parts (str, Text and Setting) that make one Text: raise
    OutputExistsError(f"{target} exists; pass ", Setting("force", True), " to overwrite it").
    A message may name another command to run (`mtpgraft check --report DIR`), in backticks."""

    exit_code = EXIT_INPUT

    def __init__(self, *parts: Any) -> None:
        if len(parts) > 1 or any(isinstance(p, Setting) for p in parts):
            parts = (Text(*parts),)
        super().__init__(*parts)

    @property
    def text(self) -> str:
        """The message as raised: a Text when it names settings (str(e) spells them as the library)."""
        return self.args[0] if len(self.args) == 1 and isinstance(self.args[0], str) else str(self)


class VerdictFailedError(MtpgraftError):
    """The command did its work and the result is a fail (check verdict, failed quant types or steps)."""

    exit_code = EXIT_FAILED


class UsageError(MtpgraftError):
    """The user asked for something that cannot work (bad option combination, bad value)."""

    exit_code = EXIT_USAGE


class GGUFFormatError(MtpgraftError):
    """A file is not a readable GGUF (missing, truncated, wrong magic, bad header)."""


class GraftError(MtpgraftError):
    """A graft (attach / detach / extract) was refused: the inputs do not fit together."""


class QuantizeError(MtpgraftError):
    """A quantization was refused at plan time or produced a bad output."""


class QuantizeOptionError(UsageError, QuantizeError):
    """A quantize or imatrix option has a bad value (an unknown type, --jobs 0, a bad --name): a usage
    error like every other bad option (exit 2), and still a QuantizeError for callers of the stage."""


class RecipeError(MtpgraftError):
    """A recipe file is invalid or its work dir cannot be used."""


class OutputExistsError(MtpgraftError):
    """The output exists and --force was not given, or the output is one of the inputs."""

    exit_code = EXIT_OUTPUT


class OutputWriteError(MtpgraftError):
    """An output could not be written: not enough free space, or the OS refused the write."""

    exit_code = EXIT_OUTPUT


class ToolNotFoundError(MtpgraftError):
    """A llama.cpp tool could not be found in any of the places mtpgraft looks."""

    exit_code = EXIT_TOOL


class ToolFailedError(MtpgraftError):
    """An external tool exited non-zero. Carries the command, exit code and the tail of its output."""

    exit_code = EXIT_TOOL

    def __init__(self, message: str, *, cmd: list[str] | None = None, returncode: int | None = None,
                 output_tail: str = "") -> None:
        super().__init__(message)
        self.cmd = cmd or []
        self.returncode = returncode
        self.output_tail = output_tail


class ServerError(MtpgraftError):
    """llama-server failed to start, died, or answered wrongly. Carries the tail of its log."""

    exit_code = EXIT_TOOL

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class HubError(MtpgraftError):
    """A Hugging Face Hub operation failed or was refused by the verification gate."""

    exit_code = EXIT_HUB


class InternalError(MtpgraftError):
    """A bug in mtpgraft, never the user's input: a written output failed the graft's invariant
    (mtpgraft.graft.invariant) and was removed."""

    exit_code = EXIT_INTERNAL


class SourceError(MtpgraftError):
    """An MTP source cannot be read or converted (bad spec, malformed safetensors, unknown architecture)."""


class Interrupted(KeyboardInterrupt):  # noqa: N818 - it is KeyboardInterrupt's kin, not an error
    """SIGINT, SIGTERM or SIGHUP arrived. A BaseException like KeyboardInterrupt, so `except
    Exception` never swallows it and every `finally` on the way out runs (temp files, children)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal_name(signum))
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_SIGNAL_BASE + self.signum

    def __str__(self) -> str:
        return f"interrupted ({signal_name(self.signum)})"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back for a few statements that must not be cut in two (start a
    child and register it; create a temporary file and register it); they arrive right after."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"
