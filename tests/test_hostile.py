"""One regression test per class of hostile input (issue 9): exact exit codes and one-line messages.

Files are the small generated models with one thing broken by tests/fuzz.py's raw writer."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fuzz import array, raw_kv, rebuild, retype, scalar, with_kv, zeros
from gguf import GGUFValueType as V

from mtpgraft import commands  # noqa: F401  (registers the commands on the group)
from mtpgraft.cli import cli
from mtpgraft.gguf_io import GGUFModel, OutTensor, write_gguf
from mtpgraft.inspection import inspect_model
from mtpgraft.testmodels.synthetic import make_model

A = "qwen35"


def mtpgraft(*args: object) -> tuple[int, str]:
    """(exit code, stderr) of one command, in process."""
    res = CliRunner().invoke(cli, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    return res.exit_code, res.stderr


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtpgraft: error: "), err[:2000]
    return lines[0]


@pytest.fixture()
def m(tmp_path: Path) -> dict[str, Path]:
    return {"full": make_model(tmp_path / "full.gguf"), "base": make_model(tmp_path / "base.gguf", layout="base"),
            "dir": tmp_path}


def bad(m: dict[str, Path], name: str, **edit) -> Path:
    p = m["dir"] / name
    rebuild(m["full"], p, **edit)
    return p


def refused_everywhere(m: dict[str, Path], p: Path, msg: str) -> None:
    """attach (as base and as source), detach and extract all exit 1 with `msg` and write nothing."""
    out = m["dir"] / "out.gguf"
    for args in (["attach", p, "--mtp-from", m["full"], "-o", out, "--replace"],
                 ["attach", m["base"], "--mtp-from", p, "-o", out], ["detach", p, "-o", out],
                 ["extract", p, "-o", out]):
        code, err = mtpgraft(*args)
        assert code == 3 and msg in one_line(err), (args, err)
        assert not out.exists()


# 1. wrong-typed metadata
def test_wrong_typed_metadata_is_reported_not_a_traceback(m):
    p = bad(m, "bc-f32.gguf", kv=with_kv(f"{A}.block_count", scalar(f"{A}.block_count", V.FLOAT32, float("nan"))))
    rep = inspect_model(p)
    assert f"key {A}.block_count has wrong type f32 but expected type u32" in rep.problems
    refused_everywhere(m, p, f"llama.cpp would refuse this file: key {A}.block_count has wrong type f32")
    p = bad(m, "nextn-str.gguf", kv=with_kv(f"{A}.nextn_predict_layers", scalar(f"{A}.nextn_predict_layers", V.STRING, "1")))
    assert f"key {A}.nextn_predict_layers has wrong type str but expected type u32" in inspect_model(p).problems
    p = bad(m, "ft-arr.gguf", kv=with_kv("general.file_type", array("general.file_type", V.UINT32, [1, 2])))
    assert "key general.file_type has wrong type arr[u32] but expected type u32" in inspect_model(p).problems
    p = bad(m, "split-str.gguf", kv=with_kv("split.count", scalar("split.count", V.STRING, "2")))
    code, err = mtpgraft("inspect", p)
    assert code == 3 and "key split.count must be an integer but is str" in one_line(err)


# 2. huge counts: checked against llama.cpp's bounds before anything is sized by them
@pytest.mark.parametrize("key", [f"{A}.block_count", f"{A}.nextn_predict_layers"])
def test_huge_counts_are_bounded(m, key):
    p = bad(m, "huge.gguf", kv=with_kv(key, scalar(key, V.UINT32, 2**32 - 1)))
    lo = 1 if key.endswith("block_count") else 0
    assert f"key {key} is 4294967295; llama.cpp accepts {lo}..512" in inspect_model(p).problems
    refused_everywhere(m, p, f"key {key} is 4294967295")


# 3. block_count missing
def test_missing_block_count(m):
    p = bad(m, "nobc.gguf", kv=with_kv(f"{A}.block_count", None))
    assert f"key {A}.block_count is missing" in inspect_model(p).problems
    for cmd in ("detach", "extract"):
        code, err = mtpgraft(cmd, p, "-o", m["dir"] / "o.gguf")
        assert code == 3 and f"nobc.gguf has no {A}.block_count key" in one_line(err)


# 4. a source MTP tensor numpy cannot convert: refused at plan time, before any write
@pytest.mark.parametrize("tname,tid,block,size", [("I32", 26, 1, 4), ("F64", 28, 1, 8), ("Q8_1", 9, 32, 36)])
def test_unconvertible_source_type_refused_at_plan_time(m, tname, tid, block, size):
    def nbytes(ne):
        return ne[0] * ne[1] // block * size

    src = bad(m, "src.gguf", tensors=retype("blk.4.attn_q.weight", tid, nbytes))
    out = m["dir"] / "o.gguf"
    code, err = mtpgraft("attach", m["base"], "--mtp-from", src, "-o", out, "--mtp-type", "q8_0")
    assert code == 3 and f"MTP tensor blk.4.attn_q.weight is {tname}, which mtpgraft cannot convert" in one_line(err)
    assert not out.exists() and not [n for n in os.listdir(m["dir"]) if n.startswith(".")]


# 5. per-layer arrays of odd element types or lengths
def test_odd_layer_arrays(m):
    key = f"{A}.attention.recurrent_layers"
    p = bad(m, "rec-i8.gguf", kv=with_kv(key, array(key, V.INT8, [1, 1, 1, 0, 0])))
    refused_everywhere(m, p, f"key {key} is an arr[i8]; llama.cpp reads per-layer arrays of u32, i32, f32 or bool only")
    p = bad(m, "rec-empty.gguf", kv=with_kv(key, array(key, V.BOOL, [])))
    code, err = mtpgraft("attach", p, "--mtp-from", m["full"], "-o", m["dir"] / "o.gguf", "--replace")
    assert code == 3 and f"key {key} has 0 entries but the trunk has 4 layers" in one_line(err)


# 6. the metadata encoder never raises struct.error
def test_encoder_values_checked_at_plan_time(m, tmp_path):
    base = m["dir"] / "base-prov.gguf"
    rebuild(m["base"], base, kv=with_kv("mtpgraft.version", scalar("mtpgraft.version", V.UINT32, 7)))
    out = tmp_path / "o.gguf"
    code, err = mtpgraft("attach", base, "--mtp-from", m["full"], "-o", out)
    assert code == 0, err
    assert isinstance(GGUFModel(out).get("mtpgraft.version"), str)
    from mtpgraft.errors import GGUFFormatError
    from mtpgraft.gguf_io import encode_kv

    with pytest.raises(GGUFFormatError, match="cannot write key x: 300 does not fit its type uint8"):
        encode_kv("x", V.UINT8, 300)
    p = bad(m, "blk-huge.gguf", tensors=lambda ts: [OutTensor(t.name.replace("blk.4.", "blk.4294967296."), t.ne,
                                                               t.ggml_type, t.nbytes, t.src_path, t.src_offset) for t in ts])
    code, err = mtpgraft("attach", m["base"], "--mtp-from", p, "-o", out, "--force")
    assert code == 3 and "tensor blk.4294967296.attn_norm.weight is beyond llama.cpp's 512 layers" in one_line(err)


# 7. names from the file are escaped and capped in messages
def test_names_in_messages_are_escaped(m):
    key = "evil\n" + "\0" * 100_000
    p = bad(m, "evil.gguf", kv=lambda kvs: kvs + [raw_kv(key, 99, b"")])
    code, err = mtpgraft("inspect", p)
    line = one_line(err)
    assert code == 3 and "unknown value type 99 for key evil\\x0a\\x00" in line and len(line) < 400
    p = bad(m, "evil-dup.gguf", kv=lambda kvs: kvs + [scalar(key, V.UINT32, 1), scalar(key, V.UINT32, 2)])
    rep = inspect_model(p)
    assert any(x.startswith("duplicate key evil\\x0a") and len(x) < 200 and "\n" not in x for x in rep.problems)



def test_inspect_prints_raw_values_escaped(m):
    """inspect's text view shows provenance values as the file holds them: escaped, capped, one line."""
    value = "hf://a/b\n\x1b[31mred\r" + "x" * 5000
    p = bad(m, "prov.gguf", kv=lambda kvs: kvs + [scalar("mtpgraft.mtp.source", V.STRING, value),
                                                  scalar("mtpgraft.evil\nkey", V.STRING, "v")])
    res = CliRunner().invoke(cli, ["inspect", str(p)])
    assert res.exit_code == 0, res.output
    assert "\x1b" not in res.stdout and "\r" not in res.stdout
    src = [ln for ln in res.stdout.splitlines() if ln.strip().startswith("mtpgraft.mtp.source = ")]
    assert len(src) == 1 and "hf://a/b\\x0a\\x1b[31mred\\x0d" in src[0] and len(src[0]) < 300, src
    assert any("mtpgraft.evil\\x0akey = v" in ln for ln in res.stdout.splitlines())


