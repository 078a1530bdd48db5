"""A seeded corpus of hostile Hub answers (tests/hubfuzz.py) against `attach --mtp-from hf://`, each on
a fresh loopback Hub and cache: every case keeps the README's promises, as the GGUF corpus does
(tests/test_fuzz.py)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest
from fakehub import FakeHub
from hubfuzz import hub_variants, run_hub_case

from mtpgraft.gguf_io import GGUFModel
from mtpgraft.sources import hubfiles
from mtpgraft.testmodels.fingerprint import fingerprint
from mtpgraft.testmodels.synthetic import make_model


@pytest.fixture(autouse=True)
def _hermetic(hf_hermetic, monkeypatch):
    monkeypatch.setattr(hubfiles, "backoff_delay", lambda attempt: 0.0)


def test_hostile_hub_corpus(tmp_path: Path) -> None:
    d = tmp_path / "models"
    d.mkdir()
    kw = {"arch": "qwen35", "trunk": 4, "n_embd": 128, "vocab": 256, "n_ff": 256}
    donor = make_model(d / "Tiny-MTP-F16.gguf", layout="full", **kw)
    base = make_model(d / "Tiny-base-F16.gguf", layout="base", **kw)
    m = GGUFModel(donor)
    header = m.shards[0].data_offset
    mtp = sum(r.info.nbytes for r in m.refs if r.name.startswith("blk.4."))
    budget = 2 * (header + mtp) + 4096

    def fresh(name: str):
        root = tmp_path / name
        root.mkdir()
        return root, FakeHub(root / "cas").start()

    root, hub = fresh("clean")  # the tensors every exit-0 graft must hold
    try:
        clean = run_hub_case("none", "clean", lambda h, f: None, hub=hub, root=root, base=base, donor=donor,
                             budget=budget)
    finally:
        hub.stop()
    assert clean.code == 0 and clean.problems == [], clean
    reference = fingerprint(root / "out" / "o.gguf")["tensors"]

    records = []
    for i, (cls, name, setup) in enumerate(hub_variants(random.Random(27), 50)):
        root, hub = fresh(f"case{i}")
        try:
            records.append(run_hub_case(cls, name, setup, hub=hub, root=root, base=base, donor=donor,
                                        budget=budget, reference=reference))
        finally:
            hub.stop()
    bad = [f"{r.cls} {r.variant}: exit {r.code}, {r.problems} {r.output.strip()[:200]!r}" for r in records
           if r.problems]
    assert bad == [], "\n".join(bad)
    codes = Counter(r.code for r in records)
    assert codes[0] and codes[6] and codes[3], codes  # the corpus reaches success and both refusals
