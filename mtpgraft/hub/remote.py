"""Load a published repo the way users do: the REAL `llama-server -hf OWNER/REPO:TAG --spec-type draft-mtp`.

    ref = parse_hf_ref("hf://me/Model-GGUF:Q4_K_M")
    res = resolve_remote(ref, endpoint=..., server=resolve_server())

`resolve_remote` lists the repo (refs -> main's commit -> recursive tree, as llama.cpp does; the
commit and every name checked, every request bounded as in sources.hublimits), predicts
with naming.hf_resolve which files llama.cpp will take, then starts llama-server with `-hf` pointed
at the endpoint (MODEL_ENDPOINT) and the standard Hugging Face cache (HF_HUB_CACHE), so the files
land where huggingface_hub keeps them and are never downloaded twice. What llama.cpp loaded comes
from the server itself (/props model_path, the "loading draft model" log line) and is compared with
the prediction. The caller then measures the files in the cache like any local check.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from .. import naming
from ..check import execute_check, plan_check
from ..check.plan import PRESETS
from ..check.server import LlamaServer
from ..check.servertool import ServerTool
from ..errors import HubError, Setting, Text, ToolFailedError, ToolNotFoundError, UsageError
from ..sources.hublimits import bounded, check_commit, check_path
from ..tools import run_tool
from .client import hub_errors, make_api

if TYPE_CHECKING:
    from huggingface_hub import HfApi

HF_SCHEME = "hf://"
DEFAULT_ENDPOINT = "https://huggingface.co"
_DRAFT_LINE = re.compile(r"loading draft model '([^']+)'")
_NO_TLS = "HTTPS is not supported"


@dataclass(frozen=True)
class HfRef:
    repo_id: str
    tag: str  # "" = llama.cpp's default (Q4_K_M, then Q8_0, then the first model file)

    @property
    def arg(self) -> str:
        """What -hf gets."""
        return f"{self.repo_id}:{self.tag}" if self.tag else self.repo_id

    def __str__(self) -> str:
        return HF_SCHEME + self.arg


def is_hf_ref(s: str | os.PathLike[str]) -> bool:
    return str(s).startswith(HF_SCHEME)


def parse_hf_ref(s: str) -> HfRef:
    """`hf://OWNER/REPO[:TAG]` (the form `llama-server -hf` takes)."""
    body = s[len(HF_SCHEME):] if s.startswith(HF_SCHEME) else s
    repo, _, tag = body.partition(":")
    if not naming.REPO_ID_RE.match(repo) or ":" in tag or "/" in tag:
        raise UsageError(f"{s!r} is not hf://OWNER/REPO[:TAG] (e.g. hf://me/Model-GGUF:Q4_K_M)")
    return HfRef(repo, tag)


def endpoint_from_env(endpoint: str | None = None) -> str:
    """The endpoint llama.cpp would use: the argument, else MODEL_ENDPOINT, else HF_ENDPOINT, else the Hub."""
    return (endpoint or os.environ.get("MODEL_ENDPOINT") or os.environ.get("HF_ENDPOINT")
            or DEFAULT_ENDPOINT).rstrip("/")


def hub_cache_dir() -> Path:
    """The standard Hugging Face cache (huggingface_hub's and llama.cpp's order, read now, not at import)."""
    for var, sub in (("HF_HUB_CACHE", ""), ("HUGGINGFACE_HUB_CACHE", ""), ("HF_HOME", "hub")):
        if os.environ.get(var):
            return Path(os.environ[var]) / sub if sub else Path(os.environ[var])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "huggingface" / "hub"


@dataclass(frozen=True)
class RemoteResolution:
    """What `llama-server -hf` resolved for one ref, as repo paths and as files in the cache."""

    ref: str
    endpoint: str
    commit: str
    model: str  # repo path of the file llama.cpp loaded (a split set's first shard)
    model_files: tuple[str, ...]
    mtp: str | None  # repo path of the sidecar it loaded as the MTP draft, if any
    local_model: Path
    local_mtp: Path | None
    predicted_model: str | None
    predicted_files: tuple[str, ...]
    predicted_mtp: str | None
    mismatches: tuple[str, ...]  # where mtpgraft's prediction and llama.cpp differ (a bug to report)

    def lines(self) -> list[str]:
        shards = f" ({len(self.model_files)} shards: {', '.join(self.model_files)})" if len(self.model_files) > 1 else ""
        out = [f"llama-server -hf {self.ref.removeprefix(HF_SCHEME)} resolved (commit {self.commit[:12]}): "
               f"model {self.model}{shards}; MTP draft: {self.mtp or 'none (the model file holds the head)'}"]
        out += [f"mtpgraft predicted otherwise: {m}" for m in self.mismatches]
        return out

    def to_dict(self) -> dict[str, object]:
        return {"ref": self.ref, "endpoint": self.endpoint, "commit": self.commit, "model": self.model,
                "model_files": list(self.model_files), "mtp": self.mtp, "local_model": str(self.local_model),
                "local_mtp": str(self.local_mtp) if self.local_mtp else None,
                "predicted": {"model": self.predicted_model, "model_files": list(self.predicted_files),
                              "mtp": self.predicted_mtp},
                "mismatches": list(self.mismatches)}


def repo_listing(ref: HfRef, *, endpoint: str, token: str | None = None) -> tuple[str, list[str]]:
    """main's commit and the repo's file paths in the order the Hub's recursive tree lists them."""
    api = make_api(endpoint=endpoint, token=token)
    try:
        with bounded(), hub_errors(api=api, repo_id=ref.repo_id, action="list the repo"):
            return _listing(ref, api, endpoint)
    except (KeyError, TypeError, AttributeError, RecursionError) as e:  # an answer that is no listing
        raise HubError(f"{ref}: the Hub's listing cannot be read ({type(e).__name__}); refusing it") from None


