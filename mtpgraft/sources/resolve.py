"""Turn an MTP source spec into a local GGUF that graft.plan_attach takes.

A local GGUF is used as it is. Everything else becomes a tensors-only GGUF in the mtpgraft cache
(`mtp-sources/`): safetensors heads converted in numpy, Hub GGUF donors cut down to their metadata
and MTP tensors. Such a file records what it was made from (`mtpgraft.cache.origin`, e.g.
`hf://Qwen/Qwen3.6-27B@<commit>`), which the graft's provenance records instead of the cache name.
Every check against the base runs on headers and config.json, before any tensor byte is fetched.
With `heads` (a chain's first K MTP heads, graft.first_heads), only those heads' bytes are fetched or
converted: the file holds them under the source's own keys, and graft reads the blocks its tensors hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import GraftError, HubError, MtpgraftError, Setting, SourceError, Text, UsageError
from ..gguf_io import GGUFModel, GGUFValueType, encode_kv
from ..graft import plan_attach
from ..graft.plan import first_heads
from ..hub.client import make_api
from ..inspection import blk_names, layer_of
from ..naming import hf_find_model, hf_split_files
from ..outputs import PendingOutput
from ..parsing import MAX_JSON_BYTES
from ..pins import cache_dir
from . import convert, donor
from .hubfiles import RETRIES, FetchFailed, HubRepo, RepoFiles, open_repo, source_errors
from .hublimits import HubLimits, bounded
from .safetensors import STHeader, header_length, parse_header, weight_map
from .spec import HubRef, is_hub, parse_hub

INDEX = "model.safetensors.index.json"
JSON_CAP = MAX_JSON_BYTES  # config.json and the safetensors index are read whole up to this size
Precheck = Callable[[Path], None]


class FetchProgress:
    """What the resolver reports while fetching: the bytes it is about to fetch, then each chunk."""

    def total(self, nbytes: int) -> None:  # pragma: no cover - the null reporter
        pass

    def update(self, nbytes: int) -> None:  # pragma: no cover - the null reporter
        pass


@dataclass(frozen=True)
class ResolvedSource:
    spec: str  # as given
    path: Path  # a local GGUF for graft.plan_attach
    label: str  # what provenance records
    kind: str  # "gguf" | "safetensors" | "hub-gguf" | "hub-safetensors"
    commit: str | None = None  # the resolved Hub commit
    fetched_bytes: int = 0  # received from the Hub by this call
    header_bytes: int = 0  # header / config bytes the source needed (fetched or cached)
    mtp_bytes: int = 0  # MTP tensor bytes the source needed (fetched or cached)
    cached: bool = False  # the tensors-only file was already in the cache
    temporary: bool = False  # a header-only file for planning (plan_only): the caller deletes it
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class HubOptions:
    """How to reach the Hub; `sleep` and `retries` are injectable so tests need not wait."""

    token: str | None = None
    endpoint: str | None = None
    sleep: Callable[[float], None] = time.sleep
    retries: int = RETRIES


def sources_cache() -> Path:
    return cache_dir() / "mtp-sources"


def resolve_mtp_source(spec: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None,
                       token: str | None = None, endpoint: str | None = None, outtype: str = "auto",
                       progress: FetchProgress | None = None, hub: HubOptions | None = None,
                       plan_only: bool = False, precheck: Precheck | None = None,
                       heads: int | None = None) -> ResolvedSource:
    """Resolve SPEC (see mtpgraft.sources.spec) into a local GGUF holding at least the MTP block.

    With `base` (a local GGUF), the source is checked against it on headers and config only.
    plan_only: fetch headers only and return a temporary file whose tensor data is a hole (enough
    for graft.plan_attach, which reads headers only; `--dry-run`).
    precheck: called with such a header-only file before any tensor byte of a Hub source is fetched
    (graft.plan_attach: every refusal the headers can give comes first). A source refused while it
    is read leaves none of its cached ranges.
    heads: only the source's first that many MTP blocks are fetched or converted (a local GGUF is
    returned whole: graft takes its first heads); more than the source has is refused first."""
    opts = hub or HubOptions(token=token, endpoint=endpoint)
    prog = progress or FetchProgress()
    text = os.fspath(spec)
    p = Path(text)
    local_gguf = not is_hub(text) and not (p.is_dir() or p.suffix == ".safetensors")
    if local_gguf:  # graft.plan_attach reads both headers (the base's first)
        return ResolvedSource(text, p, p.name, "gguf")
    base_model = GGUFModel(base) if base is not None else None
    if is_hub(text):
        ref = parse_hub(text)
        repo = _open(ref, opts, prog)
        try:
            if ref.kind == "safetensors":
                return _hub_safetensors(text, ref, repo, base_model, outtype, prog, plan_only, precheck, heads)
            path = ref.path if ref.kind == "gguf" else pick_quant(ref, repo)
            return _hub_gguf(text, ref, repo, path, base_model, prog, plan_only, precheck, heads)
        except FetchFailed:
            raise  # the Hub or the network failed: what was fetched stays for the rerun
        except MtpgraftError:
            repo.discard()  # a refused source: none of its ranges stay
            raise
    return _local_safetensors(text, p, base_model, outtype, plan_only, heads)


# --------------------------------------------------------------------------- files


class LocalFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def size(self, path: str) -> int:
        try:
            return (self.root / path).stat().st_size
        except FileNotFoundError:
            raise SourceError(f"{self.root / path}: no such file") from None

    def read(self, path: str, start: int, end: int) -> bytes:
        with open(self.root / path, "rb") as f:
            f.seek(start)
            return f.read(end - start)

    def label(self, path: str) -> str:
        return str(self.root / path)


def _open(ref: HubRef, opts: HubOptions, prog: FetchProgress) -> HubRepo:
    api = make_api(endpoint=opts.endpoint, token=opts.token)
    return open_repo(ref, api=api, cache_root=sources_cache() / "ranges", sleep=opts.sleep,
                     retries=opts.retries, progress=prog.update)


def _fetch_spans(repo: HubRepo, spans: list[tuple[str, int, int]], prog: FetchProgress,
                 max_gap: int) -> tuple[Callable[[str, int], tuple[Path, int]], list[Path]]:
    """Fetch the merged byte spans (progress counts only what is not cached); say where each tensor
    starting at (file, offset) lies, and which files hold them (dropped once the head is written:
    the tensors-only file is then the cache, and the disk holds the head once)."""
    merged = donor.merge_spans(spans, max_gap)
    prog.total(sum(e - s for f, s, e in merged if not repo.cached(f, s, e)))
    where = [(f, s, e, repo.fetch(f, s, e)) for f, s, e in merged]

    def locate(file: str, start: int) -> tuple[Path, int]:
        for f, s, e, p in where:
            if f == file and s <= start < e:
                return p, start - s
        raise KeyError((file, start))  # pragma: no cover - every span was fetched above

    return locate, [p for *_, p in where]


def _unlink(paths: list[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def _cache_file(*parts: object) -> Path:
    digest = hashlib.sha256(json.dumps([__version__, *map(str, parts)]).encode()).hexdigest()[:24]
    return sources_cache() / f"{digest}.gguf"


def _target(plan_only: bool, *parts: object) -> tuple[Path, bool]:
    """Where the tensors-only file goes (the cache, or a temporary for planning) and whether it is
    there already."""
    if plan_only:
        sources_cache().mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".plan-", suffix=".gguf", dir=sources_cache())
        os.close(fd)
        return Path(tmp), False
    out = _cache_file(*parts)
    return out, out.is_file()


def _precheck(precheck: Precheck | None, write_header: Callable[[Path], None], label: str) -> None:
    """Hand a header-only twin of the file about to be fetched to `precheck` (then remove it); a
    refusal names the source (`label`), not the twin."""
    if precheck is None:
        return
    tmp, _ = _target(True)
    try:
        write_header(tmp)
        _named(precheck, tmp, label)
    finally:
        tmp.unlink(missing_ok=True)


def _planned(precheck: Precheck | None, header_only: Path, label: str) -> None:
    """--dry-run's header-only file, checked like the real run's twin (removed when refused)."""
    if precheck is None:
        return
    try:
        _named(precheck, header_only, label)
    except BaseException:
        header_only.unlink(missing_ok=True)
        raise


def _named(precheck: Precheck, tmp: Path, label: str) -> None:
    """precheck(tmp), its refusal naming the source it stands for instead of the temporary file."""
    with _naming(tmp, label):
        precheck(tmp)


@contextmanager
def _naming(tmp: Path, label: str) -> Iterator[None]:
    """A refusal raised inside names the source (`label`) instead of the file `tmp` that stands for
    it (a header-only twin, or the converted or fetched file in the cache)."""
    try:
        yield
    except MtpgraftError as e:
        parts = e.text.parts if isinstance(e.text, Text) else (e.text,)
        renamed = [p if isinstance(p, Setting) else p.replace(str(tmp), label).replace(tmp.name, label)
                   for p in parts]
        if renamed == list(parts) or type(e).__init__ is not MtpgraftError.__init__:
            raise
        raise type(e)(*renamed) from None


def _write_atomic(out: Path, write: Callable[[Path], None]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with PendingOutput(out) as tmp:
        write(tmp.path)
        tmp.install(force=True)  # a cache entry: whoever finishes it last leaves the same bytes


def _front(layers: list[int], heads: int | None, label: str) -> list[int] | None:
    """The source's first `heads` MTP blocks when that is fewer than all of them (only theirs are
    fetched or converted), else None. Refused as graft refuses a local source, before any tensor
    byte travels: more heads than the source has, or a chain with a gap (its front is not the
    chain's first heads)."""
    if heads is None:
        return None
    if layers and layers != list(range(layers[0], layers[0] + len(layers))):
        raise GraftError(f"{label}: the MTP blocks {blk_names(layers)} are not consecutive (a chain of heads "
                         "with a gap); take the heads from a complete source")
    kept = first_heads(layers, heads, label)
    return kept if len(kept) < len(layers) else None


def _heads_key(kept: list[int] | None) -> list[object]:
    """What a cut source adds to its cache key (an uncut one keeps the key it always had)."""
    return [] if kept is None else [("heads", kept)]


# --------------------------------------------------------------------------- GGUF donors on the Hub


def _hub_gguf(spec: str, ref: HubRef, repo: HubRepo, path: str, base: GGUFModel | None,
              prog: FetchProgress, plan_only: bool, precheck: Precheck | None, heads: int | None) -> ResolvedSource:
    files = RepoFiles(repo)
    files.size(path)
    head = donor.plan_donor(files, path)
    origin = HubRef(ref.repo_id, "gguf", path=path).label(repo.commit)
    if base is not None:
        donor.check_donor(head, base, origin)
    kept = _front(head.mtp_layers, heads, origin)
    if kept is not None:
        head = donor.keep_layers(head, kept)
    owned = tuple(t.info.name for t in head.tensors if layer_of(t.info.name) is None)  # the head's root tensors
    out, cached = _target(plan_only, "hub-gguf", repo.api.endpoint, repo.repo_id, repo.commit, path, *_heads_key(kept),
                          *owned)
    if plan_only:
        donor.write_tensors_only(head, None, out, origin)
        _planned(precheck, out, origin)
    elif not cached:
        _precheck(precheck, lambda tmp: donor.write_tensors_only(head, None, tmp, origin), origin)
        spans = [(t.shard, t.start, t.end) for t in head.tensors]
        locate, fetched = _fetch_spans(repo, spans, prog, max_gap=head.first.alignment)
        located = {(t.shard, t.start): locate(t.shard, t.start) for t in head.tensors}
        _write_atomic(out, lambda tmp: donor.write_tensors_only(head, located, tmp, origin))
        _unlink(fetched)
    return ResolvedSource(spec, out, origin, "hub-gguf", repo.commit, repo.fetched, head.header_bytes,
                          head.mtp_bytes, cached, plan_only, (f"read the header(s) of {', '.join(head.shards_read)}",))


def pick_quant(ref: HubRef, repo: HubRepo) -> str:
    """The GGUF `llama-server -hf OWNER/REPO:QUANT` would take (naming.hf_find_model, tree order)."""
    assert ref.quant is not None
    path = hf_find_model(list(repo.files), ref.quant)
    if path is None:
        ggufs = [p for p in repo.files if p.endswith(".gguf")]
        raise HubError(f"{ref.label(repo.commit)}: no GGUF for tag {ref.quant} in {ref.repo_id}"
                       + (f" (it has {', '.join(ggufs[:6])}{' ...' if len(ggufs) > 6 else ''})" if ggufs
                          else " (it has no GGUF files)"))
    return path


# --------------------------------------------------------------------------- safetensors


def _st_headers(files: donor.Files, names: list[str]) -> tuple[list[STHeader], int]:
    out, nread = [], 0
    for n in names:
        size = files.size(n)
        first8 = files.read(n, 0, min(8, size))
        hl = header_length(first8, files.label(n))
        data = first8 + (files.read(n, 8, 8 + hl) if hl else b"")
        out.append(parse_header(data, n, file_size=size))
        nread += 8 + hl
    return out, nread


def _read_json_file(files: donor.Files, path: str) -> tuple[bytes, int]:
    """config.json or the index, whole; one larger than JSON_CAP is refused before it is read."""
    size = files.size(path)
    if size > JSON_CAP:
        raise SourceError(f"{files.label(path)}: {size:,} bytes, past the {JSON_CAP // 2**20} MiB mtpgraft reads "
                          "of a config or index (they take kilobytes); refusing it unread")
    return (files.read(path, 0, size) if size else b""), size


def _mtp_shards(files: donor.Files, all_files: list[str], folder: str, label: str,
                is_mtp: Callable[[str], bool]) -> tuple[list[str], int]:
    """The shards to read headers of: those holding mtp.* (by the index), the one before them (the
    converter writes the head after its last tensor), and the first one (the output type follows the
    first 2-D tensor of the whole checkpoint)."""
    index = f"{folder}{INDEX}"
    if index in all_files:
        raw, size = _read_json_file(files, index)
        wm = weight_map(raw, files.label(index))
        shards = sorted(set(wm.values()))
        mtp = sorted({f for n, f in wm.items() if is_mtp(n)})
        if not mtp:
            raise GraftError(f"{label} has no MTP tensors (none of the tensors in {INDEX} is an MTP tensor)")
        before = shards[max(0, shards.index(mtp[0]) - 1)]  # may hold the tensor written before the head
        names = sorted({shards[0], before, *mtp})
        return [f"{folder}{n}" for n in names], size
    names = sorted(f for f in all_files if f.startswith(f"{folder}model") and f.endswith(".safetensors")
                   and "/" not in f[len(folder):])
    if not names:
        raise SourceError(f"{label}: no model*.safetensors files and no {INDEX}")
    return names, 0


def _plan_safetensors(files: donor.Files, folder: str, listing: list[str], single: str | None,
                      base: GGUFModel | None, outtype: str, label: str) -> tuple[convert.HeadPlan, int]:
    """config.json first (unknown architectures are refused before anything else is read), then the
    index, then the headers of the shards that matter."""
    config_path = f"{folder}config.json"
    raw, size = _read_json_file(files, config_path)
    config = convert.read_config(raw, files.label(config_path))
    is_mtp = convert.mtp_predicate(config, label)
    shards, index_bytes = ([single], 0) if single else _mtp_shards(files, listing, folder, label, is_mtp)
    headers, nread = _st_headers(files, shards)
    plan = convert.plan_head(config, [(h.file, h.tensors) for h in headers], outtype=outtype, label=label)
    if base is not None:
        convert.check_head_against_base(plan, config, base, label=label)
    return plan, nread + size + index_bytes


def _st_front(plan: convert.HeadPlan, heads: int | None, label: str) -> tuple[convert.HeadPlan, list[int] | None]:
    """The converted head cut to its first `heads` MTP layers (see _front), and those layers."""
    kept = _front(plan.mtp_layers, heads, label)
    if kept is None:
        return plan, None
    tensors = [t for t in plan.tensors if (lo := layer_of(t.name)) is None or lo[0] in kept]
    return replace(plan, tensors=tensors, mtp_layers=kept), kept


def _head_extra(origin: str, plan: convert.HeadPlan) -> list[Any]:
    """Provenance of a converted head, and the tensor the converter writes just before it."""
    kvs = [encode_kv(donor.ORIGIN_KEY, GGUFValueType.STRING, origin)]
    if plan.after:
        kvs.append(encode_kv(donor.AFTER_KEY, GGUFValueType.STRING, plan.after))
    return kvs


def _local_safetensors(spec: str, p: Path, base: GGUFModel | None, outtype: str,
                       plan_only: bool, heads: int | None) -> ResolvedSource:
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    root = p if p.is_dir() else p.parent
    files = LocalFiles(root)
    label = p.name + ("/" if p.is_dir() else "")
    if not (root / "config.json").is_file():
        raise SourceError(f"{root / 'config.json'}: not found; a safetensors source needs the model's config.json")
    listing = sorted(str(q.relative_to(root)) for q in root.iterdir() if q.is_file())
    plan, nread = _plan_safetensors(files, "", listing, None if p.is_dir() else p.name, base, outtype, label)
    plan, kept = _st_front(plan, heads, label)
    stamp = [(s, (root / s).stat().st_size, (root / s).stat().st_mtime_ns) for s in plan.inputs + ["config.json"]]
    out, cached = _target(plan_only, "local-safetensors", str(root.resolve()), stamp, outtype, *_heads_key(kept))
    if plan_only:
        convert.write_head(plan, None, out, extra_kvs=_head_extra(label, plan))
    elif not cached:
        _write_atomic(out, lambda tmp: convert.write_head(
            plan, lambda piece: (root / piece.file, piece.src.start), tmp, extra_kvs=_head_extra(label, plan)))
    return ResolvedSource(spec, out, label, "safetensors", None, 0, nread, plan.source_bytes, cached,
                          plan_only, (_converted(plan),))


def _converted(plan: convert.HeadPlan) -> str:
    return f"converted {len(plan.tensors)} MTP tensors ({plan.hf_arch} -> {plan.arch}, {plan.outtype})"


def _hub_safetensors(spec: str, ref: HubRef, repo: HubRepo, base: GGUFModel | None, outtype: str,
                     prog: FetchProgress, plan_only: bool, precheck: Precheck | None,
                     heads: int | None) -> ResolvedSource:
    files = RepoFiles(repo)
    folder = str(Path(ref.path).parent) + "/" if ref.path and "/" in ref.path else ""
    config_path = f"{folder}config.json"
    origin = ref.label(repo.commit)
    if config_path not in repo.files:
        if any(f.endswith(".gguf") for f in repo.files) and not ref.path:
            raise SourceError(f"{origin}: no config.json (a GGUF repo: name the file, hf://{ref.repo_id}/FILE.gguf, "
                              f"or a tag, hf://{ref.repo_id}:Q8_0)")
        raise SourceError(f"{origin}: no config.json in {ref.repo_id}; a safetensors source needs it")
    if ref.path:
        files.size(ref.path)
    plan, nread = _plan_safetensors(files, folder, list(repo.files), ref.path, base, outtype, origin)
    plan, kept = _st_front(plan, heads, origin)
    out, cached = _target(plan_only, "hub-safetensors", repo.api.endpoint, repo.repo_id, repo.commit, plan.inputs,
                          outtype, *_heads_key(kept))
    if plan_only:
        convert.write_head(plan, None, out, extra_kvs=_head_extra(origin, plan))
        _planned(precheck, out, origin)
    elif not cached:
        _precheck(precheck, lambda tmp: convert.write_head(plan, None, tmp, extra_kvs=_head_extra(origin, plan)), origin)
        spans = [(f, t.start, t.end) for f, t in plan.ranges()]
        locate, fetched = _fetch_spans(repo, spans, prog, max_gap=0)
        _write_atomic(out, lambda tmp: convert.write_head(
            plan, lambda piece: locate(piece.file, piece.src.start), tmp, extra_kvs=_head_extra(origin, plan)))
        _unlink(fetched)
    return ResolvedSource(spec, out, origin, "hub-safetensors", repo.commit, repo.fetched, nread,
                          plan.source_bytes, cached, plan_only, (_converted(plan),))


# --------------------------------------------------------------------------- a base on the Hub


def resolve_base(spec: str | os.PathLike[str], *, token: str | None = None,
                 endpoint: str | None = None) -> Path:
    """A base given as hf://: downloaded whole (every shard) into the standard Hugging Face cache,
    the one `llama-server -hf` reads too. A local path is returned unchanged."""
    text = os.fspath(spec)
    if not is_hub(text):
        return Path(text)
    ref = parse_hub(text)
    if ref.kind == "safetensors":
        raise UsageError(f"{text}: a base must be a GGUF (hf://OWNER/REPO/FILE.gguf or hf://OWNER/REPO:QUANT)")
    from huggingface_hub import hf_hub_download

    api = make_api(endpoint=endpoint, token=token)
    repo = open_repo(ref, api=api, cache_root=sources_cache() / "ranges")
    path = ref.path if ref.kind == "gguf" else pick_quant(ref, repo)
    repo.require(path)
    names = sorted(hf_split_files(list(repo.files), path))
    if Path(path).name != Path(names[0]).name:
        raise UsageError(f"{text}: name the first shard of a split set")
    local = []
    # the client's own download (resumable, into its cache): timeouts and the minimum rate, no
    # deadline; its retries forgive any progress, so answers cut short are counted here
    limits = replace(HubLimits.from_env(), deadline=None)
    with source_errors(ref, api), bounded(limits, count_short=True), _client_quiet():
        for n in names:
            local.append(hf_hub_download(ref.repo_id, n, revision=repo.commit, token=api.token,
                                         endpoint=api.endpoint))
    return Path(local[0])


@contextmanager
def _client_quiet() -> Iterator[None]:
    """huggingface_hub's warnings off (each retry logs one): mtpgraft's one line says what failed."""
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def plan_attach_from(base: str | os.PathLike[str], source: str | os.PathLike[str], out: str | os.PathLike[str] | None, *,
                     token: str | None = None, endpoint: str | None = None, progress: FetchProgress | None = None,
                     plan_only: bool = False, hub: HubOptions | None = None, planner: Callable[..., Any] | None = None,
                     **attach: Any) -> tuple[Any, ResolvedSource]:
    """`mtpgraft attach` with any base and source spec: resolve both, then graft.plan_attach (or
    `planner`, such as sidecar.plan_sidecar, which takes the same base, source and output). The
    planner's `heads` also goes to the resolver: a remote source's dropped heads are never fetched."""
    plan = planner or plan_attach
    opts = hub or HubOptions(token=token, endpoint=endpoint)
    base_path = resolve_base(base, token=opts.token, endpoint=opts.endpoint)

    def precheck(header_only: Path) -> None:
        plan(base_path, header_only, out, **attach)

    src = resolve_mtp_source(source, base=base_path, progress=progress, hub=opts, plan_only=plan_only,
                             precheck=precheck, heads=attach.get("heads"))
    # a header-only twin's tensor bytes are zeros: attach compares none of them (plan_attach)
    twin = {"header_only": True} if src.temporary and planner is None else {}
    try:
        # every refusal names the user's source, not the file in the cache that stands for it
        with _naming(src.path, src.label) if src.kind != "gguf" else nullcontext():
            return plan(base_path, src.path, out, **attach, **twin), src
    except BaseException:
        if src.temporary:
            src.path.unlink(missing_ok=True)
        raise
