"""A hostile Hub (tests/fakehub.py's `hub.hostile`): forged commits and names, headers and shapes that
claim the impossible, answers that never come, come a byte at a time or carry other bytes. Each case
runs the real CLI (`attach --mtp-from hf://...`, the real huggingface_hub client) and asserts one
line, the documented exit code, nothing written outside the cache and the output, a cache without
lock files, partial files or ranges of a refused source, and the bytes the Hub served bounded."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from fakehub import FakeHub

import mtpgraft.commands  # noqa: F401 - registers the commands
from mtpgraft.cli import cli
from mtpgraft.gguf_io import GGUFFile, GGUFModel
from mtpgraft.sources import hubfiles
from mtpgraft.testmodels.synthetic import make_model, rewrite

DONOR = "tester/Tiny-MTP-GGUF"
FILE = "Tiny-MTP-F16.gguf"
SPEC = f"hf://{DONOR}/{FILE}"
# Small limits: a stall is cut within seconds, yet a loaded machine's fake Hub answers well within them.
FAST = {"MTPGRAFT_HUB_CONNECT_TIMEOUT": "2", "MTPGRAFT_HUB_READ_TIMEOUT": "2", "MTPGRAFT_HUB_MIN_RATE": "1000",
        "MTPGRAFT_HUB_DEADLINE": "8"}


@pytest.fixture(autouse=True)
def _hermetic(hf_hermetic, monkeypatch):
    """No real token or cache; retries without the backoff's waits."""
    monkeypatch.setattr(hubfiles, "backoff_delay", lambda attempt: 0.0)


@pytest.fixture
def models(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    kw = {"arch": "qwen35", "trunk": 4, "n_embd": 256, "vocab": 512, "n_ff": 512}
    return {"donor": make_model(d / FILE, layout="full", **kw),
            "base": make_model(d / "Tiny-base-F16.gguf", layout="base", **kw)}


def files_outside(tmp_path: Path) -> set[Path]:
    """Every file under tmp_path but the mtpgraft cache, the HF home and the fake Hub's own folders."""
    mine = {"mtpgraft_cache", "hf_home", "cas", "models", "made"}
    return {p for p in tmp_path.rglob("*") if p.is_file() and p.relative_to(tmp_path).parts[0] not in mine}


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "mtpgraft_cache").rglob("*") if p.is_file())


def attach(tmp_path: Path, hub, models, spec: str = SPEC, env: dict[str, str] | None = None, *,
           resumable: bool = False, extra: tuple[str, ...] = ()):
    """Run attach against the loopback Hub; return the result after the common promises (a fetch
    that failed, `resumable`, keeps what it received as a .part for the next run)."""
    before = files_outside(tmp_path)
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir(exist_ok=True)
    r = CliRunner().invoke(cli, ["attach", str(models["base"]), "--mtp-from", spec, "-o", str(out),
                                 "--endpoint", hub.url, *extra], env={**FAST, **(env or {})})
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception
    assert "Traceback" not in r.output
    made = files_outside(tmp_path) - before
    assert made == ({out} if r.exit_code == 0 else set())  # nothing outside the cache but the output
    assert not any(p.suffix == ".lock" or (p.suffix == ".part" and not resumable) for p in cache_files(tmp_path))
    return r


def one_line(r, code: int) -> str:
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtpgraft: error: "), r.output
    assert r.exit_code == code, r.output
    return lines[0].removeprefix("mtpgraft: error: ")


def no_ranges(tmp_path: Path) -> None:
    """A refused source leaves nothing: no range, no tensors-only GGUF, no header-only twin."""
    assert cache_files(tmp_path) == []


def put(hub, data: bytes, name: str = FILE) -> str:
    return hub.put_files(DONOR, {name: data})


# --------------------------------------------------------------------------- confined


