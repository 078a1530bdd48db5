"""`mtpgraft push` against a loopback Hub (tests/fakehub.py) driven by the real huggingface_hub client,
over both transports: Xet (hf-xet writing to a `local://` CAS folder) and classic LFS."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakehub import FakeHub, HubError

from mtpgraft import hashing
from mtpgraft import hub as hubmod
from mtpgraft.cli import cli
from mtpgraft.errors import HubError as MtpHubError
from mtpgraft.testmodels.synthetic import make_model

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

REPO = "tester/Model-MTP-GGUF"
CATEGORIES = {
    "code": {"acceptance": 0.91, "speedup": 1.83, "decode_tps": 40.2, "baseline_decode_tps": 22.0,
             "prefill_tps": 301.5, "best_n": 3},
    "factual": {"acceptance": 0.72, "speedup": 1.41, "decode_tps": 31.0, "baseline_decode_tps": 22.0,
                "prefill_tps": 299.0, "best_n": 3},
    "analysis": {"acceptance": 0.64, "speedup": 1.30, "decode_tps": 28.6, "baseline_decode_tps": 22.0,
                 "prefill_tps": 298.0, "best_n": 2},
    "creative": {"acceptance": 0.47, "speedup": 1.12, "decode_tps": 24.6, "baseline_decode_tps": 22.0,
                 "prefill_tps": 300.0, "best_n": 2},
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def hermetic(hf_hermetic, tmp_path, monkeypatch):
    """No real token, cache, telemetry or progress bars (conftest.hf_hermetic, and hf-xet's); the
    client's retry sleeps are instant."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_XET_CACHE", str(tmp_path / "xet_cache"))
    monkeypatch.setenv("HF_XET_TELEMETRY_ENABLED", "0")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_PROGRESS_BARS", True)
    # The client's retry back-off sleeps through the stdlib: no test waits for it.
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


@pytest.fixture(params=["xet", "lfs"])
def transport(request, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", request.param == "lfs")
    return request.param


@pytest.fixture
def lfs(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


@pytest.fixture
def fakehub(hub):
    """The loopback Hub (conftest.hub)."""
    return hub


@pytest.fixture
def api(fakehub):
    return hubmod.make_api(endpoint=fakehub.url, token=FakeHub.TOKEN)


# --------------------------------------------------------------------------- test data


# A quant's metadata as the card and the gate read it (name, license, base model, imatrix, provenance).
QUANT_KV = {"general.basename": "Model", "general.size_label": "1B", "general.license": "apache-2.0",
            "general.base_model.count": 1, "general.base_model.0.repo_url": "https://huggingface.co/org/Model",
            "quantize.imatrix.file": "imatrix.gguf", "quantize.imatrix.dataset": "calibration-v1.txt",
            "mtpgraft.version": "0.1.0", "mtpgraft.mtp.source": "org/Model-MTP-F16.gguf",
            "mtpgraft.mtp.source_sha256": "ab" * 32, "mtpgraft.mtp.type_policy": "keep",
            "mtpgraft.imatrix.dataset_sha256": "cd" * 32}


def write_gguf(path: Path, *, ftype: int = 15, seed: int = 0, mtp: bool = True, n_ff: int = 128,
               shards: int = 1, nextn_key: bool = True) -> Path:
    """A tiny qwen35 quant (mtpgraft.testmodels.synthetic, ~0.2 MB at n_ff 128) with a one-layer MTP block
    (blk.1, F16) labelled file type `ftype`; not runnable, but inspect-consistent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_model(path, trunk=1, layout="full" if mtp else "base", seed=seed, n_ff=n_ff, name="Model",
                      file_type=ftype, extra_kv=QUANT_KV, shards=shards,
                      drop_keys=() if nextn_key else ("qwen35.nextn_predict_layers",))


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def write_report(d: Path, models: list[list[Path]], *, verdict: str = "pass", chart: bool = True,
                 reasons: list[str] | None = None) -> Path:
    """A report.json as `mtpgraft check --report DIR` writes it; each model lists its files' sha256."""
    d.mkdir(parents=True, exist_ok=True)
    entries = [{"path": str(files[0]), "name": files[0].name,
                "files": [{"name": f.name, "sha256": sha256(f), "size": f.stat().st_size} for f in files],
                "verdict": verdict, "reasons": reasons or [], "acceptance": 0.71, "mtp_active": True,
                "categories": CATEGORIES} for files in models]
    report = {"mtpgraft_version": "0.1.0", "verdict": verdict, "reasons": reasons or [], "acceptance": 0.71,
              "llama_cpp_build": "b1234-0c1e570",
              "settings": {"n_max": [1, 2, 3, 4], "temperature": [0.0], "reps": 3, "n_predict": 128},
              "thresholds": {"min_acceptance": 0.3, "min_speedup": None},
              "models": entries, "chart": "speedup.png" if chart else None, "extra_field": {"ignored": True}}
    if chart:
        (d / "speedup.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (d / "report.json").write_text(json.dumps(report))
    return d


@pytest.fixture
def quants(tmp_path):
    """Two quants (~0.2 MB and ~0.3 MB) in one folder and a passing report for both."""
    out = tmp_path / "out"
    q4 = write_gguf(out / "Model-Q4_K_M.gguf", ftype=15, seed=1)
    q8 = write_gguf(out / "Model-Q8_0.gguf", ftype=7, seed=2, n_ff=256)
    rep = write_report(tmp_path / "check", [[q4], [q8]])
    return out, q4, q8, rep


def push(fakehub, *args: str, token: str | None = FakeHub.TOKEN):
    argv = ["push", *args, "--endpoint", fakehub.url]
    if token is not None:
        argv += ["--token", token]
    return CliRunner().invoke(cli, argv)


def commits(fakehub, repo=REPO, ref="main") -> list:
    repo_ = fakehub.repos[repo]
    out, oid = [], repo_.refs[ref]
    while oid is not None:
        out.append(repo_.commits[oid])
        oid = repo_.commits[oid].parent
    return out


def xorb_bytes(fakehub) -> int:
    return sum(n for p, n in fakehub.cas_files().items() if "/xorbs/default." in p and not p.endswith(".tagset"))


# --------------------------------------------------------------------------- a full push


def test_push_publishes_files_and_measured_card(fakehub, api, quants, transport, tmp_path, monkeypatch):
    out, q4, q8, rep = quants
    if transport == "lfs":  # the planned sha256 is handed to the client: it must not hash again
        import huggingface_hub.lfs

        def no_hash(*a, **k):
            raise AssertionError("the client re-hashed a file")

        monkeypatch.setattr(huggingface_hub.lfs, "sha_fileobj", no_hash)
        fakehub.lfs_multipart_chunk = 100_000  # q8 goes up in parts
    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep))
    assert r.exit_code == 0, r.output + r.stderr
    assert f"pushed 4 file(s) to {REPO}" in r.stdout

    head = fakehub.head(REPO)
    assert sorted(head.files) == [".gitattributes", "Model-Q4_K_M.gguf", "Model-Q8_0.gguf", "README.md",
                                  f"charts/speedup-{sha256(rep / 'speedup.png')[:12]}.png"]
    for f in (q4, q8):
        e = head.files[f.name]
        assert (e.sha256, e.size) == (sha256(f), f.stat().st_size)
        if transport == "lfs":
            assert e.content == f.read_bytes()
            assert fakehub.lfs_bytes_received >= q4.stat().st_size + q8.stat().st_size
        else:
            assert fakehub.xet_has_sha256(sha256(f)) and fakehub.lfs_bytes_received == 0
    assert any("/_lfs/part/" in q.path for q in fakehub.requests) == (transport == "lfs")
    assert any("/xet-write-token/" in q.path for q in fakehub.requests) == (transport == "xet")

    # one commit on top of the repo's initial one, with the message and description table
    history = commits(fakehub)
    assert len(history) == 2
    assert history[0].title == "Add Q4_K_M, Q8_0 MTP GGUF quants of org/Model"
    assert f"| Model-Q8_0.gguf | {q8.stat().st_size / 1000:.1f} kB | `{sha256(q8)}` |" in history[0].description

    # the README, fetched back with the real client, parsed with huggingface_hub's ModelCard
    from huggingface_hub import ModelCard

    readme = api.hf_hub_download(REPO, "README.md", cache_dir=str(tmp_path / "dl"))
    card = ModelCard.load(readme)
    data = card.data.to_dict()
    assert data["base_model"] == "org/Model"
    assert data["base_model_relation"] == "quantized"
    assert data["quantized_by"] == "tester"
    assert data["license"] == "apache-2.0"
    assert data["pipeline_tag"] == "text-generation"
    assert data["tags"] == ["gguf", "llama.cpp", "mtp", "speculative-decoding", "imatrix"]
    text = card.text
    assert f"| {sha256(q4)}" not in text and f"`{sha256(q4)}`" in text
    assert "| Q8_0 | 1 layer, F16 |" in text
    assert "| code | 91% | 1.83× | 40.2 | 22.0 | 301.5 | 3 |" in text
    assert "| creative | 47% | 1.12× | 24.6 | 22.0 | 300.0 | 2 |" in text
    # 3 and 2 each won two tasks; 3's tasks sped up more
    assert f"llama-server -hf {REPO}:Q4_K_M --spec-type draft-mtp --spec-draft-n-max 3" in text
    assert f"hf download {REPO} Model-Q8_0.gguf --local-dir ." in text
    assert "llama.cpp b1234-0c1e570" in text
    assert "`org/Model-MTP-F16.gguf` (sha256 `" + "ab" * 32 + "`)" in text
    assert "dataset `calibration-v1.txt`, sha256 `" + "cd" * 32 + "`" in text
    assert f"![MTP speedup per task](charts/speedup-{sha256(rep / 'speedup.png')[:12]}.png)" in text
    assert "Not verified" not in text

    if transport == "lfs":  # the bytes come back through the real client too
        got = api.hf_hub_download(REPO, q8.name, cache_dir=str(tmp_path / "dl"))
        assert Path(got).read_bytes() == q8.read_bytes()


def test_second_identical_push_sends_nothing(fakehub, quants, transport):
    out, q4, q8, rep = quants
    assert push(fakehub, str(out), "--repo", REPO, "--report", str(rep)).exit_code == 0
    fakehub.clear_log()
    received, xorbs = fakehub.lfs_bytes_received, xorb_bytes(fakehub)

    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep))
    assert r.exit_code == 0, r.stderr
    assert "already up to date; nothing sent (4 files read back" in r.stdout
    assert fakehub.writes() == []
    assert len(commits(fakehub)) == 2
    assert (fakehub.lfs_bytes_received, xorb_bytes(fakehub)) == (received, xorbs)


