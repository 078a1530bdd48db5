"""`mtpgraft push` with MTP sidecars next to trunk-only quants: placed where llama.cpp looks, refused
before sending when llama.cpp would not find it or would pick another, pull requests to other
owners' repos with only the sidecar and a card section; `mtpgraft card` offline; --base-model.
The tools tests at the end publish and then load every :TAG with the real llama-server -hf."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakehub import FakeHub
from helpers import hub_api, quick_check_section, tiny_model_section

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")


@pytest.fixture(autouse=True)
def hermetic(hf_env, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "mtpgraft_cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # LFS: the loopback Hub keeps the bytes
    monkeypatch.setattr(time, "sleep", lambda s: None)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, bytes]:
    from mtpgraft.testmodels import build_tiny_model

    d = tmp_path_factory.mktemp("tiny-push")
    return {k: build_tiny_model(d / f"{k}.gguf", **kw).read_bytes() for k, kw in {
        "base": {"layout": "base"}, "full": {"layout": "full", "head": "aligned"},
        "sidecar": {"layout": "mtp-only", "head": "aligned"}}.items()}


def lay_out(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def push(hub, *args: str):
    return CliRunner().invoke(cli, ["push", *args, "--endpoint", hub.url, "--token", FakeHub.TOKEN])


def test_sidecar_in_a_sibling_folder_is_refused_before_sending(hub, tiny, tmp_path):
    out = lay_out(tmp_path / "out", {"Tiny-Q4_K_M.gguf": tiny["base"], "MTP/mtp-Tiny-F16.gguf": tiny["sidecar"]})
    r = push(hub, str(out), "--repo", "tester/Tiny-GGUF", "--no-verify")
    assert r.exit_code == 6
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("mtpgraft: error: refusing to push: ")
    assert ("MTP/mtp-Tiny-F16.gguf: llama.cpp would not find it: MTP holds no model file and is not a "
            "parent of one") in err
    assert "Tiny-Q4_K_M.gguf: has no MTP head and `llama-server -hf REPO:Q4_K_M --spec-type draft-mtp` " \
           "finds no mtp- sidecar for it (MTP/mtp-Tiny-F16.gguf is not in its folder" in err
    assert hub.writes() == []


def test_two_sidecars_where_the_wrong_one_would_be_picked_are_refused(hub, tiny, tmp_path):
    out = lay_out(tmp_path / "out", {"Tiny-Q4_K_M.gguf": tiny["base"], "mtp-Tiny-F16.gguf": tiny["sidecar"],
                                     "mtp-Other-Q4_K_M.gguf": tiny["sidecar"]})
    r = push(hub, str(out), "--repo", "tester/Tiny-GGUF", "--no-verify")
    assert r.exit_code == 6
    assert ("mtp-Other-Q4_K_M.gguf: `llama-server -hf REPO:Q4_K_M` would load it as the MTP draft of "
            "Tiny-Q4_K_M.gguf, not mtp-Tiny-F16.gguf (its name has the exact tag)") in r.stderr
    assert hub.writes() == []


def test_sidecars_ranked_equal_are_refused(hub, tiny, tmp_path):
    out = lay_out(tmp_path / "out", {"Tiny-Q4_K_M.gguf": tiny["base"], "mtp-Tiny-Q8_0.gguf": tiny["sidecar"],
                                     "mtp-Tiny.Q8_0.gguf": tiny["sidecar"]})
    r = push(hub, str(out), "--repo", "tester/Tiny-GGUF", "--no-verify")
    assert r.exit_code == 6 and "would depend on the Hub's file order" in r.stderr
    assert hub.writes() == []


def test_in_file_mtp_next_to_a_sidecar_warns_naming_the_files(hub, tiny, tmp_path):
    out = lay_out(tmp_path / "out", {"Tiny-Q8_0.gguf": tiny["full"], "Tiny-Q4_K_M.gguf": tiny["base"],
                                     "mtp-Tiny-F16.gguf": tiny["sidecar"]})
    r = push(hub, str(out), "--repo", "tester/Tiny-GGUF", "--no-verify", "--dry-run")
    assert r.exit_code == 0, r.stderr
    assert ("warning: Tiny-Q8_0.gguf has its MTP head in the file, but `llama-server -hf REPO:Q8_0 "
            "--spec-type draft-mtp` also loads mtp-Tiny-F16.gguf as a separate draft for it") in r.stderr


def test_sidecar_for_existing_quants_in_a_folder_per_quant(hub, tiny, tmp_path):
    """Quants already on the Hub in per-quant folders; one sidecar at the root serves them all."""
    hub.put_files("tester/Tiny-GGUF", {"Q4_K_M/Tiny-Q4_K_M.gguf": tiny["base"], "Q8_0/Tiny-Q8_0.gguf": tiny["base"]})
    side = lay_out(tmp_path / "side", {"mtp-Tiny-F16.gguf": tiny["sidecar"]}) / "mtp-Tiny-F16.gguf"
    r = push(hub, str(side), "--repo", "tester/Tiny-GGUF", "--no-verify", "--dry-run", "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)["plan"]
    assert plan["picks"] == [["Q4_K_M/Tiny-Q4_K_M.gguf", "mtp-Tiny-F16.gguf"],
                             ["Q8_0/Tiny-Q8_0.gguf", "mtp-Tiny-F16.gguf"]]
    assert [f["path_in_repo"] for f in plan["files"] if f["status"] == "new"] == ["mtp-Tiny-F16.gguf", "README.md"]


def test_pull_request_to_another_owner_sends_only_the_sidecar_and_a_card_section(hub, tiny, tmp_path):
    theirs = "someone/Tiny-GGUF"
    readme = b"---\nlicense: apache-2.0\n---\n\n# Their quants\n\nHand-made.\n"
    hub.put_files(theirs, {"Tiny-Q4_K_M.gguf": tiny["base"], "Tiny-Q8_0.gguf": tiny["base"], "README.md": readme})
    main_before = hub.head(theirs).oid
    out = lay_out(tmp_path / "out", {"mtp-Tiny-F16.gguf": tiny["sidecar"], "Tiny-Q6_K.gguf": tiny["base"]})
    r = push(hub, str(out), "--repo", theirs, "--create-pr", "--no-verify")
    assert r.exit_code == 6  # a quant in a PR to their repo
    assert "Tiny-Q6_K.gguf: a pull request to someone's repo sends only MTP sidecars" in r.stderr
    assert hub.writes() == []

    r = push(hub, str(out / "mtp-Tiny-F16.gguf"), "--repo", theirs, "--create-pr", "--no-verify")
    assert r.exit_code == 0, r.stderr
    assert hub.head(theirs).oid == main_before  # main untouched
    pr = hub.head(theirs, "refs/pr/1")
    changed = {p for p, e in pr.files.items() if hub.head(theirs).files.get(p) != e}
    assert changed == {"mtp-Tiny-F16.gguf", "README.md"}
    card = pr.files["README.md"].content.decode()
    assert card.startswith(readme.decode().rstrip())  # their card, kept
    assert "## MTP draft head (sidecar)" in card and "| Tiny-Q4_K_M.gguf | mtp-Tiny-F16.gguf |" in card
    assert f"llama-server -hf {theirs}:Q4_K_M --spec-type draft-mtp" in card


def test_base_model_on_the_card_and_card_offline(hub, tiny, tmp_path):
    out = lay_out(tmp_path / "out", {"Tiny-Q8_0.gguf": tiny["full"]})
    r = CliRunner().invoke(cli, ["card", str(out), "--repo", "tester/Tiny-GGUF", "--base-model", "Org/Tiny",
                                 "-o", str(tmp_path / "README.md")])
    assert r.exit_code == 0, r.stderr
    text = (tmp_path / "README.md").read_text()
    assert "base_model: Org/Tiny" in text and "base_model_relation: quantized" in text
    assert "llama-server -hf tester/Tiny-GGUF:Q8_0 --spec-type draft-mtp" in text
    assert "push would refuse Tiny-Q8_0.gguf: no check report given" in r.stderr
    r = CliRunner().invoke(cli, ["card", str(out), "-o", str(tmp_path / "README.md")])
    assert r.exit_code != 0 and "exists; pass --force" in r.stderr
    assert hub.requests == []  # offline
    r = push(hub, str(out), "--repo", "tester/Tiny-GGUF", "--no-verify", "--base-model", "Org/Tiny")
    assert r.exit_code == 0, r.stderr
    card = hub.head("tester/Tiny-GGUF").files["README.md"].content.decode()
    assert "base_model: Org/Tiny" in card and "base_model_relation: quantized" in card


# --------------------------------------------------------------------------- the real llama-server


@pytest.mark.tools
def test_trunk_only_quants_plus_one_sidecar_verified_remotely(hub, tmp_path, llama_cpp_dir):
    """Published by mtpgraft, then every :TAG loaded with the real llama-server -hf: the sidecar drafts at 1.0."""
    import subprocess

    from mtpgraft.testmodels import build_tiny_model

    src = build_tiny_model(tmp_path / "base-f16.gguf", layout="base")
    out = tmp_path / "out"
    (out / "Q8_0").mkdir(parents=True)
    for tag, dst in (("Q4_K_M", out / "Tiny-Q4_K_M.gguf"), ("Q8_0", out / "Q8_0" / "Tiny-Q8_0.gguf")):
        subprocess.run([str(llama_cpp_dir / "llama-quantize"), str(src), str(dst), tag], check=True,
                       capture_output=True)
    build_tiny_model(out / "mtp-Tiny-F16.gguf", layout="mtp-only", head="aligned")
    r = push(hub, str(out), "--repo", "tester/Tiny-GGUF", "--no-verify", "--verify-remote", "--json",
             "--llama-cpp", str(llama_cpp_dir))
    assert r.exit_code == 0, r.stderr
    checks = json.loads(r.stdout)["verify_remote"]
    assert [(c["tag"], c["resolved"]["model"], c["resolved"]["mtp"], c["verdict"], c["acceptance"])
            for c in checks] == [("Q8_0", "Q8_0/Tiny-Q8_0.gguf", "mtp-Tiny-F16.gguf", "pass", 1.0),
                                 ("Q4_K_M", "Tiny-Q4_K_M.gguf", "mtp-Tiny-F16.gguf", "pass", 1.0)]
    assert all(c["resolved"]["mismatches"] == [] for c in checks)


@pytest.mark.tools
def test_verify_remote_on_an_up_to_date_push_reports_the_check_and_fails(hub, tmp_path, llama_cpp_dir):
    """Nothing to send, yet --verify-remote still loads the :TAG: its failed check is shown and exits 1,
    as with --json (the text path used to print only "already up to date" and exit 0)."""
    from mtpgraft.testmodels import build_tiny_model

    out = tmp_path / "out"
    out.mkdir()
    build_tiny_model(out / "Tiny-Q8_0.gguf", layout="full", head="random")  # drafts ~never accepted
    assert push(hub, str(out), "--repo", "tester/Tiny-GGUF", "--no-verify").exit_code == 0
    commits = len(hub.writes())
    r = push(hub, str(out), "--repo", "tester/Tiny-GGUF", "--no-verify", "--verify-remote",
             "--llama-cpp", str(llama_cpp_dir))
    assert r.exit_code == 1, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "tester/Tiny-GGUF@main: already up to date; nothing sent (2 files read back with matching sha256)"
    assert lines[1].startswith("verify-remote tester/Tiny-GGUF:Q8_0: fail, acceptance ")
    assert r.stderr.splitlines()[-1].startswith(
        "mtpgraft: error: verify-remote: the published repo does not pass its check: Q8_0: ")
    r = push(hub, str(out), "--repo", "tester/Tiny-GGUF", "--no-verify", "--verify-remote", "--json",
             "--llama-cpp", str(llama_cpp_dir))
    assert r.exit_code == 1, r.stderr
    d = json.loads(r.stdout)
    assert d["result"]["commit_oid"] is None
    assert [(c["tag"], c["verdict"]) for c in d["verify_remote"]] == [("Q8_0", "fail")]
    assert len(hub.writes()) == commits  # neither verifying push wrote anything


@pytest.mark.tools
def test_in_file_mtp_quants_pushed_then_checked_from_the_hub(hub, tmp_path, llama_cpp_dir):
    import subprocess

    from mtpgraft.testmodels import build_tiny_model

    src = build_tiny_model(tmp_path / "full-f16.gguf", layout="full", head="aligned")
    out = tmp_path / "out"
    out.mkdir()
    for tag in ("Q4_K_M", "Q8_0"):
        subprocess.run([str(llama_cpp_dir / "llama-quantize"), str(src), str(out / f"Tiny-{tag}.gguf"), tag],
                       check=True, capture_output=True)
    rep = tmp_path / "check"
    r = CliRunner().invoke(cli, ["check", *map(str, sorted(out.glob("*.gguf"))), "--quick", "--categories",
                                 "code", "--n-predict", "32", "--ctx", "512", "--report", str(rep),
                                 "--llama-cpp", str(llama_cpp_dir)])
    assert r.exit_code == 0, r.stderr
    r = push(hub, str(out), "--repo", "tester/Tiny-MTP-GGUF", "--report", str(rep))
    assert r.exit_code == 0, r.stderr
    shutil.rmtree(out)  # what is measured next comes from the Hub
    r = CliRunner().invoke(cli, ["check", "hf://tester/Tiny-MTP-GGUF:Q4_K_M", "--endpoint", hub.url, "--quick",
                                 "--categories", "code", "--n-predict", "32", "--ctx", "512", "--json",
                                 "--llama-cpp", str(llama_cpp_dir)])
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["resolved"][0]["model"] == "Tiny-Q4_K_M.gguf" and d["resolved"][0]["mtp"] is None
    assert d["acceptance"] == 1.0 and d["verdict"] == "pass"


RECIPE = tiny_model_section("q") + """
[quantize]
types = ["Q8_0"]
""" + quick_check_section() + """
[hub]
repo = "tester/q-MTP-GGUF"
endpoint = "{url}"
base_model = "Org/Tiny"
verify_remote = true
"""


def test_recipe_hub_base_model_and_verify_remote_are_validated():
    from mtpgraft.errors import RecipeError
    from mtpgraft.recipe import parse_recipe

    r = parse_recipe(RECIPE.format(url="http://127.0.0.1:9"))
    assert r.hub is not None and r.hub.base_model == "Org/Tiny" and r.hub.verify_remote
    with pytest.raises(RecipeError, match=r"\[hub\] base_model: must be OWNER/NAME"):
        parse_recipe(RECIPE.format(url="x").replace('"Org/Tiny"', '"Tiny"'))
    with pytest.raises(RecipeError, match=r"\[hub\] verify_remote: loads the repo from main"):
        parse_recipe(RECIPE.format(url="x") + "create_pr = true\n")


@pytest.mark.tools
def test_recipe_push_verifies_the_published_repo_with_llama_server_hf(hub, tmp_path, llama_cpp_dir, monkeypatch):
    from mtpgraft.recipe import load_recipe, run_recipe

    p = tmp_path / "r.toml"
    p.write_text(RECIPE.format(url=hub.url))
    res = run_recipe(load_recipe(p, work_dir=tmp_path / "w"), llama_cpp=str(llama_cpp_dir), hub_api=hub_api)
    assert res.ok, [(s.step, s.message) for s in res.failed]
    push = res.steps[-1]
    assert push.step == "push" and "llama-server -hf drafts with :Q8_0 (in-file MTP, acceptance 1.00)" in push.message
    card = hub.head("tester/q-MTP-GGUF").files["README.md"].content.decode()
    assert "base_model: Org/Tiny" in card and "base_model_relation: quantized" in card