# 8. a FIFO (or any non-regular file) is refused without blocking
def test_fifo_refused_without_blocking(m):
    fifo = m["dir"] / "fifo.gguf"
    os.mkfifo(fifo)
    for args in (["inspect", fifo], ["attach", m["base"], "--mtp-from", fifo, "-o", m["dir"] / "o.gguf"]):
        p = subprocess.run([sys.executable, "-m", "mtpgraft", *map(str, args)], capture_output=True, text=True,
                           timeout=20)
        assert p.returncode == 3 and f"{fifo}: is a FIFO, not a regular file" in one_line(p.stderr)


# 9. files llama.cpp's loader refuses: inspect says so, and no command writes from them
def test_loader_refusals(m):
    def dup(ts):
        return ts + [ts[-1]]

    def zero_dim(ts):
        return [OutTensor(t.name, (t.ne[0], 0), t.ggml_type, 0, produce=zeros(0)) if t.name == "blk.4.attn_q.weight"
                else t for t in ts]

    cases = [
        (bad(m, "dup.gguf", tensors=dup), "duplicate tensor name output.weight"),
        (bad(m, "zero.gguf", tensors=zero_dim), "tensor blk.4.attn_q.weight has a zero dimension (shape [64, 0])"),
        (bad(m, "al-f32.gguf", kv=with_kv("general.alignment", scalar("general.alignment", V.FLOAT32, 32.0))),
         "key general.alignment has wrong type f32 but expected type u32"),
        (bad(m, "al-48.gguf", kv=with_kv("general.alignment", scalar("general.alignment", V.UINT32, 48))),
         "general.alignment 48 is not a power of 2"),
    ]
    for p, msg in cases:
        rep = inspect_model(p)
        assert not rep.consistent and msg in rep.problems, (p.name, rep.problems)
        code, _ = mtpgraft("inspect", p)
        assert code == 0  # readable: inspect reports
        refused_everywhere(m, p, msg)


