"""The llama-server a check runs, resolved once from its --help and --version (`resolve_server`):
how it spells MTP, which options and --spec-type values it offers, what it runs MTP for."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..pins import cached_bin_dir
from ..runtimes import IK, LABELS, MAINLINE, server_option
from ..toolchain import mtp_architectures
from ..tools import find_tool, probe_mtp_flag, probe_mtp_spec_type, server_help, tool_version


@dataclass(frozen=True)
class ServerTool:
    """The llama-server a check runs, resolved once: its path, MTP spelling and version."""

    path: Path
    spec_type: str  # the MTP spelling this llama-server accepts (draft-mtp, or mtp on forks; -mtp: ik 0.1.5)
    version: str = ""
    llama_cpp_dir: str | None = None  # what --llama-cpp said, handed to every LlamaServer
    flags: frozenset[str] = frozenset()  # the options its --help lists that a check may pass
    spec_types: tuple[str, ...] = ()  # the --spec-type values its --help offers (a comma list)
    runtime: str = MAINLINE  # whose llama-server it is (runtimes.py)
    mtp_archs: tuple[str, ...] | None = None  # what it runs MTP for, where known (toolchain.mtp_architectures)

    def has(self, flag: str) -> bool:
        return flag in self.flags

    @property
    def mtp_flag(self) -> str:
        """The argv that turns MTP on: `--spec-type draft-mtp`, or ik_llama.cpp 0.1.5's `-mtp`."""
        return self.spec_type if self.spec_type.startswith("-") else f"--spec-type {self.spec_type}"


def resolve_server(llama_cpp: str | os.PathLike[str] | None = None, runtime: str = MAINLINE) -> ServerTool:
    """Find `runtime`'s llama-server and ask it (--help, --version) how it spells MTP; the one probe a
    check makes. `flags` holds mainline's names of the options it has, however it spells them."""
    path = find_tool("llama-server", llama_cpp, runtime)
    spec_type = probe_mtp_spec_type(path)
    if spec_type is None and runtime == IK and probe_mtp_flag(path) == "-mtp":
        spec_type = "-mtp"
    if spec_type is None:
        expected = "--spec-type draft-mtp" if runtime == MAINLINE else "-mtp or --spec-type mtp"
        raise UsageError(f"{path} has no MTP speculative type in its --help (expected "
                         f"{expected}); use a {LABELS[runtime]} build with MTP support")
    text = server_help(str(path))
    flags = frozenset(f for f in _CHECK_FLAGS
                      if re.search(rf"(?<![\w-]){re.escape(server_option(runtime, f))}\b", text))
    return ServerTool(path=path, spec_type=spec_type, version=tool_version(str(path)),
                      llama_cpp_dir=str(llama_cpp) if llama_cpp else None, flags=flags, runtime=runtime,
                      spec_types=offered_spec_types(text),
                      mtp_archs=_mtp_archs(path, runtime))


def _mtp_archs(path: Path, runtime: str) -> tuple[str, ...] | None:
    """The architectures this llama-server runs MTP for: known only for the toolchain cache's build,
    read from the source it was built from (no binary lists them); asked of a fork only (preflight)."""
    cache = cached_bin_dir(runtime) if runtime != MAINLINE else None
    if cache is None or path != cache / "llama-server":
        return None
    archs = mtp_architectures(runtime)
    return tuple(archs) if archs is not None else None


# Options a check passes only when this llama-server knows them.
_CHECK_FLAGS = ("--jinja", "--spec-draft-p-min", "--no-repack", "--cache-ram", "--verbosity")
_SPEC_TYPE_LINE = re.compile(r"^\s*--spec-type\b[ \t]*(.*)$", re.M)


def offered_spec_types(help_text: str) -> tuple[str, ...]:
    """The --spec-type values a llama-server's --help offers, in its order: mainline prints them as
    the option's argument (`--spec-type none,draft-simple,...,ngram-mod`), ik_llama.cpp in brackets
    (`--spec-type Name [none | ngram - cache | ...]`). `none` is left out; () when there is no list."""
    m = _SPEC_TYPE_LINE.search(help_text)
    if m is None:
        return ()
    arg = m.group(1).split("  ")[0].strip()  # the argument, before the description's column
    inner = re.search(r"\[(.*?)\]", m.group(1))
    items = inner.group(1).split("|") if inner else arg.split(",")
    names = [re.sub(r"\s*-\s*", "-", x).strip() for x in items]
    return tuple(n for n in dict.fromkeys(names) if re.fullmatch(r"[a-z0-9][a-z0-9-]*", n) and n != "none")
