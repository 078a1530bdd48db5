"""`--heads K`: keep a chain's first K MTP heads (what pruned publications ship), for the families
with several heads (step35, mimo2: three each).

The truth is the family builder's K-head model: the converter's file for a model with K heads (its
keys say K, its per-layer arrays have trunk + K entries) whose heads are the 3-head file's first K
byte for byte (proven here first). attach, detach, extract and sidecar with --heads K must write
that file's keys array by array and its tensors byte for byte; on the real llama-server a pruned
file drafts as a K-head model does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from gguf import GGUFReader
from tinyserve import rate, run, serve

from mtpgraft import testmodels as tm
from mtpgraft.errors import EXIT_INPUT, EXIT_USAGE, UsageError
from mtpgraft.graft import plan_attach, plan_detach, plan_extract
from mtpgraft.inspection import layer_of
from mtpgraft.sidecar import plan_sidecar
from mtpgraft.testmodels import family
from mtpgraft.testmodels.families import SPECS, step35_full
from mtpgraft.testmodels.synthetic import rewrite

CHAINS = ("step35", "mimo2")
HEADS = 3  # both families ship three heads


def mtpgraft(*args, code: int = 0) -> str:
    """The command's stdout, its exit code asserted."""
    return _invoke(args, code).stdout


def refused(*args, code: int, process: bool = False) -> str:
    """The error line of a command that must fail with `code`: one line, mtpgraft's own (`process`:
    from `python -m mtpgraft`, whose entry point also turns click's own usage errors into one)."""
    if process:
        res = subprocess.run([sys.executable, "-m", "mtpgraft", *map(str, args)], capture_output=True, text=True)
        assert res.returncode == code, res.stderr
        err = res.stderr
    else:
        err = _invoke(args, code).stderr
    assert err.startswith("mtpgraft: error: ") and err.count("\n") == 1, err
    return err


def _invoke(args, code: int):
    import mtpgraft.commands  # noqa: F401 - registers the commands
    from mtpgraft.cli import cli

    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exit_code == code, res.output
    return res


def _tensors(path) -> dict[str, bytes]:
    return {t.name: bytes(t.data) for t in GGUFReader(path).tensors}


def _keys(path) -> dict:
    return {k: f.contents() for k, f in GGUFReader(path).fields.items()
            if not k.startswith(("GGUF.", "tokenizer.", "mtpgraft.", "general.name"))}


def _longer_trunk(arch: str):
    """The family with a longer trunk, its heads the same (they draw from their own streams): an MTP
    source whose heads sit at other indices than the base's, so attach renumbers them together."""
    spec = SPECS[arch]
    if arch == "step35":  # four more layers: the heads land on the same full/SWA kinds (il % 4)
        more = tuple((f"attn_{'full' if step35_full(il) else 'swa'}", "moe") for il in range(4, 8))
    else:  # mimo2: one more SWA layer (its pattern ends in 1s, the heads' kind)
        more = (("attn_swa", "moe"),)
    return replace(spec, trunk=spec.trunk + more)


@pytest.fixture(scope="module", params=CHAINS)
def chain(request, tmp_path_factory) -> tuple[str, dict]:
    """The family's 3-head full and base files, the K-head full and MTP-only files of the builder
    (K = 1, 2), and a 3-head source with a longer trunk."""
    arch = request.param
    d = tmp_path_factory.mktemp(f"heads-{arch}")
    spec = SPECS[arch]
    assert spec.nextn == HEADS
    m: dict = {"full": family.build(spec, d / "full.gguf", dtype="f16"),
               "base": family.build(spec, d / "base.gguf", layout="base", dtype="f16"),
               "longer": family.build(_longer_trunk(arch), d / "longer.gguf", dtype="f16")}
    for k in (1, 2):
        m[f"full{k}"] = family.build(replace(spec, nextn=k), d / f"full{k}.gguf", dtype="f16")
        m[f"mtp{k}"] = family.build(replace(spec, nextn=k), d / f"mtp{k}.gguf", layout="mtp-only", dtype="f16")
    return arch, m