@pytest.mark.parametrize("forged", ["/abs/path", "../../..", "0" * 39 + "/", "0" * 40 + "\n"])
def test_a_forged_commit_id_is_refused_before_it_becomes_a_path(hub, models, tmp_path, forged):
    put(hub, models["donor"].read_bytes())
    if forged.startswith("/"):
        forged = str(tmp_path / "elsewhere")
    hub.hostile.sha = forged
    r = attach(tmp_path, hub, models)
    assert one_line(r, 6) == (f"{SPEC}: the Hub gave {ascii(forged)} as the commit, not a 40-hex-digit commit "
                              "id; refusing to use it")
    assert not (tmp_path / "elsewhere").exists()
    assert hub.bytes_sent == 0
    no_ranges(tmp_path)


@pytest.mark.parametrize(("name", "problem"), [
    ("../../escape-Q8_0.gguf", "an empty, '.' or '..' component"),
    ("/abs/escape-Q8_0.gguf", "an absolute path"),
    ("a\nmtpgraft: error: fake-Q8_0.gguf", "a control character"),
    ("x" * 300 + "-Q8_0.gguf", "a component longer than 255 bytes"),
])
def test_a_listed_name_that_is_no_relative_path_refuses_the_listing(hub, models, tmp_path, name, problem):
    c = put(hub, models["donor"].read_bytes())

    def forge(entries):
        return [{**e, "path": name} if e["path"] == FILE else e for e in entries]

    hub.hostile.tree = forge
    r = attach(tmp_path, hub, models, spec=f"hf://{DONOR}:Q8_0")
    shown = ascii(name) if len(ascii(name)) <= 80 else ascii(name)[:77] + "..."
    assert one_line(r, 6) == (f"hf://{DONOR}:Q8_0@{c}: the Hub lists a file named {shown} ({problem}); "
                              "refusing to use it")
    assert hub.bytes_sent == 0
    no_ranges(tmp_path)


def test_a_listed_size_that_is_no_size_refuses_the_listing(hub, models, tmp_path):
    c = put(hub, models["donor"].read_bytes())
    hub.hostile.tree = lambda entries: [{**e, "size": -5} if e["path"] == FILE else e for e in entries]
    r = attach(tmp_path, hub, models)
    assert one_line(r, 6) == (f"{SPEC}@{c}: the Hub lists '{FILE}' at '-5' bytes, not a size; refusing the listing")
    assert hub.bytes_sent == 0
    no_ranges(tmp_path)


@pytest.mark.parametrize(("spec", "message"), [
    (f"hf://{DONOR}/../../x.gguf", f"'hf://{DONOR}/../../x.gguf': the file name '../../x.gguf' has an empty, '.' "
                                   "or '..' component; name a file in the repo"),
    (f"hf://{DONOR}/a/./x.gguf", f"'hf://{DONOR}/a/./x.gguf': the file name 'a/./x.gguf' has an empty, '.' or "
                                 "'..' component; name a file in the repo"),
])
def test_a_spec_naming_a_path_outside_the_repo_is_a_usage_error(hub, models, tmp_path, spec, message):
    put(hub, models["donor"].read_bytes())
    r = attach(tmp_path, hub, models, spec=spec)
    assert one_line(r, 2) == message
    assert hub.requests == []


def test_huggingface_hubs_own_refusal_is_one_line(hub, models, tmp_path):
    """A repo id the client itself refuses (`--` in it) is its HFValidationError, as one line."""
    r = attach(tmp_path, hub, models, spec="hf://tester/bad--name/x.gguf")
    msg = one_line(r, 6)
    assert msg.startswith("hf://tester/bad--name/x.gguf: huggingface_hub refused it (") and "--" in msg
    assert hub.requests == []


def test_a_graft_leaves_no_lock_file_and_no_partial_file(hub, models, tmp_path):
    put(hub, models["donor"].read_bytes())
    r = attach(tmp_path, hub, models)
    assert r.exit_code == 0, r.output
    left = cache_files(tmp_path)
    assert left and not any(p.name.endswith((".lock", ".part")) for p in left)