def test_sha256_is_cached_by_path_size_and_mtime(fakehub, api, quants, monkeypatch):
    out, q4, q8, rep = quants
    hubmod.plan_push([out], repo_id=REPO, api=api, report_dirs=[rep])
    calls = []

    class Spy:
        @staticmethod
        def sha256(*a):
            calls.append(a)
            return hashlib.sha256(*a)

    monkeypatch.setattr(hashing, "hashlib", Spy)
    hubmod.plan_push([out], repo_id=REPO, api=api, report_dirs=[rep])
    assert calls == []
    os.utime(q4, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: hashed again
    hubmod.plan_push([out], repo_id=REPO, api=api, report_dirs=[rep])
    assert len(calls) == 1


# --------------------------------------------------------------------------- interruptions


def test_failed_upload_resumes_without_resending(fakehub, quants, lfs):
    out, q4, q8, rep = quants
    q8_oid = sha256(q8)
    fakehub.fail("PUT", f"/_lfs/upload/{q8_oid}", 500, times=100)  # outlasts the client's retries
    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep))
    assert r.exit_code == 6
    err = r.stderr.strip().splitlines()[-1]  # info lines (the plan) come before the one error line
    assert err.startswith("mtpgraft: error: Model-Q8_0.gguf: the Hub failed to push (500: injected failure)")
    assert "run the same push again" in err
    assert len(commits(fakehub)) == 1  # the repo was created, nothing committed
    assert sha256(q4) in fakehub.lfs_objects and q8_oid not in fakehub.lfs_objects

    fakehub.faults.clear()
    before = fakehub.lfs_bytes_received
    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep))
    assert r.exit_code == 0, r.stderr
    assert fakehub.lfs_bytes_received - before == q8.stat().st_size  # q4 was not sent again
    assert fakehub.head(REPO).files[q8.name].content == q8.read_bytes()
    assert len(commits(fakehub)) == 2


