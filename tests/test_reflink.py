"""The reflink layout: every byte range copied from an input lands at an offset congruent to its
source offset modulo the block size, so copy-on-write filesystems share the body's blocks.

The first tests check the layout itself on any filesystem; the `cow` ones run once on a small btrfs
and once on a small XFS with reflink=1, each made on a loop device (root, losetup, mkfs.btrfs /
mkfs.xfs) and skipped, with the reason, where that filesystem cannot be made."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from helpers import tensor_bytes

from mtpgraft.errors import OutputWriteError
from mtpgraft.gguf_io import CONVERTER, PAD_KEY, GGUFFile, GGUFModel, Layout
from mtpgraft.graft import block_sharing, execute_graft, plan_attach, plan_detach, plan_extract
from mtpgraft.sidecar import plan_sidecar
from mtpgraft.testmodels import CODE_PROMPT, build_tiny_model
from mtpgraft.testmodels.synthetic import make_model, split_model

BLOCK = 4096


def assert_body_congruent(plan, base: GGUFModel) -> None:
    """In every output shard: the tensors copied from `base` come first, in base order, as one
    contiguous run whose every offset is congruent to its base offset modulo 4096; the rest follow."""
    for spec in plan.shards:
        shard = GGUFFile(spec.path)
        copied = {t.name for t in spec.tensors if t.src_path in base.paths}
        names = [t.name for t in shard.tensors]
        assert copied and set(names[:len(copied)]) == copied, spec.path  # the body first
        srcs = [base.by_name[n] for n in names[:len(copied)]]
        assert len({r.path for r in srcs}) == 1
        shift = {r.abs_offset - (shard.data_offset + t.offset) for t, r in zip(shard.tensors, srcs, strict=False)}
        assert len(shift) == 1  # one run: the base's relative offsets (hence its order), unchanged
        assert shift.pop() % BLOCK == 0


@pytest.fixture
def small(tmp_path: Path) -> dict[str, Path]:
    return {"full": make_model(tmp_path / "full.gguf"), "base": make_model(tmp_path / "base.gguf", layout="base")}


@pytest.mark.parametrize("mtp_type", ["keep", "q8_0"])
def test_attach_body_lands_congruent_and_new_tensors_follow(small, tmp_path, mtp_type):
    plan = plan_attach(small["base"], small["full"], tmp_path / "out.gguf", mtp_type=mtp_type)
    execute_graft(plan)
    assert_body_congruent(plan, GGUFModel(small["base"]))
    out = GGUFModel(tmp_path / "out.gguf")
    assert [r.name for r in out.refs][-len(plan.tensors):] == [a.name for a in plan.tensors]
    assert PAD_KEY not in out.kv  # layout, not metadata: the reader hides it from every plan


def test_split_base_every_shard_laid_out_the_same_way(tmp_path):
    base = make_model(tmp_path / "base.gguf", layout="base")
    shards = split_model(base, 3)
    plan = plan_attach(shards[0], make_model(tmp_path / "full.gguf"), tmp_path / "out.gguf")
    execute_graft(plan)
    assert len(plan.shards) == 3
    assert_body_congruent(plan, GGUFModel(shards[0]))


def _congruent_fraction(out: Path, src: GGUFModel) -> float:
    shard = GGUFFile(out)
    ok = sum(t.nbytes for t in shard.tensors
             if (shard.data_offset + t.offset - src.by_name[t.name].abs_offset) % BLOCK == 0)
    return ok / sum(t.nbytes for t in shard.tensors)


def test_detach_lands_congruent(tmp_path):
    """The converter puts the MTP block last (mtpgraft.testmodels): the detached trunk is one run."""
    full = build_tiny_model(tmp_path / "full.gguf", layout="full", dtype="f16")
    plan = plan_detach(full, tmp_path / "det.gguf")
    execute_graft(plan)
    assert_body_congruent(plan, GGUFModel(full))


def test_two_runs_the_bigger_one_lands_congruent(small, tmp_path):
    """Where dropped tensors split the body in two (an MTP block before output_norm/output; extract
    keeps token_embd and the MTP block), llama.cpp's gapless data section leaves one degree of
    freedom: the header padding aligns the run with the most bytes, the other is copied."""
    full = GGUFModel(small["full"])
    for plan in (plan_detach(small["full"], tmp_path / "det.gguf"), plan_extract(small["full"], tmp_path / "side.gguf")):
        execute_graft(plan)
        assert 0.5 < _congruent_fraction(Path(plan.outputs[0]), full) < 1.0


def test_layouts_hold_the_same_tensors_and_gguf_py_reads_them(small, tmp_path):
    outs = {}
    for name, layout in {"reflink": Layout(), "no-reflink": Layout(clone=False), "converter": CONVERTER}.items():
        outs[name] = tmp_path / f"{name}.gguf"
        execute_graft(plan_attach(small["base"], small["full"], outs[name]), layout=layout)
    # cloning or not changes where the bytes are stored, never the bytes
    assert outs["reflink"].read_bytes() == outs["no-reflink"].read_bytes()
    conv = gguf.GGUFReader(outs["converter"])
    assert PAD_KEY not in conv.fields
    for name in ("reflink", "converter"):
        rd = gguf.GGUFReader(outs[name])  # gguf-py's own reader takes the padding key and the order
        m = GGUFModel(outs[name])
        assert len(rd.tensors) == len(m.refs)
        for t in rd.tensors:
            assert bytes(t.data.tobytes()) == tensor_bytes(m, t.name), (name, t.name)
    pad = gguf.GGUFReader(outs["reflink"]).fields[PAD_KEY]
    assert pad.types == [gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.UINT8]


def test_the_padding_key_is_resized_not_stacked(small, tmp_path):
    """A graft of a graft: the base's padding key is dropped and a new one sized for this output."""
    one = tmp_path / "one.gguf"
    execute_graft(plan_detach(small["full"], one))
    two = tmp_path / "two.gguf"
    plan = plan_attach(one, small["full"], two)
    assert all(c.key != PAD_KEY for c in plan.key_changes)
    execute_graft(plan)
    assert list(gguf.GGUFReader(two).fields).count(PAD_KEY) == 1
    assert_body_congruent(plan, GGUFModel(one))