# --------------------------------------------------------------------------- headers that claim the impossible


def claim_size(hub, size: int, name: str = FILE) -> None:
    """The listing and every 206 say the file has `size` bytes."""
    hub.hostile.tree = lambda entries: [{**e, "size": size} if e["path"] == name else e for e in entries]
    hub.hostile.content_range = lambda a, b, n: f"bytes {a}-{b - 1}/{size}"


def header_with_array(count: int) -> bytes:
    """A GGUF header whose one key claims an array of `count` uint8 (the bytes after it are few)."""
    key = b"tokenizer.ggml.merges"
    return (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
            + struct.pack("<IIQ", 9, 0, count) + bytes(4096))


def test_a_header_past_the_cap_is_refused_before_it_is_fetched(hub, models, tmp_path):
    """A 600 MB array in the header (the listing agrees it is there): refused after the first read."""
    c = put(hub, header_with_array(600_000_000))
    claim_size(hub, 700_000_000)
    r = attach(tmp_path, hub, models)
    msg = one_line(r, 3)
    assert msg.startswith(f"{SPEC}@{c[:12]}: its GGUF header needs more than 600,000,")
    assert msg.endswith("bytes, past the 256 MiB mtpgraft reads of a header (a tokenizer takes a few MB); "
                        "refusing it unread")
    assert hub.bytes_sent <= 2048
    no_ranges(tmp_path)


def donor_variant(models, tmp_path: Path, name: str, **kw) -> bytes:
    made = tmp_path / "made"
    made.mkdir(exist_ok=True)
    return rewrite(models["donor"], made / name, **kw).read_bytes()


def huge_tensor(ts):
    """blk.4.ffn_down.weight claims [2**20, 2**20] F16: a 2 TB MTP tensor (the header only)."""
    return [type(t)(t.name, (2**20, 2**20), t.ggml_type, 2 * 2**40, t.src_path, t.src_offset, t.produce)
            if t.name == "blk.4.ffn_down.weight" else t for t in ts]


def header_of(models, tmp_path: Path, edit) -> tuple[bytes, int]:
    """The header of the donor with `edit` applied to its tensors, and the size the whole file would have."""
    from mtpgraft.gguf_io import CONVERTER, OutTensor, write_gguf

    m = GGUFFile(models["donor"])
    ts = edit([OutTensor(t.name, t.ne, t.ggml_type, t.nbytes, None, 0) for t in m.tensors])
    path = tmp_path / "made" / "header.gguf"
    path.parent.mkdir(exist_ok=True)
    with open(path, "wb") as fh:
        write_gguf(fh, list(m.kv.values()), ts, alignment=m.alignment, layout=CONVERTER, header_only=True)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        first = fh.read(1 << 20)
    head = first[:GGUFFile.from_prefix(first, size=size, name="h").data_offset]
    path.unlink()
    return head, size


def test_a_2tb_mtp_tensor_past_the_file_is_refused_on_the_header(hub, models, tmp_path):
    head, _ = header_of(models, tmp_path, huge_tensor)
    c = put(hub, head + bytes(1 << 20))  # the file as listed: 1 MB after the header
    r = attach(tmp_path, hub, models)
    msg = one_line(r, 3)
    assert msg.startswith(f"{FILE}: truncated: tensor ") and msg.endswith(f"but the file has {len(head) + (1 << 20)} bytes")
    assert c
    assert hub.bytes_sent <= len(head) + len(head) // 4 + 512
    no_ranges(tmp_path)


