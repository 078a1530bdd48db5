"""The Ray executor on a real local Ray cluster (a head and a worker node on 127.0.0.1, CPUs only):
the tiny recipe gives the same outputs and state records as the local executor, a worker killed in
the middle of a quantize is retried and the run completes, and a driver interrupted by Ctrl-C leaves
no partial output and resumes without redoing anything finished."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_recipe

from mtpgraft.recipe import State, load_recipe

pytestmark = [pytest.mark.tools, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
NO_HUB = {"HF_ENDPOINT": "http://127.0.0.1:9"}  # the tiny recipe's dry-run push stays offline

# test_recipe's quick pipeline (no check) with four types: more than the cluster's 3 CPUs run at once
QUICK = test_recipe.QUICK.replace('types = ["Q8_0", "Q4_K_M"]', 'types = ["Q4_K_M", "Q5_K_M", "IQ4_XS", "Q6_K"]')
assert QUICK != test_recipe.QUICK


# Every Ray process on the loopback interface only: Ray's switch for single-machine clusters
# (named for Windows/macOS, honoured on Linux) makes it take 127.0.0.1 as each node's address.
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


@pytest.fixture(scope="module")
def cluster() -> str:
    """A head (1 CPU) and a separate worker node (2 CPUs), each its own raylet, on 127.0.0.1;
    skipped, saying why, where Ray is missing or cannot start."""
    saved = {k: os.environ.get(k) for k in LOOPBACK}
    os.environ.update(LOOPBACK)  # read when ray is imported, and by the processes it starts
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        pytest.skip("Ray is not installed (pip install 'mtpgraft[ray]')")
    c = None
    try:
        c = Cluster(initialize_head=True, connect=False,
                    head_node_args={"num_cpus": 1, "include_dashboard": False})
        c.add_node(num_cpus=2)
        c.wait_for_nodes()
    except Exception as e:  # noqa: BLE001 - any reason Ray cannot run here is a skip, said in one line
        if c is not None:
            c.shutdown()
        pytest.skip(f"a local Ray cluster cannot start here: {type(e).__name__}: {e}")
    yield c.address
    c.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def mtpgraft(*args: object, env: dict[str, str] | None = None, **kw) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mtpgraft", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **LOOPBACK, **(env or {})},
                            **kw)


def finish(p: subprocess.Popen[str], timeout: float = 600) -> tuple[int, dict, str]:
    out, err = p.communicate(timeout=timeout)
    try:
        return p.returncode, json.loads(out), err
    except ValueError:
        return p.returncode, {"stdout": out}, err


def sha256s(work: Path) -> dict[str, str]:
    """Every model file the pipeline made (graft, imatrix, quants) by path in the work dir."""
    from mtpgraft.hashing import sha256_file

    files = [p for p in work.rglob("*.gguf") if "sources" not in p.parts]
    return {p.relative_to(work).as_posix(): sha256_file(p, use_cache=False) for p in files}


def records(work: Path) -> dict[str, tuple[str, str, dict]]:
    return {r.step: (r.status, r.key, r.outputs) for r in State(work).records()}


def leftovers(work: Path) -> list[str]:
    """Partial outputs and in-flight markers: none may survive a run, however it ended."""
    return sorted(str(p.relative_to(work)) for p in work.rglob("*")
                  if ".partial" in p.name or p.name.endswith((".running", ".tmp")) or p.name.startswith(".driver-"))


def test_tiny_recipe_on_ray_equals_the_local_run(cluster: str, tmp_path: Path) -> None:
    tiny = ROOT / "recipes" / "tiny.toml"
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    rc, d_local, err = finish(mtpgraft("run", tiny, "--work-dir", local, "--json", env=NO_HUB))
    assert rc == 0, err
    rc, d_ray, err = finish(mtpgraft("run", tiny, "--work-dir", on_ray, "--json", "--executor", "ray",
                                     "--address", cluster, env=NO_HUB))
    assert rc == 0, err
    assert d_ray["executor"] == "ray" and [s["status"] for s in d_ray["steps"]] == \
        [s["status"] for s in d_local["steps"]]
    assert all(s["where"] for s in d_ray["steps"] if s["status"] == "done")  # each ran as a task
    assert "[ray] " in err and "steps done; running:" in err  # the driver's progress view
    # identical model files, byte for byte, and identical state records (keys, output hashes);
    # reports (check, quality) hold timings: of those steps only the keys are compared
    assert sha256s(on_ray) == sha256s(local) and len(sha256s(local)) == 7
    a, b = records(local), records(on_ray)
    assert a.keys() == b.keys() and {s: v[1] for s, v in a.items()} == {s: v[1] for s, v in b.items()}
    makes_models = ("graft", "imatrix", "quantize")
    assert {s: v for s, v in a.items() if s.partition(":")[0] in makes_models} == \
        {s: v for s, v in b.items() if s.partition(":")[0] in makes_models}
    assert leftovers(on_ray) == []
    # and the records mean the same to either executor: a local --resume finds everything finished
    rc, d, err = finish(mtpgraft("run", tiny, "--work-dir", on_ray, "--json", "--resume", env=NO_HUB))
    assert rc == 0, err
    assert {s["status"] for s in d["steps"][:-1]} == {"finished-before"} and d["steps"][-1]["step"] == "push"


def _quantize_procs(work: Path) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if d.name.isdigit() and cmd and cmd[0].endswith(b"llama-quantize") and str(work).encode() in b" ".join(cmd):
            out.append(int(d.name))
    return out


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_worker_killed_mid_quantize_is_retried(cluster: str, tmp_path: Path) -> None:
    recipe = tmp_path / "quick.toml"
    recipe.write_text(QUICK)
    work = tmp_path / "w"
    p = mtpgraft("run", recipe, "--work-dir", work, "--json", "--executor", "ray", "--address", cluster)
    victim = None
    deadline = time.monotonic() + 300
    while victim is None and p.poll() is None and time.monotonic() < deadline:
        pids = _quantize_procs(work)
        if pids:
            worker = _parent(pids[0])
            assert b"ray" in Path(f"/proc/{worker}/cmdline").read_bytes()  # a Ray worker process
            victim = Path(f"/proc/{pids[0]}/cmdline").read_bytes().split(b"\0")[-3].decode()  # TYPE
            os.kill(worker, signal.SIGKILL)  # the worker dies, as with a lost node: its tool too
            os.kill(pids[0], signal.SIGKILL)
        time.sleep(0.005)
    assert victim is not None, "no llama-quantize seen"
    rc, d, err = finish(p)
    assert rc == 0 and "steps" in d, (err, d)
    steps = {s["step"]: s for s in d["steps"]}
    assert steps[f"quantize:{victim}"]["status"] == "done" and steps[f"quantize:{victim}"]["attempts"] == 2
    assert f"[quantize:{victim}] attempt 1 failed (task lost" in err
    assert all(s["status"] == "done" for s in d["steps"])
    assert sorted(records(work)) == ["graft", "imatrix"] + sorted(f"quantize:{t}" for t in
                                                                  load_recipe(recipe).quantize.types)
    assert leftovers(work) == []


# More quantize steps than the cluster runs at once (3 CPUs): when the first one is recorded, some are
# still waiting, so the Ctrl-C always lands before the last one can finish, however fast the machine.
MANY = QUICK.replace('types = ["Q4_K_M", "Q5_K_M", "IQ4_XS", "Q6_K"]',
                     'types = ["Q4_K_M", "Q5_K_M", "IQ4_XS", "Q6_K", "Q4_0", "Q5_0", "Q3_K_M", "Q4_K_S", "Q5_K_S"]')
assert MANY != QUICK


def test_driver_interrupted_then_resumed_redoes_nothing(cluster: str, tmp_path: Path) -> None:
    recipe = tmp_path / "quick.toml"
    recipe.write_text(MANY)
    work = tmp_path / "w"
    p = mtpgraft("run", recipe, "--work-dir", work, "--executor", "ray", "--address", cluster)
    deadline = time.monotonic() + 300
    # the first quantize recorded (the others run or wait: 4 types, 3 CPUs), then Ctrl-C on the driver
    while not list(work.glob("state/quantize-*.json")) and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert p.poll() is None and list(work.glob("state/quantize-*.json")), p.communicate()[1]
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=180)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "mtpgraft: error: interrupted (SIGINT)", err
    assert leftovers(work) == [] and not _quantize_procs(work)
    done = {s: v for s, v in records(work).items() if v[0] == "done"}
    assert {"graft", "imatrix"} < set(done) and len(done) < 2 + 9  # some quantize steps never finished
    stamps = {f: f.stat().st_mtime_ns for f in work.rglob("*.gguf")}
    rc, d, err = finish(mtpgraft("run", recipe, "--work-dir", work, "--json", "--resume", "--executor", "ray",
                                 "--address", cluster))
    assert rc == 0, err
    status = {s["step"]: s["status"] for s in d["steps"]}
    assert {s for s, v in status.items() if v == "finished-before"} == set(done)
    assert {s for s, v in status.items() if v == "done"} == set(status) - set(done)
    assert {f: f.stat().st_mtime_ns for f in stamps} == stamps  # nothing finished was rewritten


def test_a_failing_step_is_retried_once_then_reported_and_the_rest_goes_on(cluster: str, tmp_path: Path) -> None:
    recipe = tmp_path / "quick.toml"
    # Q5_K_M's MTP rule cannot work (iq2_xxs needs importance data the imatrix never has for the MTP
    # block): that step fails every time; Q4_K_M does not depend on it
    recipe.write_text(QUICK.replace('types = ["Q4_K_M", "Q5_K_M", "IQ4_XS", "Q6_K"]',
                                    'types = ["Q4_K_M", "Q5_K_M"]\nmtp_type = {default = "q8_0", Q5_K_M = "iq2_xxs"}'))
    work = tmp_path / "w"
    rc, d, err = finish(mtpgraft("run", recipe, "--work-dir", work, "--json", "--executor", "ray",
                                 "--address", cluster))
    steps = {s["step"]: s for s in d["steps"]}
    assert rc == 1 and steps["quantize:Q4_K_M"]["status"] == "done", err
    bad = steps["quantize:Q5_K_M"]
    assert bad["status"] == "failed" and bad["attempts"] == 2 and "needs importance data" in bad["message"]
    assert err.count("[quantize:Q5_K_M] attempt 1 failed") == 1
    assert err.strip().splitlines()[-1].startswith("mtpgraft: error: 1 step(s) did not finish: quantize:Q5_K_M: ")
    assert State(work).get("quantize:Q5_K_M").status == "failed" and leftovers(work) == []  # type: ignore[union-attr]


# ---- a cluster of its own: `ray start --head` as a separate process ---------------------------------


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module")
def ray_start_cluster() -> tuple[str, Path]:
    """A head node (2 CPUs) started by `ray start --head --block` in a session of its own, with
    SIGINT ignored as in a script's background job (Ray's cancel must still reach the task); torn
    down by ending that process, which stops what it started. Not `ray stop`: that stops every Ray
    process of the machine, other test runs' clusters too. Yields its address and its temp dir (its
