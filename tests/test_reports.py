"""mtpgraft.reports: the one typed reader of report.json and quality.json. What it reads, and one
line naming the file and the key for a malformed file, in the library and through `mtpgraft push`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mtpgraft.errors import UsageError
from mtpgraft.reports import Counts, load_check_report, load_quality

REPORT = {
    "mtpgraft_version": "0.9", "llama_cpp_build": "b1 (0c1e570)", "chart": "speedup.png",
    "settings": {"n_max": [3], "temperature": [0.0]},
    "models": [{
        "path": "/q/m-Q4_K_M.gguf", "name": "m-Q4_K_M.gguf",
        "files": [{"name": "m-Q4_K_M.gguf", "sha256": "a" * 64, "size": 1}],
        "draft": {"name": "mtp-m-Q8_0.gguf", "sha256": "b" * 64, "size": 1},
        "verdict": "pass", "reasons": [], "acceptance": 0.75, "mtp_active": True,
        "categories": {"code": {"speedup": 1.5}}, "by_config": [{"n_max": 3}],
        "counters": {"accepted": 30, "draft_tokens": 40},
        "runs": [{"category": "code", "counters": {"accepted": 10, "draft_tokens": 20}}],
    }],
}
QUALITY = {
    "plan": {"reference": "/q/m-F16.gguf", "text": "t.txt", "ctx_size": 512, "chunks": 4, "build": "b1"},
    "models": [{"name": "m-Q4_K_M.gguf", "sha256": ["a" * 64], "figures": {"kld": {"text": "0.01", "value": 0.01}}}],
    "retention": {"m-Q4_K_M.gguf": {"*": 0.9, "code": None}},
}


def write(d: Path, name: str, data: object) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(json.dumps(data))
    return d


def test_a_check_report_is_read_as_typed_values(tmp_path: Path) -> None:
    rep = load_check_report(write(tmp_path, "report.json", REPORT))
    assert rep.path == tmp_path / "report.json" and rep.chart == "speedup.png"
    assert rep.llama_cpp_build == "b1 (0c1e570)" and rep.settings == {"n_max": [3], "temperature": [0.0]}
    (m,) = rep.models
    assert m.sha256s == {"a" * 64, "b" * 64} and m.verdict == "pass" and m.acceptance == 0.75
    assert m.mtp_active is True and m.by_config == ({"n_max": 3},) and m.counts == Counts(30, 40)
    assert [(r.category, r.counts) for r in m.runs] == [("code", Counts(10, 20))]
    # a report of an older version, without the keys added since, reads as empty values
    (old,) = load_check_report(write(tmp_path / "old", "report.json", {"models": [{"path": "x"}]})).models
    assert old.sha256s == set() and old.verdict is None and old.runs == () and old.counts == Counts()


def test_a_quality_report_is_read_as_typed_values(tmp_path: Path) -> None:
    q = load_quality(write(tmp_path, "quality.json", QUALITY) / "quality.json")
    (m,) = q.models
    assert m.sha256 == ("a" * 64,) and m.figures == {"kld": "0.01"} and q.reference == "/q/m-F16.gguf"
    assert q.retention == {"m-Q4_K_M.gguf": {"*": 0.9, "code": None}} and q.how["ctx_size"] == 512


def _with(data: dict, path: tuple, value: object) -> dict:
    data = json.loads(json.dumps(data))
    *parents, last = path
    obj = data
    for k in parents:
        obj = obj[k]
    obj[last] = value
    return data


@pytest.mark.parametrize(("path", "value", "message"), [
    (("models", 0, "files", 0, "sha256"), 5, "models[0].files[0].sha256 must be a string, got 5"),
    (("models", 0, "acceptance"), True, "models[0].acceptance must be an integer or a number, got true"),
    (("models", 0, "runs", 0, "counters", "accepted"), "10", "models[0].runs[0].counters.accepted must be an "
     "integer, got \"10\""),
    (("models", 0, "categories", "code"), [], "models[0].categories.code must be an object, got []"),
    (("models", 0, "by_config", 0), 3, "models[0].by_config[0] must be an object, got 3"),
    (("settings",), "fast", 'settings must be an object, got "fast"'),
    # what the card's tables read of each category's winner and of each run (check.tables)
    (("models", 0, "categories", "code", "speedup"), "1.5", 'models[0].categories.code.speedup must be an integer '
     'or a number, got "1.5"'),
    (("models", 0, "categories", "code", "best_n"), "3 | x", 'models[0].categories.code.best_n must be an integer, '
     'got "3 | x"'),
    (("models", 0, "categories", "code", "margin_sd"), "0.1", 'models[0].categories.code.margin_sd must be an '
     'integer or a number, got "0.1"'),
    (("models", 0, "categories", "code", "status"), "purple", 'models[0].categories.code.status must be one of green, '
     'yellow, red, inconclusive, single, got "purple"'),
    (("models", 0, "categories", "code", "mtp_off"), 1, "models[0].categories.code.mtp_off must be true or false, "
     "got 1"),
    (("models", 0, "by_config", 0, "positions"), 5, "models[0].by_config[0].positions must be a list, got 5"),
    (("models", 0, "by_config", 0, "positions"), [{"position": 0, "head_blocks": 7}],
     "models[0].by_config[0].positions[0].head_blocks must be a list, got 7"),
    (("models", 0, "by_config", 0, "positions"), [{"position": 0, "head_blocks": ["3"]}],
     'models[0].by_config[0].positions[0].head_blocks[0] must be an integer, got "3"'),
    (("models", 0, "by_config", 0, "positions"), [{"position": 0.5}],
     "models[0].by_config[0].positions[0].position must be an integer, got 0.5"),
    (("models", 0, "by_config", 0, "positions"), [{"position": 0, "acceptance": "1"}],
     'models[0].by_config[0].positions[0].acceptance must be an integer or a number, got "1"'),
    (("models", 0, "by_config", 0, "n_max"), "2 | x\n# pwn",
     'models[0].by_config[0].n_max must be an integer, got "2 | x\\n# pwn"'),
    (("models", 0, "by_config", 0, "n_max_effective"), "2", 'models[0].by_config[0].n_max_effective must be an '
     'integer, got "2"'),
    (("models", 0, "by_config", 0, "p_min"), [], "models[0].by_config[0].p_min must be an integer or a number, got []"),
    (("models", 0, "by_config", 0, "acceptance_reps"), {"mean": "x"},
     'models[0].by_config[0].acceptance_reps.mean must be an integer or a number, got "x"'),
])
def test_a_malformed_check_report_is_one_line_naming_the_key(tmp_path: Path, path, value, message) -> None:
    d = write(tmp_path, "report.json", _with(REPORT, path, value))
    with pytest.raises(UsageError) as e:
        load_check_report(d)
    assert str(e.value) == f"{d}: {d / 'report.json'} is not an mtpgraft report: {message}"


def test_what_is_not_a_check_report(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no report\.json there \(write one with `mtpgraft check --report DIR`\)$"):
        load_check_report(tmp_path)
    (tmp_path / "report.json").write_text("{")
    with pytest.raises(UsageError, match=r"cannot read .*report\.json \(report\.json: not valid JSON \(Expecting"):
        load_check_report(tmp_path)
    write(tmp_path, "report.json", {"verdict": "pass"})
    with pytest.raises(UsageError, match=r"is not an mtpgraft check report \(no models list\)$"):
        load_check_report(tmp_path)


def test_a_malformed_quality_report_is_one_line_naming_the_key(tmp_path: Path) -> None:
    p = write(tmp_path, "quality.json", _with(QUALITY, ("retention", "m-Q4_K_M.gguf"), 0.9)) / "quality.json"
    with pytest.raises(UsageError) as e:
        load_quality(p)
    assert str(e.value) == f"{p}: {p} is not an mtpgraft report: retention.m-Q4_K_M.gguf must be an object, got 0.9"


@pytest.mark.parametrize(("path", "value", "message"), [
    (("models", 0, "verdict"), 1, "models[0].verdict must be a string, got 1"),
    # the card's positions table (check.tables.positions_table) would fail on it with a TypeError
    (("models", 0, "by_config", 0, "positions"), 5, "models[0].by_config[0].positions must be a list, got 5"),
])
def test_push_names_the_setting_and_the_key_of_a_malformed_report(tmp_path: Path, path, value, message) -> None:
    from mtpgraft.testmodels import build_tiny_model

    model = build_tiny_model(tmp_path / "m.gguf", dtype="f16")
    d = write(tmp_path / "rep", "report.json", _with(REPORT, path, value))
    r = subprocess.run([sys.executable, "-m", "mtpgraft", "push", model, "--repo", "o/n", "--report", d, "--dry-run"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"mtpgraft: error: --report {d}: {d / 'report.json'} is not an mtpgraft report: {message}"], r.stderr
