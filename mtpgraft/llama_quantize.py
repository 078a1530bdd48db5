"""llama-quantize as every stage runs it: the tools a plan resolves once (per runtime), and the one
command line (every flag mtpgraft passes, in the order llama-quantize reads them, as each runtime
spells them)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from .ggml_types import quantize_rules_argv
from .runtimes import IK, MAINLINE
from .tools import find_tool


@dataclass(frozen=True)
class QuantizeTools:
    """The tools a quantize plan runs, resolved once (ToolNotFoundError names every place looked)."""

    llama_quantize: str
    llama_gguf_split: str | None = None
    runtime: str = MAINLINE  # whose llama-quantize it is (runtimes.py)


def resolve_quantize_tools(llama_cpp: str | os.PathLike[str] | None = None, *, split: bool = False,
                           runtime: str = MAINLINE) -> QuantizeTools:
    return QuantizeTools(str(find_tool("llama-quantize", llama_cpp, runtime)),
                         str(find_tool("llama-gguf-split", llama_cpp, runtime)) if split else None, runtime)


def quantize_argv(tool: str, src: str, dst: str, ftype: str, *, runtime: str = MAINLINE,
                  allow_requantize: bool = False, pure: bool = False, imatrix: str | None = None,
                  rules: Sequence[tuple[str, str]] = (), override_kv: Sequence[str] = (),
                  threads: int | None = None) -> list[str]:
    """`llama-quantize [options] SRC DST FTYPE [THREADS]`. `rules`: (REGEX, tensor type) pairs, first
    match wins, spelled as `runtime` takes them (ggml_types.quantize_rules_argv); `pure` is dropped for
    ik_llama.cpp, whose --pure skips its --custom-q rules; `override_kv`: `KEY=TYPE:VALUE` entries
    written into the output's metadata."""
    pure = pure and runtime != IK
    cmd = [tool] + (["--allow-requantize"] if allow_requantize else []) + (["--pure"] if pure else [])
    if imatrix is not None:
        cmd += ["--imatrix", imatrix]
    cmd += quantize_rules_argv(runtime, rules)
    for kv in override_kv:
        cmd += ["--override-kv", kv]
    return cmd + [src, dst, ftype] + ([str(threads)] if threads is not None else [])