def test_a_2tb_mtp_tensor_the_listing_agrees_with_is_refused_by_the_base_before_fetching(hub, models, tmp_path):
    head, size = header_of(models, tmp_path, huge_tensor)
    put(hub, head + bytes(1 << 20))
    claim_size(hub, size)
    r = attach(tmp_path, hub, models)
    assert one_line(r, 3) == ("MTP tensor blk.4.ffn_down.weight has shape [1048576, 1048576] but the base's "
                              "blk.3.ffn_down.weight is [512, 256]: the source was made for another model size")
    assert hub.bytes_sent <= len(head) + len(head) // 4 + 512
    no_ranges(tmp_path)


@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)])
def test_a_shape_the_base_refuses_is_refused_before_a_tensor_byte_travels(hub, models, tmp_path, dry_run):
    """The same refusal --dry-run gives, given by the real run on the header alone; neither keeps
    the header's ranges."""
    def transpose(ts):
        return [type(t)(t.name, tuple(reversed(t.ne)), t.ggml_type, t.nbytes, t.src_path, t.src_offset, t.produce)
                if t.name == "blk.4.ffn_down.weight" else t for t in ts]

    data = donor_variant(models, tmp_path, "transposed.gguf", tensors=transpose)
    put(hub, data)
    r = attach(tmp_path, hub, models, extra=dry_run)
    assert one_line(r, 3) == ("MTP tensor blk.4.ffn_down.weight has shape [256, 512] but the base's "
                              "blk.3.ffn_down.weight is [512, 256]: the source was made for another model size")
    header = GGUFModel(models["donor"]).shards[0].data_offset
    assert hub.bytes_sent <= header + header // 4 + 512  # headers only
    no_ranges(tmp_path)


@pytest.mark.parametrize(("bc", "nextn", "message"), [
    (10**9, 10**9 - 1, "key qwen35.block_count is 1000000000, outside 0..65536"),
    (5, 10**9, "key qwen35.nextn_predict_layers is 1000000000, outside 0..65536"),
    (5, 6, "qwen35.nextn_predict_layers (6) is more than qwen35.block_count (5); the keys contradict each other"),
])
def test_counts_no_model_has_are_refused_before_any_list_is_sized(hub, models, tmp_path, bc, nextn, message):
    from gguf import GGUFValueType as V

    data = donor_variant(models, tmp_path, "counts.gguf", set_kv={
        "qwen35.block_count": (V.UINT32, bc, None), "qwen35.nextn_predict_layers": (V.UINT32, nextn, None)})
    put(hub, data)
    r = attach(tmp_path, hub, models)
    assert one_line(r, 3).endswith(message)
    header = GGUFModel(models["donor"]).shards[0].data_offset
    assert hub.bytes_sent <= header + header // 4 + 512
    no_ranges(tmp_path)


# --------------------------------------------------------------------------- answers slow, short or wrong


def test_a_model_info_never_answered_times_out(hub, models, tmp_path):
    put(hub, models["donor"].read_bytes())
    hub.hostile.silent = r"^/api/models/"
    t0 = time.monotonic()
    r = attach(tmp_path, hub, models)
    assert time.monotonic() - t0 < 10
    msg = one_line(r, 6)
    assert msg.startswith(f"cannot reach {hub.url} (") and msg.endswith(
        "): check the endpoint and the network, then run the same command again")
    assert "timed out" in msg
    assert hub.bytes_sent == 0
    no_ranges(tmp_path)


def test_a_listing_dripped_a_byte_at_a_time_is_cut_by_the_deadline(hub, models, tmp_path):
    """model_info's answer at one byte per 0.05 s (its read timeout never fires): the deadline ends it."""
    put(hub, models["donor"].read_bytes())
    hub.hostile.drip = (r"^/api/models/", 0.05)
    t0 = time.monotonic()
    r = attach(tmp_path, hub, models, env={"MTPGRAFT_HUB_READ_TIMEOUT": "30", "MTPGRAFT_HUB_DEADLINE": "1"})
    assert time.monotonic() - t0 < 10
    assert "no answer within the 1 s deadline" in one_line(r, 6)
    assert hub.bytes_sent == 0
    no_ranges(tmp_path)


