"""`mtpgraft inspect hf://...`: published repos audited from their GGUF headers, through the real
huggingface_hub client against the loopback Hub (tests/fakehub.py), which counts the bytes it serves.

Repos are laid out as quantizers publish them: in-file MTP quants; trunk-only quants with `mtp-`
sidecars (one in a folder `-hf` never searches, one of another model); broken grafts only the header
reveals (block_count not counting the head, a per-layer array one short); a split quant; a head in
a type mainline does not know. Every verdict is compared with local `inspect --json` of the same file;
the tools-marked test compares the tags with what the REAL `llama-server -hf` loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft import ggml_types
from mtpgraft.cli import cli
from mtpgraft.gguf_io import GGUFFile, GGUFValueType, OutTensor
from mtpgraft.testmodels.synthetic import make_model, rewrite, split_model

V = GGUFValueType
IQ4_K = 139  # an ik_llama.cpp type id (256 elements, 144 bytes a block); mainline's loader refuses it


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Small qwen35 models with a real-sized vocabulary (so a header is KBs, as a real one is MBs)."""
    d = tmp_path_factory.mktemp("audit-models")
    kw = {"vocab": 1024}
    made = {"mtpgraft.version": "0.9", "quantize.imatrix.dataset": "calibration.txt"}
    out = {"full": make_model(d / "full.gguf", layout="full", extra_kv=made, **kw),
           "base": make_model(d / "base.gguf", layout="base", **kw),
           "side": make_model(d / "side.gguf", layout="mtp-only", **kw),
           "alien": make_model(d / "alien.gguf", layout="mtp-only", vocab_salt="x", **kw)}
    out["bc"] = rewrite(out["full"], d / "bc.gguf", set_kv={"qwen35.block_count": (V.UINT32, 4, None)})
    out["short"] = rewrite(out["full"], d / "short.gguf", set_kv={
        "qwen35.attention.recurrent_layers": (V.ARRAY, [True, True, True, False], V.BOOL)})
    out["split"] = d / "split"
    out["split"].mkdir()
    src = make_model(out["split"] / "Tiny-Q8_0.gguf", layout="full", **kw)
    split_model(src, 3)
    src.unlink()
    wide = make_model(d / "wide.gguf", layout="full", n_embd=256, **kw)
    out["ik"] = rewrite(wide, d / "ik.gguf", tensors=lambda ts: [_ik(t) for t in ts])
    return out


def _ik(t: OutTensor) -> OutTensor:
    if t.name != "blk.4.nextn.eh_proj.weight":
        return t
    n = t.ne[0] * t.ne[1] // 256 * 144
    return OutTensor(t.name, t.ne, IQ4_K, n, produce=lambda: [bytes(n)])


def _b(p: Path) -> bytes:
    return p.read_bytes()


@pytest.fixture
def published(hub, hf_hermetic, files) -> dict[str, dict[str, Path]]:
    """The repos of account `q` (repo -> {repo path: local file})."""
    split = sorted(files["split"].glob("*.gguf"))
    layout = {
        "q/InFile-GGUF": {"InFile-Q4_K_M.gguf": files["full"], "InFile-Q8_0.gguf": files["full"]},
        "q/Sidecar-GGUF": {"Sidecar-Q4_K_M.gguf": files["base"], "Q8_0/Sidecar-Q8_0.gguf": files["base"],
                           "mtp-Sidecar-F16.gguf": files["side"]},
        "q/Hidden-GGUF": {"Hidden-Q8_0.gguf": files["base"], "MTP/mtp-Hidden-Q8_0.gguf": files["side"]},
        "q/Alien-GGUF": {"Alien-Q8_0.gguf": files["base"], "mtp-Alien-Q8_0.gguf": files["alien"]},
        "q/Broken-GGUF": {"Broken-Q8_0.gguf": files["bc"], "Broken-Q4_K_M.gguf": files["short"]},
        "q/Split-GGUF": {f"Q8_0/{p.name}": p for p in split},
        "q/Plain-GGUF": {"Plain-Q8_0.gguf": files["base"]},
    }
    for repo, tree in layout.items():
        hub.put_files(repo, {k: _b(v) for k, v in tree.items()})
    return layout


