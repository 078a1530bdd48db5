"""`--heads K` with a remote source: only the kept heads' bytes travel (or are converted).

A 3-head donor (step35, mimo2: a chain, head k drafts position k) on the loopback Hub, read by the real
huggingface_hub client (tests/fakehub.py counts every byte and range it serves): attach and sidecar
with --heads K fetch the headers and heads 0..K-1 only, and write what the same command writes from
the local file. Too many heads is refused before any tensor byte is fetched. The converted families
(safetensors) have one MTP layer: --heads 1 is the whole head, --heads 2 a refusal.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_sources_hub import header_bytes, same_except_label

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft.cli import cli
from mtpgraft.errors import EXIT_INPUT
from mtpgraft.gguf_io import GGUFFile, GGUFModel
from mtpgraft.inspection import layer_of
from mtpgraft.sources import HubOptions, resolve_mtp_source
from mtpgraft.testmodels import family
from mtpgraft.testmodels.checkpoints import build_checkpoint
from mtpgraft.testmodels.families import SPECS
from mtpgraft.testmodels.synthetic import make_model, split_model

REPO = "tester/Chain-MTP-GGUF"
FILE = "Chain-F16.gguf"
SPEC_ = f"hf://{REPO}/{FILE}"


@pytest.fixture(autouse=True)
def _hermetic(hf_hermetic):
    """No real token or cache (conftest.hf_hermetic)."""


@pytest.fixture(scope="module", params=["step35", "mimo2"])
def chain(request, tmp_path_factory) -> dict:
    """The family's 3-head file (the donor), its trunk-only base, and where its heads start."""
    spec = SPECS[request.param]
    d = tmp_path_factory.mktemp(f"chain-{request.param}")
    assert spec.nextn == 3
    return {"donor": family.build(spec, d / FILE, dtype="f16"), "trunk": spec.trunk_layers,
            "base": family.build(spec, d / "base.gguf", layout="base", dtype="f16")}


def run(*args, code: int = 0):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == code, r.output
    return r


def head_spans(donor: Path) -> dict[int, tuple[int, int, int]]:
    """Per MTP head of the donor: (first byte, end, tensor bytes) in the file."""
    m = GGUFModel(donor)
    trunk = m.get(f"{m.arch}.block_count") - m.get(f"{m.arch}.nextn_predict_layers")
    out: dict[int, tuple[int, int, int]] = {}
    for r in m.refs:
        lo = layer_of(r.name)
        if lo and lo[0] >= trunk:
            s, e, n = out.get(lo[0] - trunk, (r.abs_offset, 0, 0))
            out[lo[0] - trunk] = (min(s, r.abs_offset), max(e, r.abs_offset + r.info.nbytes), n + r.info.nbytes)
    assert sorted(out) == [0, 1, 2]
    return out


def ranges_read(hub, start: int) -> list[tuple[int, int]]:
    """The byte ranges the Hub served of the donor from `start` on (the tensor data)."""
    out = []
    for r in hub.downloads("/_cdn/"):
        s = int(r.range[6:].split("-")[0]) if r.range else 0
        if s + r.sent > start:
            out.append((s, s + r.sent))
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_attach_heads_k_from_the_hub_fetches_only_the_first_k_heads(hub, chain, tmp_path, k):
    commit = hub.put_files(REPO, {FILE: chain["donor"].read_bytes()})
    local, remote = tmp_path / "local.gguf", tmp_path / "remote.gguf"
    run("attach", chain["base"], "--mtp-from", chain["donor"], "--heads", k, "-o", local)
    r = run("attach", chain["base"], "--mtp-from", SPEC_, "--heads", k, "-o", remote, "--endpoint", hub.url)
    assert same_except_label(local, remote) == (FILE, f"{SPEC_}@{commit}")
    heads = head_spans(chain["donor"])
    kept = sum(heads[i][2] for i in range(k))
    header = header_bytes(chain["donor"])
    assert f"fetched {hub.bytes_sent:,} bytes (" in r.output and f" of headers, {kept:,} of MTP tensors)" in r.output
    assert kept <= hub.bytes_sent <= (kept + header) * 1.01  # bytes fetched vs bytes needed
    # no byte of a dropped head travelled: every range of tensor data ends before head k starts
    data = ranges_read(hub, GGUFModel(chain["donor"]).shards[0].data_offset)
    assert data and max(e for _, e in data) <= heads[k][0], (data, heads[k])
    # the cached source holds heads 0..k-1 under the donor's own keys (graft takes what it holds)
    src = resolve_mtp_source(SPEC_, heads=k, hub=HubOptions(endpoint=hub.url))
    assert src.cached and src.mtp_bytes == kept
    m = GGUFModel(src.path)
    trunk = chain["trunk"]
    assert {layer_of(r.name)[0] for r in m.refs} == set(range(trunk, trunk + k))
    assert (m.get(f"{m.arch}.block_count"), m.get(f"{m.arch}.nextn_predict_layers")) == (trunk + 3, 3)