def test_100_byte_answers_get_a_bounded_number_of_requests(hub, models, tmp_path):
    c = put(hub, models["donor"].read_bytes())
    hub.drop("/_cdn/", after=100, times=10**6)
    r = attach(tmp_path, hub, models, resumable=True)
    msg = one_line(r, 6)
    assert msg.startswith(f"fetching {SPEC}@{c[:12]} failed 5 times (") and "received 100 bytes" in msg
    assert msg.endswith("); run the same command again: the 500 bytes already fetched of this range are kept and "
                        "not fetched again")
    assert len(hub.downloads("/_cdn/")) == 5
    assert hub.bytes_sent == 500
    kept = cache_files(tmp_path)
    assert [p.stat().st_size for p in kept] == [500] and kept[0].name == "0-2048.part"


def test_one_byte_at_a_time_is_cut_by_the_minimum_rate(hub, models, tmp_path):
    """1 byte per 0.1 s against a 1,000 bytes/s minimum (read timeout 0.5 s): each answer is cut
    soon after 0.5 s, five times, then one line says what to re-run."""
    c = put(hub, models["donor"].read_bytes())
    hub.hostile.drip = ("/_cdn/", 0.1)
    t0 = time.monotonic()
    r = attach(tmp_path, hub, models, resumable=True, env={"MTPGRAFT_HUB_READ_TIMEOUT": "0.5"})
    assert time.monotonic() - t0 < 15
    msg = one_line(r, 6)
    assert msg.startswith(f"fetching {SPEC}@{c[:12]} failed 5 times (the answer came at ")
    assert "bytes/s, under the minimum of 1,000); run the same command again" in msg
    assert len(hub.downloads("/_cdn/")) == 5


@pytest.mark.parametrize(("lie", "what"), [
    (lambda a, b, n: f"bytes {a + 1}-{b}/{n}", "Content-Range 'bytes 1-2048/"),
    (lambda a, b, n: f"bytes {a}-{b - 1}/{n + 1}", "Content-Range 'bytes 0-2047/"),
    (lambda a, b, n: "bytes */0", "Content-Range 'bytes */0'"),
])
def test_a_206_for_another_range_is_refused(hub, models, tmp_path, lie, what):
    c = put(hub, models["donor"].read_bytes())
    size = models["donor"].stat().st_size
    hub.hostile.content_range = lie
    r = attach(tmp_path, hub, models)
    msg = one_line(r, 6)
    assert msg.startswith(f"fetching {SPEC}@{c[:12]}: asked for bytes 0-2047/{size}, the Hub answered {what}")
    assert msg.endswith("; refusing the answer")
    assert len(hub.downloads("/_cdn/")) == 1 and hub.bytes_sent <= 2048
    no_ranges(tmp_path)


@pytest.mark.parametrize("body", [lambda b: b + b"x", lambda b: b[:-1]])
def test_a_206_whose_length_is_not_the_range_is_refused(hub, models, tmp_path, body):
    c = put(hub, models["donor"].read_bytes())
    hub.hostile.body = body
    r = attach(tmp_path, hub, models)
    n = len(body(bytes(2048)))
    assert one_line(r, 6) == (f"fetching {SPEC}@{c[:12]}: asked for 2,048 bytes, the Hub announced '{n}'; "
                              "refusing the answer")
    assert hub.bytes_sent <= n
    no_ranges(tmp_path)