def audit(hub, *args: str):
    return CliRunner().invoke(cli, ["inspect", *args, "--endpoint", hub.url])


def audit_json(hub, *args: str) -> tuple[int, dict, str]:
    r = audit(hub, *args, "--json")
    return r.exit_code, json.loads(r.stdout), r.stderr


def by_repo(d: dict) -> dict[str, dict]:
    return {r["repo_id"]: r for r in d["repos"]}


def header_bytes(paths) -> int:
    return sum(GGUFFile(p).header_size for p in paths)


def local_inspect(path: Path, *extra: str) -> dict:
    r = CliRunner().invoke(cli, ["inspect", str(path), "--json", *extra])
    d = json.loads(r.stdout)
    d.pop("shared_bytes")
    d.pop("path")
    return d


def test_every_verdict_equals_local_inspect_and_the_bytes_are_the_headers(hub, published, files):
    code, d, err = audit_json(hub, "hf://q")
    assert code == 1 and err.endswith("would load a wrong or no sidecar\n")  # broken files and tags
    repos = by_repo(d)
    assert sorted(repos) == sorted(published)
    for repo_id, tree in published.items():
        models = {m["path"]: m for m in repos[repo_id]["models"]}
        firsts = [p for p in tree if "-0000" not in p or "-00001-of-" in p]
        assert sorted(models) == sorted(firsts), repo_id
        for path, m in models.items():
            report = dict(m["report"])
            assert report.pop("path") == path
            assert report == local_inspect(tree[path]), path
            assert m["loads"] == report["consistent"]
    # every byte served was a header's (split: every shard's), read past the end by under 5%
    every = [f for tree in published.values() for f in tree.values()]
    assert header_bytes(every) < hub.bytes_sent <= header_bytes(every) * 1.05
    assert d["fetched_bytes"] == hub.bytes_sent and d["header_bytes"] == header_bytes(every)
    # a rerun fetches nothing: the range cache
    sent = hub.bytes_sent
    r = audit(hub, "hf://q")
    assert r.exit_code == 1 and hub.bytes_sent == sent
    assert r.stdout.rstrip().endswith(f"fetched 0 bytes of GGUF (the headers hold {header_bytes(every):,} "
                                      "bytes; listings not counted)")


def test_broken_grafts_are_caught_from_the_header(hub, published):
    code, d, _ = audit_json(hub, "hf://q/Broken-GGUF")
    assert code == 1
    (repo,) = d["repos"]
    problems = {m["path"]: m["problems"] for m in repo["models"]}
    assert not any(m["loads"] for m in repo["models"])
    assert any("block_count 4 does not count the MTP block" in p for p in problems["Broken-Q8_0.gguf"])
    assert ("key qwen35.attention.recurrent_layers has wrong array length; expected 5, got 4"
            in problems["Broken-Q4_K_M.gguf"])