def test_transient_server_errors_are_retried(fakehub, quants, lfs):
    out, q4, q8, rep = quants
    fakehub.fail("POST", r"/info/lfs/objects/batch$", 503, times=2)
    fakehub.fail("PUT", "/_lfs/upload/", 500, times=2)
    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep))
    assert r.exit_code == 0, r.stderr
    assert [q.status for q in fakehub.requests if "batch" in q.path] == [503, 503, 200]
    assert len(commits(fakehub)) == 2


def test_rejected_commit_resumes_without_resending(fakehub, quants, transport):
    out, q4, q8, rep = quants
    rejected = []

    def reject_once(repo_id, header):
        if not rejected:
            rejected.append(header["summary"])
            return HubError(422, "commit rejected by a pre-receive hook")
        return None

    fakehub.on_commit = reject_once
    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep))
    assert r.exit_code == 6
    assert r.stderr.strip().splitlines()[-1] == (f"mtpgraft: error: cannot push on {REPO} (422: commit "
                                                 "rejected by a pre-receive hook)")
    assert len(commits(fakehub)) == 1
    received, xorbs = fakehub.lfs_bytes_received, xorb_bytes(fakehub)
    assert received or xorbs

    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep))
    assert r.exit_code == 0, r.stderr
    assert (fakehub.lfs_bytes_received, xorb_bytes(fakehub)) == (received, xorbs)  # nothing re-sent
    assert sorted(fakehub.head(REPO).files)[1:3] == ["Model-Q4_K_M.gguf", "Model-Q8_0.gguf"]


