"""A fixed seeded subset of the hostile-input corpus (tests/fuzz.py): every command keeps the README's
promises on it, for GGUF files and for the other inputs (a checkpoint's config.json, safetensors headers
and index; check's prompts, recipes, calibration texts). scripts/fuzz.py runs the full corpus and
prints the figures (BENCHMARKS.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz import corpus_runs, input_corpus_runs, summarize


def _check(records, n_variants, min_runs: int) -> None:
    s = summarize(records, n_variants)
    assert s["runs"] >= min_runs, s
    assert s["failures"] == [], "\n".join(s["failures"][:20])
    # the corpus must reach both outcomes, or it tests nothing
    assert 0 < s["exit_0"] < s["runs"], s


def test_fuzz_subset(tmp_path: Path) -> None:
    """~70 variants x 5 commands (every 12th variant of the corpus), every 10th run as a subprocess."""
    records, n = corpus_runs(tmp_path, seed=1, every=12, subprocess_every=10, quantize_every=0)
    _check(records, n, min_runs=300)


@pytest.mark.tools
def test_fuzz_quantize_subset(tmp_path: Path) -> None:
    """A few variants through the real llama-quantize as well."""
    records, n = corpus_runs(tmp_path, seed=2, every=97, subprocess_every=0, quantize_every=1)
    assert sum(r.command == "quantize" for r in records) >= 8
    _check(records, n, min_runs=40)


def test_fuzz_inputs_subset(tmp_path: Path) -> None:
    """Every 3rd case of the input corpus (configs, safetensors headers and indexes, recipes,
    calibration texts, and prompt files where llama-server is found), every 10th as a subprocess."""
    records, n = input_corpus_runs(tmp_path, seed=1, every=3, subprocess_every=10, n_flips=30)
    classes = {r.cls for r in records}
    assert {"config", "st-header", "st-index", "recipe", "calibration"} <= classes, classes
    _check(records, n, min_runs=140)
