"""Signals, killed parents, racing runs and full disks, on real processes checked by pid.

Every run here is a real `python -m mtpgraft` process. A signal is sent at a known point (the
temporary output exists, the copy is half done, llama-quantize or llama-server is running: seen in
/proc), then the test asserts the exit code (128 + the signal), the one line on stderr, that no
temporary file is left and that every child pid seen is gone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtpgraft.gguf_io import REFLINK, OutTensor
from mtpgraft.testmodels.synthetic import make_model, rewrite

SIGNALS = [(signal.SIGINT, 130, "SIGINT"), (signal.SIGTERM, 143, "SIGTERM"), (signal.SIGHUP, 129, "SIGHUP")]
PAD_BYTES = 384 << 20  # big enough that copying it takes a moment, cheap to make (a sparse file)


def start(*args: object, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mtpgraft", *map(str, args)], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    _, err = p.communicate(timeout=timeout)
    return p.returncode, err


def wait_for(cond, timeout: float = 60.0, what: str = "condition"):  # noqa: ANN001, ANN201
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        v = cond()
        if v:
            return v
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().decode(errors="replace").rsplit(")", 1)[1].split()
    except OSError:
        return None


def children(pid: int) -> dict[int, str]:
    """{pid: comm} of the live processes whose parent is `pid`."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st is not None and int(st[1]) == pid and st[0] != "Z":
                try:
                    out[int(d)] = Path(f"/proc/{d}/comm").read_text().strip()
                except OSError:
                    pass
    return out


def alive(pid: int, start_time: str) -> bool:
    """The process `pid` that started at `start_time` still runs (not a zombie, not a reused pid)."""
    st = _stat(pid)
    return st is not None and st[19] == start_time and st[0] != "Z"


# What tells the working child from a probe (`llama-server --help`): an argument only it has.
WORKING_ARG = {"llama-server": "--port", "llama-quantize": "--tensor-type"}


def child_named(parent: int, name: str) -> tuple[int, str] | None:
    """(pid, start time) of `parent`'s child `name` doing its real work, if one runs now."""
    for pid, comm in children(parent).items():
        if comm != name:
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        st = _stat(pid)
        if st is not None and WORKING_ARG[name].encode() in args:
            return pid, st[19]
    return None


def assert_one_line(err: str, text: str) -> None:
    assert err.splitlines() == [f"mtpgraft: error: {text}"], err


def temp_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*") if p.name.startswith(".") or "partial" in p.name
                  or "mtpgraft-tmp" in p.name)