# 15. the quantize output check samples the tensor, not just its first bytes
def test_zeroed_check_samples_spread_regions(tmp_path):
    import numpy as np

    from mtpgraft.quantize import _zero_data

    rows = np.zeros((64, 68), dtype=np.uint8)  # 64 rows of two Q8_0 blocks; the first 16 rows all zero
    rows[16:, 0] = 1
    data = rows.tobytes()
    ts = [OutTensor("a.weight", (64, 64), 8, len(data), produce=lambda: iter([data])),
          OutTensor("z.weight", (64, 64), 8, len(data), produce=zeros(len(data)))]
    p = tmp_path / "q.gguf"
    with open(p, "wb") as fh:
        write_gguf(fh, [], ts, alignment=32)
    assert _zero_data(GGUFModel(p), ["a.weight", "z.weight"]) == ["z.weight"]


# 16. one validation and one exit code (2) for a bad --mtp-type, before any file or tool is read
@pytest.mark.parametrize("value", ["i32", "q8_1", "q9_9", "keepx"])
def test_mtp_type_usage_error_everywhere(m, value):
    code, err = mtpgraft("attach", m["base"], "--mtp-from", m["full"], "-o", m["dir"] / "o.gguf", "--mtp-type", value)
    assert code == 2 and f"--mtp-type {value!r} is not keep, q8_0, match or a ggml tensor type" in one_line(err)
    code, err = mtpgraft("quantize", m["full"], "--types", "Q8_0", "--mtp-type", value, "--llama-cpp", m["dir"])
    assert code == 2 and f"--mtp-type {value!r} is not q8_0, match or a ggml tensor type" in one_line(err)


