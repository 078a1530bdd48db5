"""MTP sources on the Hub, read by ranges through the real huggingface_hub client from the loopback
Hub (tests/fakehub.py), which serves resolve with HEAD, Range and the CDN redirect and counts bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakehub import FakeHub

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft.cli import cli
from mtpgraft.errors import HubError
from mtpgraft.gguf_io import GGUFModel
from mtpgraft.sources import HubOptions, resolve_mtp_source
from mtpgraft.testmodels.checkpoints import build_checkpoint
from mtpgraft.testmodels.fingerprint import fingerprint
from mtpgraft.testmodels.synthetic import make_model, split_model

REFS = json.loads((Path(__file__).parent / "data" / "convert-ref" / "references.json").read_text())
DONOR = "tester/Tiny-MTP-GGUF"
LABEL_KEY = "mtpgraft.mtp.source"


@pytest.fixture(autouse=True)
def _hermetic(hf_hermetic):
    """No real token or cache (conftest.hf_hermetic)."""


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, s: float) -> None:
        self.calls.append(s)


@pytest.fixture
def models(tmp_path):
    """A donor with MTP (n_embd 256: a 1.6 MB head), the same model without MTP as the base."""
    d = tmp_path / "models"
    d.mkdir()
    kw = {"arch": "qwen35", "trunk": 4, "n_embd": 256, "vocab": 512, "n_ff": 512}
    return {"donor": make_model(d / "Tiny-MTP-F16.gguf", layout="full", **kw),
            "base": make_model(d / "Tiny-base-F16.gguf", layout="base", **kw),
            "other": make_model(d / "Other-F16.gguf", layout="full", **(kw | {"n_embd": 128}))}


def attach(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["attach", *args], env=env)


def mtp_bytes(path: Path) -> int:
    m = GGUFModel(path)
    bc, n = m.get(f"{m.arch}.block_count"), m.get(f"{m.arch}.nextn_predict_layers")
    return sum(r.info.nbytes for r in m.refs if r.name.startswith("blk.") and int(r.name.split(".")[1]) >= bc - n)


def header_bytes(path: Path) -> int:
    return GGUFModel(path).shards[0].data_offset


def same_except_label(a: Path, b: Path) -> tuple[str, str]:
    """Both GGUFs hold the same keys (raw bytes) but the source label, and the same tensors, byte for
    byte; returns the two labels."""
    ma, mb = GGUFModel(a), GGUFModel(b)
    assert [k for k in ma.kv] == [k for k in mb.kv]
    for k in ma.kv:
        if k != LABEL_KEY:
            assert ma.kv[k].raw == mb.kv[k].raw, k
    assert [(r.name, r.info.ne, r.info.ggml_type) for r in ma.refs] == [(r.name, r.info.ne, r.info.ggml_type) for r in mb.refs]
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for ra, rb in zip(ma.refs, mb.refs, strict=True):
            fa.seek(ra.abs_offset)
            fb.seek(rb.abs_offset)
            assert fa.read(ra.info.nbytes) == fb.read(rb.info.nbytes), ra.name
    return ma.get(LABEL_KEY), mb.get(LABEL_KEY)


# --------------------------------------------------------------------------- GGUF donors


def test_graft_from_hub_equals_graft_from_the_local_file_and_fetches_only_the_head(hub, models, tmp_path):
    commit = hub.put_files(DONOR, {"Tiny-MTP-F16.gguf": models["donor"].read_bytes()})
    local, remote = tmp_path / "local.gguf", tmp_path / "remote.gguf"
    assert attach(str(models["base"]), "--mtp-from", str(models["donor"]), "-o", str(local)).exit_code == 0
    r = attach(str(models["base"]), "--mtp-from", f"hf://{DONOR}/Tiny-MTP-F16.gguf", "-o", str(remote),
               "--endpoint", hub.url)
    assert r.exit_code == 0, r.output
    assert f"mtpgraft: MTP source hf://{DONOR}/Tiny-MTP-F16.gguf@{commit}: fetched {hub.bytes_sent:,} bytes" in r.output
    labels = same_except_label(local, remote)
    assert labels == ("Tiny-MTP-F16.gguf", f"hf://{DONOR}/Tiny-MTP-F16.gguf@{commit}")
    budget = mtp_bytes(models["donor"]) + header_bytes(models["donor"])
    assert mtp_bytes(models["donor"]) > 1_000_000
    assert 0 < hub.bytes_sent <= budget * 1.01
    assert hub.bytes_sent < models["donor"].stat().st_size / 2
    # a second run fetches nothing
    sent = hub.bytes_sent
    r = attach(str(models["base"]), "--mtp-from", f"hf://{DONOR}/Tiny-MTP-F16.gguf", "-o", str(tmp_path / "again.gguf"),
               "--endpoint", hub.url)
    assert r.exit_code == 0, r.output
    assert hub.bytes_sent == sent
    assert (tmp_path / "again.gguf").read_bytes() == remote.read_bytes()


def test_revision_pins_the_commit(hub, models, tmp_path):
    first = hub.put_files(DONOR, {"Tiny-MTP-F16.gguf": models["donor"].read_bytes()})
    hub.put_files(DONOR, {"Tiny-MTP-F16.gguf": models["other"].read_bytes()})  # main moves on
    src = resolve_mtp_source(f"hf://{DONOR}/Tiny-MTP-F16.gguf@{first[:10]}", hub=HubOptions(endpoint=hub.url))
    assert src.commit == first and src.label == f"hf://{DONOR}/Tiny-MTP-F16.gguf@{first}"
    assert GGUFModel(src.path).get("qwen35.embedding_length") == 256
    at_repo = resolve_mtp_source(f"hf://{DONOR}@{first}/Tiny-MTP-F16.gguf", hub=HubOptions(endpoint=hub.url))
    assert at_repo.path == src.path


def test_dropped_connection_mid_fetch_resumes(hub, models, tmp_path):
    hub.put_files(DONOR, {"Tiny-MTP-F16.gguf": models["donor"].read_bytes()})
    sleeps = Sleeps()

    class DropOnce:
        """Cut the MTP range's answer half way, once the headers are read."""

        def total(self, n: int) -> None:
            hub.drop("/_cdn/", after=n // 2)

        def update(self, n: int) -> None:
            pass

    src = resolve_mtp_source(f"hf://{DONOR}/Tiny-MTP-F16.gguf", base=models["base"], progress=DropOnce(),
                             hub=HubOptions(endpoint=hub.url, sleep=sleeps))
    first = _first_mtp_offset(models["donor"])
    ranged = [r for r in hub.downloads("/_cdn/") if r.range and int(r.range[6:].split("-")[0]) >= first]
    assert len(ranged) == 2, ranged  # cut, then the rest
    start0, start1 = (int(r.range[6:].split("-")[0]) for r in ranged)
    assert start0 == first and start1 == start0 + ranged[0].sent  # resumed where it stopped
    assert ranged[0].sent + ranged[1].sent == src.mtp_bytes + _padding(models["donor"])
    assert hub.bytes_sent <= (mtp_bytes(models["donor"]) + header_bytes(models["donor"])) * 1.01
    local = tmp_path / "local.gguf"
    assert attach(str(models["base"]), "--mtp-from", str(models["donor"]), "-o", str(local)).exit_code == 0
    remote = tmp_path / "remote.gguf"
    assert attach(str(models["base"]), "--mtp-from", str(src.path), "-o", str(remote)).exit_code == 0
    same_except_label(local, remote)
    assert sleeps.calls == []  # a drop that made progress is retried at once


def test_5xx_is_retried_with_backoff_then_one_line_says_what_to_rerun(hub, models, tmp_path):
    commit = hub.put_files(DONOR, {"Tiny-MTP-F16.gguf": models["donor"].read_bytes()})
    sleeps = Sleeps()
    hub.fail("GET", r"/resolve/", 503, times=2)
    src = resolve_mtp_source(f"hf://{DONOR}/Tiny-MTP-F16.gguf", hub=HubOptions(endpoint=hub.url, sleep=sleeps))
    assert sleeps.calls == [1.0, 2.0] and src.path.is_file()

    other = "tester/Flaky"
    hub.put_files(other, {"m.gguf": models["donor"].read_bytes()})
    hub.fail("GET", rf"/{other}/resolve/", 500, times=50)
    sleeps = Sleeps()
    with pytest.raises(HubError) as e:
        resolve_mtp_source(f"hf://{other}/m.gguf", hub=HubOptions(endpoint=hub.url, sleep=sleeps, retries=3))
    c = hub.head(other).oid
    assert str(e.value) == (f"fetching hf://{other}/m.gguf@{c[:12]} failed 3 times (HTTP 500); run the same "
                            "command again: the 0 bytes already fetched of this range are kept and not fetched again")
    assert sleeps.calls == [1.0, 2.0]
    assert commit == hub.head(DONOR).oid


def test_split_donor_reads_only_the_shards_holding_mtp(hub, models, tmp_path):
    shards = split_model(models["donor"], 3)
    hub.put_files(DONOR, {p.name: p.read_bytes() for p in shards})
    holding = [p.name for p in shards if _holds_mtp(p)]
    local, remote = tmp_path / "local.gguf", tmp_path / "remote.gguf"
    assert attach(str(models["base"]), "--mtp-from", str(shards[0]), "-o", str(local)).exit_code == 0
    r = attach(str(models["base"]), "--mtp-from", f"hf://{DONOR}/{shards[0].name}", "-o", str(remote),
               "--endpoint", hub.url)
    assert r.exit_code == 0, r.output
    same_except_label(local, remote)
    etag_of = {p.name: _sha(p) for p in shards}
    read = {n for n, sha in etag_of.items() if any(sha in d.path for d in hub.downloads("/_cdn/"))}
    assert read == {shards[0].name, *holding} and len(read) < 3


def _first_mtp_offset(p: Path) -> int:
    return min(r.abs_offset for r in GGUFModel(p).refs if r.name.startswith("blk.4."))


def _padding(p: Path) -> int:
    """Alignment padding between the MTP tensors (fetched with them in one range)."""
    refs = [r for r in GGUFModel(p).refs if r.name.startswith("blk.4.")]
    return refs[-1].abs_offset + refs[-1].info.nbytes - refs[0].abs_offset - sum(r.info.nbytes for r in refs)


def _holds_mtp(p: Path) -> bool:
    from mtpgraft.gguf_io import GGUFFile

    return any(t.name.startswith("blk.4.") for t in GGUFFile(p).tensors)


def _sha(p: Path) -> str:
    import hashlib

    return hashlib.sha256(p.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- errors, one line each


@pytest.mark.parametrize(("spec", "message"), [
    ("hf://tester/Nope/x.gguf", "hf://tester/Nope/x.gguf: repository tester/Nope not found on {url} (or not "
                                "visible with this token)"),
    (f"hf://{DONOR}/missing.gguf", f"hf://{DONOR}/missing.gguf@{{c12}}: no such file in {DONOR} at main ({{c12}})"),
    (f"hf://{DONOR}/Tiny-MTP-F16.gguf@nobranch", f"hf://{DONOR}/Tiny-MTP-F16.gguf@nobranch: revision 'nobranch' "
                                                 f"not found in {DONOR}"),
    (f"hf://{DONOR}/Tiny-base-F16.gguf", f"hf://{DONOR}/Tiny-base-F16.gguf@{{c12}} has no MTP tensors (no "
                                         "blk.N.nextn.eh_proj.weight; qwen35.nextn_predict_layers is not set)"),
    (f"hf://{DONOR}/Other-F16.gguf", "n_embd mismatch: base 256, MTP source 128: hf://" + DONOR +
                                     "/Other-F16.gguf@{c} is another model"),
    (f"hf://{DONOR}/notes.txt", f"hf://{DONOR}/notes.txt: 'notes.txt' is neither a .gguf nor a .safetensors "
                                "file; name a file, a :QUANT tag, or the repo itself for its safetensors"),
])
def test_errors_are_one_line_before_any_tensor_is_fetched(hub, models, tmp_path, spec, message):
    c = hub.put_files(DONOR, {p.name: p.read_bytes() for p in models.values()})
    r = attach(str(models["base"]), "--mtp-from", spec, "-o", str(tmp_path / "o.gguf"), "--endpoint", hub.url)
    want = message.format(url=hub.url, c=c, c12=c[:12])
    assert r.output.strip().splitlines() == [f"mtpgraft: error: {want}"]
    # usage (a spec that names no model file), bad input (a file that does not fit), else the Hub said no
    assert r.exit_code == (2 if "neither" in message else 3 if "MTP tensors" in message or "mismatch" in message
                           else 6)
    assert hub.bytes_sent < 20_000  # headers at most
    assert not (tmp_path / "o.gguf").exists()


def test_gated_repo_without_token_and_with_a_token_without_access(hub, models, tmp_path):
    hub.put_files(DONOR, {"Tiny-MTP-F16.gguf": models["donor"].read_bytes()})
    hub.repos[DONOR].gated = set()
    spec = f"hf://{DONOR}/Tiny-MTP-F16.gguf"
    r = attach(str(models["base"]), "--mtp-from", spec, "-o", str(tmp_path / "o.gguf"), "--endpoint", hub.url)
    assert r.output.strip() == (f"mtpgraft: error: {DONOR} is gated or private and no Hugging Face token was "
                                "given: pass --token, set HF_TOKEN, or run `hf auth login`")
    assert r.exit_code == 6
    r = attach(str(models["base"]), "--mtp-from", spec, "-o", str(tmp_path / "o.gguf"), "--endpoint", hub.url,
               env={"HF_TOKEN": FakeHub.READ_TOKEN})
    assert r.output.strip() == (f"mtpgraft: error: {DONOR} is gated and this token has no access: accept its "
                                "terms on the Hub (or use a token of an account that did), then run the same "
                                "command again")
    assert hub.bytes_sent == 0
    hub.repos[DONOR].gated = {"tester"}  # accepted: --token beats HF_TOKEN
    r = attach(str(models["base"]), "--mtp-from", spec, "-o", str(tmp_path / "o.gguf"), "--endpoint", hub.url,
               "--token", FakeHub.READ_TOKEN, env={"HF_TOKEN": "hf_wrong"})
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- safetensors repos


def test_safetensors_repo_fetches_config_headers_and_the_head_only(hub, tmp_path):
    ckpt = build_checkpoint(tmp_path / "Qwen-tiny", "dense-bf16")
    files = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    commit = hub.put_files("tester/Qwen-tiny", files)
    src = resolve_mtp_source("hf://tester/Qwen-tiny", hub=HubOptions(endpoint=hub.url))
    assert src.label == f"hf://tester/Qwen-tiny@{commit}" and src.kind == "hub-safetensors"
    assert fingerprint(src.path)["tensors"] == REFS["dense-bf16-auto.gguf"]["tensors"]  # names, shapes, types, bytes
    index = json.loads(files["model.safetensors.index.json"])["weight_map"]
    mtp_shards = {f for n, f in index.items() if n.startswith("mtp.")}
    small = len(files["config.json"]) + len(files["model.safetensors.index.json"])
    headers = sum(8 + int.from_bytes(files[f][:8], "little") for f in {*mtp_shards, sorted(set(index.values()))[0]})
    assert hub.bytes_sent == src.fetched_bytes
    assert hub.bytes_sent <= (src.mtp_bytes + headers + small) * 1.01
    assert hub.bytes_sent < sum(len(v) for v in files.values()) / 2
    sent = hub.bytes_sent
    again = resolve_mtp_source("hf://tester/Qwen-tiny", hub=HubOptions(endpoint=hub.url))
    assert again.cached and hub.bytes_sent == sent


def test_safetensors_repo_config_mismatch_is_refused_before_tensors(hub, tmp_path):
    ckpt = build_checkpoint(tmp_path / "Qwen-tiny", "dense-bf16")
    files = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    hub.put_files("tester/Qwen-tiny", files)
    base = make_model(tmp_path / "base.gguf", arch="qwen35", trunk=2, layout="base", n_embd=64, vocab=999, n_ff=128)
    r = attach(str(base), "--mtp-from", "hf://tester/Qwen-tiny", "-o", str(tmp_path / "o.gguf"), "--endpoint", hub.url)
    c = hub.head("tester/Qwen-tiny").oid
    assert r.output.strip() == (f"mtpgraft: error: hf://tester/Qwen-tiny@{c} does not fit the base: config.json "
                                "vocab_size = 320, the base has 999 tokens")
    shards = sorted(f for f in files if f.endswith(".safetensors"))
    headers = sum(8 + int.from_bytes(files[f][:8], "little") for f in shards)  # the first shard and the MTP one
    assert hub.bytes_sent == len(files["config.json"]) + len(files["model.safetensors.index.json"]) + headers


# --------------------------------------------------------------------------- a base on the Hub


def test_base_from_the_hub_is_downloaded_into_the_hf_cache(hub, models, tmp_path):
    hub.put_files("tester/Tiny-base", {"Tiny-base-F16.gguf": models["base"].read_bytes()})
    local, remote = tmp_path / "local.gguf", tmp_path / "remote.gguf"
    assert attach(str(models["base"]), "--mtp-from", str(models["donor"]), "-o", str(local)).exit_code == 0
    r = attach("hf://tester/Tiny-base/Tiny-base-F16.gguf", "--mtp-from", str(models["donor"]), "-o", str(remote),
               "--endpoint", hub.url)
    assert r.exit_code == 0, r.output
    assert remote.read_bytes() == local.read_bytes()
    cached = list((tmp_path / "hf_home" / "hub" / "models--tester--Tiny-base" / "snapshots").glob("*/Tiny-base-F16.gguf"))
    assert len(cached) == 1 and cached[0].read_bytes() == models["base"].read_bytes()


# --------------------------------------------------------------------------- quant tags


def test_quant_tag_picks_the_file_llama_server_would(hub, models, tmp_path):
    donor = models["donor"].read_bytes()
    c = hub.put_files(DONOR, {"mtp-Tiny-Q8_0.gguf": donor, "Tiny-Q4_K_M.gguf": models["base"].read_bytes(),
                              "Q8/Tiny-Q8_0.gguf": donor})
    src = resolve_mtp_source(f"hf://{DONOR}:q8_0", base=models["base"], hub=HubOptions(endpoint=hub.url))
    assert src.label == f"hf://{DONOR}/Q8/Tiny-Q8_0.gguf@{c}"  # never the mtp- sidecar
    r = attach(str(models["base"]), "--mtp-from", f"hf://{DONOR}:IQ2_XXS", "-o", str(tmp_path / "o.gguf"),
               "--endpoint", hub.url)
    assert r.output.strip() == (f"mtpgraft: error: hf://{DONOR}:IQ2_XXS@{c}: no GGUF for tag IQ2_XXS in {DONOR} "
                                "(it has Q8/Tiny-Q8_0.gguf, Tiny-Q4_K_M.gguf, mtp-Tiny-Q8_0.gguf)")
    assert r.exit_code == 6  # the Hub has no such file


def test_split_base_by_tag_is_downloaded_whole(hub, models, tmp_path):
    shards = split_model(models["base"], 2)
    hub.put_files("tester/Tiny-base", {f"F16/{p.name}": p.read_bytes() for p in shards})
    local, remote = tmp_path / "local.gguf", tmp_path / "remote.gguf"
    assert attach(str(shards[0]), "--mtp-from", str(models["donor"]), "-o", str(local)).exit_code == 0
    r = attach("hf://tester/Tiny-base:F16", "--mtp-from", str(models["donor"]), "-o", str(remote),
               "--endpoint", hub.url)
    assert r.exit_code == 0, r.output
    outs = sorted(tmp_path.glob("remote-*.gguf"))
    assert [p.name for p in outs] == ["remote-00001-of-00002.gguf", "remote-00002-of-00002.gguf"]
    assert [p.read_bytes() for p in outs] == [p.read_bytes() for p in sorted(tmp_path.glob("local-*.gguf"))]


def test_single_safetensors_file_in_a_repo(hub, tmp_path):
    ckpt = build_checkpoint(tmp_path / "m", "moe-f16-per-expert")
    c = hub.put_files("tester/Moe", {p.name: p.read_bytes() for p in ckpt.iterdir()})
    src = resolve_mtp_source(f"hf://tester/Moe/model.safetensors@{c}", hub=HubOptions(endpoint=hub.url))
    assert src.label == f"hf://tester/Moe/model.safetensors@{c}"
    assert fingerprint(src.path)["tensors"] == REFS["moe-f16-per-expert-auto.gguf"]["tensors"]


def test_dry_run_fetches_headers_only_and_leaves_nothing(hub, models, tmp_path):
    hub.put_files(DONOR, {"Tiny-MTP-F16.gguf": models["donor"].read_bytes()})
    r = attach(str(models["base"]), "--mtp-from", f"hf://{DONOR}/Tiny-MTP-F16.gguf", "-o", str(tmp_path / "o.gguf"),
               "--endpoint", hub.url, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output[r.output.index("{"):])
    plan = d["plan"]
    assert d["dry_run"] is True and plan["mtp_layers"] == [4] and len(plan["tensors"]) == 15
    h = header_bytes(models["donor"])
    assert h <= hub.bytes_sent <= h + max(512, h // 4)  # the header, and what was read past it
    assert not (tmp_path / "o.gguf").exists()
    assert not list((tmp_path / "mtpgraft_cache" / "mtp-sources").glob("*.gguf"))


def test_interrupted_fetch_resumes_in_the_next_run(hub, models, tmp_path):
    """A run that gives up keeps what it received; the next run fetches only the rest."""
    c = hub.put_files(DONOR, {"Tiny-MTP-F16.gguf": models["donor"].read_bytes()})

    class DropAlways:
        tensors = down = False

        def total(self, n: int) -> None:
            hub.drop("/_cdn/", after=n // 3, times=1)
            self.tensors = True

        def update(self, n: int) -> None:
            if self.tensors and not self.down:  # tensor bytes arrive: after this answer the Hub is down
                hub.fail("GET", r"/(resolve|_cdn)/", 502, times=100)
                self.down = True

    spec = f"hf://{DONOR}/Tiny-MTP-F16.gguf"
    with pytest.raises(HubError) as e:
        resolve_mtp_source(spec, progress=DropAlways(), hub=HubOptions(endpoint=hub.url, sleep=Sleeps(), retries=2))
    m = str(e.value)
    assert m.startswith(f"fetching hf://{DONOR}/Tiny-MTP-F16.gguf@{c[:12]} failed 2 times (HTTP 502); run the same "
                        "command again: the ") and m.endswith(" bytes already fetched of this range are kept and not "
                                                              "fetched again")
    kept = int(m.split("the ")[-1].split(" bytes")[0].replace(",", ""))
    assert kept > 0
    hub.faults.clear()
    src = resolve_mtp_source(spec, hub=HubOptions(endpoint=hub.url))
    assert src.fetched_bytes == src.mtp_bytes + _padding(models["donor"]) - kept
    assert hub.bytes_sent <= (mtp_bytes(models["donor"]) + header_bytes(models["donor"])) * 1.01


def test_a_damaged_cached_range_is_completed_not_trusted(hub, models, tmp_path):
    """A range file of the wrong size (a copy cut short, say) is completed, never used as it is; once
    the head is written the tensor ranges are dropped (the head is on disk once)."""
    hub.put_files(DONOR, {"Tiny-MTP-F16.gguf": models["donor"].read_bytes()})
    spec = f"hf://{DONOR}/Tiny-MTP-F16.gguf"
    first = resolve_mtp_source(spec, hub=HubOptions(endpoint=hub.url))
    good = first.path.read_bytes()
    ranges = tmp_path / "mtpgraft_cache" / "mtp-sources" / "ranges"
    assert max(p.stat().st_size for p in ranges.rglob("*") if p.is_file()) < 20_000  # headers only left
    first.path.unlink()
    start = _first_mtp_offset(models["donor"])
    end = start + first.mtp_bytes + _padding(models["donor"])
    cut = next(ranges.rglob("*.gguf")) / f"{start}-{end}"
    cut.write_bytes(models["donor"].read_bytes()[start:start + 1000])
    again = resolve_mtp_source(spec, hub=HubOptions(endpoint=hub.url))
    assert again.fetched_bytes == end - start - 1000
    assert again.path.read_bytes() == good
