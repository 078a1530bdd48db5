"""DeepSeek-V4's head-owned hc collapse (arch.py's head_globals: the root output_hc_*).

The converter's --mtp file holds the MTP layer's own mtp.0.hc_head_* as its root output_hc_*, which
llama.cpp's deepseek4 graph_mtp runs when the file is `-md`; a full file holds the trunk's, which
its in-file head runs. So a sidecar takes them from its source, and attach (one file, one set)
keeps the base's and says the head's own are dropped when they differ.

The tiny family writes one set for trunk and head; `own` here is its mtp-only file with output_hc_fn
and output_hc_base negated: other bytes, the same drafts. hc_head's weights are sigmoid(mixes *
scale + base) + eps, positive whatever the signs, and the tiny model's four streams are copies of
one direction (testmodels/families.py), so the collapse is a positive multiple of that direction,
which the shared head norm removes: the head still says succ(next), at the aligned rate 1.0.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tinyserve import rate, run, serve

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft import testmodels as tm
from mtpgraft.arch import ARCH_RULES
from mtpgraft.cli import cli
from mtpgraft.errors import InternalError
from mtpgraft.gguf_io import GGUFModel, OutTensor
from mtpgraft.graft import execute_graft
from mtpgraft.sidecar import plan_sidecar
from mtpgraft.testmodels.synthetic import rewrite

ARCH = "deepseek4"
OWN = ARCH_RULES[ARCH].head_globals
NEGATED = ("output_hc_fn.weight", "output_hc_base.weight")
NUMPY = {0: np.float32, 1: np.float16}  # ggml F32, F16


def cli_run(*args, code: int = 0):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res


def tensors(path: Path) -> dict[str, bytes]:
    m = GGUFModel(path)
    out = {}
    for r in m.refs:
        with open(r.path, "rb") as f:
            f.seek(r.abs_offset)
            out[r.name] = f.read(r.info.nbytes)
    return out


def _negated(t: OutTensor) -> OutTensor:
    with open(t.src_path, "rb") as f:  # type: ignore[arg-type]
        f.seek(t.src_offset)
        data = (-np.frombuffer(f.read(t.nbytes), dtype=NUMPY[t.ggml_type])).tobytes()
    return OutTensor(t.name, t.ne, t.ggml_type, t.nbytes, produce=lambda: [data])


@pytest.fixture(scope="module")
def m(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ds4-head")
    out = {v: tm.build_tiny_model(d / f"{v}.gguf", arch=ARCH, layout=v, dtype="f16") for v in ("base", "full")}
    out["mtp-only"] = tm.build_tiny_model(d / "mtp-only.gguf", arch=ARCH, layout="mtp-only", dtype="f16")
    out["own"] = rewrite(out["mtp-only"], d / "own.gguf",
                         tensors=lambda ts: [_negated(t) if t.name in NEGATED else t for t in ts])
    for src in ("own", "mtp-only", "full"):
        out[f"sidecar-{src}"] = d / f"sidecar-{src}.gguf"
        cli_run("sidecar", out["base"], "--mtp-from", out[src], "--mtp-type", "keep", "-o", out[f"sidecar-{src}"])
    return out


def test_the_own_set_differs_from_the_trunks(m):
    base, own = tensors(m["base"]), tensors(m["own"])
    assert all(base[n] != own[n] for n in NEGATED) and base["output_hc_scale.weight"] == own["output_hc_scale.weight"]
    assert {n: v for n, v in own.items() if n not in NEGATED} == {
        n: v for n, v in tensors(m["mtp-only"]).items() if n not in NEGATED}


def test_a_sidecar_carries_its_sources_collapse(m):
    """The sidecar of base + the head's own file is that file byte for byte (the converter's --mtp
    file), its output_hc_* the source's; every other tensor as the sidecar from the ordinary file."""
    got, plain = tensors(m["sidecar-own"]), tensors(m["sidecar-mtp-only"])
    assert got == tensors(m["own"])
    assert {n: got[n] for n in OWN} != {n: tensors(m["base"])[n] for n in OWN}
    assert {n: v for n, v in got.items() if n not in NEGATED} == {n: v for n, v in plain.items() if n not in NEGATED}
    assert tensors(m["sidecar-full"]) == plain  # a full file's own set: the trunk's, as the tiny family writes


def test_the_sidecar_digest_covers_the_collapse(m):
    """Same MTP block, other output_hc_*: the recorded source digest differs."""
    sha = {s: GGUFModel(m[s]).get("mtpgraft.mtp.source_sha256") for s in ("sidecar-own", "sidecar-mtp-only")}
    assert len(sha["sidecar-own"]) == 64 and sha["sidecar-own"] != sha["sidecar-mtp-only"]


def test_the_invariant_wants_the_sources_collapse(m, tmp_path):
    """A sidecar planned with the base's output_hc_* (the old behaviour) fails its check: exit 70 bug."""
    plan = plan_sidecar(m["base"], m["own"], tmp_path / "s.gguf", mtp_type="keep")
    base = GGUFModel(m["base"]).by_name
    (shard,) = plan.shards
    old = tuple(OutTensor(t.name, t.ne, t.ggml_type, t.nbytes, base[t.name].path, base[t.name].abs_offset)
                if t.name in OWN else t for t in shard.tensors)
    with pytest.raises(InternalError, match="the MTP source's tensor output_hc_fn.weight is not in it"):
        execute_graft(replace(plan, shards=(replace(shard, tensors=old),)))
    assert not (tmp_path / "s.gguf").exists()