@pytest.mark.parametrize(("key", "value"), [("mtp_num_hidden_layers", 10**9), ("num_hidden_layers", 10**9)])
def test_config_counts_no_model_has_are_refused_before_any_list_is_sized(hub, models, tmp_path, key, value):
    import json

    from mtpgraft.testmodels.checkpoints import build_checkpoint

    ckpt = build_checkpoint(tmp_path / "made" / "Qwen-tiny", "dense-bf16")
    files = {p.name: p.read_bytes() for p in ckpt.iterdir()}
    config = json.loads(files["config.json"])
    (config["text_config"] if key in config.get("text_config", {}) else config)[key] = value
    files["config.json"] = json.dumps(config).encode()
    c = hub.put_files("tester/Qwen-tiny", files)
    r = attach(tmp_path, hub, models, spec="hf://tester/Qwen-tiny")
    msg = one_line(r, 3)
    # config.json's fields are typed and range-checked as it is read (parsing), before anything else
    assert msg.startswith(f"hf://tester/Qwen-tiny/config.json@{c[:12]}: config.json {key} = {value}: out of range")
    index = json.loads(files["model.safetensors.index.json"])["weight_map"]
    headers = sum(8 + int.from_bytes(files[f][:8], "little") for f in set(index.values()))
    assert hub.bytes_sent <= len(files["config.json"]) + len(files["model.safetensors.index.json"]) + headers
    no_ranges(tmp_path)


def test_a_config_past_the_cap_is_refused_unread(hub, models, tmp_path):
    from mtpgraft.testmodels.checkpoints import build_checkpoint

    ckpt = build_checkpoint(tmp_path / "made" / "Qwen-tiny", "dense-bf16")
    c = hub.put_files("tester/Qwen-tiny", {p.name: p.read_bytes() for p in ckpt.iterdir()})
    claim_size(hub, 2**31, "config.json")
    r = attach(tmp_path, hub, models, spec="hf://tester/Qwen-tiny")
    assert one_line(r, 3) == (f"hf://tester/Qwen-tiny/config.json@{c[:12]}: 2,147,483,648 bytes, past the 16 MiB mtpgraft reads "
                              "of a config or index (they take kilobytes); refusing it unread")
    assert hub.bytes_sent == 0
    no_ranges(tmp_path)


# --------------------------------------------------------------------------- check hf:// (the listing llama.cpp's -hf reads)


@pytest.mark.parametrize("case", ["commit", "name", "silent"])
def test_check_hf_listing_is_confined_and_timed_out(hub, models, tmp_path, monkeypatch, case):
    """`check hf://` lists the repo before llama-server -hf downloads anything: a forged branch
    commit, a name that is no relative path and a Hub that never answers each end there."""
    from mtpgraft.errors import HubError
    from mtpgraft.hub.remote import HfRef, repo_listing

    for k, v in FAST.items():
        monkeypatch.setenv(k, v)
    c = put(hub, models["donor"].read_bytes())
    want = {"commit": "the Hub gave '../../..' as the commit, not a 40-hex-digit commit id; refusing to use it",
            "name": "the Hub lists a file named '../x-Q8_0.gguf' (an empty, '.' or '..' component); refusing to use it",
            "silent": f"cannot reach {hub.url}"}[case]
    if case == "commit":
        hub.hostile.sha = "../../.."
    elif case == "name":
        hub.hostile.tree = lambda entries: [{**e, "path": "../x-Q8_0.gguf"} for e in entries]
    else:
        hub.hostile.silent = "/refs"
    t0 = time.monotonic()
    with pytest.raises(HubError) as e:
        repo_listing(HfRef(DONOR, "Q8_0"), endpoint=hub.url)
    assert time.monotonic() - t0 < 10
    assert want in str(e.value) and "\n" not in str(e.value) and c


def test_an_api_answer_past_the_cap_is_refused(hub, models, tmp_path):
    """A tree listing of 2,000 entries against a 10,000-byte answer cap (the default is 64 MiB)."""
    put(hub, models["donor"].read_bytes())
    hub.hostile.answer = lambda path, body: body + [{"type": "file", "path": f"f{i}", "size": 1, "oid": "0" * 40}
                                                    for i in range(2000)] if "/tree/" in path else body
    r = attach(tmp_path, hub, models, env={"MTPGRAFT_HUB_ANSWER_CAP": "10000"})
    msg = one_line(r, 6)
    assert msg.startswith(f"the Hub's answer to '/api/models/{DONOR}/tree/") and msg.endswith(
        "' is larger than 10,000 bytes; refusing it")
    assert hub.bytes_sent == 0
    no_ranges(tmp_path)


