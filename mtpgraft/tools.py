"""Finding and running external tools: where the llama.cpp binaries live, and the one runner that
starts every child process (none outlives mtpgraft, whatever ends it).

Lookup order for every tool of a runtime: the --llama-cpp DIR flag, then the runtime's environment
variable ($MTPGRAFT_LLAMA_CPP for mainline llama.cpp, $MTPGRAFT_IK_LLAMA_CPP for ik_llama.cpp), then
PATH (mainline only: ik's tools have the same names, and a llama-server on PATH is not taken for ik's),
then the runtime's toolchain cache built by `mtpgraft toolchain [--runtime ik]`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import (
    Interrupted,
    Setting,
    Text,
    ToolFailedError,
    ToolNotFoundError,
    signal_name,
    signals_held,
)
from .outputs import remove_pending
from .pins import cached_bin_dir
from .runtimes import ENV_DIRS, LABELS, MAINLINE, check_runtime

log = logging.getLogger("mtpgraft")

TOOLS = ("llama-server", "llama-quantize", "llama-imatrix", "llama-gguf-split", "llama-perplexity")
ENV_DIR = ENV_DIRS[MAINLINE]


def _candidates(directory: Path, name: str) -> list[Path]:
    # A build tree keeps binaries in build/bin; an install or release zip keeps them at the top.
    return [directory / name, directory / "bin" / name, directory / "build" / "bin" / name]


@dataclass(frozen=True)
class ToolLocation:
    name: str
    path: Path
    source: str  # "flag", "env", "PATH", "cache"


def locate_tool(name: str, llama_cpp_dir: str | os.PathLike[str] | None = None,
                runtime: str = MAINLINE) -> ToolLocation:
    """Return where `runtime`'s `name` is: the flag's dir, the runtime's env dir, PATH (mainline), the cache."""
    env_var = ENV_DIRS[check_runtime(runtime)]
    tried: list[str | Text] = []
    if llama_cpp_dir:
        for c in _candidates(Path(llama_cpp_dir), name):
            if c.is_file() and os.access(c, os.X_OK):
                return ToolLocation(name, c, "flag")
        tried.append(Text(Setting("llama_cpp"), f" {llama_cpp_dir}"))
    env = os.environ.get(env_var)
    if env:
        for c in _candidates(Path(env), name):
            if c.is_file() and os.access(c, os.X_OK):
                return ToolLocation(name, c, "env")
        tried.append(f"${env_var}={env}")
    if runtime == MAINLINE:
        found = shutil.which(name)
        if found:
            return ToolLocation(name, Path(found), "PATH")
        tried.append("PATH")
    bindir = cached_bin_dir(runtime)
    if bindir is not None:
        c = bindir / name
        if c.is_file() and os.access(c, os.X_OK):
            return ToolLocation(name, c, "cache")
    tried.append("the toolchain cache" if runtime == MAINLINE else f"the {LABELS[runtime]} toolchain cache")
    build = "`mtpgraft toolchain`" if runtime == MAINLINE else f"`mtpgraft toolchain --runtime {runtime}`"
    what = "a llama.cpp build" if runtime == MAINLINE else f"an {LABELS[runtime]} build"
    raise ToolNotFoundError(f"{name} not found (looked in ", Text(", ").join(tried), f"); build it with "
                            f"{build} or point ", Setting("llama_cpp"), f" / ${env_var} at {what}")


def find_tool(name: str, llama_cpp_dir: str | os.PathLike[str] | None = None, runtime: str = MAINLINE) -> Path:
    return locate_tool(name, llama_cpp_dir, runtime).path


def format_cmd(cmd: list[str]) -> str:
    return shlex.join(str(c) for c in cmd)


# Every child runs through this launcher: it asks the kernel to SIGKILL it when the mtpgraft
# thread that started it dies (prctl PR_SET_PDEATHSIG survives execve), makes sure that parent is
# still there, then execs the tool in place (same pid). Chosen over preexec_fn, which is unsafe in a
# process with threads (quantize -j runs its tools from worker threads), and over a watchdog process,
# which cannot close the window between starting the child and starting the watchdog.
_LAUNCHER = (
    "import ctypes,os,signal,sys\n"
    "signal.pthread_sigmask(signal.SIG_SETMASK,[])\n"  # spawn() held the stop signals back
    "try:\n ctypes.CDLL(None,use_errno=True).prctl(1,9,0,0,0)\n"  # PR_SET_PDEATHSIG, SIGKILL
    "except Exception:\n pass\n"
    "if os.getppid()!=int(sys.argv[1]):\n os._exit(137)\n"
    "try:\n os.execv(sys.argv[2],sys.argv[2:])\n"
    "except OSError as e:\n sys.stderr.write(f'cannot run {sys.argv[2]}: {e.strerror}\\n'); os._exit(127)\n"
)
_USE_LAUNCHER = sys.platform.startswith("linux")