def test_a_source_of_the_mtp_tensors_alone_leaves_the_bases_and_says_so(m, tmp_path):
    """A source holding the MTP tensors alone (cut by hand): no output_hc_* to take, so the base's, with
    a warning (one set, never a mix), and the invariant holds them to the base's."""
    cut = rewrite(m["own"], tmp_path / "cut.gguf", drop_tensors=OWN)
    out = tmp_path / "s.gguf"
    res = cli_run("sidecar", m["base"], "--mtp-from", cut, "--mtp-type", "keep", "-o", out)
    assert [ln for ln in res.stderr.splitlines() if "output_hc" in ln] == [
        "mtpgraft: warning: the MTP source has no output_hc_fn.weight, output_hc_base.weight, "
        "output_hc_scale.weight (the head's own collapse of the hc streams: it holds the MTP tensors alone): "
        "the sidecar carries the base's, the trunk's; to keep the head's own, make it from a local copy of "
        "the whole source file"], res.stderr
    assert tensors(out) == tensors(m["sidecar-mtp-only"])
    assert "output_hc" not in cli_run("sidecar", m["base"], "--mtp-from", m["own"], "-o", out, "--force").stderr


def test_a_hub_donor_brings_the_heads_own_collapse(m, hub, hf_hermetic, tmp_path):
    """From the Hub (range reads of the donor's header and its head's tensors), the head's root
    output_hc_* travel with its blocks: the sidecar equals the local one (the source label apart), with
    no warning, and attach warns as it does for the local file."""
    from test_sources_hub import same_except_label

    repo, name = "tester/DSV4-MTP-GGUF", "own.gguf"
    commit = hub.put_files(repo, {name: m["own"].read_bytes()})
    spec = f"hf://{repo}/{name}"
    out = tmp_path / "remote.gguf"
    res = cli_run("sidecar", m["base"], "--mtp-from", spec, "--mtp-type", "keep", "-o", out, "--endpoint", hub.url)
    assert "output_hc" not in res.stderr, res.stderr
    assert same_except_label(m["sidecar-own"], out) == ("own.gguf", f"{spec}@{commit}")
    assert tensors(out) == tensors(m["own"])
    res = cli_run("attach", m["base"], "--mtp-from", spec, "--mtp-type", "keep", "-o", tmp_path / "a.gguf",
                  "--endpoint", hub.url)
    assert sum("hc collapse" in ln for ln in res.stderr.splitlines()) == 1, res.stderr


@pytest.mark.parametrize("src", ["own", "mtp-only"])
def test_a_dry_run_from_a_hub_donor_compares_no_collapse_bytes(m, hub, hf_hermetic, tmp_path, src):
    """--dry-run reads the donor's headers only (its tensor data a hole of zeros): the head's own
    collapse is not compared with the base's then, so no warning, neither a false one for a donor
    whose collapse is the base's nor one for a donor whose own differs (the real run says that)."""
    repo = f"tester/DSV4-{src}-GGUF"
    hub.put_files(repo, {f"{src}.gguf": m[src].read_bytes()})
    res = cli_run("attach", m["base"], "--mtp-from", f"hf://{repo}/{src}.gguf", "--mtp-type", "keep", "--dry-run",
                  "--json", "-o", tmp_path / "a.gguf", "--endpoint", hub.url)
    plan = json.loads(res.stdout)["plan"]
    assert plan["operation"] == "attach" and not [w for w in plan["warnings"] if "hc collapse" in w], plan["warnings"]
    assert "hc collapse" not in res.stderr and not (tmp_path / "a.gguf").exists()


@pytest.mark.parametrize("src,warns", [("own", True), ("mtp-only", False), ("full", False)])
def test_attach_keeps_the_bases_collapse_and_says_so(m, tmp_path, src, warns):
    out = tmp_path / "a.gguf"
    res = cli_run("attach", m["base"], "--mtp-from", m[src], "--mtp-type", "keep", "-o", out)
    said = [ln for ln in res.stderr.splitlines() if "hc collapse" in ln]
    assert said == ([
        "mtpgraft: warning: the MTP head's own hc collapse (output_hc_fn.weight, output_hc_base.weight) differs "
        "from the base's and is dropped: in one file llama.cpp's deepseek4 graph_mtp runs the trunk's; to keep "
        "the head's own, publish it as a sidecar (`mtpgraft sidecar`)"] if warns else []), res.stderr
    base, got = tensors(m["base"]), tensors(out)
    assert {n: got[n] for n in OWN} == {n: base[n] for n in OWN}
    dry = json.loads(cli_run("attach", m["base"], "--mtp-from", m[src], "--dry-run", "--json", "-o", out,
                             "--force").stdout)
    assert sum("hc collapse" in w for w in dry["plan"]["warnings"]) == warns


@pytest.mark.tools
def test_the_sidecar_with_the_heads_own_collapse_drafts(m, llama_cpp_dir):
    with serve(m["base"], llama_cpp_dir, spec_type="mtp", draft_n_max=3, draft_model=m["sidecar-own"]) as srv:
        got = [rate(run(srv, p, n_predict=48)) for p in (tm.CODE_PROMPT, tm.PROSE_PROMPT)]
    assert got == [1.0, 1.0], got
