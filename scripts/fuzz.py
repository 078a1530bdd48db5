"""Run the hostile-input corpus (tests/fuzz.py) through every command and print the figures.

    python -m scripts.fuzz [--seed 0] [--limit N] [--subprocess-every 10] [--quantize-every 40] [--json F]
    python -m scripts.fuzz --inputs   # configs, safetensors headers and indexes, prompts, recipes, calibration

Run from the repository root (tests/fuzz.py is imported as `tests.fuzz`). Every variant is made
from the tiny test models in a temporary folder, run through inspect, attach (as base and as
source), detach, extract and, for a share of them, quantize with the real llama-quantize; the
variant is deleted before the next one, so the disk holds one variant at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.fuzz import corpus_runs, input_corpus_runs, peak_rss_mb, summarize


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="stop after this many variants")
    ap.add_argument("--subprocess-every", type=int, default=10, help="every Nth run as a real subprocess")
    ap.add_argument("--quantize-every", type=int, default=40, help="quantize every Nth variant (real tool)")
    ap.add_argument("--json", type=Path, default=None, help="write every run record here")
    ap.add_argument("--inputs", action="store_true",
                    help="the input corpus instead: configs, safetensors headers and indexes, prompts, recipes, "
                         "calibration texts")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mtpgraft-fuzz-") as tmp:
        if a.inputs:
            records, n_variants = input_corpus_runs(Path(tmp), seed=a.seed, subprocess_every=a.subprocess_every)
        else:
            records, n_variants = corpus_runs(Path(tmp), seed=a.seed, limit=a.limit,
                                              subprocess_every=a.subprocess_every, quantize_every=a.quantize_every)
    s = summarize(records, n_variants)
    self_mb, child_mb = peak_rss_mb()
    s.update(peak_rss_mb_in_process=round(self_mb, 1), peak_rss_mb_subprocess=round(child_mb, 1),
             wall_s=round(time.perf_counter() - t0, 1))
    for k, v in s.items():
        if k != "failures":
            print(f"{k:28} {v}")
    for f in s["failures"][:40]:
        print("FAIL", f)
    if a.json:
        a.json.write_text(json.dumps([r.__dict__ for r in records], indent=1, default=str))
    return 1 if s["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