def test_truncated_string_arrays_say_how_many_bytes_they_need(tmp_path):
    """A header cut anywhere inside a string array (a tokenizer's tokens or merges) raises
    TruncatedHeaderError naming the end of the item that was cut, which the Hub range reader uses
    to size its next read; the whole header parses to the same keys gguf-py reads."""
    import struct

    import gguf as ggufpy

    from mtpgraft.gguf_io import GGUFFile, TruncatedHeaderError, encode_kv, write_gguf

    toks = ["", "a", "\u00e9t\u00e9", "x" * 300, *(f"t{i}" for i in range(50))]
    path = tmp_path / "strings.gguf"
    kvs = [encode_kv("general.architecture", ggufpy.GGUFValueType.STRING, "qwen35"),
           encode_kv("tokenizer.ggml.tokens", ggufpy.GGUFValueType.ARRAY, toks, ggufpy.GGUFValueType.STRING)]
    with open(path, "wb") as fh:
        write_gguf(fh, kvs, [], alignment=32)
    data = path.read_bytes()
    full = GGUFFile(path)
    assert full.get("tokenizer.ggml.tokens") == toks
    assert ggufpy.GGUFReader(path).fields["tokenizer.ggml.tokens"].contents() == toks
    # Where each item of the array ends, walked here by hand from the array's start.
    raw = full.kv["tokenizer.ggml.tokens"].raw
    pos = data.index(raw) + len(raw) - sum(8 + len(t.encode()) for t in toks)
    ends = []
    for t in toks:
        assert struct.unpack_from("<Q", data, pos)[0] == len(t.encode())
        ends += [pos + 8, pos + 8 + len(t.encode())]
        pos = ends[-1]
    for cut in range(ends[0] - 8, pos):
        with pytest.raises(TruncatedHeaderError) as e:
            GGUFFile.from_prefix(data[:cut], size=len(data), name="cut.gguf")
        assert e.value.needed == min(x for x in ends if x > cut), cut


def test_a_tokenizer_walked_before_is_recognised_only_by_its_exact_bytes(tmp_path):
    """The parser remembers the string arrays it walked (a base, its donor and the output share a
    tokenizer) and steps over an identical span at once. An array of the same length with other
    bytes, one cut short, or one whose bytes match but are followed by other keys, parses as if
    nothing were remembered: the keys gguf-py reads, and the same `needed` at every cut."""
    import gguf as ggufpy

    from mtpgraft.gguf_io import GGUFFile, TruncatedHeaderError, encode_kv, write_gguf

    V = ggufpy.GGUFValueType
    n = 6000
    variants = {"a": [f"t{i}" for i in range(n)],
                "b": [f"t{i}" for i in range(n - 1)] + ["x" * 40],  # same count, other bytes, longer
                "c": [f"t{i}" if i != 3000 else "t300\0" for i in range(n)]}  # same count and length
    paths = {}
    for name, toks in (*variants.items(), ("a2", variants["a"])):
        paths[name] = tmp_path / f"{name}.gguf"
        kvs = [encode_kv("general.architecture", V.STRING, "qwen35"),
               encode_kv("tokenizer.ggml.tokens", V.ARRAY, toks, V.STRING),
               encode_kv("general.name", V.STRING, name)]  # what follows differs in a2
        with open(paths[name], "wb") as fh:
            write_gguf(fh, kvs, [], alignment=32)
    for name in ("a", "b", "c", "a2", "a"):
        got = GGUFFile(paths[name])
        assert got.get("tokenizer.ggml.tokens") == variants[name[0]], name
        assert got.get("general.name") == name
        assert ggufpy.GGUFReader(paths[name]).fields["general.name"].contents() == name
    data = paths["a"].read_bytes()
    full = len(data)
    key = data.index(b"general.name") - 8
    for cut in range(key, key + 8 + 12 + 4 + 8 + 1):  # the array whole, the key after it cut short
        with pytest.raises(TruncatedHeaderError) as e:
            GGUFFile.from_prefix(data[:cut], size=full, name="cut.gguf")
        assert key <= cut < e.value.needed <= key + 8 + 12 + 4 + 8 + 1, cut
    mid = data.index(b"t3000")
    with pytest.raises(TruncatedHeaderError) as e:  # inside the remembered span: walked, as always
        GGUFFile.from_prefix(data[:mid], size=full, name="cut.gguf")
    assert e.value.needed == mid + len("t3000")


# --------------------------------------------------------------------------- secrets (issue 27)

SECRET = "sekrit-Token-4242abcd"  # not shaped like an HF token: only knowing the value can remove it


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtpgraft", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def _files_holding(root: Path, needle: bytes, skip: set[Path]) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and p not in skip and needle in p.read_bytes()]


