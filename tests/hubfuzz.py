"""Hostile Hub answers, made at random from a seed: the mutation corpus for `hf://` sources.

`hub_variants(rng, n)` yields (class, name, setup) triples; `setup(hub, files)` makes the loopback Hub
(tests/fakehub.py) lie or stall in one way before `attach --mtp-from hf://...` runs. `run_hub_case`
runs it in process and returns a HubRecord: the README's promises held or not (a documented exit
code, one line, no traceback, nothing written outside the cache and the output, no lock file, no
range of a refused source, the bytes served bounded, no hang). tests/test_hubfuzz.py runs a seeded
corpus in CI, like the GGUF corpus in tests/fuzz.py.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from mtpgraft import errors as _errors

DONOR = "tester/Tiny-MTP-GGUF"
FILE = "Tiny-MTP-F16.gguf"
SPEC = f"hf://{DONOR}/{FILE}"
# The limits, small: a stalled answer is cut within a second.
LIMITS = {"MTPGRAFT_HUB_CONNECT_TIMEOUT": "2", "MTPGRAFT_HUB_READ_TIMEOUT": "1", "MTPGRAFT_HUB_MIN_RATE": "2000",
          "MTPGRAFT_HUB_DEADLINE": "3", "MTPGRAFT_HUB_API_ANSWERS": "40", "MTPGRAFT_HUB_ANSWER_CAP": "200000"}
EXIT_CODES = {c for kind, c in _errors.EXIT_CODES.items() if not kind.startswith("interrupted")}
HANG_S = 20.0

Setup = Callable[[Any, dict[str, int]], None]


# --------------------------------------------------------------------------- mutations


def _forged_commits(rng: random.Random) -> Any:
    return rng.choice(["/abs/path", "../../..", "..", "", "0" * 39, "0" * 41, "A" * 40, "g" * 40, "0" * 40 + "\n",
                       "0" * 20 + "/" + "0" * 19, 12345, None, ["0" * 40], "é" * 40, "%2e%2e%2f" * 4])


def _forged_names(rng: random.Random, name: str) -> str:
    return rng.choice([f"../{name}", f"/{name}", f"a/../{name}", f"./{name}", f"a//{name}", f"a\\{name}",
                       f"{name}\n", f"x\x00{name}", f"x\x1b[31m{name}", "x" * 256 + name, ("d/" * 2100) + name,
                       f"{name}/..", "..", ""])


def _forged_sizes(rng: random.Random, real: int) -> Any:
    return rng.choice([-1, -real, 0, 1, real - 1, real + 1, real * 1000, 2**63, 2**70, 1.5, "12", None, True,
                       [real]])


def _content_ranges(rng: random.Random) -> Callable[[int, int, int], str]:
    k = rng.randrange(7)
    return [lambda a, b, n: f"bytes {a + 1}-{b}/{n}", lambda a, b, n: f"bytes {a}-{b}/{n}",
            lambda a, b, n: f"bytes {a}-{b - 1}/{n + 7}", lambda a, b, n: f"bytes {a}-{b - 1}",
            lambda a, b, n: "bytes */0", lambda a, b, n: f"items {a}-{b - 1}/{n}",
            lambda a, b, n: f"bytes {a}-{b - 2}/{n}"][k]


def _bodies(rng: random.Random) -> Callable[[bytes], bytes]:
    cut, extra = rng.randrange(1, 64), bytes(rng.randrange(1, 64))
    return rng.choice([lambda b: b + extra, lambda b: b[:-cut] if len(b) > cut else b + extra,
                       lambda b: b + b, lambda b: b[: len(b) // 2]])


def _junk_json(rng: random.Random) -> Any:
    depth = rng.choice([10, 3000])
    deep = b"[" * depth + b"0" + b"]" * depth  # sent as it is (json.dumps would not nest it that deep)
    return rng.choice([[], {}, "text", 7, None, deep, {"sha": None}, {"siblings": "x"},
                       [{"type": "file"}], [{"type": "file", "path": FILE}], [{"path": 3, "type": "file", "size": 1}]])


def hub_variants(rng: random.Random, n: int) -> Iterator[tuple[str, str, Setup]]:
    """n hostile Hubs, the classes taken in turn, each variant drawn from `rng`."""
    classes: list[tuple[str, Callable[[random.Random], tuple[str, Setup]]]] = [
        ("commit", _commit), ("name", _name), ("size", _size), ("content-range", _crange), ("body", _body),
        ("answer", _answer), ("pages", _pages), ("status", _status), ("drop", _drop), ("stall", _stall)]
    for i in range(n):
        cls, make = classes[i % len(classes)]
        name, setup = make(rng)
        yield cls, name, setup


def _commit(rng: random.Random) -> tuple[str, Setup]:
    sha = _forged_commits(rng)

    def setup(hub: Any, files: dict[str, int]) -> None:
        hub.hostile.sha = sha if sha is not None else ""
    return f"sha={sha!r}", setup


def _name(rng: random.Random) -> tuple[str, Setup]:
    forged = _forged_names(rng, FILE)
    every = rng.random() < 0.5  # the donor itself, or every other file

    def setup(hub: Any, files: dict[str, int]) -> None:
        hub.hostile.tree = lambda es: [{**e, "path": forged} if (e.get("path") == FILE) != every else e for e in es]
    return f"path={forged[:40]!r} {'others' if every else 'donor'}", setup


def _size(rng: random.Random) -> tuple[str, Setup]:
    pick = rng.random()

    def setup(hub: Any, files: dict[str, int]) -> None:
        size = _forged_sizes(random.Random(pick), files[FILE])
        hub.hostile.tree = lambda es: [{**e, "size": size} if e.get("path") == FILE else e for e in es]
    return f"size#{pick:.3f}", setup


def _crange(rng: random.Random) -> tuple[str, Setup]:
    lie = _content_ranges(rng)

    def setup(hub: Any, files: dict[str, int]) -> None:
        hub.hostile.content_range = lie
    return "content-range", setup


def _body(rng: random.Random) -> tuple[str, Setup]:
    body = _bodies(rng)

    def setup(hub: Any, files: dict[str, int]) -> None:
        hub.hostile.body = body
    return "body", setup


def _pages(rng: random.Random) -> tuple[str, Setup]:
    big = rng.random() < 0.5

    def setup(hub: Any, files: dict[str, int]) -> None:
        if big:  # one answer past the cap
            hub.hostile.answer = lambda path, body: body + [{"type": "file", "path": f"f{i}", "size": 1}
                                                            for i in range(9000)] if "/tree/" in path else body
        else:
            hub.hostile.endless = True
    return ("a tree past the answer cap" if big else "a tree paging forever"), setup


def _answer(rng: random.Random) -> tuple[str, Setup]:
    junk = _junk_json(rng)
    where = rng.choice(["/revision/", "/tree/"])

    def setup(hub: Any, files: dict[str, int]) -> None:
        hub.hostile.answer = lambda path, body: junk if where in path or (where == "/revision/" and
                                                                          path.count("/") == 4) else body
    shown = junk[:40] if isinstance(junk, bytes) else json.dumps(junk)[:40]
    return f"{where} -> {shown}", setup


def _status(rng: random.Random) -> tuple[str, Setup]:
    status = rng.choice([400, 401, 403, 404, 408, 410, 416, 429, 500, 502, 503])
    where = rng.choice([r"/api/models/", r"/resolve/", r"/_cdn/"])
    times = rng.choice([1, 3, 100])

    def setup(hub: Any, files: dict[str, int]) -> None:
        hub.fail("GET", where, status, times=times)
    return f"{status} x{times} on {where}", setup


def _drop(rng: random.Random) -> tuple[str, Setup]:
    after, times = rng.choice([0, 1, 100, 5000, 70_000]), rng.choice([1, 4, 1000])

    def setup(hub: Any, files: dict[str, int]) -> None:
        hub.drop("/_cdn/", after=after, times=times)
    return f"cut after {after} x{times}", setup


def _stall(rng: random.Random) -> tuple[str, Setup]:
    where = rng.choice([r"^/api/models/", r"/resolve/", r"/_cdn/"])
    silent = rng.random() < 0.5

    def setup(hub: Any, files: dict[str, int]) -> None:
        if silent:
            hub.hostile.silent = where
        else:
            hub.hostile.drip = (where, 0.05)
    return f"{'silent' if silent else 'drip'} on {where}", setup


# --------------------------------------------------------------------------- running one case


@dataclass
class HubRecord:
    cls: str
    variant: str
    code: int | None
    seconds: float
    output: str
    problems: list[str] = field(default_factory=list)


def run_hub_case(cls: str, variant: str, setup: Setup, *, hub: Any, root: Path, base: Path, donor: Path,
                 budget: int, reference: list[Any] | None = None) -> HubRecord:
    """Put the donor on `hub`, apply the mutation, run attach, and check the promises. `root` holds
    the mtpgraft cache (root/mtpgraft_cache) and nothing else may change under it but the output;
    an exit-0 output must hold the tensors `reference` (a fingerprint's) says."""
    from mtpgraft.cli import cli
    from mtpgraft.testmodels.fingerprint import fingerprint

    hub.put_files(DONOR, {FILE: donor.read_bytes()})
    setup(hub, {FILE: donor.stat().st_size})
    out = root / "out" / "o.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    before = _outside(root)
    t0 = time.monotonic()
    r = CliRunner().invoke(cli, ["attach", str(base), "--mtp-from", SPEC, "-o", str(out), "--endpoint", hub.url],
                           env={**LIMITS, "MTPGRAFT_CACHE_DIR": str(root / "mtpgraft_cache")})
    rec = HubRecord(cls, variant, r.exit_code, time.monotonic() - t0, r.output)
    p = rec.problems
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        p.append(f"exception {type(r.exception).__name__}: {r.exception}")
    if "Traceback" in r.output or r.exit_code not in EXIT_CODES:
        p.append("traceback or an undocumented exit code")
    lines = r.output.strip().splitlines()
    if r.exit_code != 0 and (len(lines) != 1 or not lines[0].startswith("mtpgraft: error: ")):
        p.append("not one error line")
    if _outside(root) - before - ({out} if r.exit_code == 0 else set()):
        p.append(f"written outside the cache: {sorted(map(str, _outside(root) - before))[:3]}")
    cache = [q for q in (root / "mtpgraft_cache").rglob("*") if q.is_file()]
    if any(q.suffix == ".lock" for q in cache):
        p.append("a lock file in the cache")
    failed = r.exit_code == 6 and " times (" in r.output and "run the same command again" in r.output
    if r.exit_code != 0 and not failed and cache:  # a failed fetch keeps its .part for the rerun
        p.append(f"a refused source left {len(cache)} files in the cache")
    if not failed and any(q.suffix == ".part" for q in cache):
        p.append("a .part file kept")
    if r.exit_code == 0 and reference is not None and fingerprint(out)["tensors"] != reference:
        p.append("exit 0 with other tensor bytes than the donor's")
    if hub.bytes_sent > budget:
        p.append(f"{hub.bytes_sent:,} bytes served, more than {budget:,}")
    if rec.seconds > HANG_S:
        p.append(f"took {rec.seconds:.1f} s")
    return rec


def _outside(root: Path) -> set[Path]:
    keep = {"mtpgraft_cache", "hf_home", "cas", "models"}
    return {q for q in root.rglob("*") if q.is_file() and q.relative_to(root).parts[0] not in keep}