def test_tags_resolve_as_llama_server_hf_and_the_sidecar_is_checked(hub, published):
    code, d, _ = audit_json(hub, "hf://q/Sidecar-GGUF", "hf://q/Hidden-GGUF", "hf://q/Alien-GGUF",
                            "hf://q/InFile-GGUF", "hf://q/Split-GGUF")
    tags = {(r["repo_id"], t["tag"]): t for r in d["repos"] for t in r["tags"]}
    got = {k: (t["model"], t["sidecar"], t["mtp"], bool(t["problem"])) for k, t in tags.items()}
    assert got == {
        ("q/Sidecar-GGUF", "Q4_K_M"): ("Sidecar-Q4_K_M.gguf", "mtp-Sidecar-F16.gguf", "sidecar", False),
        ("q/Sidecar-GGUF", "Q8_0"): ("Q8_0/Sidecar-Q8_0.gguf", "mtp-Sidecar-F16.gguf", "sidecar", False),
        ("q/Hidden-GGUF", "Q8_0"): ("Hidden-Q8_0.gguf", None, "none", True),
        ("q/Alien-GGUF", "Q8_0"): ("Alien-Q8_0.gguf", "mtp-Alien-Q8_0.gguf", "sidecar", True),
        ("q/InFile-GGUF", "Q4_K_M"): ("InFile-Q4_K_M.gguf", None, "in-file", False),
        ("q/InFile-GGUF", "Q8_0"): ("InFile-Q8_0.gguf", None, "in-file", False),
        ("q/Split-GGUF", "Q8_0"): ("Q8_0/Tiny-Q8_0-00001-of-00003.gguf", None, "in-file", False),
    }
    assert tags[("q/Hidden-GGUF", "Q8_0")]["unseen"] == ["MTP/mtp-Hidden-Q8_0.gguf"]
    assert "another vocabulary" in tags[("q/Alien-GGUF", "Q8_0")]["problem"]
    assert tags[("q/Split-GGUF", "Q8_0")]["model_files"] == [
        f"Q8_0/Tiny-Q8_0-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    (split,) = by_repo(d)["q/Split-GGUF"]["models"]  # three shards, one model, each header read
    assert len(split["files"]) == 3 and split["loads"] and split["report"]["split"]["count"] == 3
    assert code == 1  # the hidden and the alien sidecar
    text = audit(hub, "hf://q/Hidden-GGUF").stdout
    assert (":Q8_0 -> Hidden-Q8_0.gguf; no MTP; FAILS: no MTP head in Hidden-Q8_0.gguf, and llama-server -hf "
            "never looks where the sidecar is (MTP/mtp-Hidden-Q8_0.gguf: not in the model's folder or a "
            "parent)") in text


def test_a_tag_or_a_path_reads_only_its_files(hub, published, files):
    code, d, _ = audit_json(hub, "hf://q/Sidecar-GGUF:Q5_K_M")  # no such quant: nothing read, the tag fails
    assert code == 1 and hub.bytes_sent == 0 and d["repos"][0]["models"] == []
    assert d["repos"][0]["tags"][0]["problem"].startswith("no model file matches :Q5_K_M")
    code, d, _ = audit_json(hub, "hf://q/Sidecar-GGUF:Q8_0")
    (repo,) = d["repos"]
    assert code == 0 and [m["path"] for m in repo["models"]] == ["Q8_0/Sidecar-Q8_0.gguf", "mtp-Sidecar-F16.gguf"]
    assert hub.bytes_sent <= header_bytes([files["base"], files["side"]]) * 1.05
    sent = hub.bytes_sent
    code, d, _ = audit_json(hub, "hf://q/InFile-GGUF/InFile-Q8_0.gguf")
    assert code == 0 and [m["path"] for m in d["repos"][0]["models"]] == ["InFile-Q8_0.gguf"]
    assert 0 < hub.bytes_sent - sent <= header_bytes([files["full"]]) * 1.05
    code, d, _ = audit_json(hub, "hf://q/Alien-GGUF/Alien-Q8_0.gguf")  # the file and the sidecar its tag pairs
    ((tag,),) = [r["tags"] for r in d["repos"]]
    assert code == 1 and tag["sidecar"] == "mtp-Alien-Q8_0.gguf" and "another vocabulary" in tag["problem"]
    text = audit(hub, "hf://q/InFile-GGUF/InFile-Q8_0.gguf").stdout
    assert "      provenance: mtpgraft.version=0.9, quantize.imatrix.dataset=calibration.txt\n" in text
    r = audit(hub, "hf://q/InFile-GGUF/Nope-Q8_0.gguf")
    assert r.exit_code == 6 and "/Nope-Q8_0.gguf@" in r.stderr and "no such file in q/InFile-GGUF at main" in r.stderr


def test_refused_repos_get_one_line_each_and_stop_nothing(hub, published):
    hub.repos["q/Plain-GGUF"].gated = set()  # gated, terms not accepted: listed, files refused
    hub.create_repo("other/Secret-GGUF", private=True)
    r = audit(hub, "hf://q/InFile-GGUF", "hf://q/Plain-GGUF", "hf://other/Secret-GGUF", "hf://q/Nope-GGUF")
    assert r.exit_code == 0, r.stderr  # InFile is fine; the others are reported, not verdicts
    lines = [x for x in r.stderr.splitlines() if x.startswith("mtpgraft: ")]
    assert len(lines) == 3
    assert "q/Plain-GGUF is gated or private and no Hugging Face token was given" in lines[0]
    assert "repository other/Secret-GGUF not found" in lines[1]
    assert "repository q/Nope-GGUF not found" in lines[2]
    assert "summary: 2 model(s) (2 with MTP in the file), 0 sidecar(s): 2 load, 0 would not" in r.stdout
    r = audit(hub, "hf://other/Secret-GGUF", "hf://q/Nope-GGUF")
    assert r.exit_code == 6 and r.stderr.splitlines()[-1] == ("mtpgraft: error: none of the 2 repo(s) "
                                                               "could be audited")


def test_an_account_is_listed_page_by_page_and_only_mtp_filters(hub, published):
    hub.models_page = 2
    code, d, _ = audit_json(hub, "hf://q", "--only-mtp", "--jobs", "2")
    pages = [x for x in hub.requests if x.method == "GET" and x.path == "/api/models"]
    assert len(pages) == 4  # 7 repos, 2 a page
    repos = by_repo(d)
    assert "q/Plain-GGUF" not in repos and len(repos) == 6  # no MTP anywhere
    assert code == 1
    r = audit(hub, "hf://nobody")
    assert r.exit_code == 6 and "hf://nobody: no GGUF repo on" in r.stderr


def test_a_head_in_an_ik_only_type(hub, hf_hermetic, files):
    """Mainline's loader refuses the type. A type table that knows ik_llama.cpp's types says the file
    is ik_llama.cpp's only; one that does not reads it as a header llama.cpp refuses (the local
    inspect refuses it the same way)."""
    hub.put_files("q/Ik-GGUF", {"Ik-IQ4_K.gguf": _b(files["ik"])})
    code, d, _ = audit_json(hub, "hf://q/Ik-GGUF")
    (m,) = d["repos"][0]["models"]
    if ggml_types.tensor_type(IQ4_K) is None:
        assert code == 1 and not m["loads"] and m["runtimes"] == [] and m["report"] is None
        assert m["problems"][0].endswith("tensor blk.4.nextn.eh_proj.weight: unknown ggml type 139")
        local = CliRunner().invoke(cli, ["inspect", str(files["ik"])])
        assert local.exit_code == 3 and local.stderr.rstrip().endswith(m["problems"][0].split(": ", 1)[1])
    else:
        # the audit judges a file by the runtimes that load it: local inspect with that runtime agrees, and
        # with mainline's (the default) it names mainline's refusal
        assert m["runtimes"] == ["ik_llama.cpp"] and m["loads"] and code == 0
        assert m["report"] == {**local_inspect(files["ik"], "--runtime", "ik"), "path": m["path"]}
        assert local_inspect(files["ik"])["problems"] == [
            "llama.cpp's loader refuses it: tensor 'blk.4.nextn.eh_proj.weight' has invalid ggml type 139. "
            "should be in [0, 43)"]


def test_bad_references_are_usage_errors(hub, hf_hermetic):
    for ref in ("hf://q/x/model.safetensors", "hf://", "hf://q/x:bad tag"):
        r = audit(hub, ref)
        assert r.exit_code == 2 and r.stderr.startswith("mtpgraft: error: "), ref
    r = CliRunner().invoke(cli, ["inspect", "a.gguf", "b.gguf"])
    assert r.exit_code == 2 and "inspect local files one at a time" in r.stderr


# --------------------------------------------------------------------------- the real llama-server -hf


@pytest.mark.tools
def test_tags_equal_what_the_real_llama_server_hf_loads(hub, hf_env, tmp_path, monkeypatch, llama_cpp_dir):
    """Tiny models llama-server runs, published as quantizers do; each tag's prediction by the audit
    is what `llama-server -hf REPO:TAG --spec-type draft-mtp` loads (or refuses)."""
    from mtpgraft.check import resolve_server
    from mtpgraft.errors import ServerError
    from mtpgraft.hub.remote import HfRef, resolve_remote
    from mtpgraft.testmodels import build_tiny_model

    monkeypatch.setenv("MTPGRAFT_LLAMA_CPP", str(llama_cpp_dir))  # the range cache moves under tmp_path:
    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "mtpgraft_cache"))  # not the tools
    server = resolve_server()
    full = build_tiny_model(tmp_path / "full.gguf", layout="full")
    base = build_tiny_model(tmp_path / "base.gguf", layout="base")
    side = build_tiny_model(tmp_path / "side.gguf", layout="mtp-only")
    hub.put_files("q/Real-GGUF", {"Real-Q4_K_M.gguf": _b(full), "Q8_0/Real-Q8_0.gguf": _b(base),
                                  "Q8_0/mtp-Real-Q8_0.gguf": _b(side), "Q6_K/Real-Q6_K.gguf": _b(base),
                                  "MTP/mtp-Real-Q6_K.gguf": _b(side)})
    code, d, _ = audit_json(hub, "hf://q/Real-GGUF")
    tags = {t["tag"]: t for t in d["repos"][0]["tags"]}
    assert code == 1 and sorted(tags) == ["Q4_K_M", "Q6_K", "Q8_0"]  # Q6_K: its sidecar is unseen
    for tag in ("Q4_K_M", "Q8_0"):
        res = resolve_remote(HfRef("q/Real-GGUF", tag), endpoint=hub.url, server=server, cache_dir=hf_env)
        assert (res.model, list(res.model_files), res.mtp) == (
            tags[tag]["model"], tags[tag]["model_files"], tags[tag]["sidecar"]), tag
        assert not tags[tag]["problem"]
    assert tags["Q8_0"]["sidecar"] == "Q8_0/mtp-Real-Q8_0.gguf" and tags["Q4_K_M"]["mtp"] == "in-file"
    with pytest.raises(ServerError, match="failed to create MTP context"):  # the audit's failing tag
        resolve_remote(HfRef("q/Real-GGUF", "Q6_K"), endpoint=hub.url, server=server, cache_dir=hf_env)
    assert tags["Q6_K"]["problem"] and tags["Q6_K"]["unseen"] == ["MTP/mtp-Real-Q6_K.gguf", "Q8_0/mtp-Real-Q8_0.gguf"]