def test_concurrent_change_fails_loudly(fakehub, api, quants, lfs):
    out, q4, q8, rep = quants
    fakehub.create_repo(REPO)
    plan = hubmod.plan_push([out], repo_id=REPO, api=api, report_dirs=[rep])
    fakehub.commit_files(REPO, {"notes.txt": b"someone else"})
    with pytest.raises(MtpHubError, match=r"changed on the Hub while pushing \(412: A commit has happened"):
        hubmod.execute_push(plan, api=api)
    assert commits(fakehub)[0].title == "concurrent change"
    # planning again picks up the new parent
    plan = hubmod.plan_push([out], repo_id=REPO, api=api, report_dirs=[rep])
    result = hubmod.execute_push(plan, api=api)
    assert "notes.txt" in fakehub.head(REPO).files and result.commit_oid == fakehub.head(REPO).oid


def test_file_changed_after_planning_is_not_pushed(fakehub, api, quants, lfs):
    out, q4, q8, rep = quants
    plan = hubmod.plan_push([out], repo_id=REPO, api=api, report_dirs=[rep])
    os.utime(q8, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(MtpHubError, match="Model-Q8_0.gguf changed since the push was planned"):
        hubmod.execute_push(plan, api=api)
    assert fakehub.writes() == []


# --------------------------------------------------------------------------- the gate


def test_unverified_file_is_refused(fakehub, tmp_path, quants):
    out, q4, q8, _ = quants
    rep = write_report(tmp_path / "only-q4", [[q4]])
    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep))
    assert r.exit_code == 6
    assert r.stderr.strip().splitlines()[-1] == (
        "mtpgraft: error: refusing to push: Model-Q8_0.gguf: no check report lists its sha256 "
        f"({sha256(q8)[:12]}): the file changed since the check, or it was not checked; run "
        "`mtpgraft check --report DIR` on it, or push with --no-verify")
    assert "refused    Model-Q8_0.gguf" in r.stdout
    assert fakehub.requests == [] and REPO not in fakehub.repos


def test_failed_check_is_refused(fakehub, tmp_path, quants):
    out, q4, q8, _ = quants
    rep = write_report(tmp_path / "fail", [[q4], [q8]], verdict="fail",
                       reasons=["acceptance 0.12 below 0.3"])
    r = push(fakehub, str(q8), "--repo", REPO, "--report", str(rep))
    assert r.exit_code == 6
    assert "Model-Q8_0.gguf: its check failed (acceptance 0.12 below 0.3;" in r.stderr
    assert fakehub.writes() == []