def test_the_k_head_model_is_the_three_head_models_front(chain):
    """What every other test compares with: the builder's K-head file holds the 3-head file's
    trunk and first K heads byte for byte, and its keys say K heads."""
    arch, m = chain
    trunk = SPECS[arch].trunk_layers
    full = _tensors(m["full"])
    for k in (1, 2):
        front = {n: b for n, b in full.items() if (lo := layer_of(n)) is None or lo[0] < trunk + k}
        assert _tensors(m[f"full{k}"]) == front
        keys = _keys(m[f"full{k}"])
        assert (keys[f"{arch}.block_count"], keys[f"{arch}.nextn_predict_layers"]) == (trunk + k, k)
        arrays = {key: len(v) for key, v in keys.items() if isinstance(v, list) and key.startswith(f"{arch}.")}
        assert arrays and set(arrays.values()) == {trunk + k}, arrays
        assert _keys(m[f"full{k}"]) != _keys(m["full"])


@pytest.fixture(scope="module")
def pruned(chain, tmp_path_factory) -> dict[tuple[str, int], Path]:
    """Every command with --heads K, K = 1, 2: {(what, K): output}."""
    arch, m = chain
    d = tmp_path_factory.mktemp(f"pruned-{arch}")
    out = {}
    for k in (1, 2):
        runs = {
            "attach": ("attach", m["base"], "--mtp-from", m["full"], "--mtp-type", "keep"),
            "attach-renumbered": ("attach", m["base"], "--mtp-from", m["longer"], "--mtp-type", "keep",
                                  "--layout", "converter"),
            "attach-replace": ("attach", m["full"], "--mtp-from", m["longer"], "--mtp-type", "keep", "--replace"),
            "detach": ("detach", m["full"]),
            "extract": ("extract", m["full"]),
            "sidecar": ("sidecar", m["base"], "--mtp-from", m["longer"], "--mtp-type", "keep"),
        }
        for what, args in runs.items():
            out[what, k] = d / f"{what}-{k}.gguf"
            mtpgraft(*args, "--heads", k, "-o", out[what, k])
    return out


@pytest.mark.parametrize("k", [1, 2])
def test_every_command_writes_the_k_head_converter_file(chain, pruned, k):
    arch, m = chain
    for what in ("attach", "attach-renumbered", "attach-replace", "detach"):
        assert _keys(pruned[what, k]) == _keys(m[f"full{k}"]), what  # every key, array by array
        assert _tensors(pruned[what, k]) == _tensors(m[f"full{k}"]), what  # byte for byte
    for what in ("extract", "sidecar"):
        assert _keys(pruned[what, k]) == _keys(m[f"mtp{k}"]), what
        assert _tensors(pruned[what, k]) == _tensors(m[f"mtp{k}"]), what
    # the converter's order where attach writes it so (the renumbered source's heads included)
    assert [t.name for t in GGUFReader(pruned["attach-renumbered", k]).tensors] == list(_tensors(m[f"full{k}"]))