@pytest.mark.parametrize("first,last", [(0, 0), (300, 0), (3000, 0), (0, 300)])
def test_a_vocabulary_with_long_tokens_first_is_read_within_the_bound(hub, hf_hermetic, tmp_path, first, last):
    """Long special tokens first (gemma's, mistral's vocabularies) or last (qwen's): the first items are
    no guide to the array's end, and the reader must not jump past it on their word. (The guard is a
    reach: a piece goes at most ~2.5 times as far into a string array as read so far, and guesses from
    the later half of the items read; 3000 long tokens in 20000 is past any real vocabulary's share.)"""
    n = 20000
    long = [f"<special_token_{i:05d}_with_a_long_name>" for i in range(first + last)]
    tokens = long[:first] + [f"t{i}" for i in range(first, n - last)] + long[first:]
    src = make_model(tmp_path / "v.gguf", layout="full", vocab=n, n_embd=32)
    model = rewrite(src, tmp_path / "skew.gguf", set_kv={"tokenizer.ggml.tokens": (V.ARRAY, tokens, V.STRING)})
    hub.put_files("q/Vocab-GGUF", {"Vocab-Q8_0.gguf": _b(model)})
    assert audit(hub, "hf://q/Vocab-GGUF").exit_code == 0
    assert header_bytes([model]) < hub.bytes_sent <= header_bytes([model]) * 1.05
    assert len(hub.downloads("/_cdn/")) <= 16  # pieces, not thousands