_live: set[subprocess.Popen[Any]] = set()
_live_lock = threading.Lock()
_stopping: int | None = None  # the signal that is shutting mtpgraft down, once one arrived


def spawn(cmd: Sequence[str | os.PathLike[str]], *, cwd: str | os.PathLike[str] | None = None,
          env: dict[str, str] | None = None, stdout: Any = subprocess.PIPE, text: bool = True,
          ) -> subprocess.Popen[Any]:
    """Start an external process that cannot outlive mtpgraft (see _LAUNCHER), in a session of its
    own (a Ctrl-C reaches mtpgraft, which stops it). The caller ends it with stop_process()."""
    if _stopping is not None:
        raise Interrupted(_stopping)
    args = [str(c) for c in cmd]
    exe = shutil.which(args[0])
    if exe is None:
        raise ToolNotFoundError(f"cannot run {args[0]}: no such executable")
    log.info("running: %s", format_cmd(args))
    argv = [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(os.getpid()), exe, *args[1:]] if _USE_LAUNCHER \
        else [exe, *args[1:]]
    kw: dict[str, Any] = {"text": True, "errors": "replace"} if text else {}
    # A signal must not fall between starting the child and registering it: it would not be
    # stopped. Held back here, it arrives after, and finds the child (the launcher unblocks it).
    with signals_held() if _USE_LAUNCHER else contextlib.nullcontext():
        try:
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stdout,
                                    stderr=subprocess.STDOUT, start_new_session=True, **kw)
        except OSError as e:
            raise ToolNotFoundError(f"cannot run {args[0]}: {e.strerror or e}") from e
        proc.args = args  # what was asked for, not the launcher line
        with _live_lock:
            _live.add(proc)
            stopping = _stopping
    if stopping is not None:  # another thread took the signal while this one was starting it
        _signal(proc, signal.SIGTERM)
        raise Interrupted(stopping)
    return proc


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """SIGTERM, wait up to `timeout`, then SIGKILL and wait; returns the exit status (None only if
    even SIGKILL did not end it in 5 s). Safe to call on a process that already ended."""
    try:
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                try:
                    proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    log.warning("pid %d did not end after SIGKILL", proc.pid)
        return proc.poll()
    finally:
        if proc.poll() is not None:
            with _live_lock:
                _live.discard(proc)