@pytest.mark.parametrize("source", ["flag", "env", "file"])
def test_a_token_the_hub_echoes_is_never_printed_logged_or_written(hf_hermetic, hub, tmp_path, source):
    """A 401 whose body echoes the Authorization header: the token is in no output, under -v and
    --debug too, nor in any file written (push's plan, attach's range cache)."""
    hub.echo_auth = True
    full = make_model(tmp_path / "full.gguf")
    hub.put_files("tester/Donor", {"Tiny.gguf": full.read_bytes()})
    base = make_model(tmp_path / "base.gguf", layout="base")
    env, token_file = dict(os.environ), tmp_path / "hf_home" / "token"
    flag = ["--token", SECRET] if source == "flag" else []
    if source == "env":
        env["HF_TOKEN"] = SECRET
    if source == "file":
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(SECRET)
    runs = [_run(*pre, "push", str(full), "--repo", "tester/Out", "--endpoint", hub.url, "--no-verify", *flag, env=env)
            for pre in ([], ["-v"], ["--debug"])]
    runs += [_run(*pre, "attach", str(base), "--mtp-from", "hf://tester/Donor/Tiny.gguf", "-o",
                  str(tmp_path / "out.gguf"), "--endpoint", hub.url, *flag, env=env) for pre in ([], ["--debug"])]
    for r in runs:
        assert r.returncode == 6, r.stderr
        assert SECRET not in r.stdout + r.stderr, r.stderr
    assert "Bearer ***" in runs[0].stderr  # the server's text is still shown, less the token
    assert "Traceback" in runs[2].stderr and "Traceback" in runs[4].stderr
    assert _files_holding(tmp_path, SECRET.encode(), {token_file}) == []


def test_debug_adds_the_traceback_and_keeps_the_exit_code(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    plain = _run("inspect", str(junk), env=dict(os.environ))
    debug = _run("--debug", "inspect", str(junk), env=dict(os.environ))
    assert plain.returncode == debug.returncode == 3
    assert "Traceback" in debug.stderr and "Traceback" not in plain.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()


def test_a_name_with_a_newline_cannot_fake_a_second_error_line(tmp_path):
    sneaky = tmp_path / "x.gguf\nmtpgraft: error: all good, exit 0\x1b[2K"
    sneaky.write_bytes(b"GGUF" + b"\0" * 20)
    code, err = mtpgraft("inspect", sneaky)
    line = one_line(err)
    assert code == 3 and "x.gguf\\nmtpgraft: error: all good, exit 0\\x1b[2K" in line


# --------------------------------------------------------------------------- checkpoints: configs, indexes, headers

DEEP = "[" * 10_000 + "]" * 10_000


def _checkpoint(tmp_path: Path) -> Path:
    from mtpgraft.testmodels.checkpoints import build_checkpoint

    return build_checkpoint(tmp_path / "ck", "dense-bf16")


def _attach_ckpt(tmp_path: Path, ckpt: Path) -> tuple[int, str]:
    out = tmp_path / "o.gguf"
    code, err = mtpgraft("attach", make_model(tmp_path / "b.gguf", layout="base"), "--mtp-from", ckpt, "-o", out)
    assert not out.exists()
    return code, one_line(err)


@pytest.mark.parametrize(("where", "value", "message"), [
    ("text_config.hidden_size", "abc", "config.json hidden_size = 'abc': not an integer"),
    ("text_config.mtp_num_hidden_layers", 1e9, "config.json mtp_num_hidden_layers = 1000000000: out of range"),
    ("text_config.mtp_num_hidden_layers", True, "config.json mtp_num_hidden_layers = true: not an integer"),
    ("text_config.mtp_num_hidden_layers", 1.5, "config.json mtp_num_hidden_layers = 1.5: not an integer"),
    ("text_config.num_hidden_layers", -3, "config.json num_hidden_layers = -3: out of range"),
    ("architectures", [{}], "config.json architectures = [{}]: not a list of strings"),
    ("text_config", [1, 2], "config.json text_config is not a JSON object"),
    ("text_config.layer_types", "linear", "config.json layer_types = 'linear': not a list of strings"),
    ("text_config.vocab_size", DEEP, "config.json: JSON nested more than 64 deep"),
])
def test_config_fields_are_typed_and_bounded(tmp_path, where, value, message):
    ckpt = _checkpoint(tmp_path)
    cfg = json.loads((ckpt / "config.json").read_text())
    *path, key = where.split(".")
    (cfg[path[0]] if path else cfg)[key] = value
    text = json.dumps(cfg)
    (ckpt / "config.json").write_text(text.replace(json.dumps(DEEP), DEEP))
    code, line = _attach_ckpt(tmp_path, ckpt)
    assert code == 3 and message in line, line


def _shard(ckpt: Path) -> Path:
    return sorted(ckpt.glob("model*.safetensors"))[-1]


def _edit_header(p: Path, edit) -> None:
    data = p.read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    head = json.loads(data[8:8 + n])
    new = edit(head).encode() if callable(edit) else edit
    new += b" " * (-len(new) % 8)
    p.write_bytes(struct.pack("<Q", len(new)) + new + data[8 + n:])


def _mtp_entry(head: dict, key: str, value) -> str:
    name = next(k for k in head if k.startswith("mtp."))
    head[name][key] = value
    return json.dumps(head)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda h: _mtp_entry(h, "shape", [-1, 64]), "has a bad shape [-1, 64]"),
    (lambda h: _mtp_entry(h, "shape", [2**63, 2]), "has a bad shape"),
    (lambda h: _mtp_entry(h, "shape", [64.0]), "has a bad shape [64.0]"),
    (lambda h: _mtp_entry(h, "data_offsets", [0, 2**64]), "has bad data_offsets"),
    (lambda h: _mtp_entry(h, "data_offsets", [0, 10**12]), "lies outside the file"),
    (lambda h: _mtp_entry(h, "data_offsets", [0, 2]), "but its data_offsets hold 2 bytes"),
    (lambda h: _mtp_entry(h, "dtype", ["BF16"]), "needs dtype, shape and two data_offsets"),
    (lambda h: _mtp_entry(h, "shape", DEEP).replace(json.dumps(DEEP), DEEP), "JSON nested more than 64 deep"),
    (b'{"a": ' + b"\xff" * 8 + b"}", "not UTF-8 text"),
])
def test_safetensors_headers_are_typed_and_bounded(tmp_path, edit, message):
    ckpt = _checkpoint(tmp_path)
    _edit_header(_shard(ckpt), edit)
    code, line = _attach_ckpt(tmp_path, ckpt)
    assert code == 3 and message in line, line