def test_no_report_is_refused_and_no_verify_says_so(fakehub, quants, api, tmp_path):
    out, q4, q8, rep = quants
    r = push(fakehub, str(q4), "--repo", REPO)
    assert r.exit_code == 6
    assert "Model-Q4_K_M.gguf: no check report given" in r.stderr

    r = push(fakehub, str(q4), "--repo", REPO, "--no-verify")
    assert r.exit_code == 0, r.stderr
    assert "not verified (--no-verify)" in r.stderr
    text = fakehub.head(REPO).files["README.md"].content.decode()
    assert "> **Not verified.**" in text and "**not checked with llama-server** (`--no-verify`)" in text
    assert "Nothing was measured for these files (pushed with `--no-verify`)." in text
    assert f"llama-server -hf {REPO}:Q4_K_M --spec-type draft-mtp --spec-draft-n-max 3" in text
    assert "not checked" in commits(fakehub)[0].description


def test_inconsistent_gguf_is_refused_even_without_verify(fakehub, tmp_path):
    bad = write_gguf(tmp_path / "bad" / "Model-Q4_K_M.gguf", nextn_key=False)  # MTP tensors, no key
    plain = write_gguf(tmp_path / "plain" / "Model-Q4_K_M.gguf", mtp=False, nextn_key=False)
    junk = tmp_path / "junk" / "Model-Q5_K_M.gguf"
    junk.parent.mkdir()
    junk.write_bytes(b"\0" * 64)
    for path, why in ((bad, "inspect found inconsistent MTP metadata: MTP tensors (blk.1) present but "
                            "qwen35.nextn_predict_layers is missing"),
                      (plain, "has no MTP head"),
                      (junk, "not a readable GGUF")):
        r = push(fakehub, str(path), "--repo", REPO, "--no-verify")
        assert r.exit_code == 6
        assert f"error: refusing to push: {path.name}: {why}" in r.stderr
    assert fakehub.requests == []


def test_split_set_needs_every_shard_checked(fakehub, api, tmp_path, lfs):
    write_gguf(tmp_path / "q6" / "Model-Q6_K.gguf", ftype=18, seed=3, shards=3)
    shards = sorted((tmp_path / "q6").glob("*.gguf"))
    assert len(shards) == 3
    partial = write_report(tmp_path / "partial", [shards[:2]], chart=False)
    plan = hubmod.plan_push([shards[1]], repo_id=REPO, api=api, report_dirs=[partial])
    assert [str(x) for x in plan.refusals] == [
        "Model-Q6_K-00001-of-00003.gguf: the check report does not list every shard of this split set; "
        "check the whole set"]

    full = write_report(tmp_path / "full", [shards], chart=False)
    plan = hubmod.plan_push([shards[1]], repo_id=REPO, api=api, report_dirs=[full])  # brings the set
    assert [f.path_in_repo for f in plan.to_send] == [s.name for s in shards] + ["README.md"]
    assert plan.commit_message == "Add Q6_K MTP GGUF quant of org/Model"
    hubmod.execute_push(plan, api=api)
    assert 'hf download tester/Model-MTP-GGUF --include "Model-Q6_K-*.gguf" --local-dir .' in \
        fakehub.head(REPO).files["README.md"].content.decode()
    assert all(fakehub.head(REPO).files[s.name].content == s.read_bytes() for s in shards)


def test_files_over_the_limit_must_be_split(api, quants):
    out, q4, q8, rep = quants
    plan = hubmod.plan_push([q8], repo_id=REPO, api=api, report_dirs=[rep], max_file_bytes=100_000)
    assert len(plan.refusals) == 1
    assert str(plan.refusals[0]) == (
        f"Model-Q8_0.gguf: {q8.stat().st_size / 1000:.1f} kB is over the 100.0 kB per-file limit: split it "
        "(llama-gguf-split --split --split-max-size 1M Model-Q8_0.gguf OUT) and push the shards")
    assert plan.to_send == ()


# --------------------------------------------------------------------------- dry run, branches, errors