logs). Skipped, saying why, where it cannot start."""
    import shutil
    import tempfile

    ray_bin = Path(sys.executable).with_name("ray")
    if not ray_bin.is_file():
        pytest.skip(f"no `ray` command beside {sys.executable} (pip install 'mtpgraft[ray]')")
    temp = Path(tempfile.mkdtemp(prefix="mtpgraft-ray-"))  # short: Ray's socket paths must fit 107 bytes
    port, dash, agent = _free_ports(3)
    log = open(temp / "start.log", "w+b")  # noqa: SIM115 - the process writes it until teardown
    start = [str(ray_bin), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
             f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}", "--disable-usage-stats",
             f"--temp-dir={temp}"]
    head = subprocess.Popen(["sh", "-c", 'trap "" INT; exec "$0" "$@"', *start], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, **LOOPBACK}, start_new_session=True)
    deadline = time.monotonic() + 120
    while b"Ray runtime started" not in (temp / "start.log").read_bytes() and head.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        if b"Ray runtime started" not in (temp / "start.log").read_bytes():
            tail = (temp / "start.log").read_bytes().decode(errors="replace").strip().splitlines()[-1:]
            pytest.skip(f"`ray start --head` cannot run here: {tail[0] if tail else 'no output'}")
        yield f"127.0.0.1:{port}", temp
    finally:
        head.terminate()  # it stops the raylet, the GCS and the rest it started, then exits
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for(what: str, found, p: subprocess.Popen[str], timeout: float = 300):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = found()
        if got:
            return got
        assert p.poll() is None, f"the run ended before {what}: {p.communicate()[1]}"
        time.sleep(0.005)
    p.kill()
    pytest.fail(f"no {what} in {timeout:g}s: {p.communicate()[1]}")


def _cancel_requests(cluster_dir: Path) -> int:
    """How many times a Ray worker of the cluster logged that it interrupts the task it runs."""
    logs = cluster_dir.glob("session_latest/logs/python-core-worker-*.log")
    return sum(f.read_bytes().count(b"Cancelling a running task") for f in logs)


def test_a_cancelled_quantize_leaves_no_child_and_no_partial_file(ray_start_cluster: tuple[str, Path],
                                                                  tmp_path: Path) -> None:
    """Ctrl-C on a driver whose quantize task runs llama-quantize: Ray interrupts the task, which
    stops the tool and removes its partial output; the worker process lives on, without them."""
    recipe = tmp_path / "quick.toml"
    recipe.write_text(test_recipe.QUICK.replace('types = ["Q8_0", "Q4_K_M"]', 'types = ["Q4_K_M"]'))
    work = tmp_path / "w"  # unique to this test: what /proc is searched for
    address, cluster_dir = ray_start_cluster
    before = _cancel_requests(cluster_dir)
    p = mtpgraft("run", recipe, "--work-dir", work, "--executor", "ray", "--address", address)
    tool = _wait_for("llama-quantize", lambda: _quantize_procs(work), p)[0]
    # frozen, it is still running when the cancel arrives, however fast this machine quantizes; let
    # run in slices of a few milliseconds until it has begun writing its output
    os.kill(tool, signal.SIGSTOP)
    while [f.name for f in work.rglob("*.partial")] != [".q-Q4_K_M.gguf.partial"]:
        os.kill(tool, signal.SIGCONT)
        time.sleep(0.002)
        os.kill(tool, signal.SIGSTOP)
        assert tool in _quantize_procs(work), "llama-quantize ended before it was seen writing"
    p.send_signal(signal.SIGINT)
    _wait_for("cancel request on the worker", lambda: _cancel_requests(cluster_dir) > before, p, timeout=60)
    os.kill(tool, signal.SIGCONT)
    _, err = p.communicate(timeout=180)
    assert p.returncode == 130 and err.strip().splitlines()[-1] == "mtpgraft: error: interrupted (SIGINT)", err
    assert "clean-up failed" not in err, err
    assert not _quantize_procs(work), "llama-quantize outlived its cancelled task"
    assert leftovers(work) == [] and not list(work.rglob("*.mtpgraft-tmp"))
    assert not [p for p in work.rglob("*Q4_K_M*") if p.suffix == ".gguf"]  # nothing half-made was installed
    assert "quantize:Q4_K_M" not in records(work)


def test_the_cleanup_of_a_cancelled_task_stops_children_and_removes_partial_outputs(tmp_path: Path) -> None:
    """What a Ray task runs when Ray interrupts it, wherever the interrupt lands (even where the
    step's own cleanups cannot run): its children stopped, its outputs not installed removed."""
    from mtpgraft.outputs import PendingOutput
    from mtpgraft.recipe import ray_executor
    from mtpgraft.tools import live_children, spawn

    child = spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    pending = PendingOutput(tmp_path / "out.gguf", tmp=tmp_path / ".out.gguf.partial")
    pending.path.write_bytes(b"half")
    assert live_children() == [child.pid]
    ray_executor._clean_up_after_cancel()
    assert child.poll() == -signal.SIGTERM and live_children() == []
    assert list(tmp_path.iterdir()) == []