@pytest.mark.parametrize(("text", "message"), [
    ('{"weight_map": ' + DEEP + "}", "JSON nested more than 64 deep"),
    ('{"weight_map": {"a": 1}}', "weight_map is not an object of tensor name -> file name"),
    ("[1, 2]", "not a safetensors index (no weight_map)"),
    ('{"weight_map": {"mtp.fc.weight": "../../../etc/passwd"}}', "weight_map names shard '../../../etc/passwd' "
     "cannot be part of a file name"),
])
def test_safetensors_index_is_typed_and_bounded(tmp_path, text, message):
    ckpt = _checkpoint(tmp_path)
    (ckpt / "model.safetensors.index.json").write_text(text)
    code, line = _attach_ckpt(tmp_path, ckpt)
    assert code == 3 and message in line, line


# --------------------------------------------------------------------------- recipes

RECIPE = '[model]\nname = "M"\nbase = "b.gguf"\n[quantize]\ntypes = ["Q8_0"]\n'


@pytest.mark.parametrize(("extra", "message"), [
    ("[check]\nreps = 100000000000000000\n", "[check] reps: must be <= 1,000, got 100,000,000,000,000,000"),
    ("[check]\nn_predict = 1000000000\n", "[check] n_predict: must be <= 32,768, got 1,000,000,000"),
    ("[check]\ncontext_depth = [0, 100000000000]\n", "[check] context_depth: must be <= 4,194,304"),
    ("[check]\nmin_speedup = inf\n", "[check] min_speedup: must be a finite number of at most 1e+06 in size, got inf"),
    ("[imatrix]\ncalibration = \"c.txt\"\nchunks = 99999999999\n", "[imatrix] chunks: must be <= 1,048,576"),
    ("[quantize.x]\n", "[quantize] x: unknown key"),
    ("[run.resources]\ncheck = {gpus = 1e300}\n", "[run.resources.check] gpus: must be a finite number"),
])
def test_recipe_numbers_are_bounded_at_parse_time(tmp_path, extra, message):
    r = tmp_path / "r.toml"
    r.write_text(RECIPE + extra)
    code, err = mtpgraft("run", r, "--dry-run", "--work-dir", tmp_path / "w")
    assert code == 3 and f"r.toml: {message}" in one_line(err)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", ["M\\nmtpgraft: error: x", "M\\u0000", "a" * 201])