# --------------------------------------------------------------------------- a published imatrix


def write_imatrix(path: Path, entries: dict[str, int]) -> Path:
    """An imatrix GGUF as llama-imatrix lays one out: NAME.in_sum2 (row length floats), NAME.counts."""
    from mtpgraft.gguf_io import CONVERTER, encode_kv, write_gguf

    ts = []
    for name, width in entries.items():
        for suffix, n in ((".in_sum2", width), (".counts", 1)):
            ts.append(OutTensor(name + suffix, (n,), 0, 4 * n, produce=lambda n=n: [bytes(4 * n)]))
    kvs = [encode_kv("general.type", V.STRING, "imatrix"), encode_kv("imatrix.datasets", V.ARRAY, ["calib.txt"],
                                                                      V.STRING)]
    with open(path, "wb") as fh:
        write_gguf(fh, kvs, ts, alignment=32, layout=CONVERTER)
    return path


def test_a_published_imatrix_is_fetched_once_and_checked_against_the_model(hub, hf_hermetic, files, tmp_path):
    from mtpgraft.gguf_io import GGUFModel
    from mtpgraft.quantize.plan import check_imatrix_fits, read_imatrix_coverage
    from mtpgraft.sources.hubimatrix import fetch_imatrix

    model = GGUFModel(files["full"])
    weights = {r.name: r.info.ne[0] for r in model.refs if len(r.info.ne) == 2 and r.name.startswith("blk.0.")}
    good = write_imatrix(tmp_path / "good.imatrix.gguf", weights)
    other = write_imatrix(tmp_path / "other.gguf", {**weights, "blk.9.ffn_up.weight": 64})
    wide = write_imatrix(tmp_path / "wide.gguf", {k: v * 2 for k, v in weights.items()})
    hub.put_files("q/Imx-GGUF", {"imatrix/Full.imatrix.gguf": _b(good), "other.imatrix.gguf": _b(other),
                                 "wide.imatrix.gguf": _b(wide)})
    ref = "hf://q/Imx-GGUF/imatrix/Full.imatrix.gguf"
    local = fetch_imatrix(ref, endpoint=hub.url)
    assert local.name == "Full.imatrix.gguf" and local.read_bytes() == _b(good)  # its name: quantize.imatrix.file
    assert hub.bytes_sent == len(_b(good))
    assert fetch_imatrix(ref, endpoint=hub.url) == local and hub.bytes_sent == len(_b(good))  # cached
    check_imatrix_fits(read_imatrix_coverage(local), model)
    for name, why in (("other", f"1 of its {len(weights) + 1} entries name tensors the model lacks (e.g. "
                                "blk.9.ffn_up.weight)"),
                      ("wide", "entry has 128 columns, the tensor's rows 64")):
        r = CliRunner().invoke(cli, ["quantize", str(files["full"]), "--types", "Q8_0", "--dry-run", "--imatrix",
                                     f"hf://q/Imx-GGUF/{name}.imatrix.gguf", "--endpoint", hub.url,
                                     "--out-dir", str(tmp_path / "out")])
        assert r.exit_code == 3 and r.stderr.startswith(f"mtpgraft: error: imatrix {name}.imatrix.gguf is not "
                                                        "for full.gguf: ") and why in r.stderr, r.stderr
    r = CliRunner().invoke(cli, ["quantize", str(files["full"]), "--types", "Q8_0", "--imatrix",
                                 "hf://q/Imx-GGUF/imatrix.dat", "--endpoint", hub.url])
    assert r.exit_code == 6 and "imatrix.dat" in r.stderr and "no such file" in r.stderr