def padded(model: Path, out: Path) -> Path:
    """`model` plus a 1-D F32 tensor of PAD_BYTES, read from a sparse file (so it costs no time to
    make), which attach copies and llama-quantize keeps as it is: a model whose writes take a moment."""
    hole = out.with_suffix(".hole")
    with open(hole, "wb") as f:
        f.truncate(PAD_BYTES)
    pad = OutTensor("padding.weight", (PAD_BYTES // 4,), 0, PAD_BYTES, hole, 0)  # F32
    rewrite(model, out, tensors=lambda ts: [*ts, pad], layout=REFLINK)
    hole.unlink()
    return out


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A padded base and two MTP sources whose outputs differ."""
    d = tmp_path_factory.mktemp("big")
    return {"base": padded(make_model(d / "base.gguf", layout="base"), d / "big.gguf"),
            "src": make_model(d / "src.gguf"), "src2": make_model(d / "src2.gguf", mtp_seed=7)}


@pytest.fixture(scope="module")
def big_runnable(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runnable tiny model, padded: llama-quantize takes a moment on it."""
    return padded(tiny_models["full-aligned"], tmp_path_factory.mktemp("bigq") / "big.gguf")


def _quantize(model: Path, out: Path, types: str = "Q8_0,Q6_K") -> subprocess.Popen[str]:
    return start("-q", "quantize", model, "--types", types, "--out-dir", out, "--name", "t", "--threads", "1")


def _attach(big: dict[str, Path], out: Path, src: str = "src", *extra: str) -> subprocess.Popen[str]:
    return start("attach", big["base"], "--mtp-from", big[src], "-o", out, "--mtp-type", "keep", *extra)


@pytest.mark.parametrize("point", ["temp file created", "copy half done"])
@pytest.mark.parametrize("sig,code,name", SIGNALS, ids=[s[2] for s in SIGNALS])
def test_attach_interrupted_leaves_nothing(big, tmp_path, sig, code, name, point):
    out = tmp_path / "out.gguf"
    p = _attach(big, out)
    need = 1 if point == "temp file created" else PAD_BYTES // 2

    def temp_grown() -> bool:
        return any(f.stat().st_size >= need for f in tmp_path.glob(".out.gguf.*.mtpgraft-tmp")
                   if f.exists())

    wait_for(temp_grown, what=f"attach's temporary output to reach {need} bytes")
    p.send_signal(sig)
    rc, err = finish(p)
    assert rc == code
    assert_one_line(err, f"interrupted ({name})")
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file


@pytest.mark.tools
@pytest.mark.parametrize("sig,code,name", SIGNALS, ids=[s[2] for s in SIGNALS])
def test_quantize_interrupted_stops_llama_quantize(big_runnable, tmp_path, sig, code, name):
    out = tmp_path / "q"
    p = _quantize(big_runnable, out)
    child = wait_for(lambda: child_named(p.pid, "llama-quantize"), what="llama-quantize to start")
    p.send_signal(sig)
    rc, err = finish(p)
    assert rc == code
    assert_one_line(err, f"interrupted ({name})")
    assert not alive(*child)
    assert temp_files(out) == []  # no .partial, no temporary file (a type that finished may stay)


CHECK_ARGS = ("--n-max", "1,2,3", "--reps", "3", "--n-predict", "256", "--ctx", "512", "--server-arg=-t 1")


@pytest.mark.tools
@pytest.mark.parametrize("sig,code,name", SIGNALS, ids=[s[2] for s in SIGNALS])
def test_check_interrupted_while_measuring_stops_llama_server(tiny_models, tmp_path, sig, code, name):
    rep, err_file = tmp_path / "rep", tmp_path / "stderr"
    with open(err_file, "w") as err_out:  # read while it runs: the check's events come on stderr
        p = subprocess.Popen([sys.executable, "-m", "mtpgraft", "check", tiny_models["full-aligned"], *CHECK_ARGS,
                              "--report", rep], stdout=subprocess.PIPE, stderr=err_out, text=True)
    server = wait_for(lambda: child_named(p.pid, "llama-server"), what="llama-server to start")
    # the estimate comes after the first measured request: the server is answering, many more to go
    wait_for(lambda: "mtpgraft: estimated time: ~" in err_file.read_text(), what="the first measured request")
    p.send_signal(sig)
    p.communicate(timeout=60)
    err = err_file.read_text()
    assert p.returncode == code
    assert err.splitlines()[-1] == f"mtpgraft: error: interrupted ({name})" and err.count("error") == 1, err
    assert not alive(*server)
    assert not rep.exists() or temp_files(rep) == []


@pytest.mark.tools
def test_check_interrupted_while_the_server_starts_stops_llama_server(tiny_models, tmp_path):
    rep = tmp_path / "rep"
    p = start("-q", "check", tiny_models["full-aligned"], *CHECK_ARGS, "--report", rep)
    server = wait_for(lambda: child_named(p.pid, "llama-server"), what="llama-server to start")
    os.kill(server[0], signal.SIGSTOP)  # frozen as it starts, it cannot load and answer: the check waits for it
    p.send_signal(signal.SIGINT)
    os.kill(server[0], signal.SIGCONT)  # mtpgraft's SIGTERM, sent or on its way, ends it
    rc, err = finish(p)
    assert rc == 130
    assert_one_line(err, "interrupted (SIGINT)")
    assert not alive(*server)
    assert not rep.exists() or temp_files(rep) == []


@pytest.mark.tools
def test_sigkill_of_check_takes_llama_server_along(tiny_models):
    p = start("-q", "check", tiny_models["full-aligned"], *CHECK_ARGS)
    child = wait_for(lambda: child_named(p.pid, "llama-server"), what="llama-server to start")
    p.kill()
    p.communicate(timeout=30)
    wait_for(lambda: not alive(*child), timeout=2.0, what=f"llama-server (pid {child[0]}) to die with mtpgraft")


@pytest.mark.tools
def test_sigkill_of_quantize_takes_llama_quantize_along(big_runnable, tmp_path):
    out = tmp_path / "q"
    p = _quantize(big_runnable, out, "Q8_0")
    child = wait_for(lambda: child_named(p.pid, "llama-quantize"), what="llama-quantize to start")
    p.kill()
    p.communicate(timeout=30)
    wait_for(lambda: not alive(*child), timeout=2.0, what=f"llama-quantize (pid {child[0]}) to die with mtpgraft")
    # Killed, not finished: it never wrote the whole output (an orphan would have; SIGKILL leaves
    # mtpgraft no chance to remove the partial file: the next run replaces it).
    partial = out / ".t-Q8_0.gguf.partial"
    assert not partial.exists() or partial.stat().st_size < PAD_BYTES


def test_two_attach_runs_racing_for_one_output(big, tmp_path):
    want = {}
    for src in ("src", "src2"):  # what each run writes, made beforehand
        ref = tmp_path / f"ref-{src}.gguf"
        assert finish(_attach(big, ref, src))[0] == 0
        want[src] = _digest(ref)
        ref.unlink()
    assert want["src"] != want["src2"]
    out = tmp_path / "out.gguf"
    runs = {src: _attach(big, out, src) for src in ("src", "src2")}
    results = {src: finish(p) for src, p in runs.items()}
    winners = [src for src, (rc, _) in results.items() if rc == 0]
    assert len(winners) == 1, results
    loser = next(src for src in results if src not in winners)
    rc, err = results[loser]
    assert rc == 4
    assert_one_line(err, f"{out} exists; pass --force to overwrite it")
    assert _digest(out) == want[winners[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.gguf"]


def _digest(p: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 16 MiB tmpfs (root and CAP_SYS_ADMIN needed); skipped with the reason where not allowed."""
    d = tmp_path / "full"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip() or r.returncode}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def test_attach_to_a_full_disk_says_which_file_and_how_much(big, small_fs):
    out = small_fs / "out.gguf"
    rc, err = finish(_attach(big, out))
    assert rc == 4
    line = err.strip()
    assert len(err.splitlines()) == 1 and line.startswith(f"mtpgraft: error: not enough space for {out}: needs ")
    need, free = (int(x.replace(",", "")) for x in re.findall(r"([\d,]+) bytes \(", line))
    assert need > PAD_BYTES and free <= 16 << 20
    assert list(small_fs.iterdir()) == []


@pytest.mark.tools
def test_quantize_to_a_full_disk_says_which_file_and_how_much(big_runnable, small_fs):
    rc, err = finish(_quantize(big_runnable, small_fs, "Q8_0"), timeout=120)
    assert rc == 1  # the batch ran; its one type failed
    out = small_fs / "t-Q8_0.gguf"
    assert len(err.splitlines()) == 1, err
    assert re.fullmatch(rf"mtpgraft: error: 1 of 1 type\(s\) failed: Q8_0: no space left on the device writing "
                        rf"{re.escape(str(out))} \(needs more than [\d,]+ bytes, [\d,]+ bytes free on "
                        rf"{re.escape(str(small_fs))}\)", err.strip()), err
    assert list(small_fs.iterdir()) == []


# ---- a llama-server that stops answering -----------------------------------------------------


@pytest.mark.tools
def test_a_stopped_server_is_reported_in_seconds_with_its_log(tiny_models):
    from mtpgraft.check.server import LlamaServer
    from mtpgraft.errors import ServerError

    with LlamaServer(tiny_models["full-aligned"], ctx_size=512, threads=1) as s:
        s.completion("Hello", n_predict=8)  # measured: the next budget follows this speed
        assert s.request_budget(5, 64) < 120
        os.kill(s.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(ServerError, match=r"^llama-server stopped responding: its process \(pid \d+\) "
                                              r"is stopped \(SIGSTOP\?\) during POST /completion") as e:
            s.completion("Hello again", n_predict=64)
        assert time.monotonic() - t0 < 10  # not the 300 s (or forever) it used to wait
        assert "llama" in e.value.log_tail  # the log tail travels with the error
        pid = s.pid
        t0 = time.monotonic()
        s.stop(timeout=1.0)  # SIGTERM cannot act on a stopped process: SIGKILL after 1 s
        assert time.monotonic() - t0 < 8  # not hanging on a server that ignores SIGTERM
        assert _stat(pid) is None or _stat(pid)[0] == "Z"
