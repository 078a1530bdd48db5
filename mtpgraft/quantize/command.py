"""The one llama-quantize command line: every flag mtpgraft passes, in the order llama-quantize reads them."""

from __future__ import annotations

from collections.abc import Sequence


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