@pytest.mark.tools
def test_quantize_with_a_published_imatrix_records_its_dataset(hub, hf_env, tmp_path, monkeypatch, llama_cpp_dir):
    """The real llama-imatrix's file, published and fetched back, quantizes like the local one: the
    outputs record its name and dataset (read by llama-quantize from the file) and its sha256."""
    from mtpgraft.gguf_io import GGUFModel
    from mtpgraft.imatrix import execute_imatrix, plan_imatrix
    from mtpgraft.testmodels import build_tiny_model

    monkeypatch.setenv("MTPGRAFT_LLAMA_CPP", str(llama_cpp_dir))
    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "mtpgraft_cache"))
    calibration = Path(__file__).resolve().parents[1] / "mtpgraft" / "data" / "calibration-tiny.txt"
    full = build_tiny_model(tmp_path / "tiny-full-F16.gguf", dtype="f16", layout="full", head="aligned")
    imx = Path(execute_imatrix(plan_imatrix(full, calibration, tmp_path / "tiny.imatrix.gguf", ctx=128,
                                        chunks=4, batch=128)).info.path)
    hub.put_files("q/Tiny-GGUF", {"tiny.imatrix.gguf": imx.read_bytes()})
    r = CliRunner().invoke(cli, ["quantize", str(full), "--types", "Q4_K_M", "--out-dir", str(tmp_path / "out"),
                                 "--imatrix", "hf://q/Tiny-GGUF/tiny.imatrix.gguf", "--endpoint", hub.url])
    assert r.exit_code == 0, r.stderr
    assert hub.bytes_sent == imx.stat().st_size  # fetched whole, once
    out = GGUFModel(tmp_path / "out" / "tiny-full-Q4_K_M.gguf")
    local = GGUFModel(imx)
    assert out.get("quantize.imatrix.file") == "tiny.imatrix.gguf"
    assert out.get("quantize.imatrix.dataset") == "calibration-tiny.txt" == local.get("imatrix.datasets")[0]
    assert out.get("mtpgraft.imatrix.dataset_sha256") == local.get("mtpgraft.imatrix.dataset_sha256")