def _listing(ref: HfRef, api: HfApi, endpoint: str) -> tuple[str, list[str]]:
    from huggingface_hub.hf_api import RepoFile

    refs = api.list_repo_refs(ref.repo_id)
    branches = {b.name: b.target_commit for b in refs.branches}
    commit = branches.get("main") or next(iter(branches.values()), None)
    if commit is None:
        raise HubError(f"{ref.repo_id} has no branch on {endpoint}: nothing for llama.cpp to download")
    check_commit(commit, str(ref))
    paths = [e.path for e in api.list_repo_tree(ref.repo_id, revision=commit, recursive=True)
             if isinstance(e, RepoFile)]
    return commit, [check_path(p, str(ref)) for p in paths]


def resolve_remote(ref: HfRef, *, endpoint: str | None = None, server: ServerTool, token: str | None = None,
                   cache_dir: str | os.PathLike[str] | None = None, log_path: str | os.PathLike[str] | None = None,
                   startup_timeout: float = 6 * 3600.0) -> RemoteResolution:
    """Download and load `ref` with the real llama-server -hf; say what it resolved. ServerError when
    llama-server cannot load it (e.g. no MTP head anywhere: "failed to create MTP context")."""
    endpoint = endpoint_from_env(endpoint)
    if endpoint.startswith("https://") and not server_has_tls(server.path):
        raise HubError(f"{server.path} was built without TLS and cannot download from {endpoint}: "
                       + TLS_HINT)
    commit, paths = repo_listing(ref, endpoint=endpoint, token=token)
    predicted = naming.hf_resolve(paths, ref.tag, mtp=True)
    if predicted.model is None and predicted.mtp is None:
        raise HubError(f"{ref}: no model file in {ref.repo_id} matches "
                       f"{ref.tag or 'Q4_K_M / Q8_0'} (llama.cpp looks for '{ref.tag or 'TAG'}.' or "
                       f"'{ref.tag or 'TAG'}-' in the file path)")
    cache = Path(cache_dir) if cache_dir is not None else hub_cache_dir()
    env = {"MODEL_ENDPOINT": endpoint + "/", "HF_HUB_CACHE": str(cache), "LLAMA_CACHE": ""}
    if token:
        env["HF_TOKEN"] = token
    srv = LlamaServer(f"{ref.repo_id}:{ref.tag}", hf_repo=ref.arg, env=env, spec_type=server.spec_type,
                      llama_cpp=server.llama_cpp_dir, ctx_size=512, metrics=False,
                      startup_timeout=startup_timeout, log_path=log_path)
    with srv:
        local_model = Path(srv.props()["model_path"])
        drafts = _DRAFT_LINE.findall(srv.log_text())
    snapshot = cache / ("models--" + ref.repo_id.replace("/", "--")) / "snapshots" / commit
    model = _in_repo(local_model, snapshot)
    mtp = _in_repo(Path(drafts[-1]), snapshot) if drafts else None
    files = tuple(p for p in naming.hf_split_files(paths, model) if (snapshot / p).exists())
    mismatches = []
    if predicted.model != model:
        mismatches.append(f"model {predicted.model}, llama.cpp loaded {model}")
    if predicted.model_files != files:
        mismatches.append(f"files {', '.join(predicted.model_files)}, llama.cpp has {', '.join(files)}")
    if predicted.mtp != mtp:
        mismatches.append(f"MTP draft {predicted.mtp or 'none'}, llama.cpp loaded {mtp or 'none'}")
    return RemoteResolution(str(ref), endpoint, commit, model, files, mtp, local_model,
                            Path(drafts[-1]) if drafts else None, predicted.model, predicted.model_files,
                            predicted.mtp, tuple(mismatches))