def test_each_k_is_its_own_cache_entry_and_a_rerun_fetches_nothing(hub, chain, tmp_path):
    hub.put_files(REPO, {FILE: chain["donor"].read_bytes()})
    opts = HubOptions(endpoint=hub.url)
    one = resolve_mtp_source(SPEC_, heads=1, hub=opts)
    sent = hub.bytes_sent
    assert resolve_mtp_source(SPEC_, heads=1, hub=opts).path == one.path and hub.bytes_sent == sent
    two = resolve_mtp_source(SPEC_, heads=2, hub=opts)
    every = resolve_mtp_source(SPEC_, hub=opts)
    assert len({one.path, two.path, every.path}) == 3
    assert resolve_mtp_source(SPEC_, heads=3, hub=opts).path == every.path  # all three: the uncut file
    heads = head_spans(chain["donor"])
    assert (one.mtp_bytes, two.mtp_bytes, every.mtp_bytes) == (
        heads[0][2], heads[0][2] + heads[1][2], sum(h[2] for h in heads.values()))


def test_sidecar_heads_1_from_the_hub_equals_the_local_one(hub, chain, tmp_path):
    commit = hub.put_files(REPO, {FILE: chain["donor"].read_bytes()})
    local, remote = tmp_path / "local.gguf", tmp_path / "remote.gguf"
    run("sidecar", chain["base"], "--mtp-from", chain["donor"], "--heads", 1, "-o", local)
    run("sidecar", chain["base"], "--mtp-from", SPEC_, "--heads", 1, "-o", remote, "--endpoint", hub.url)
    assert same_except_label(local, remote) == (FILE, f"{SPEC_}@{commit}")
    heads = head_spans(chain["donor"])
    assert max(e for _, e in ranges_read(hub, GGUFModel(chain["donor"]).shards[0].data_offset)) <= heads[1][0]


def test_split_donor_heads_1_reads_no_byte_of_the_dropped_heads(hub, chain, tmp_path):
    """A donor split in 3 shards (the heads at the end of the last ones): the shards' headers are
    read from the last back, and of tensor data only head 0's ranges."""
    shards = split_model(shutil.copy(chain["donor"], tmp_path / FILE), 3)
    hub.put_files(REPO, {p.name: p.read_bytes() for p in shards})
    local, remote = tmp_path / "local.gguf", tmp_path / "remote.gguf"
    run("attach", chain["base"], "--mtp-from", shards[0], "--heads", 1, "-o", local)
    run("attach", chain["base"], "--mtp-from", f"hf://{REPO}/{shards[0].name}", "--heads", 1, "-o", remote,
        "--endpoint", hub.url)
    same_except_label(local, remote)
    trunk, served, tensor_ranges = chain["trunk"], 0, 0
    for p in shards:
        f = GGUFFile(p)
        sha = hashlib.sha256(p.read_bytes()).hexdigest()
        dropped = [(f.data_offset + t.offset, f.data_offset + t.offset + t.nbytes) for t in f.tensors
                   if (lo := layer_of(t.name)) and lo[0] > trunk]
        for d in hub.downloads("/_cdn/"):
            if sha in d.path:
                s = int(d.range[6:].split("-")[0]) if d.range else 0
                served += d.sent
                if s >= f.data_offset:  # a tensor range (a header's read-ahead starts before the data)
                    tensor_ranges += 1
                    assert not any(s < e and a < s + d.sent for a, e in dropped), (p.name, d.range, dropped)
    assert served == hub.bytes_sent and tensor_ranges  # every byte served is accounted for above
    head0 = head_spans(chain["donor"])[0][2]
    assert head0 <= hub.bytes_sent <= head0 + sum(GGUFFile(p).data_offset for p in shards) * 1.25 + 3 * 512


