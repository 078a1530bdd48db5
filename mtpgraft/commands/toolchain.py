"""`mtpgraft toolchain`: build a runtime's llama.cpp tools into the cache."""

from __future__ import annotations

import click

from ..runtimes import MAINLINE, RUNTIMES
from .common import STATE, emit_json, error_boundary, info
from .options import force_option, standard_options


@click.command("toolchain")
@click.option("--runtime", type=click.Choice(RUNTIMES), default=MAINLINE, show_default=True,
              help="Which runtime to build: mainline llama.cpp or ik_llama.cpp.")
@click.option("--cmake-arg", "cmake_args", multiple=True, metavar="ARG",
              help="Extra CMake flag, repeatable (e.g. -DGGML_CUDA=ON, -DGGML_METAL=ON, -DGGML_HIP=ON).")
@click.option("-j", "--jobs", type=int, default=None, help="Parallel build jobs (default: all cores).")
@click.option("--sdist", type=click.Path(dir_okay=False), default=None,
              help="Use this local copy of the runtime's sdist instead of downloading it "
                   "($MTPGRAFT_SDIST, $MTPGRAFT_IK_SDIST).")
@force_option("Rebuild even if the cache holds this build.")
@click.option("--print-bin-dir", is_flag=True, help="Print only the bin directory (for scripts).")
@standard_options()
@error_boundary
def toolchain_cmd(runtime: str, cmake_args: tuple[str, ...], jobs: int | None, sdist: str | None, force: bool,
                  print_bin_dir: bool, as_json: bool) -> None:
    """Build llama-server, llama-quantize, llama-imatrix, llama-gguf-split and llama-perplexity from the source
    a pinned sdist on PyPI vendors: llama.cpp from llama-cpp-python (mainline), ik_llama.cpp from
    ik-llama-cpp-python (ik). Needs pip, cmake and a C++ compiler. A second run with the same flags returns
    at once."""
    from ..pins import pin_for
    from ..runtimes import LABELS
    from ..toolchain import build_toolchain

    pin = pin_for(runtime)

    def log(line: str) -> None:
        if not STATE.quiet and not print_bin_dir and not as_json:
            click.echo(line, err=True)

    if not print_bin_dir and not as_json:
        info(f"{LABELS[runtime]} {pin.commit} from {pin.spec}")
    res = build_toolchain(cmake_args=cmake_args, jobs=jobs, force=force, sdist=sdist, runtime=runtime, log=log)
    if as_json:
        emit_json({"runtime": runtime, "bin_dir": str(res.bin_dir), "built": res.built, "commit": pin.commit,
                   "tools": {k: str(v) for k, v in res.tools.items()}})
    elif print_bin_dir:
        click.echo(str(res.bin_dir))
    else:
        info(("built" if res.built else "already built") + f": {res.bin_dir}")
        click.echo(str(res.bin_dir))
