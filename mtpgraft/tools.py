"""Finding and running the llama.cpp tools: the one place that knows where binaries live.

Lookup order for every tool: the --llama-cpp DIR flag, then $MTPGRAFT_LLAMA_CPP, then PATH, then
the toolchain cache built by `mtpgraft toolchain`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import shlex
import shutil
import subprocess
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolFailedError, ToolNotFoundError

log = logging.getLogger("mtpgraft")

TOOLS = ("llama-server", "llama-quantize", "llama-imatrix", "llama-gguf-split", "llama-perplexity")
ENV_DIR = "MTPGRAFT_LLAMA_CPP"


def _candidates(directory: Path, name: str) -> list[Path]:
    # A build tree keeps binaries in build/bin; an install or release zip keeps them at the top.
    return [directory / name, directory / "bin" / name, directory / "build" / "bin" / name]


@dataclass(frozen=True)
class ToolLocation:
    name: str
    path: Path
    source: str  # "flag", "env", "PATH", "cache"


def locate_tool(name: str, llama_cpp_dir: str | os.PathLike[str] | None = None) -> ToolLocation:
    """Return where `name` is, looking in the flag's dir, $MTPGRAFT_LLAMA_CPP, PATH, then the cache."""
    tried: list[str] = []
    if llama_cpp_dir:
        for c in _candidates(Path(llama_cpp_dir), name):
            if c.is_file() and os.access(c, os.X_OK):
                return ToolLocation(name, c, "flag")
        tried.append(f"--llama-cpp {llama_cpp_dir}")
    env = os.environ.get(ENV_DIR)
    if env:
        for c in _candidates(Path(env), name):
            if c.is_file() and os.access(c, os.X_OK):
                return ToolLocation(name, c, "env")
        tried.append(f"${ENV_DIR}={env}")
    found = shutil.which(name)
    if found:
        return ToolLocation(name, Path(found), "PATH")
    tried.append("PATH")
    from .toolchain import cached_bin_dir

    bindir = cached_bin_dir()
    if bindir is not None:
        c = bindir / name
        if c.is_file() and os.access(c, os.X_OK):
            return ToolLocation(name, c, "cache")
    tried.append("the toolchain cache")
    raise ToolNotFoundError(
        f"{name} not found (looked in {', '.join(tried)}); build it with `mtpgraft toolchain` "
        f"or point --llama-cpp / ${ENV_DIR} at a llama.cpp build"
    )


def find_tool(name: str, llama_cpp_dir: str | os.PathLike[str] | None = None) -> Path:
    return locate_tool(name, llama_cpp_dir).path


def format_cmd(cmd: list[str]) -> str:
    return shlex.join(str(c) for c in cmd)


def run_tool(cmd: list[str | os.PathLike[str]], *, cwd: str | os.PathLike[str] | None = None,
             timeout: float | None = None, env: dict[str, str] | None = None,
             tail_lines: int = 30) -> subprocess.CompletedProcess[str]:
    """Run an external tool, logging the exact command; raise ToolFailedError with its output tail."""
    args = [str(c) for c in cmd]
    log.info("running: %s", format_cmd(args))
    try:
        proc = subprocess.run(args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              errors="replace", timeout=timeout)
    except FileNotFoundError as e:
        raise ToolNotFoundError(f"cannot run {args[0]}: {e.strerror}") from e
    except subprocess.TimeoutExpired as e:
        out = e.output if isinstance(e.output, str) else (e.output or b"").decode("utf-8", "replace")
        raise ToolFailedError(f"{Path(args[0]).name} timed out after {timeout:g}s",
                              cmd=args, returncode=None, output_tail=_tail(out, tail_lines)) from e
    if proc.returncode != 0:
        tail = _tail(proc.stdout, tail_lines)
        last = _last_meaningful_line(proc.stdout)
        raise ToolFailedError(
            f"{Path(args[0]).name} failed with exit code {proc.returncode}" + (f": {last}" if last else ""),
            cmd=args, returncode=proc.returncode, output_tail=tail)
    return proc


def _tail(text: str, n: int) -> str:
    return "\n".join(deque(text.splitlines(), maxlen=n))


_NOISE = re.compile(r"^\s*$|^(main|llama_model_loader|load|print_info|llm_load)\b.*: (- |\s*$)")


def _last_meaningful_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        s = line.strip()
        if s and not _NOISE.match(s):
            return s[:300]
    return ""


def _capture(path: str, flag: str) -> str:
    """stdout + stderr of `TOOL FLAG`, or '' if it cannot run (used for --version and --help)."""
    try:
        proc = subprocess.run([path, flag], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout + proc.stderr


@functools.lru_cache(maxsize=32)
def tool_version(path: str) -> str:
    """`TOOL --version` first line that names the build, or '' if it will not say."""
    text = _capture(path, "--version")
    for line in text.splitlines():
        if line.startswith("version:"):
            return line.split(":", 1)[1].strip()
    lines = [x for x in text.splitlines() if x.strip()]
    if not lines or lines[0].lstrip().startswith("usage"):
        return ""  # llama-quantize has no --version; it prints its usage
    return lines[0].strip()


@functools.lru_cache(maxsize=8)
def server_help(path: str) -> str:
    return _capture(path, "--help")


def probe_mtp_spec_type(server: str | os.PathLike[str]) -> str | None:
    """The spelling of the MTP speculative type this llama-server accepts, read from its --help.

    Mainline says `draft-mtp`; older builds and ik_llama.cpp say `mtp`. None if it has neither.
    """
    text = server_help(str(server))
    # Only look at the --spec-type option's own description.
    m = re.search(r"--spec-type\b(.*?)(?:\n\s*-{1,2}[a-z]|\Z)", text, re.S)
    block = m.group(1) if m else text
    if re.search(r"(?<![\w-])draft-mtp(?![\w-])", block):
        return "draft-mtp"
    if re.search(r"(?<![\w-])mtp(?![\w-])", block):
        return "mtp"
    return None
