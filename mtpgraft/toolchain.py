"""Build the llama.cpp tools mtpgraft drives, for each runtime, from the source a pinned sdist on
PyPI vendors: mainline llama.cpp from llama-cpp-python, ik_llama.cpp from ik-llama-cpp-python. Needs
only pip, cmake and a C++ compiler.

Each runtime's build lives in a cache of its own outside any repo ($MTPGRAFT_CACHE_DIR, else
$XDG_CACHE_HOME/mtpgraft, else ~/.cache/mtpgraft, then toolchain/<pin>/) and is idempotent: a stamp
records the pin and the flags, and a second run with the same flags returns at once. Extra CMake
flags (e.g. -DGGML_CUDA=ON) get a build directory of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ToolFailedError, ToolNotFoundError, UsageError
from .runtimes import IK, MAINLINE, check_runtime
from .tools import run_tool

SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e570"
TARGETS = ("llama-server", "llama-quantize", "llama-imatrix", "llama-gguf-split", "llama-perplexity")

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
# The sdist lacks common/cmake/build-info-gen-cpp.cmake, the script the build_info step runs to
# write common/build-info.cpp; this stands in for it, with the pin as the commit (there is no .git).
_IK_BUILD_INFO_SCRIPT = """\
include(${CMAKE_CURRENT_SOURCE_DIR}/cmake/build-info.cmake)
set(BUILD_NUMBER 0)
set(BUILD_COMMIT "@PIN@")
configure_file(${CMAKE_CURRENT_SOURCE_DIR}/common/build-info.cpp.in
               ${CMAKE_CURRENT_SOURCE_DIR}/common/build-info.cpp)
""".replace("@PIN@", IK_BUILD_COMMIT)


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


@dataclass(frozen=True)
class ToolchainResult:
    bin_dir: Path
    built: bool  # False when the cache already held this build
    tools: dict[str, Path]
    runtime: str = MAINLINE


def _read_stamp(build: Path) -> dict | None:
    try:
        return json.loads((build / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _is_complete(build: Path, cmake_args: Sequence[str], pin: Pin) -> bool:
    stamp = _read_stamp(build)
    if not stamp or stamp.get("cmake_args") != list(cmake_args) or stamp.get("commit") != pin.commit:
        return False
    return all((build / "bin" / t).is_file() for t in TARGETS)


def _run(cmd: list[str], log: Callable[[str], None], cwd: Path | None = None) -> None:
    """A build step through the one runner, its output streamed to `log` as it comes."""
    log("+ " + " ".join(cmd))
    run_tool(cmd, cwd=cwd, on_line=log, tail_lines=40)


SDIST_ENV = {MAINLINE: "MTPGRAFT_SDIST", IK: "MTPGRAFT_IK_SDIST"}


def _fetch_archive(pin: Pin, tmpdir: Path, sdist: str | os.PathLike[str] | None,
                   log: Callable[[str], None]) -> Path:
    """The pinned sdist: the local copy given, else downloaded by pip; its sha256 checked if pinned."""
    sdist = sdist or os.environ.get(SDIST_ENV[pin.runtime])
    if sdist:
        archive = Path(sdist)
        if not archive.is_file():
            raise UsageError(f"sdist not found: {archive}")
    else:
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", pin.spec,
              "-d", str(tmpdir)], log)
        found = sorted(tmpdir.glob(f"{pin.archive_prefix}.tar.gz"))
        if not found:
            raise ToolFailedError(f"pip did not download the {pin.sdist_name} {pin.sdist_version} sdist")
        archive = found[0]
    if pin.sha256:
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        if digest != pin.sha256:
            raise UsageError(f"{archive.name} is not the pinned {pin.spec} sdist "
                             f"(sha256 {digest[:16]}..., expected {pin.sha256[:16]}...)")
    return archive


def _unpack(pin: Pin, archive: Path, dest: Path) -> None:
    """The sdist's vendored source tree into `dest`, plus what the build needs that the sdist lacks."""
    prefix = f"{pin.archive_prefix}/{pin.vendor}/"
    with tarfile.open(archive) as tar:
        members = []
        for m in tar.getmembers():
            if m.name.startswith(prefix) and len(m.name) > len(prefix):
                m.name = m.name[len(prefix):]
                members.append(m)
        if not members:
            raise ToolFailedError(f"{archive.name} has no {pin.vendor}")
        tar.extractall(dest, members=members, filter="data")
    if pin.runtime == IK:
        script = dest / "common" / "cmake" / "build-info-gen-cpp.cmake"
        if not script.is_file():
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(_IK_BUILD_INFO_SCRIPT)