def test_dry_run_makes_no_write_request(fakehub, quants, tmp_path):
    out, q4, q8, rep = quants
    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep), "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert "repo will be created" in r.stdout and "dry run: nothing was sent" in r.stdout
    assert fakehub.writes() == [] and REPO not in fakehub.repos

    assert push(fakehub, str(q4), "--repo", REPO, "--report", str(rep)).exit_code == 0
    fakehub.clear_log()
    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep), "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    status = {f["path_in_repo"]: f["status"] for f in plan["files"]}
    assert status == {"Model-Q4_K_M.gguf": "unchanged", "Model-Q8_0.gguf": "new",
                      f"charts/speedup-{sha256(rep / 'speedup.png')[:12]}.png": "unchanged",
                      "README.md": "changed"}
    assert plan["bytes_to_send"] == q8.stat().st_size + next(
        f["size"] for f in plan["files"] if f["path_in_repo"] == "README.md")
    assert plan["commit_message"] == "Add Q8_0 MTP GGUF quant of org/Model"
    assert "| [Model-Q8_0.gguf](" in plan["card"]
    assert fakehub.writes() == []

    # pushing Q8_0 alone: the card lists the Q4_K_M already there
    plan = hubmod.plan_push([q8], repo_id=REPO, api=hubmod.make_api(endpoint=fakehub.url), report_dirs=[rep])
    assert plan.user is None  # anonymous reads are enough to plan a public repo
    assert f"| Model-Q4_K_M.gguf | {q4.stat().st_size / 1000:.1f} kB | `{sha256(q4)}` |" in plan.card
    assert FakeHub.TOKEN not in r.stdout + r.stderr


def test_branch_is_created_and_pr_opened(fakehub, quants, lfs):
    out, q4, q8, rep = quants
    fakehub.create_repo(REPO)
    main = fakehub.head(REPO).oid
    r = push(fakehub, str(q4), "--repo", REPO, "--report", str(rep), "--revision", "mtp")
    assert r.exit_code == 0, r.stderr
    assert fakehub.head(REPO, "mtp").parent == main and fakehub.head(REPO).oid == main
    assert "Model-Q4_K_M.gguf" in fakehub.head(REPO, "mtp").files
    assert "hf download tester/Model-MTP-GGUF Model-Q4_K_M.gguf --revision mtp" in \
        fakehub.head(REPO, "mtp").files["README.md"].content.decode()

    r = push(fakehub, str(q8), "--repo", REPO, "--report", str(rep), "--create-pr")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.strip().endswith(f"/{REPO}/discussions/1")
    assert fakehub.head(REPO).oid == main  # main untouched
    assert "Model-Q8_0.gguf" in fakehub.head(REPO, "refs/pr/1").files


def test_bad_token_is_one_line(fakehub, quants):
    out, q4, q8, rep = quants
    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep), token="hf_not_a_token")
    assert r.exit_code == 6
    assert r.stderr == ("mtpgraft: error: the Hub rejected the token (401: Invalid credentials in "
                        "Authorization header): pass a valid --token, set HF_TOKEN, or run `hf auth login`\n")
    assert "hf_not_a_token" not in r.stdout + r.stderr
    assert fakehub.writes() == []


def test_no_token_is_one_line(fakehub, quants):
    out, q4, q8, rep = quants
    fakehub.create_repo(REPO)
    r = push(fakehub, str(out), "--repo", REPO, "--report", str(rep), token=None)
    assert r.exit_code == 6
    assert r.stderr.strip().splitlines()[-1].startswith("mtpgraft: error: no Hugging Face token: pass --token")
    assert fakehub.writes() == []


def test_missing_repo_and_forbidden_namespace_are_one_line(fakehub, quants):
    out, q4, q8, rep = quants
    r = push(fakehub, str(q4), "--repo", "tester/nope", "--report", str(rep), "--create-pr")
    assert r.exit_code == 6
    assert r.stderr == (f"mtpgraft: error: tester/nope not found on {fakehub.url}: --create-pr needs an "
                        "existing repo (check --repo, or drop --create-pr to create it)\n")

    r = push(fakehub, str(q4), "--repo", "someone-else/x", "--report", str(rep))
    assert r.exit_code == 6
    assert r.stderr.splitlines()[-1].startswith(
        "mtpgraft: error: not allowed to push someone-else/x (403: You don't have the rights to create a "
        "model under the namespace")
    assert r.stderr.splitlines()[-1].endswith("use a token with write access to someone-else")

    r = push(fakehub, str(q4), "--repo", "not-a-repo-id", "--report", str(rep))
    assert r.exit_code == 2
    assert r.stderr == "mtpgraft: error: --repo 'not-a-repo-id' is not OWNER/NAME\n"