def test_the_plans_say_which_heads_and_what_is_dropped(chain):
    arch, m = chain
    trunk = SPECS[arch].trunk_layers
    plan = plan_attach(m["base"], m["longer"], m["base"].with_name("x.gguf"), mtp_type="keep", heads=2)
    assert plan.mtp_layers == [trunk, trunk + 1]
    renamed = {a.source_name: a.name for a in plan.tensors}
    longer = len(_longer_trunk(arch).trunk)  # where the source's heads start
    assert renamed[f"blk.{longer}.nextn.eh_proj.weight"] == f"blk.{trunk}.nextn.eh_proj.weight"
    assert renamed[f"blk.{longer + 1}.nextn.eh_proj.weight"] == f"blk.{trunk + 1}.nextn.eh_proj.weight"
    assert not any(n.startswith(f"blk.{longer + 2}.") for n in renamed)  # the third head is not read
    assert {r.name for r in plan.source_refs} == set(renamed)  # nor hashed into the provenance
    d = plan_detach(m["full"], m["base"].with_name("y.gguf"), heads=1)
    assert d.mtp_layers == [trunk]
    assert {a.source_name for a in d.tensors if a.method == "drop"} == {
        n for n in _tensors(m["full"]) if (lo := layer_of(n)) and lo[0] > trunk}
    e = plan_extract(m["full"], m["base"].with_name("e.gguf"), heads=2)
    assert e.mtp_layers == [trunk, trunk + 1] and not any(a.name.startswith(f"blk.{trunk + 2}.") for a in e.tensors)
    whole = plan_sidecar(m["base"], m["full"], m["base"].with_name("z.gguf"), mtp_type="keep", heads=HEADS)
    assert whole.mtp_layers == list(range(trunk, trunk + HEADS))  # K = the source's heads: all of them


@pytest.mark.parametrize("k", [1, 2])
def test_inspect_reports_every_kept_head(chain, pruned, k):
    arch, m = chain
    trunk = SPECS[arch].trunk_layers
    for (what, kk), path in pruned.items():
        if kk != k:
            continue
        rep = json.loads(mtpgraft("inspect", "--json", path))
        assert rep["consistent"], (what, rep["problems"])
        assert rep["mtp_layers"] == list(range(trunk, trunk + k)), what
        assert (rep["nextn_predict_layers"], rep["block_count"]) == (k, trunk + k), what
        assert rep["layout"] == ("mtp-only" if what in ("extract", "sidecar") else "full"), what


def test_a_chain_with_a_gap_is_refused(chain, tmp_path):
    """Head 1 removed by hand, the keys still saying three: inspect refuses it, and no command takes
    heads from it (nor prunes it into something that looks whole)."""
    arch, m = chain
    trunk = SPECS[arch].trunk_layers
    gap = rewrite(m["full"], tmp_path / "gap.gguf",
                  drop_tensors={n for n in _tensors(m["full"]) if n.startswith(f"blk.{trunk + 1}.")})
    rep = json.loads(mtpgraft("inspect", "--json", gap, code=1))
    assert not rep["consistent"] and rep["mtp_layers"] == [trunk, trunk + 2]
    assert any("not consecutive" in p for p in rep["problems"]), rep["problems"]
    for args in (("attach", m["base"], "--mtp-from", gap), ("detach", gap), ("extract", gap),
                 ("sidecar", m["base"], "--mtp-from", gap)):
        err = refused(*args, "--heads", 1, "-o", tmp_path / "out.gguf", code=EXIT_INPUT)
        assert "not consecutive" in err, err
    assert not (tmp_path / "out.gguf").exists()


def test_k_outside_the_heads_is_refused_in_one_line(chain, tmp_path):
    arch, m = chain
    out = tmp_path / "out.gguf"
    for args in (("attach", m["base"], "--mtp-from", m["full"]), ("detach", m["full"]), ("extract", m["full"]),
                 ("sidecar", m["base"], "--mtp-from", m["full"])):
        err = refused(*args, "--heads", 0, "-o", out, code=EXIT_USAGE, process=True)
        assert "--heads" in err, err
        err = refused(*args, "--heads", HEADS + 1, "-o", out, code=EXIT_INPUT)
        assert f"{HEADS} MTP block(s)" in err and f"pass --heads {HEADS} or fewer" in err, err
        assert not out.exists()
    with pytest.raises(UsageError, match=r"heads\) must be at least 1, not 0") as e:
        plan_detach(m["full"], out, heads=0)  # the library refuses it too, naming the setting
    assert e.value.exit_code == EXIT_USAGE


