"""Audit published GGUF repos from their headers alone: per model the loader's verdict, per `:TAG`
what `llama-server -hf` would load.

    report = audit_repos(["hf://OWNER/REPO", "hf://OWNER"], api=api, cache_root=cache)

A straight pipeline: the targets are expanded (`hf://OWNER` lists the account's GGUF repos, paged),
each repo is opened (its commit and file list: sources.hubfiles), every model's header is read by
ranges through the same cached, resumable range reader as the `hf://` MTP sources (every shard of a
split set; growing pieces whose last one reads at most 1/40 past the header), the headers go through
inspection.inspect_model exactly as a local file does, and every tag is resolved with naming's copy
of llama.cpp's `-hf` rules and its sidecar checked against its model (preflight, headers only).
Repos are opened and headers read on a small thread pool; the range cache makes a rerun free. A repo
the Hub refuses (gated, private, missing) becomes one line in the report and stops nothing else.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import ggml_types, naming
from ..errors import GGUFFormatError, HubError, SourceError, UsageError
from ..gguf_io import GGUFFile, GGUFModel
from ..inspection import InspectReport, inspect_model
from ..preflight import draft_blocker
from ..sources.donor import read_header
from ..sources.hubfiles import HubRepo, RepoFiles, describe, open_repo
from ..sources.hublimits import bounded
from ..sources.spec import HF_PREFIX, HubRef, parse_hub

if TYPE_CHECKING:
    from huggingface_hub import HfApi

JOBS = 4  # repos opened / headers read at once
SLACK = 40  # a header is read in pieces of which the last one reaches at most 1/SLACK past its end
_OWNER = re.compile(r"^hf://(?P<owner>[A-Za-z0-9][\w.-]*)/?$")
# Which runtimes load a file, by the type table: present once it holds ik_llama.cpp's types too.
_RUNTIMES_FOR: Callable[[set[int]], frozenset[str]] | None = getattr(ggml_types, "runtimes_for_types", None)


@dataclass(frozen=True)
class ModelAudit:
    """One model (a split set counts once) or sidecar of a repo, judged from its header(s)."""

    path: str  # as the repo names it: a split set's first shard
    files: tuple[str, ...]  # every shard
    size: int  # bytes of every shard together
    header_bytes: int  # the headers' own bytes (the audit's floor)
    report: InspectReport | None  # what `mtpgraft inspect` says of the same file; None if unreadable
    runtimes: tuple[str, ...]  # the runtimes whose loader knows every tensor type in it
    error: str | None = None  # why no header could be read (llama.cpp refuses the file too)
    model: GGUFModel | None = field(default=None, repr=False, compare=False)  # until its tags are judged

    @property
    def loads(self) -> bool:
        return self.report is not None and self.report.consistent and bool(self.runtimes)

    @property
    def is_sidecar(self) -> bool:
        return naming.SIDECAR_PREFIX in self.path

    @property
    def problems(self) -> list[str]:
        if self.report is None:
            return [self.error or "unreadable"]
        return list(self.report.problems) + ([] if self.runtimes else ["no runtime knows its tensor types"])

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "files": list(self.files), "size": self.size, "header_bytes": self.header_bytes,
                "loads": self.loads, "runtimes": list(self.runtimes), "problems": self.problems,
                "report": self.report.to_dict() if self.report else None}


@dataclass(frozen=True)
class TagAudit:
    """What `llama-server -hf REPO:TAG --spec-type draft-mtp` would load, and whether its head fits."""

    tag: str
    model: str | None
    model_files: tuple[str, ...]
    sidecar: str | None  # the mtp- file it loads as the draft
    unseen: tuple[str, ...]  # mtp- files outside the model's folder chain: -hf never looks there
    mtp: str  # "in-file", "sidecar" or "none"
    problem: str | None = None  # the tag fails: a wrong sidecar, or one -hf cannot see
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_files": list(self.model_files), "unseen": list(self.unseen)}


@dataclass(frozen=True)
class RepoAudit:
    target: str  # the repo as audited (pinned to its commit when it was opened)
    repo_id: str
    commit: str | None = None
    models: tuple[ModelAudit, ...] = ()
    tags: tuple[TagAudit, ...] = ()
    fetched: int = 0  # bytes of GGUF fetched from the Hub for this repo by this run
    error: str | None = None  # the one line the Hub's refusal (gated, private, missing) gets

    @property
    def failed(self) -> bool:
        return any(not m.loads for m in self.models) or any(t.problem for t in self.tags)

    @property
    def header_bytes(self) -> int:
        return sum(m.header_bytes for m in self.models)

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "repo_id": self.repo_id, "commit": self.commit, "error": self.error,
                "failed": self.failed, "fetched_bytes": self.fetched, "header_bytes": self.header_bytes,
                "models": [m.to_dict() for m in self.models], "tags": [t.to_dict() for t in self.tags]}


@dataclass(frozen=True)
class AuditReport:
    repos: tuple[RepoAudit, ...]

    @property
    def fetched(self) -> int:
        return sum(r.fetched for r in self.repos)

    @property
    def exit_code(self) -> int:
        """1 when a file would not load or a tag pairs a wrong (or unseen) sidecar; 6 when no repo
        could be audited at all; else 0."""
        if any(r.failed for r in self.repos):
            return 1
        return 6 if self.repos and all(r.error for r in self.repos) else 0

    def to_dict(self) -> dict[str, Any]:
        return {"repos": [r.to_dict() for r in self.repos], "fetched_bytes": self.fetched,
                "header_bytes": sum(r.header_bytes for r in self.repos), "exit_code": self.exit_code}


# --------------------------------------------------------------------------- the pipeline


@dataclass
class _Open:
    """A repo being audited: what was asked, the repo once open, its byte count."""

    target: str
    ref: HubRef
    repo: HubRepo | None = None
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    fetched: int = 0

    def count(self, n: int) -> None:
        with self.lock:
            self.fetched += n


def audit_repos(targets: Sequence[str], *, api: HfApi, cache_root: Path, jobs: int = JOBS,
                only_mtp: bool = False) -> AuditReport:
    """Audit every target (hf://OWNER, hf://OWNER/REPO[@REV], hf://OWNER/REPO:TAG,
    hf://OWNER/REPO/PATH.gguf). A bad reference is a UsageError before anything is sent. Repos run
    `jobs` at a time, and their headers `jobs` at a time on a second pool (a repo's headers are held
    until its tags are judged, so memory follows the repos in flight, not the account)."""
    parsed = [parse_target(t) for t in targets]
    with ThreadPoolExecutor(max(1, jobs)) as repo_pool, ThreadPoolExecutor(max(1, jobs)) as file_pool:
        expanded = [o for group in repo_pool.map(lambda p: _expand(p, api), parsed) for o in group]
        repos = list(repo_pool.map(lambda o: _audit_repo(o, api, cache_root, file_pool), expanded))
    if only_mtp:
        repos = [r for r in (keep_mtp(r) for r in repos) if r is not None]
    return AuditReport(tuple(repos))


def _audit_repo(o: _Open, api: HfApi, cache_root: Path, pool: ThreadPoolExecutor) -> RepoAudit:
    if o.error is None:
        try:
            o.repo = open_repo(o.ref, api=api, cache_root=cache_root, progress=o.count)
        except HubError as e:
            o.error = str(e)
    if o.repo is None:
        return _assemble(o, [])
    try:
        wanted = _wanted(o.repo, o.ref)
    except HubError as e:
        o.error = str(e)
        return _assemble(o, [])
    models = [m for m in pool.map(lambda p: _read_or_fail(o, p), wanted) if m is not None]
    return _assemble(o, models)


def parse_target(spec: str) -> tuple[str, HubRef | None]:
    """(spec, its HubRef), or (owner, None) for hf://OWNER. Safetensors paths are refused."""
    if not spec.startswith(HF_PREFIX):
        raise UsageError(f"{spec}: not a Hub reference (hf://OWNER, hf://OWNER/REPO[@REV], hf://OWNER/REPO:TAG "
                         "or hf://OWNER/REPO/PATH.gguf)")
    m = _OWNER.match(spec)
    if m:
        return m["owner"], None
    ref = parse_hub(spec)
    if ref.kind == "safetensors" and ref.path:
        raise UsageError(f"{spec}: {ref.path} is not a GGUF file; name a .gguf, a :TAG or the repo")
    return spec, ref


def _expand(parsed: tuple[str, HubRef | None], api: HfApi) -> list[_Open]:
    """hf://OWNER -> every GGUF repo of the account (the Hub tags them `gguf`), paged by the client."""
    spec, ref = parsed
    if ref is not None:
        return [_Open(spec, ref)]
    owner = spec
    listing = HubRef(f"{owner}/*", "safetensors")
    try:
        with bounded():
            ids = [m.id for m in api.list_models(author=owner, filter="gguf")]
    except Exception as e:  # noqa: BLE001 - describe() maps what the client raises; the rest re-raises
        msg = describe(e, listing, api)
        if msg is None:
            raise
        return [_Open(f"{HF_PREFIX}{owner}", listing, error=f"{HF_PREFIX}{owner}: cannot list the account: {msg}")]
    if not ids:
        return [_Open(f"{HF_PREFIX}{owner}", listing, error=f"{HF_PREFIX}{owner}: no GGUF repo on {api.endpoint}")]
    return [_Open(f"{HF_PREFIX}{i}", HubRef(i, "safetensors")) for i in sorted(ids)]


def _wanted(repo: HubRepo, ref: HubRef) -> list[str]:
    """The files to read: what the tag resolves to, the named file, or every model and sidecar."""
    paths = list(repo.files)
    if ref.kind == "gguf":
        assert ref.path is not None
        repo.require(ref.path)  # a HubError naming the file when the repo lacks it
        tag = (naming.hf_split_info(ref.path) or naming.HfSplit("", "", 1, 1)).tag
        res = naming.hf_resolve(paths, tag, mtp=True) if tag else None
        return [ref.path] + ([res.mtp] if res and res.model == ref.path and res.mtp else [])
    if ref.kind == "quant":
        res = naming.hf_resolve(paths, ref.quant or "", mtp=True)
        return [p for p in (res.model, res.mtp) if p] if res.model else []
    return [p for p in paths if p.endswith(".gguf") and naming.is_first_shard(p)
            and (naming.is_hf_model_file(p) or naming.SIDECAR_PREFIX in p)]


def _read_or_fail(o: _Open, path: str) -> ModelAudit | None:
    """The model's audit; a Hub refusal (a gated repo's files) marks the whole repo instead."""
    assert o.repo is not None
    try:
        return read_model(o.repo, path)
    except HubError as e:
        o.error = o.error or str(e)
        return None


def read_model(repo: HubRepo, path: str) -> ModelAudit:
    """A model's header(s) by ranges, judged as `inspect` judges the local file."""
    files = RepoFiles(repo)
    names, headers, nread = [path], [], 0
    try:
        first, n = read_header(files, path, slack=SLACK)
        headers.append(first)
        nread += n
        names += _other_shards(repo, path, first)
        for p in names[1:]:
            f, n = read_header(files, p, slack=SLACK)
            headers.append(f)
            nread += n
        model = GGUFModel.from_shards(headers)
        report = inspect_model(path, model)
    except (GGUFFormatError, SourceError) as e:  # what llama.cpp's reader refuses as well
        size = sum(repo.files.get(p, 0) for p in names)
        return ModelAudit(path, tuple(names), size, sum(h.header_size for h in headers), None, (), str(e))
    size = sum(repo.files[p] for p in names)
    return ModelAudit(path, tuple(names), size, sum(h.header_size for h in headers), report, runtimes_of(model),
                      model=model)


def _other_shards(repo: HubRepo, path: str, first: GGUFFile) -> list[str]:
    """Shards 2..N by name, as GGUFModel finds them beside a local first shard."""
    count = first.split_count
    if count <= 1 and first.split_no == 0:
        return []
    label = repo.label(path)
    if first.split_no != 0:
        raise GGUFFormatError(f"{label}: this is shard {first.split_no + 1} of {count}; not a first shard")
    shard = naming.parse_shard(path.rsplit("/", 1)[-1])
    if shard is None:
        raise GGUFFormatError(f"{label}: split.count is {count} but the name is not NAME-00001-of-0000N.gguf, "
                              "so the other shards cannot be found")
    folder = naming.model_folder(path)
    names = [f"{folder}/{n}" if folder else n for n in naming.shard_names(shard.prefix, count)[1:]]
    missing = [n for n in names if n not in repo.files]
    if missing:
        raise GGUFFormatError(f"{label}: shard {names.index(missing[0]) + 2} of {count} is missing ({missing[0]})")
    return names


def runtimes_of(model: GGUFModel) -> tuple[str, ...]:
    """The runtimes (their names for people) whose loader knows every tensor type of the model. A type
    table of mainline's types only parsed every tensor, so llama.cpp knows them."""
    if _RUNTIMES_FOR is None:
        return ("llama.cpp",)
    found = _RUNTIMES_FOR({r.info.ggml_type for r in model.refs})
    order: Sequence[str] = getattr(ggml_types, "RUNTIMES", tuple(found))
    labels: dict[str, str] = getattr(ggml_types, "LABELS", {})
    return tuple(labels.get(r, r) for r in order if r in found)


# --------------------------------------------------------------------------- tags


def _assemble(o: _Open, models: list[ModelAudit]) -> RepoAudit:
    if o.repo is None or o.error is not None:
        return RepoAudit(o.target, o.ref.repo_id, o.repo.commit if o.repo else None, fetched=o.fetched,
                         error=o.error)
    repo, by_path = o.repo, {m.path: m for m in models}
    paths = list(repo.files)
    if o.ref.kind == "quant":
        tags = [o.ref.quant or ""]
    else:
        tags = list(dict.fromkeys(t for m in models if not m.is_sidecar
                                  and (t := (naming.hf_split_info(m.path) or naming.HfSplit("", "", 1, 1)).tag)
                                  and naming.hf_find_model(paths, t) == m.path))
    label = o.ref.label(repo.commit) if o.ref.kind != "safetensors" else f"{HF_PREFIX}{repo.repo_id}@{repo.commit}"
    judged = tuple(judge_tag(paths, t, by_path) for t in tags)
    return RepoAudit(label, repo.repo_id, repo.commit, tuple(replace(m, model=None) for m in models), judged,
                     o.fetched)


def judge_tag(paths: Sequence[str], tag: str, models: dict[str, ModelAudit]) -> TagAudit:
    """What -hf loads for `tag` (naming.hf_resolve), and whether the head it gets fits its model."""
    res = naming.hf_resolve(paths, tag, mtp=True)
    unseen = res.mtp_choice.ignored if res.mtp_choice else ()
    if res.model is None:
        return TagAudit(tag, None, (), res.mtp, unseen, "none",
                        problem=f"no model file matches :{tag} (llama.cpp looks for '{tag}.' or '{tag}-' in the path)")
    model, side = models.get(res.model), models.get(res.mtp) if res.mtp else None
    in_file = model is not None and model.report is not None and model.report.mtp_present
    base = TagAudit(tag, res.model, res.model_files, res.mtp, unseen, "none")
    if res.mtp is None:
        if in_file:
            return _replace(base, mtp="in-file")
        if unseen:
            return _replace(base, problem=f"no MTP head in {res.model}, and llama-server -hf never looks where the "
                                          f"sidecar is ({', '.join(unseen)}: not in the model's folder or a parent)")
        return base
    why = _pairing_problem(model, side, res.mtp)
    if why is not None:
        return _replace(base, mtp="sidecar", problem=f"pairs the wrong sidecar {res.mtp}: {why}")
    note = (f"{res.model} holds its own MTP head, but -hf also loads {res.mtp} as a separate draft"
            if in_file else None)
    return _replace(base, mtp="sidecar", note=note)


def _pairing_problem(model: ModelAudit | None, side: ModelAudit | None, name: str) -> str | None:
    if model is None or side is None or model.report is None:
        return None  # a header that could not be read already fails the repo
    if side.report is None or not side.loads:
        return f"it would not load ({side.problems[0]})"
    if not side.report.mtp_present:
        return "it holds no MTP head"
    return draft_blocker(_model_of(model), _model_of(side))


def _model_of(m: ModelAudit) -> GGUFModel:
    assert m.model is not None  # kept by read_model until the repo's tags are judged
    return m.model


def _replace(t: TagAudit, **changes: Any) -> TagAudit:
    return replace(t, **changes)


def keep_mtp(r: RepoAudit) -> RepoAudit | None:
    """--only-mtp: the repo's files and tags that have an MTP head (in the file or a sidecar), or None."""
    if r.error is not None:
        return r
    served = {t.model for t in r.tags if t.mtp != "none"} | {t.sidecar for t in r.tags if t.sidecar}
    models = tuple(m for m in r.models if m.path in served or (m.report is not None and m.report.mtp_present))
    tags = tuple(t for t in r.tags if t.mtp != "none" or t.problem)
    if not models and not tags:
        return None
    return replace(r, models=models, tags=tags)