def test_unreachable_endpoint_is_one_line(quants, monkeypatch):
    out, q4, q8, rep = quants
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    r = CliRunner().invoke(cli, ["push", str(q4), "--repo", REPO, "--report", str(rep),
                                 "--endpoint", f"http://127.0.0.1:{port}", "--token", FakeHub.TOKEN])
    assert r.exit_code == 6
    assert r.stderr.startswith(f"mtpgraft: error: cannot reach http://127.0.0.1:{port}")
    assert r.stderr.count("\n") == 1


def test_xet_token_refused_is_one_line(fakehub, quants, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    out, q4, q8, rep = quants
    fakehub.fail("GET", "/xet-write-token/", 403, times=100)
    r = push(fakehub, str(q4), "--repo", REPO, "--report", str(rep))
    assert r.exit_code == 6
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("mtpgraft: error: the Xet upload failed (") and "403 Forbidden" in last
    assert len(commits(fakehub)) == 1


def test_folder_layout_is_kept_and_imatrix_skipped(api, tmp_path):
    out = tmp_path / "out"
    write_gguf(out / "Model-Q4_K_M.gguf", seed=1)
    write_gguf(out / "Q6_K" / "Model-Q6_K.gguf", ftype=18, seed=2, shards=2)
    (out / "imatrix.gguf").write_bytes(b"GGUF")
    write_gguf(out / ".cache" / "huggingface" / "stale.gguf")
    plan = hubmod.plan_push([out], repo_id=REPO, api=api, verify=False)
    assert plan.refusals == ()
    assert [f.path_in_repo for f in plan.files] == [
        "Model-Q4_K_M.gguf", "Q6_K/Model-Q6_K-00001-of-00002.gguf", "Q6_K/Model-Q6_K-00002-of-00002.gguf",
        "README.md"]
    assert [m.quant for m in plan.models] == ["Q4_K_M", "Q6_K"]
    assert plan.warnings == (f"{out / 'imatrix.gguf'}: skipped (an imatrix file, not a model)",)
    assert 'hf download tester/Model-MTP-GGUF --include "Q6_K/Model-Q6_K-*.gguf" --local-dir .' in plan.card


def test_card_license_and_base_model_fallbacks():
    from huggingface_hub import ModelCard

    from mtpgraft.hub import card

    entry = hubmod.ModelEntry(
        name="M-Q4_0.gguf", files=(hubmod.FileRef("M-Q4_0.gguf", 10, "00" * 32),), size=10, quant="Q4_0",
        architecture="qwen35", nextn_predict_layers=1, mtp_head="1 layer, Q8_0", layout="full",
        metadata={"general.license": "Qwen Research", "general.name": "M"}, check=None)
    text = card.render_card(repo_id="o/M-GGUF", models=[entry], verified=False)
    data = ModelCard(text).data.to_dict()
    assert (data["license"], data["license_name"]) == ("other", "qwen-research")
    assert "base_model" not in data and "base_model_relation" not in data
    assert "imatrix" not in data["tags"]
    assert card.render_card(repo_id="o/M-GGUF", models=[entry], verified=False) == text  # deterministic


def test_token_from_environment_and_read_only_token(fakehub, quants, monkeypatch):
    out, q4, q8, rep = quants
    fakehub.create_repo(REPO)
    monkeypatch.setenv("HF_TOKEN", FakeHub.READ_TOKEN)
    r = push(fakehub, str(q4), "--repo", REPO, "--report", str(rep), token=None)
    assert r.exit_code == 6
    assert r.stderr.splitlines()[-1] == (
        f"mtpgraft: error: not allowed to push {REPO} (403: You don't have the rights to write with this "
        "token): use a token with write access to tester")
    assert len(commits(fakehub)) == 1

    monkeypatch.setenv("HF_TOKEN", FakeHub.TOKEN)
    r = push(fakehub, str(q4), "--repo", REPO, "--report", str(rep), token=None)
    assert r.exit_code == 0, r.stderr
    assert len(commits(fakehub)) == 2