def _signal(proc: subprocess.Popen[Any], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # its session's group: the tool and anything it started
    except OSError:
        with contextlib.suppress(OSError):
            proc.send_signal(sig)


def interrupt_children(signum: int, *, kill: bool = False) -> None:
    """Called from a signal handler: refuse new children and send SIGTERM (SIGKILL with `kill`) to
    the running ones (the threads waiting for them then see them end); stop_children() reaps."""
    global _stopping
    with _live_lock:
        _stopping = signum
        procs = list(_live)
    for p in procs:
        if p.poll() is None:
            _signal(p, signal.SIGKILL if kill else signal.SIGTERM)


def stop_children(timeout: float = 5.0) -> None:
    """End every child still running (TERM, then KILL after `timeout`) and wait for each; then
    children may be started again (the signal that stopped them has been dealt with)."""
    global _stopping
    with _live_lock:
        procs = list(_live)
    for p in procs:
        stop_process(p, timeout)
    _stopping = None


def clean_up_after_interrupt() -> None:
    """After an interrupt: end every child still running and remove every output not installed
    yet (outputs.remove_pending). Children may be started again after."""
    stop_children(timeout=5.0)
    remove_pending()


def live_children() -> list[int]:
    """The pids of the children mtpgraft started and has not reaped yet."""
    with _live_lock:
        return [p.pid for p in _live if p.poll() is None]


def run_tool(cmd: Sequence[str | os.PathLike[str]], *, cwd: str | os.PathLike[str] | None = None,
             timeout: float | None = None, env: dict[str, str] | None = None, tail_lines: int = 30,
             on_line: Callable[[str], None] | None = None, check: bool = True,
             ) -> subprocess.CompletedProcess[str]:
    """THE way mtpgraft runs a tool to completion: logs the exact command, captures stdout+stderr
    (each line also goes to `on_line`), and on a non-zero exit or a timeout raises ToolFailedError
    with the command, the exit code and the output's tail. The child never outlives the call."""
    proc = spawn(cmd, cwd=cwd, env=env)
    args: list[str] = proc.args  # type: ignore[assignment]
    fired: list[bool] = []

    def expire() -> None:
        fired.append(True)
        _signal(proc, signal.SIGKILL)

    timer = threading.Timer(timeout, expire) if timeout else None
    lines: list[str] = []
    try:
        if timer is not None:
            timer.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        rc = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    out = "".join(lines)
    if fired:
        raise ToolFailedError(f"{Path(args[0]).name} timed out after {timeout:g}s",
                              cmd=args, returncode=None, output_tail=_tail(out, tail_lines))
    if rc != 0 and check:
        last = error_line(out)
        raise ToolFailedError(
            f"{Path(args[0]).name} failed with {_exit_str(rc)}" + (f": {last}" if last else ""),
            cmd=args, returncode=rc, output_tail=_tail(out, tail_lines))
    return subprocess.CompletedProcess(args, rc, out, None)


def _exit_str(rc: int) -> str:
    return f"{signal_name(-rc)} (signal {-rc})" if rc < 0 else f"exit code {rc}"


def _tail(text: str, n: int) -> str:
    return "\n".join(deque(text.splitlines(), maxlen=n))


# llama.cpp log lines look like "0.00.102.234 E srv    load_model: failed to create MTP context".
_LOG_PREFIX = re.compile(r"^\s*\d+\.\d+\.\d+\.\d+\s+([IWED])\s+")
_ERRORISH = re.compile(r"\b(error|failed|unknown|invalid|not found|wrong|abort|terminate|cannot|"
                       r"couldn't|unable)\b", re.I)
# Trailers every failure prints: they say that it failed, not why.
_GENERIC = re.compile(r"exiting due to|cleaning up before exit|to show complete usage|"
                      r"failed to fit params|encountered an error while trying to fit", re.I)
# What a tool prints as it loads a model: never the reason it failed.
_NOISE = re.compile(r"^\s*$|^(main|llama_model_loader|load|print_info|llm_load)\b.*: (- |\s*$)")


def _clean(line: str) -> str:
    return " ".join(_LOG_PREFIX.sub("", line).split())[:300]


def _level(line: str) -> str | None:
    m = _LOG_PREFIX.match(line)
    return m.group(1) if m else None


def _is_error(line: str) -> bool:
    level = _level(line)
    if _GENERIC.search(line) or level not in ("E", None):
        return False
    return level == "E" or (_ERRORISH.search(line) is not None and not _NOISE.match(line.strip()))


def error_line(output: str) -> str:
    """The line of a tool's output (or a llama-server log) that best says why it failed; '' when
    it printed nothing but noise.

    The first error line (logged at level E, or without a level one that reads like an error) that
    is not a generic trailer: later ones repeat it less precisely ("failed to load model"). The
    warning just before it is appended, as it is often the cause: "failed to create MTP context
    (context type MTP requested but model doesn't contain MTP layers)". With no error line, the
    last line that is not noise."""
    lines = output.splitlines()
    first = next((i for i, x in enumerate(lines) if _is_error(x)), None)
    if first is None:
        return next((_clean(x) for x in reversed(lines) if not _NOISE.match(x.strip())), "")
    for j in range(first - 1, max(first - 3, -1), -1):
        if _level(lines[j]) == "W" and _ERRORISH.search(lines[j]) is None and "security" not in lines[j]:
            return f"{_clean(lines[first])} ({_clean(lines[j])})"
    return _clean(lines[first])


def _capture(path: str, flag: str) -> str:
    """stdout + stderr of `TOOL FLAG`, or '' if it cannot run (used for --version and --help)."""
    try:
        return run_tool([path, flag], timeout=30, check=False).stdout
    except (ToolNotFoundError, ToolFailedError):
        return ""


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


def probe_mtp_flag(server: str | os.PathLike[str]) -> str | None:
    """How this llama-server turns MTP on, read from its --help: `--spec-type draft-mtp` (mainline),
    `--spec-type mtp` (older mainline, newer ik_llama.cpp) or `-mtp` (ik_llama.cpp as pinned, which
    spells it `-mtp` / `--multi-token-prediction`). None if it has none of them."""
    spec = probe_mtp_spec_type(server)
    if spec is not None:
        return f"--spec-type {spec}"
    if re.search(r"(?<![\w-])-mtp, --multi-token-prediction\b", server_help(str(server))):
        return "-mtp"
    return None
