"""`mtpgraft toolchain`: build the llama.cpp tools into the cache."""

from __future__ import annotations

import click

from .common import STATE, emit_json, error_boundary, info
from .options import force_option, standard_options


@click.command("toolchain")
@click.option("--cmake-arg", "cmake_args", multiple=True, metavar="ARG",
              help="Extra CMake flag, repeatable (e.g. -DGGML_CUDA=ON, -DGGML_METAL=ON, -DGGML_HIP=ON).")
@click.option("-j", "--jobs", type=int, default=None, help="Parallel build jobs (default: all cores).")
@click.option("--sdist", type=click.Path(dir_okay=False), default=None,
              help="Use this local llama-cpp-python sdist instead of downloading it ($MTPGRAFT_SDIST).")
@force_option("Rebuild even if the cache holds this build.")
@click.option("--print-bin-dir", is_flag=True, help="Print only the bin directory (for scripts).")
@standard_options()
@error_boundary
def toolchain_cmd(cmake_args: tuple[str, ...], jobs: int | None, sdist: str | None, force: bool,
                  print_bin_dir: bool, as_json: bool) -> None:
    """Build llama-server, llama-quantize, llama-imatrix, llama-gguf-split and llama-perplexity from the llama.cpp
    source vendored in the pinned llama-cpp-python sdist (PyPI). Needs pip, cmake and a C++ compiler.
    A second run with the same flags returns at once."""
    from ..toolchain import LLAMA_CPP_COMMIT, SDIST_NAME, SDIST_VERSION, build_toolchain

    def log(line: str) -> None:
        if not STATE.quiet and not print_bin_dir and not as_json:
            click.echo(line, err=True)

    if not print_bin_dir and not as_json:
        info(f"llama.cpp {LLAMA_CPP_COMMIT} from {SDIST_NAME}=={SDIST_VERSION}")
    res = build_toolchain(cmake_args=cmake_args, jobs=jobs, force=force, sdist=sdist, log=log)
    if as_json:
        emit_json({"bin_dir": str(res.bin_dir), "built": res.built, "commit": LLAMA_CPP_COMMIT,
                   "tools": {k: str(v) for k, v in res.tools.items()}})
    elif print_bin_dir:
        click.echo(str(res.bin_dir))
    else:
        info(("built" if res.built else "already built") + f": {res.bin_dir}")
        click.echo(str(res.bin_dir))