def test_dry_run_plans_the_kept_heads_from_headers(hub, chain, tmp_path):
    hub.put_files(REPO, {FILE: chain["donor"].read_bytes()})
    r = run("attach", chain["base"], "--mtp-from", SPEC_, "--heads", 2, "-o", tmp_path / "o.gguf", "--endpoint",
            hub.url, "--dry-run", "--json")
    plan = json.loads(r.stdout)["plan"]
    trunk = chain["trunk"]
    assert plan["mtp_layers"] == [trunk, trunk + 1]
    h = header_bytes(chain["donor"])
    assert h <= hub.bytes_sent <= h + max(512, h // 4)
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize("cmd", ["attach", "sidecar"])
def test_more_heads_than_the_donor_has_is_refused_before_any_tensor_byte(hub, chain, tmp_path, cmd):
    c = hub.put_files(REPO, {FILE: chain["donor"].read_bytes()})
    trunk = chain["trunk"]
    r = run(cmd, chain["base"], "--mtp-from", SPEC_, "--heads", 4, "-o", tmp_path / "o.gguf", "--endpoint", hub.url,
            code=EXIT_INPUT)
    assert r.output.strip().splitlines() == [
        f"mtpgraft: error: {SPEC_}@{c} has 3 MTP block(s) (blk.{trunk}, blk.{trunk + 1}, blk.{trunk + 2}), fewer "
        "than the 4 to keep; pass --heads 3 or fewer"]
    h = header_bytes(chain["donor"])
    assert hub.bytes_sent <= h + max(512, h // 4)  # the header and its read-ahead, no head
    assert not ranges_read(hub, GGUFModel(chain["donor"]).shards[0].data_offset + max(512, h // 4))
    assert not (tmp_path / "o.gguf").exists()
    assert not list((tmp_path / "mtpgraft_cache" / "mtp-sources").glob("*.gguf"))


def test_a_chain_with_a_gap_is_refused_before_any_tensor_byte(hub, chain, tmp_path):
    """The donor's head 1 removed, its keys still saying three: a local attach refuses it, and so
    does a Hub one with --heads 1 (its front is not the chain's first head), from the header."""
    from mtpgraft.testmodels.synthetic import rewrite

    trunk = chain["trunk"]
    gap = rewrite(chain["donor"], tmp_path / FILE, drop_tensors={
        r.name for r in GGUFModel(chain["donor"]).refs if r.name.startswith(f"blk.{trunk + 1}.")})
    c = hub.put_files(REPO, {FILE: gap.read_bytes()})
    r = run("attach", chain["base"], "--mtp-from", SPEC_, "--heads", 1, "-o", tmp_path / "o.gguf", "--endpoint",
            hub.url, code=EXIT_INPUT)
    assert r.output.strip().splitlines() == [
        f"mtpgraft: error: {SPEC_}@{c}: the MTP blocks blk.{trunk}, blk.{trunk + 2} are not consecutive (a chain "
        "of heads with a gap); take the heads from a complete source"]
    assert hub.bytes_sent <= header_bytes(gap) * 1.25 + 512
    local = run("attach", chain["base"], "--mtp-from", gap, "--heads", 1, "-o", tmp_path / "o.gguf", code=EXIT_INPUT)
    assert "not consecutive" in local.output
    for extra in ((), ("--dry-run",)):  # without --heads, graft's own header check refuses it: naming the
        # source, not the header-only twin it checked (.plan-*.gguf in the cache)
        r = run("attach", chain["base"], "--mtp-from", SPEC_, "-o", tmp_path / "o.gguf", "--endpoint", hub.url,
                *extra, code=EXIT_INPUT)
        assert r.output.startswith(f"mtpgraft: error: {SPEC_}@{c}: the MTP blocks blk.{trunk}, blk.{trunk + 2} "
                                   "are not consecutive"), r.output
        assert ".plan-" not in r.output


# --------------------------------------------------------------------------- safetensors (one MTP layer)


def _qwen_base(tmp_path: Path) -> Path:
    """A trunk-only qwen35 GGUF that fits the tiny checkpoints (2 layers, n_embd 64, 320 tokens)."""
    return make_model(tmp_path / "base.gguf", arch="qwen35", trunk=2, layout="base", n_embd=64, vocab=320, n_ff=128)


def test_safetensors_heads_1_is_the_whole_head_and_2_is_refused_before_tensors(hub, tmp_path):
    ckpt = build_checkpoint(tmp_path / "Qwen-tiny", "dense-bf16")
    files = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    c = hub.put_files("tester/Qwen-tiny", files)
    base = _qwen_base(tmp_path)
    for src, label in (("hf://tester/Qwen-tiny", f"hf://tester/Qwen-tiny@{c}"), (ckpt, "Qwen-tiny/")):
        r = run("attach", base, "--mtp-from", src, "--heads", 2, "-o", tmp_path / "o.gguf", "--endpoint", hub.url,
                code=EXIT_INPUT)
        assert r.output.strip().splitlines() == [
            f"mtpgraft: error: {label} has 1 MTP block(s) (blk.2), fewer than the 2 to keep; pass --heads 1 or fewer"]
        assert not (tmp_path / "o.gguf").exists()
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    headers = sum(8 + int.from_bytes(files[f][:8], "little") for f in shards)  # the first shard and the MTP one
    assert hub.bytes_sent == len(files["config.json"]) + len(files["model.safetensors.index.json"]) + headers
    assert not list((tmp_path / "mtpgraft_cache" / "mtp-sources").glob("*.gguf"))
    outs = {}
    for name, src, extra in (("local", ckpt, ()), ("local1", ckpt, ("--heads", 1)),
                             ("hub", "hf://tester/Qwen-tiny", ()), ("hub1", "hf://tester/Qwen-tiny", ("--heads", 1))):
        outs[name] = tmp_path / f"{name}.gguf"
        run("attach", base, "--mtp-from", src, *extra, "-o", outs[name], "--endpoint", hub.url)
    assert outs["local1"].read_bytes() == outs["local"].read_bytes()
    assert outs["hub1"].read_bytes() == outs["hub"].read_bytes()


def test_a_cut_converted_head_keeps_only_the_first_layers(tmp_path):
    """resolve's cut of a converted head (no converted family has two MTP layers yet: the plan is
    given one): only the kept layer's tensors are converted, under the checkpoint's keys."""
    from mtpgraft.sources import resolve

    ckpt = build_checkpoint(tmp_path / "ck", "dense-bf16")
    plan = resolve.convert.plan_head(json.loads((ckpt / "config.json").read_text()),
                                     _headers(ckpt), label="ck")
    two = replace(plan, mtp_layers=[2, 3], tensors=plan.tensors + [replace(t, name=t.name.replace("blk.2.", "blk.3."))
                                                                   for t in plan.tensors])
    cut, kept = resolve._st_front(two, 1, "ck")
    assert kept == [2] and cut.tensors == plan.tensors and cut.kvs == two.kvs
    assert resolve._st_front(two, 2, "ck") == (two, None)


def _headers(ckpt: Path):
    from mtpgraft.sources.safetensors import header_length, parse_header

    out = []
    for p in sorted(ckpt.glob("*.safetensors")):
        raw = p.read_bytes()
        n = header_length(raw[:8], p.name)
        out.append((p.name, parse_header(raw[:8 + n], p.name, file_size=len(raw)).tensors))
    return out
