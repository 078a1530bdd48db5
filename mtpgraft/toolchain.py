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
from .pins import IK_BUILD_COMMIT, STAMP, Pin, build_dir_for, pin_for, toolchain_root
from .runtimes import IK, MAINLINE
from .tools import run_tool

TARGETS = ("llama-server", "llama-quantize", "llama-imatrix", "llama-gguf-split", "llama-perplexity")

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
