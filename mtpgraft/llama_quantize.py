"""llama-quantize as every stage runs it: the tools a plan resolves once, and the one command line
(every flag mtpgraft passes, in the order llama-quantize reads them)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from .tools import find_tool


@dataclass(frozen=True)
class QuantizeTools:
    """The tools a quantize plan runs, resolved once (ToolNotFoundError names every place looked)."""

    llama_quantize: str
    llama_gguf_split: str | None = None


def resolve_quantize_tools(llama_cpp: str | os.PathLike[str] | None = None, *, split: bool = False) -> QuantizeTools:
    return QuantizeTools(str(find_tool("llama-quantize", llama_cpp)),
                         str(find_tool("llama-gguf-split", llama_cpp)) if split else None)



def quantize_argv(tool: str, src: str, dst: str, ftype: str, *, allow_requantize: bool = False,
                  pure: bool = False, imatrix: str | None = None, tensor_types: Sequence[str] = (),
                  override_kv: Sequence[str] = (), threads: int | None = None) -> list[str]:
    """`llama-quantize [options] SRC DST FTYPE [THREADS]`. `tensor_types`: `REGEX=TYPE` rules (first
    match wins); `override_kv`: `KEY=TYPE:VALUE` entries written into the output's metadata."""
    cmd = [tool] + (["--allow-requantize"] if allow_requantize else []) + (["--pure"] if pure else [])
    if imatrix is not None:
        cmd += ["--imatrix", imatrix]
    for rule in tensor_types:
        cmd += ["--tensor-type", rule]
    for kv in override_kv:
        cmd += ["--override-kv", kv]
    return cmd + [src, dst, ftype] + ([str(threads)] if threads is not None else [])