def ensure_source(log: Callable[[str], None], sdist: str | os.PathLike[str] | None = None,
                  runtime: str = MAINLINE) -> Path:
    """Unpack the runtime's source from its pinned sdist into the cache (once). `sdist` (or
    $MTPGRAFT_SDIST, $MTPGRAFT_IK_SDIST): a local copy instead of a download."""
    pin = pin_for(runtime)
    root = toolchain_root(runtime)
    src = root / "src"
    if (src / "CMakeLists.txt").is_file():
        return src
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        archive = _fetch_archive(pin, Path(tmp), sdist, log)
        log(f"unpacking {pin.vendor.rsplit('/', 1)[-1]} from {archive.name}")
        unpacked = Path(tmp) / "src"
        _unpack(pin, archive, unpacked)
        os.replace(unpacked, src)  # atomic: a half-unpacked tree is never taken for the source
    return src


def build_toolchain(*, cmake_args: Sequence[str] = (), jobs: int | None = None, force: bool = False,
                    sdist: str | os.PathLike[str] | None = None, runtime: str = MAINLINE,
                    log: Callable[[str], None] = lambda s: None) -> ToolchainResult:
    """Build (or find already built) the runtime's llama-server, llama-quantize, llama-imatrix,
    llama-gguf-split, llama-perplexity."""
    pin = pin_for(runtime)
    build = build_dir_for(cmake_args, runtime)
    tools = {t: build / "bin" / t for t in TARGETS}
    if not force and _is_complete(build, cmake_args, pin):
        return ToolchainResult(build / "bin", False, tools, runtime)
    for prog in ("cmake",):
        if shutil.which(prog) is None:
            raise ToolNotFoundError(f"{prog} not found on PATH; the toolchain build needs cmake and a C++ compiler")
    src = ensure_source(log, sdist, runtime)
    cmd = ["cmake", "-S", str(src), "-B", str(build)]
    cache = build / "CMakeCache.txt"
    if not cache.is_file() and shutil.which("ninja"):
        cmd += ["-G", "Ninja"]
    cmd += [*pin.cmake_args, *cmake_args]
    _run(cmd, log)
    jobs = jobs or os.cpu_count() or 2
    _run(["cmake", "--build", str(build), "--config", "Release", "-j", str(jobs), "--target", *TARGETS], log)
    missing = [t for t, p in tools.items() if not p.is_file()]
    if missing:
        raise ToolFailedError(f"build finished but {', '.join(missing)} missing in {build / 'bin'}")
    (build / STAMP).write_text(json.dumps({"commit": pin.commit, "sdist": pin.spec,
                                           "cmake_args": list(cmake_args)}, indent=2))
    return ToolchainResult(build / "bin", True, tools, runtime)


# --------------------------------------------------------------------------- what a build runs MTP for


def mtp_architectures(runtime: str = MAINLINE) -> list[str] | None:
    """The architectures (GGUF general.architecture names) the cached build of `runtime` runs MTP for,
    read from the source it was built from; None when the cache holds no source. A binary does not
    say this (no flag or --help line lists them), so a tool found elsewhere has no answer here."""
    src = toolchain_root(runtime) / "src"
    try:
        names = _arch_names(src / "src" / "llama-arch.cpp")
        enums = _ik_mtp_arch_enums(src) if runtime == IK else _mainline_mtp_arch_enums(src)
    except OSError:
        return None
    return sorted(names.get(e, e) for e in enums)


def _arch_names(path: Path) -> dict[str, str]:
    """LLM_ARCH_X -> its GGUF name, from llama-arch.cpp's LLM_ARCH_NAMES."""
    return dict(re.findall(r'\{\s*(LLM_ARCH_\w+)\s*,\s*"([^"]+)"\s*\}', path.read_text()))


def _mainline_mtp_arch_enums(src: Path) -> set[str]:
    """Mainline: the model classes whose build_arch_graph builds graph_mtp (src/models/*.cpp), and the
    architectures llama-model.cpp makes with those classes."""
    classes = set()
    for f in sorted((src / "src" / "models").glob("*.cpp")):
        text = f.read_text()
        if "graph_mtp>" in text:
            classes.update(re.findall(r"(llama_model_\w+)::build_arch_graph", text))
    arches: set[str] = set()
    pending: list[str] = []
    for line in (src / "src" / "llama-model.cpp").read_text().splitlines():
        pending += re.findall(r"case (LLM_ARCH_\w+):", line)
        made = re.search(r"return new (llama_model_\w+)\(", line)
        if made:
            if made.group(1) in classes:
                arches.update(pending)
            pending = []
    return arches


def _ik_mtp_arch_enums(src: Path) -> set[str]:
    """ik: src/llama.cpp turns MTP off for every architecture but those its context setup names
    (`if (model->arch != LLM_ARCH_GLM4_MOE && cparams.mtp != 0) cparams.mtp = 0;` at 0.1.5)."""
    text = (src / "src" / "llama.cpp").read_text()
    m = re.search(r"if\s*\(((?:\s*model->arch\s*!=\s*LLM_ARCH_\w+\s*&&)+)\s*cparams\.mtp\s*!=\s*0\s*\)", text)
    if m is None:
        raise OSError("no MTP architecture gate in src/llama.cpp")
    return set(re.findall(r"LLM_ARCH_\w+", m.group(1)))