def test_a_base_download_of_100_byte_answers_gets_a_bounded_number_of_requests(hub, models, tmp_path,
                                                                               monkeypatch):
    """huggingface_hub's own download forgives any progress; the bound holds all the same."""
    monkeypatch.setattr(time, "sleep", lambda s: None)  # its waits between tries
    hub.put_files(DONOR, {"Tiny-base-F16.gguf": models["base"].read_bytes()})
    hub.drop("/_cdn/", after=100, times=10**6)
    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    r = CliRunner().invoke(cli, ["attach", f"hf://{DONOR}/Tiny-base-F16.gguf", "--mtp-from", str(models["donor"]),
                                 "-o", str(out), "--endpoint", hub.url], env=FAST)
    msg = one_line(r, 6)
    assert msg.startswith("downloading '/_cdn/repos/") and "failed 5 times, each answer cut before 65,536 bytes" in msg
    assert msg.endswith("; run the same command again: what was fetched is kept")
    assert len(hub.downloads("/_cdn/")) == 5 and hub.bytes_sent == 500
    assert not out.exists()


@pytest.mark.parametrize("spec", [f"hf://{DONOR}/../../x.gguf", f"hf://{DONOR}/a/../x.gguf",
                                  f"hf://{DONOR}/x\n.gguf", f"hf://{DONOR}/x.gguf@main\x1b"])
def test_a_base_spec_naming_no_file_of_the_repo_is_a_usage_error(hub, models, tmp_path, spec):
    """A base given as hf:// with `..`, a control character in the name or the revision: refused
    before the client is asked (it used to reach huggingface_hub's own check as a traceback)."""
    put(hub, models["donor"].read_bytes())
    out = tmp_path / "out" / "o.gguf"
    r = CliRunner().invoke(cli, ["attach", spec, "--mtp-from", str(models["donor"]), "-o", str(out),
                                 "--endpoint", hub.url], env=FAST)
    msg = one_line(r, 2)
    assert msg.startswith(f"{ascii(spec)}: the ") and ("component" in msg or "control character" in msg)
    assert hub.requests == [] and not out.exists()


def test_a_listing_that_pages_forever_is_refused(hub, models, tmp_path):
    """Every tree page links to a next one: the client would follow it forever."""
    put(hub, models["donor"].read_bytes())
    hub.hostile.endless = True
    r = attach(tmp_path, hub, models, env={"MTPGRAFT_HUB_API_ANSWERS": "30"})
    msg = one_line(r, 6)
    assert msg.startswith("the Hub gave more than 30 answers to /api/ requests (the last to '/api/models/")
    assert msg.endswith("); refusing to ask for more")
    assert len([q for q in hub.requests if q.path.startswith("/api/")]) == 31
    assert hub.bytes_sent == 0
    no_ranges(tmp_path)


def test_a_push_whose_hub_never_answers_times_out(hub, models, tmp_path):
    """push reads the repo's state under the same limits: a model_info never answered ends in seconds,
    one line, exit 6, nothing uploaded."""
    hub.hostile.silent = r"^/api/models/"
    t0 = time.monotonic()
    r = CliRunner().invoke(cli, ["push", str(models["donor"]), "--repo", "tester/Pushed", "--no-verify",
                                 "--endpoint", hub.url, "--token", FakeHub.TOKEN], env=FAST)
    assert time.monotonic() - t0 < 10
    assert "Traceback" not in r.output
    msg = one_line(r, 6)
    assert "timed out" in msg and msg.startswith(f"cannot reach {hub.url}"), msg
    assert hub.lfs_bytes_received == 0  # nothing uploaded