def test_a_recipe_takes_a_published_imatrix(hub, hf_hermetic, files, tmp_path):
    from mtpgraft.gguf_io import GGUFModel
    from mtpgraft.recipe import parse_recipe
    from mtpgraft.recipe.steps import Context

    weights = {r.name: r.info.ne[0] for r in GGUFModel(files["full"]).refs if r.name.startswith("blk.0.ffn")}
    imx = write_imatrix(tmp_path / "m.imatrix.gguf", weights)
    hub.put_files("q/Imx-GGUF", {"M.imatrix.gguf": _b(imx)})
    text = (f'[model]\nname = "M"\nbase = "base.gguf"\n\n[imatrix]\nfile = "hf://q/Imx-GGUF/M.imatrix.gguf"\n\n'
            f'[quantize]\ntypes = ["Q4_K_M"]\n\n[check]\nn_max = [2]\n\n[hub]\nrepo = "me/M-GGUF"\ndry_run = true\nendpoint = "{hub.url}"\n')
    recipe = parse_recipe(text, path=tmp_path / "r.toml", work_dir=tmp_path / "work")
    got = Context(recipe).input("imatrix", "file")
    assert got.name == "M.imatrix.gguf" and got.read_bytes() == _b(imx) and hub.bytes_sent == len(_b(imx))