def _mtpgraft(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtpgraft", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_cli_layout_flags(small, tmp_path):
    run = _mtpgraft
    r = run("attach", small["base"], "--mtp-from", small["full"], "-o", tmp_path / "c.gguf", "--layout", "converter")
    assert r.returncode == 0, r.stderr
    assert PAD_KEY not in gguf.GGUFReader(tmp_path / "c.gguf").fields
    r = run("attach", small["base"], "--mtp-from", small["full"], "-o", tmp_path / "r.gguf", "--no-reflink", "--json")
    assert r.returncode == 0, r.stderr
    import json

    d = json.loads(r.stdout)
    assert d["layout"] == "reflink" and d["body_bytes"] == GGUFModel(small["base"]).tensor_bytes_total()
    r = run("attach", small["base"], "--mtp-from", small["full"], "-o", tmp_path / "x.gguf", "--layout", "bogus")
    assert r.returncode == 2 and "bogus" in r.stderr


# -------------------------------------------------------------- on a real copy-on-write filesystem

# each test filesystem: its type, mkfs command line, the distribution package that has mkfs, the
# image size (sparse: btrfs wants at least ~110 MB, mkfs.xfs refuses less than 300 MB). xfs-16k: a
# block size above the page size (Linux 6.12 and later mount it), so the layout aligns to 16 KiB.
COW_FILESYSTEMS = {
    "btrfs": ("btrfs", ["mkfs.btrfs", "-q"], "btrfs-progs", 256 << 20),
    "xfs": ("xfs", ["mkfs.xfs", "-q", "-m", "reflink=1"], "xfsprogs", 320 << 20),
    "xfs-16k": ("xfs", ["mkfs.xfs", "-q", "-m", "reflink=1", "-b", "size=16384"], "xfsprogs", 512 << 20),
}


def _cow_unavailable(fs: str) -> str | None:
    _, mkfs, package, _ = COW_FILESYSTEMS[fs]
    if sys.platform != "linux":
        return f"a loop-mounted {fs} needs Linux"
    if os.geteuid() != 0:
        return f"making a loop-mounted {fs} needs root"
    for tool in (mkfs[0], "losetup", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} not found" + (f" (apt-get install {package})" if tool == mkfs[0] else "")
    return None


_MOUNT_HINTS = {"xfs-16k": " (blocks larger than the page size need Linux 6.12 or later)"}


def _mount_failed(name: str, fs: str, stderr: str) -> str:
    # a filesystem built as a module is missing from /proc/filesystems until mount loads it
    if fs not in Path("/proc/filesystems").read_text().split():
        return f"the kernel has no {fs} (not in /proc/filesystems; mount: {stderr.strip()})"
    return f"cannot loop-mount {name} here{_MOUNT_HINTS.get(name, '')}: {stderr.strip()}"


@pytest.fixture(scope="module", params=sorted(COW_FILESYSTEMS))
def cow(request, tmp_path_factory) -> Path:
    """A fresh loop-mounted copy-on-write filesystem (btrfs; XFS with reflink=1), one per module."""
    why = _cow_unavailable(request.param)
    if why:
        pytest.skip(why)
    fs, mkfs, _, size = COW_FILESYSTEMS[request.param]
    d = tmp_path_factory.mktemp(request.param)
    img, mnt = d / "fs.img", d / "mnt"
    mnt.mkdir()
    try:
        with open(img, "wb") as f:
            f.truncate(size)
        r = subprocess.run([*mkfs, str(img)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"{mkfs[0]} failed: {r.stderr.strip()}")
        r = subprocess.run(["mount", "-t", fs, "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(_mount_failed(request.param, fs, r.stderr))
        try:
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], capture_output=True)
    finally:
        img.unlink(missing_ok=True)


_FIFREEZE, _FITHAW = 0xC0045877, 0xC0045878  # linux/fs.h: _IOWR('X', 119 / 120, int)


def _used(path: Path) -> int:
    """Bytes the filesystem holding `path` has in use once all its pending work is done. Freezing
    it (and thawing it again) is the one way that waits for all of it: btrfs commits its
    transaction (space is accounted then); XFS writes back delayed allocations (reserved at a worst
    case until then) and finishes freeing unlinked files (in the background, after the unlink)."""
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, _FIFREEZE, 0)
        fcntl.ioctl(fd, _FITHAW, 0)
        st = os.fstatvfs(fd)
    finally:
        os.close(fd)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.fixture(scope="module")
def on_cow(cow) -> dict[str, Path]:
    # f32: the tiny aligned model's body (11.6 MB) dwarfs its MTP block, so sharing shows in the numbers
    models = {"full": build_tiny_model(cow / "full.gguf", layout="full", dtype="f32"),
              "base": build_tiny_model(cow / "base.gguf", layout="base", dtype="f32")}
    (cow / "split").mkdir()
    models["split"] = split_model(build_tiny_model(cow / "split" / "base.gguf", layout="base", dtype="f32"), 3)[0]
    (cow / "split" / "base.gguf").unlink()
    return models


def _cow_plan(op: str, models: dict[str, Path], out: Path):
    if op == "attach":
        return plan_attach(models["base"], models["full"], out)
    if op == "attach-split":
        return plan_attach(models["split"], models["full"], out)
    if op == "detach":
        return plan_detach(models["full"], out)
    if op == "extract":
        return plan_extract(models["full"], out)
    return plan_sidecar(models["base"], models["full"], out)


def _block(cow: Path) -> int:
    return os.statvfs(cow).f_frsize  # the filesystem's block size: what the layout aligns to


def _congruent_runs(spec, block: int) -> dict[tuple[Path, int], int]:
    """A written shard's copied tensors that landed congruent with their source offsets modulo the
    block size, as runs: bytes per (source, shift). Their whole blocks are the ones a clone shares."""
    out = GGUFFile(spec.path)
    where = {t.name: out.data_offset + t.offset for t in out.tensors}
    runs: dict[tuple[Path, int], int] = {}
    for t in spec.tensors:
        shift = None if t.src_path is None else where[t.name] - t.src_offset
        if shift is not None and shift % block == 0:
            runs[t.src_path, shift] = runs.get((t.src_path, shift), 0) + t.nbytes
    return runs


@pytest.mark.parametrize("op", ["attach", "attach-split", "detach", "extract", "sidecar"])
def test_cow_each_command_shares_its_copied_run_and_writes_only_the_rest(cow, on_cow, op):
    """Every shard of every graft command: the run it copies congruently sits in shared extents, the
    filesystem's new space is the rest of the file, and the file holds no blocks past its size (no
    speculative preallocation left, no copy-on-write of a block it had just cloned)."""
    from mtpgraft.blocks import flagged_shared_bytes

    plan = _cow_plan(op, on_cow, cow / f"{op}.gguf")
    block = _block(cow)
    before = _used(cow)
    outs = [Path(p) for p in execute_graft(plan)]
    try:
        new = _used(cow) - before
        runs = [r for s in plan.shards for r in _congruent_runs(s, block).values()]
        assert sum(runs) > sum(p.stat().st_size for p in outs) / 2  # the layout aligned the bulk
        slack = 2 * block * len(runs)  # each run's unaligned head and tail blocks
        shared = 0
        for p in outs:
            with open(p, "rb") as f:
                start = GGUFFile(p).data_offset
                shared += flagged_shared_bytes(f.fileno(), start, p.stat().st_size - start)
        assert sum(runs) - slack <= shared <= sum(runs), (shared, runs)
        rest = sum(p.stat().st_size for p in outs) - sum(runs)
        assert rest <= new < rest + slack + (1 << 20), (new, rest)  # + filesystem metadata
        held = sum(p.stat().st_blocks * 512 for p in outs)
        assert held <= sum(-(-p.stat().st_size // block) * block for p in outs), (held, [p.stat() for p in outs])
    finally:
        for p in outs:
            p.unlink()


def test_cow_attach_shares_the_base_extents_and_costs_only_the_mtp_bytes(cow, on_cow):
    from mtpgraft.blocks import flagged_shared_bytes

    base = GGUFModel(on_cow["base"])
    body = base.tensor_bytes_total()
    out = cow / "grafted.gguf"
    plan = plan_attach(on_cow["base"], on_cow["full"], out)
    mtp = sum(a.bytes_out for a in plan.tensors)
    before = _used(cow)
    execute_graft(plan)
    new = _used(cow) - before
    s = block_sharing(plan)
    assert s.body_bytes == body
    block = _block(cow)
    assert s.shared_bytes >= body - 2 * block  # all but the unaligned head and tail blocks
    with open(out, "rb") as f:
        sh = GGUFFile(out)
        assert flagged_shared_bytes(f.fileno(), sh.data_offset, body) >= body - 2 * block  # FIEMAP_EXTENT_SHARED
    assert new < mtp + (1 << 20), (new, mtp)  # the MTP bytes, the header and filesystem metadata
    assert new < body / 2

    # --no-reflink and the converter layout copy the body: the space it takes, and no shared blocks
    for name, layout in (("copied.gguf", Layout(clone=False)), ("converter.gguf", CONVERTER)):
        p = plan_attach(on_cow["base"], on_cow["full"], cow / name)
        before = _used(cow)
        execute_graft(p, layout=layout)
        assert _used(cow) - before > body
        assert block_sharing(p).shared_bytes < body / 10, name


def test_cow_cli_reports_what_the_output_shares(cow, on_cow):
    """Through the CLI: attach's report line (-v) and --json say how much of the body shares the
    base's blocks, inspect (text and --json) how much tensor data sits in shared extents, and
    --no-reflink writes a file that shares nothing."""
    import json
    import re

    body, block = GGUFModel(on_cow["base"]).tensor_bytes_total(), _block(cow)
    shared, copied = cow / "cli.gguf", cow / "cli-copied.gguf"
    try:
        r = _mtpgraft("-v", "attach", on_cow["base"], "--mtp-from", on_cow["full"], "-o", shared)
        assert r.returncode == 0, r.stderr
        m = re.search(r"blocks: ([\d.]+) of ([\d.]+) MB of the body share the base's blocks", r.stderr)
        assert m and float(m[2]) == round(body / 1e6, 1) and float(m[1]) >= (body - 2 * block) / 1e6 - 0.05, r.stderr
        r = _mtpgraft("attach", on_cow["base"], "--mtp-from", on_cow["full"], "-o", copied, "--no-reflink", "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert (d["body_bytes"], d["body_shared_bytes"]) == (body, 0)
        assert "no blocks shared with the base" in _mtpgraft("detach", copied, "-o", cow / "x.gguf",
                                                              "--no-reflink").stderr
        (cow / "x.gguf").unlink()
        data = [GGUFFile(p).data_offset for p in (shared, copied)]
        got = [json.loads(_mtpgraft("inspect", p, "--json").stdout)["shared_bytes"] for p in (shared, copied)]
        assert body - 2 * block <= got[0] <= shared.stat().st_size - data[0] and got[1] == 0, got
        m = re.search(r"shared blocks: +([\d.]+) of ([\d.]+) MB", _mtpgraft("inspect", shared).stdout)
        assert m and float(m[1]) == round(got[0] / 1e6, 1) and float(m[2]) == round((shared.stat().st_size - data[0]) / 1e6, 1)
    finally:
        shared.unlink(missing_ok=True)
        copied.unlink(missing_ok=True)


def test_cow_sidecar_reports_the_mtp_block_it_shares_with_its_source(cow, on_cow):
    """A sidecar's largest copied run is the MTP block when the base's shared tensors are smaller
    (as in the tiny model): it lands congruent with the MTP source and shares its blocks, and the
    report says so instead of only "no blocks shared with the base" (text and --json agree)."""
    import json
    import re

    out, block = cow / "mtp-side.gguf", _block(cow)
    try:
        r = _mtpgraft("-v", "sidecar", on_cow["base"], "--mtp-from", on_cow["full"], "-o", out, "--json")
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        mtp = sum(a["bytes_out"] for a in d["plan"]["tensors"])
        assert d["mtp_copied_bytes"] == mtp and mtp > d["body_bytes"] > 0
        assert mtp - 2 * block <= d["mtp_shared_bytes"] <= mtp and d["body_shared_bytes"] < d["body_bytes"]
        out.unlink()
        r = _mtpgraft("-v", "sidecar", on_cow["base"], "--mtp-from", on_cow["full"], "-o", out)
        m = re.search(r"; ([\d.]+) of ([\d.]+) MB copied from the MTP source share its blocks", r.stderr)
        assert m and float(m[2]) == round(mtp / 1e6, 1) and float(m[1]) == round(d["mtp_shared_bytes"] / 1e6, 1), r.stderr
    finally:
        out.unlink(missing_ok=True)


def test_cow_graft_needs_room_for_the_mtp_block_not_a_second_body(cow, on_cow):
    """With less free space than the body but more than the MTP block, the reflinked graft is
    written (the free-space check counts only what is not shared) and a copying one is refused
    before it writes anything."""
    from mtpgraft.outputs import free_bytes

    body = GGUFModel(on_cow["base"]).tensor_bytes_total()
    plan = plan_attach(on_cow["base"], on_cow["full"], cow / "tight.gguf")
    mtp = sum(a.bytes_out for a in plan.tensors)
    filler = cow / "filler"
    try:
        with open(filler, "wb") as f:  # fill up to mtp + body/2 free, as the filesystem counts it
            size = 0
            while free_bytes(cow) > mtp + body // 2 + (1 << 20):
                step = max(1 << 20, (free_bytes(cow) - mtp - body // 2) // 2)
                os.posix_fallocate(f.fileno(), size, step)
                size += step
                os.sync()
        assert mtp + (1 << 20) < free_bytes(cow) < plan.output_bytes
        with pytest.raises(OutputWriteError, match="not enough space"):
            execute_graft(plan_attach(on_cow["base"], on_cow["full"], cow / "tight-copied.gguf"),
                       layout=Layout(clone=False))
        assert not (cow / "tight-copied.gguf").exists()
        assert not [p for p in cow.iterdir() if p.name.endswith(".mtpgraft-tmp")]
        execute_graft(plan)
        assert block_sharing(plan).shared_fraction > 0.99
        assert GGUFModel(cow / "tight.gguf").tensor_bytes_total() == plan.output_bytes
    finally:
        filler.unlink(missing_ok=True)
        (cow / "tight.gguf").unlink(missing_ok=True)


@pytest.mark.tools
def test_cow_reflinked_graft_loads_drafts_and_quantizes(cow, on_cow):
    """llama-server loads the reflinked graft and drafts at acceptance 1.0; llama-quantize reads it."""
    from mtpgraft.check.server import LlamaServer
    from mtpgraft.tools import find_tool

    out = cow / "served.gguf"
    plan = plan_attach(on_cow["base"], on_cow["full"], out)
    execute_graft(plan)
    assert block_sharing(plan).shared_fraction > 0.99
    with LlamaServer(out, spec_type="mtp", draft_n_max=3) as s:
        r = s.completion(CODE_PROMPT, n_predict=48, temperature=0.0)
    t = r["timings"]
    assert t["draft_n"] > 0 and t["draft_n_accepted"] == t["draft_n"]
    q = cow / "served-q8.gguf"
    subprocess.run([str(find_tool("llama-quantize")), str(out), str(q), "Q8_0"], check=True,
                   capture_output=True, timeout=300)
    got = GGUFModel(q)
    assert sorted(r.name for r in got.refs) == sorted(r.name for r in GGUFModel(out).refs)
    q.unlink()