def _in_repo(local: Path, snapshot: Path) -> str:
    try:
        return PurePosixPath(local.relative_to(snapshot)).as_posix()
    except ValueError:  # not in this snapshot (another cache?): keep the full path, a mismatch shows it
        return str(local)


# --------------------------------------------------------------------------- TLS

TLS_HINT = Text("install the OpenSSL headers (Debian/Ubuntu: apt-get install libssl-dev; Fedora: "
                "dnf install openssl-devel), build a TLS toolchain with `mtpgraft toolchain "
                "--cmake-arg=-DLLAMA_OPENSSL=ON` and pass the folder it prints (--print-bin-dir) as ",
                Setting("llama_cpp"))


def server_has_tls(binary: str | os.PathLike[str]) -> bool:
    """Whether this llama-server's downloader speaks https: ask it for an https endpoint on a closed
    local port. Without TLS it says "HTTPS is not supported" before connecting; with TLS it fails to
    connect. Nothing leaves the machine."""
    with tempfile.TemporaryDirectory(prefix="mtpgraft-tls-") as tmp:
        env = {**os.environ, "MODEL_ENDPOINT": "https://127.0.0.1:9/", "HF_HUB_CACHE": tmp, "LLAMA_CACHE": "",
               "HF_TOKEN": ""}
        try:
            proc = run_tool([binary, "-hf", "mtpgraft/tls-probe", "--port", "9", "--no-webui"], env=env,
                            timeout=60, check=False)
        except (ToolNotFoundError, ToolFailedError):
            return False
    return _NO_TLS not in proc.stdout


def localize_models(models: list[str], *, draft: str | None, server: ServerTool, endpoint: str | None = None,
                    token: str | None = None,
                    log_dir: str | os.PathLike[str] | None = None) -> tuple[list[str], str | None,
                                                                           list[RemoteResolution]]:
    """Replace every hf:// ref in `models` by the file llama-server -hf downloaded and loaded, and the
    draft by the sidecar it picked. One draft serves all models of a check, so refs whose sidecars
    differ (or a sidecar next to --draft) are refused."""
    out: list[str] = []
    resolutions: list[RemoteResolution] = []
    drafts: set[str] = set()
    for m in models:
        if not is_hf_ref(m):
            out.append(m)
            continue
        ref = parse_hf_ref(m)
        log = Path(log_dir) / f"hf-{ref.arg.replace('/', '--').replace(':', '-')}.log" if log_dir else None
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
        res = resolve_remote(ref, endpoint=endpoint, server=server, token=token, log_path=log)
        resolutions.append(res)
        out.append(str(res.local_model))
        if res.local_mtp is not None:
            drafts.add(str(res.local_mtp))
    if drafts and draft is not None:
        raise UsageError(Setting("draft"), f" {draft} and the sidecar llama-server -hf loads "
                         f"({', '.join(sorted(drafts))}): check them separately")
    if len(drafts) > 1:
        raise UsageError("these refs load different MTP sidecars (" + ", ".join(sorted(drafts))
                         + "); one check has one draft: check each ref on its own")
    return out, (drafts.pop() if drafts else draft), resolutions


@dataclass(frozen=True)
class RemoteCheck:
    tag: str
    resolution: RemoteResolution
    result: object  # check.CheckResult

    @property
    def passed(self) -> bool:
        return bool(getattr(self.result, "passed", False))


def verify_remote(repo_id: str, tags: list[str] | tuple[str, ...], *, server: ServerTool,
                  endpoint: str | None = None, token: str | None = None,
                  settings: dict[str, object] | None = None) -> list[RemoteCheck]:
    """After a push: load each `repo_id:TAG` with llama-server -hf as users will, and check it (the
    `quick` check preset unless `settings` says otherwise)."""
    out = []
    for tag in tags:
        ref = HfRef(repo_id, tag)
        models, draft, (res,) = localize_models([str(ref)], draft=None, server=server, endpoint=endpoint,
                                                token=token)
        # whether it drafts as users load it: one MTP server (the p-min sweep is `mtpgraft check`'s)
        quick = {**PRESETS["quick"], "dense_p_min": ()}
        plan = plan_check(models, draft=draft, server=server, **{**quick, **(settings or {})})
        out.append(RemoteCheck(tag, res, execute_check(plan)))
    return out
