"""One regression test per class of hostile input (issue 9): exact exit codes and one-line messages.

Files are the small generated models with one thing broken by tests/fuzz.py's raw writer."""

from __future__ import annotations

import os
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
        assert code == 1  # readable: inspect reports, and its exit status is the verdict
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
