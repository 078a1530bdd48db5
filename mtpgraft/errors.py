"""One error hierarchy. The CLI maps every MtpgraftError to one line on stderr and a non-zero exit."""

from __future__ import annotations


class MtpgraftError(Exception):
    """Base of every error mtpgraft raises on purpose. `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(MtpgraftError):
    """The user asked for something that cannot work (bad option combination, bad value)."""

    exit_code = 2


class GGUFFormatError(MtpgraftError):
    """A file is not a readable GGUF (missing, truncated, wrong magic, bad header)."""


class GraftError(MtpgraftError):
    """A graft (attach / detach / extract) was refused: the inputs do not fit together."""


class OutputExistsError(MtpgraftError):
    """The output exists and --force was not given, or the output is one of the inputs."""


class ToolNotFoundError(MtpgraftError):
    """A llama.cpp tool could not be found in any of the places mtpgraft looks."""


class ToolFailedError(MtpgraftError):
    """An external tool exited non-zero. Carries the command, exit code and the tail of its output."""

    def __init__(self, message: str, *, cmd: list[str] | None = None, returncode: int | None = None,
                 output_tail: str = "") -> None:
        super().__init__(message)
        self.cmd = cmd or []
        self.returncode = returncode
        self.output_tail = output_tail


class ServerError(MtpgraftError):
    """llama-server failed to start, died, or answered wrongly. Carries the tail of its log."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class QuantizeError(MtpgraftError):
    """A quantization batch failed or produced a bad output."""


class RecipeError(MtpgraftError):
    """A recipe file is invalid or a pipeline step failed."""


class HubError(MtpgraftError):
    """A Hugging Face Hub operation failed or was refused by the verification gate."""


class SourceError(MtpgraftError):
    """An MTP source cannot be read or converted (bad spec, malformed safetensors, unknown architecture)."""