def test_names_that_become_file_names_are_plain(tmp_path, name):
    r = tmp_path / "r.toml"
    r.write_text(RECIPE.replace('"M"', f'"{name}"'))
    code, err = mtpgraft("run", r, "--dry-run", "--work-dir", tmp_path / "w")
    assert code == 3 and "[model] name: " in one_line(err) and "must be a plain file name stem" in err
    code, err = mtpgraft("quantize", make_model(tmp_path / "f.gguf"), "--types", "Q8_0", "--out-dir", tmp_path / "q",
                         "--name", name.encode().decode("unicode_escape"))
    assert code == 2 and "must be a plain file name stem" in one_line(err)
    assert not (tmp_path / "q").exists() or not list((tmp_path / "q").iterdir())


# --------------------------------------------------------------------------- calibration text

CALIBRATION = Path(__file__).parents[1] / "mtpgraft" / "data" / "calibration-tiny.txt"


def _huge_calibration(tmp_path: Path) -> Path:
    """64 KB of real text, then a 300 MB hole (zeros on read, no disk used)."""
    big = tmp_path / "cal.txt"
    text = CALIBRATION.read_bytes()
    big.write_bytes((text * (65536 // len(text) + 1))[:65536])
    with open(big, "r+b") as f:
        f.truncate(300 << 20)
    return big


@pytest.mark.tools
def test_a_calibration_text_is_trimmed_to_what_the_chunks_need(tmp_path):
    from mtpgraft.hashing import sha256_file
    from mtpgraft.imatrix import plan_imatrix, read_imatrix
    from mtpgraft.testmodels import build_tiny_model

    big, model = _huge_calibration(tmp_path), build_tiny_model(tmp_path / "m.gguf", dtype="f16")
    plan = plan_imatrix(model, big, tmp_path / "a.gguf", ctx=128, chunks=4)
    assert plan.calibration_used == 4 * 128 * 16 and plan.calibration_bytes == 300 << 20
    r = subprocess.run([sys.executable, "-m", "mtpgraft", "imatrix", model, "-f", big, "-o", tmp_path / "im.gguf",
                        "-c", "128", "--chunks", "4", "-b", "128"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = read_imatrix(tmp_path / "im.gguf")  # the original file's name and sha256, as before
    assert info.datasets == ("cal.txt",) and info.dataset_sha256 == sha256_file(big, use_cache=False)
    assert info.chunk_count == 4
    code, err = mtpgraft("imatrix", model, "-f", big, "-o", tmp_path / "b.gguf", "-c", "128")
    assert code == 3 and "the calibration file is 315 MB; llama-imatrix would read all of it (at most 256 MB): " \
        "set --chunks" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.txt", "im.gguf", "m.gguf"]


def test_a_calibration_text_that_is_not_utf8_is_refused(tmp_path):
    bad = tmp_path / "cal.txt"
    bad.write_bytes(b"some text\n" * 100 + b"\xff\xfe latin-1 \xe9t\xe9\n")
    code, err = mtpgraft("imatrix", make_model(tmp_path / "m.gguf"), "-f", bad, "-o", tmp_path / "o.gguf",
                         "--llama-cpp", tmp_path)
    assert code == 3 and "cal.txt is not UTF-8 text (byte 1000); save it as UTF-8" in one_line(err)


# --------------------------------------------------------------------------- text from files lands escaped

EVIL_NAME = "Evil\n# Owned <script>alert(1)</script> [click](https://evil.example) | `x`"
EVIL_FILE = "other|b\nc).gguf"


def test_gguf_names_and_remote_file_names_are_escaped_in_the_card_and_commit(hf_hermetic, hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    src = make_model(tmp_path / "src.gguf")
    model = tmp_path / "out" / "Model-F16.gguf"
    model.parent.mkdir()
    rebuild(src, model, kv=with_kv("general.name", scalar("general.name", V.STRING, EVIL_NAME)))
    hub.put_files("tester/Evil", {EVIL_FILE: b"GGUF" + b"\0" * 60})
    r = CliRunner().invoke(cli, ["push", str(model), "--repo", "tester/Evil", "--no-verify", "--endpoint", hub.url,
                                 "--token", "hf_test_write"])
    assert r.exit_code == 0, r.stderr
    head = hub.head("tester/Evil")
    card = head.files["README.md"].content.decode()
    body = card.split("\n---\n", 1)[1]
    # in prose every special character is escaped; the one code span shows the name as it is (inert there)
    span = "`` Evil # Owned <script>alert(1)</script> [click](https://evil.example) | `x` ``"
    assert f"GGUF quantizations of {span} that keep" in body and body.count("<script>") == 1
    assert re.search(r"(?<!\\)\]\(https://evil", body.replace(span, "")) is None
    assert [ln for ln in body.splitlines() if ln.startswith("# ")] == [
        r"# Evil # Owned &lt;script&gt;alert(1)&lt;/script&gt; \[click\](https://evil.example) \| \`x\` MTP GGUF"]
    assert r"| other\|b c).gguf |" in body  # one table row, its | escaped
    table_rows = [ln for ln in body.splitlines() if ln.startswith("|")]
    assert all(ln.count("|") - ln.count(r"\|") == table_rows[0].count("|") for ln in table_rows[:3])
    assert "\n" not in head.title and head.title.endswith("MTP GGUF quant of Evil # Owned <script>alert(1)</script> "
                                                          "[click](https://evil.example) | `x`")
    assert "Model-F16.gguf" in head.description


def test_a_tensor_name_with_control_characters_stays_on_its_line_in_a_plan(m):
    import dataclasses

    sneaky = "blk.4.zz\x1b[2K\rmtpgraft: ok"
    p = bad(m, "ctl.gguf", tensors=lambda ts: [dataclasses.replace(t, name=sneaky) if t.name == "blk.4.attn_q.weight"
                                               else t for t in ts])
    for cmd in ("detach", "extract"):
        r = CliRunner().invoke(cli, [cmd, str(p), "-o", str(m["dir"] / "o.gguf"), "--dry-run"])
        assert r.exit_code == 0, r.output
        assert "\x1b" not in r.stdout and "\r" not in r.stdout
        assert "blk.4.zz\\x1b[2K\\x0dmtpgraft: ok" in r.stdout


def test_a_check_report_nested_too_deep_is_one_line(tmp_path):
    rep = tmp_path / "check"
    rep.mkdir()
    (rep / "report.json").write_text('{"models": ' + DEEP + "}")
    code, err = mtpgraft("push", make_model(tmp_path / "m.gguf"), "--repo", "tester/x", "--report", rep,
                         "--endpoint", "http://127.0.0.1:9")
    assert code == 2 and "cannot read" in one_line(err) and "report.json: JSON nested more than 64 deep" in err


def test_a_token_in_gguf_metadata_never_reaches_the_card_or_commit(hf_hermetic, hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    leaked = "hf_" + "Leaked0Token1" * 3
    model = tmp_path / "out" / "Model-F16.gguf"
    model.parent.mkdir()
    rebuild(make_model(tmp_path / "src.gguf"), model,
            kv=with_kv("general.name", scalar("general.name", V.STRING, f"Model {leaked}")))
    r = CliRunner().invoke(cli, ["push", str(model), "--repo", "tester/Leak", "--no-verify", "--endpoint", hub.url,
                                 "--token", "hf_test_write", "--json"])
    assert r.exit_code == 0, r.stderr
    head = hub.head("tester/Leak")
    assert leaked not in head.files["README.md"].content.decode() + head.title + head.description + r.stdout
    assert "# Model *** MTP GGUF" in head.files["README.md"].content.decode()


def test_imatrix_sizes_are_bounded_before_the_tool_runs(tmp_path):
    cal = tmp_path / "cal.txt"
    cal.write_text("some text\n" * 100)
    code, err = mtpgraft("imatrix", make_model(tmp_path / "m.gguf"), "-f", cal, "-o", tmp_path / "o.gguf",
                         "-c", "1000000000")
    assert code == 2 and one_line(err) == "mtpgraft: error: --ctx must be <= 4,194,304, got 1,000,000,000"


def test_an_info_line_keeps_a_log_tail_but_no_line_passes_for_mtpgraft_s_own():
    from mtpgraft.commands.common import say_lines

    got = say_lines("m.gguf: the end of its log:\n  | ok\x1b[2K\nmtpgraft: error: fake\r")
    assert got.splitlines() == ["m.gguf: the end of its log:", "  | ok\\x1b[2K", "  mtpgraft: error: fake\\r"]