def test_a_single_head_family_takes_k_1_as_it_is(tmp_path):
    full = tm.build_tiny_model(tmp_path / "full.gguf", arch="glm4moe", dtype="f16")
    base = tm.build_tiny_model(tmp_path / "base.gguf", arch="glm4moe", layout="base", dtype="f16")
    for args, want in ((("attach", base, "--mtp-from", full, "--mtp-type", "keep"), full), (("detach", full), full)):
        out = tmp_path / f"{args[0]}.gguf"
        mtpgraft(*args, "--heads", 1, "-o", out)
        assert (_keys(out), _tensors(out)) == (_keys(want), _tensors(want)), args[0]
    err = refused("extract", full, "--heads", 2, "-o", tmp_path / "x.gguf", code=EXIT_INPUT)
    assert "has 1 MTP block(s) (blk." in err and "pass --heads 1 or fewer" in err, err
    trunk_only = tmp_path / "detach-all.gguf"
    mtpgraft("detach", full, "-o", trunk_only)
    err = refused("detach", trunk_only, "--heads", 1, "-o", tmp_path / "y.gguf", code=EXIT_INPUT)
    assert "has no MTP block to prune" in err, err


def test_a_gemma4_drafter_has_no_heads_to_keep(tmp_path):
    tgt = tm.build_tiny_model(tmp_path / "target.gguf", arch="gemma4", layout="base")
    asst = tm.build_tiny_model(tmp_path / "assistant.gguf", arch="gemma4", layout="assistant")
    err = refused("sidecar", tgt, "--mtp-from", asst, "--heads", 1, "-o", tmp_path / "s.gguf", code=EXIT_USAGE)
    assert "gemma4-assistant is copied as it is" in err and "leave --heads out" in err, err
    for args in (("extract", asst), ("detach", tgt), ("attach", tgt, "--mtp-from", asst)):
        err = refused(*args, "--heads", 1, "-o", tmp_path / "o.gguf", code=EXIT_INPUT)
        assert "-md" in err, err  # the drafter pair's own refusal
    assert not list(tmp_path.glob("[so].gguf"))


# ---------------------------------------------------------------------------------- llama-server


@pytest.mark.tools
@pytest.mark.parametrize("arch", CHAINS)
def test_pruned_chains_draft_as_their_heads_say(arch, llama_cpp_dir, tmp_path):
    """The mixed model (each head wrong on half the letter tokens): draft-mtp clamps n_max to the
    heads only for a chain (common/speculative.cpp: chain_heads = n_mtp_layers > 1), so pruned to two
    heads at n-max 4 it drafts as the 3-head file at n-max 2 (prose 1/2); pruned to one head it is a
    single-head model: n_max 4 stands and head 0 drafts every step (prose ~1/4, as a single head
    does). The aligned model pruned to one head still drafts every token right (1.0)."""
    mixed = tm.build_tiny_model(tmp_path / "mixed.gguf", arch=arch, head="mixed", dtype="f16")
    aligned = tm.build_tiny_model(tmp_path / "aligned.gguf", arch=arch, dtype="f16")
    files = {}
    for name, src, k in (("mixed-2", mixed, 2), ("mixed-1", mixed, 1), ("aligned-1", aligned, 1)):
        files[name] = tmp_path / f"{name}.gguf"
        mtpgraft("detach", src, "--heads", k, "-o", files[name])
    got = {}
    for name, path in files.items():
        with serve(path, llama_cpp_dir, spec_type="mtp", draft_n_max=4) as srv:
            got[name] = [rate(run(srv, p, n_predict=64)) for p in (tm.PROSE_PROMPT, tm.CODE_PROMPT)]
    assert abs(got["mixed-2"][0] - 1 / 2) < 0.06 and got["mixed-2"][1] == 1.0, got
    assert abs(got["mixed-1"][0] - 1 / 4) < 0.06 and got["mixed-1"][1] == 1.0, got
    assert got["aligned-1"] == [1.0, 1.0], got
