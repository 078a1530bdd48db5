"""Build the four llama.cpp tools mtpgraft drives, from the llama.cpp source that the pinned
llama-cpp-python sdist on PyPI vendors. Needs only pip, cmake and a C++ compiler.

The build lives in a cache outside any repo ($MTPGRAFT_CACHE_DIR, else $XDG_CACHE_HOME/mtpgraft,
else ~/.cache/mtpgraft) and is idempotent: a stamp records the flags, and a second run with the same
flags returns at once. Extra CMake flags (e.g. -DGGML_CUDA=ON) get a build directory of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolFailedError, ToolNotFoundError, UsageError
from .tools import run_tool

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e570"
TARGETS = ("llama-server", "llama-quantize", "llama-imatrix", "llama-gguf-split", "llama-perplexity")

# Only what the four tools need: no tests, examples, web UI download or TLS (offline machines).
BASE_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_OPENSSL=OFF",
    # The sdist has no .git, so tell the build which commit it is (shows in --version, /props).
    f"-DLLAMA_BUILD_COMMIT={LLAMA_CPP_COMMIT}",
)
STAMP = ".mtpgraft-toolchain.json"


def cache_dir() -> Path:
    env = os.environ.get("MTPGRAFT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mtpgraft"


def toolchain_root() -> Path:
    return cache_dir() / "toolchain" / f"llama.cpp-{LLAMA_CPP_COMMIT}"


def build_dir_for(cmake_args: Sequence[str]) -> Path:
    extra = list(cmake_args)
    if not extra:
        return toolchain_root() / "build"
    digest = hashlib.sha256("\0".join(extra).encode()).hexdigest()[:10]
    return toolchain_root() / f"build-{digest}"


def cached_bin_dir() -> Path | None:
    """The default build's bin dir if a finished build is recorded there, else None."""
    build = build_dir_for(())
    if (build / STAMP).is_file():
        return build / "bin"
    return None


@dataclass(frozen=True)
class ToolchainResult:
    bin_dir: Path
    built: bool  # False when the cache already held this build
    tools: dict[str, Path]


def _read_stamp(build: Path) -> dict | None:
    try:
        return json.loads((build / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(build: Path, cmake_args: Sequence[str]) -> bool:
    stamp = _read_stamp(build)
    if not stamp or stamp.get("cmake_args") != list(cmake_args) or stamp.get("commit") != LLAMA_CPP_COMMIT:
        return False
    return all((build / "bin" / t).is_file() for t in TARGETS)


def _run(cmd: list[str], log: Callable[[str], None], cwd: Path | None = None) -> None:
    """A build step through the one runner, its output streamed to `log` as it comes."""
    log("+ " + " ".join(cmd))
    run_tool(cmd, cwd=cwd, on_line=log, tail_lines=40)


def ensure_source(log: Callable[[str], None], sdist: str | os.PathLike[str] | None = None) -> Path:
    """Unpack llama.cpp from the pinned sdist into the cache (once). `sdist`/$MTPGRAFT_SDIST: a local copy."""
    src = toolchain_root() / "src"
    if (src / "CMakeLists.txt").is_file():
        return src
    root = toolchain_root()
    root.mkdir(parents=True, exist_ok=True)
    sdist = sdist or os.environ.get("MTPGRAFT_SDIST")
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        tmpdir = Path(tmp)
        if sdist:
            archive = Path(sdist)
            if not archive.is_file():
                raise UsageError(f"sdist not found: {archive}")
        else:
            _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                  f"{SDIST_NAME}=={SDIST_VERSION}", "-d", str(tmpdir)], log)
            found = sorted(tmpdir.glob("llama_cpp_python-*.tar.gz"))
            if not found:
                raise ToolFailedError(f"pip did not download the {SDIST_NAME} {SDIST_VERSION} sdist")
            archive = found[0]
        log(f"unpacking llama.cpp from {archive.name}")
        prefix = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/"
        unpacked = tmpdir / "llama.cpp"
        with tarfile.open(archive) as tar:
            members = []
            for m in tar.getmembers():
                if m.name.startswith(prefix) and len(m.name) > len(prefix):
                    m.name = m.name[len(prefix):]
                    members.append(m)
            if not members:
                raise ToolFailedError(f"{archive.name} has no vendor/llama.cpp")
            tar.extractall(unpacked, members=members, filter="data")
        os.replace(unpacked, src)  # atomic: a half-unpacked tree is never taken for the source
    return src


def build_toolchain(*, cmake_args: Sequence[str] = (), jobs: int | None = None, force: bool = False,
                    sdist: str | os.PathLike[str] | None = None,
                    log: Callable[[str], None] = lambda s: None) -> ToolchainResult:
    """Build (or find already built) llama-server, llama-quantize, llama-imatrix, llama-gguf-split,
    llama-perplexity."""
    build = build_dir_for(cmake_args)
    tools = {t: build / "bin" / t for t in TARGETS}
    if not force and _is_complete(build, cmake_args):
        return ToolchainResult(build / "bin", False, tools)
    for prog in ("cmake",):
        if shutil.which(prog) is None:
            raise ToolNotFoundError(f"{prog} not found on PATH; the toolchain build needs cmake and a C++ compiler")
    src = ensure_source(log, sdist)
    cmd = ["cmake", "-S", str(src), "-B", str(build)]
    cache = build / "CMakeCache.txt"
    if not cache.is_file() and shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    cmd += [*BASE_CMAKE_ARGS, *cmake_args]
    _run(cmd, log)
    jobs = jobs or os.cpu_count() or 2
    _run(["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *TARGETS], log)
    missing = [t for t, p in tools.items() if not p.is_file()]
    if missing:
        raise ToolFailedError(f"build finished but {', '.join(missing)} missing in {build / 'bin'}")
    (build / STAMP).write_text(json.dumps({"commit": LLAMA_CPP_COMMIT, "sdist": f"{SDIST_NAME}=={SDIST_VERSION}",
                                           "cmake_args": list(cmake_args)}, indent=2))
    return ToolchainResult(build / "bin", True, tools)
