"""What `--mtp-from SOURCE` (and a base given as hf://) can name, parsed without touching anything.

    ./donor.gguf                    a local GGUF: a full MTP model, an MTP-only file or just the tensors
    ./Qwen3.6-27B/                  a local snapshot folder with safetensors and config.json
    ./model.safetensors             one local safetensors file (config.json beside it)
    hf://OWNER/REPO/PATH.gguf       a GGUF in a Hub repo (the first shard of a split set)
    hf://OWNER/REPO:QUANT           the GGUF `llama-server -hf OWNER/REPO:QUANT` would pick
    hf://OWNER/REPO                 a Hub model repo with safetensors (model.safetensors.index.json)
    hf://OWNER/REPO/PATH.safetensors  one safetensors file of a Hub repo

Each hf:// form takes a revision (branch, tag or commit) as `hf://OWNER/REPO@REV/...` or at the end,
`hf://OWNER/REPO/PATH.gguf@REV`, `hf://OWNER/REPO:QUANT@REV`, `hf://OWNER/REPO@REV`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from .hublimits import path_problem

HF_PREFIX = "hf://"
_NAME = r"[A-Za-z0-9][\w.-]*"
_REPO_RE = re.compile(rf"^(?P<owner>{_NAME})/(?P<name>{_NAME}?)(?:@(?P<rev>[^/:]+))?(?P<rest>[/:].*)?$")


@dataclass(frozen=True)
class HubRef:
    """A parsed hf:// reference. kind: "gguf" (path), "quant" (tag), "safetensors" (repo or path)."""

    repo_id: str
    kind: str
    path: str | None = None
    quant: str | None = None
    revision: str | None = None

    def label(self, commit: str | None = None) -> str:
        """The reference as provenance records it, pinned to the resolved commit when known."""
        tail = f"/{self.path}" if self.path else (f":{self.quant}" if self.quant else "")
        rev = commit or self.revision
        return f"{HF_PREFIX}{self.repo_id}{tail}" + (f"@{rev}" if rev else "")


def is_hub(spec: str | Path) -> bool:
    return isinstance(spec, str) and spec.startswith(HF_PREFIX)


def parse_hub(spec: str) -> HubRef:
    """Parse an hf:// reference; a UsageError for anything that is not one of the documented forms."""
    if not spec.isprintable():
        raise UsageError(f"{ascii(spec)}: the reference has a control character")
    body = spec[len(HF_PREFIX):]
    m = _REPO_RE.match(body)
    if not m or not m["name"]:
        raise UsageError(f"{spec}: not a Hub reference; use hf://OWNER/REPO, hf://OWNER/REPO/PATH.gguf "
                         "or hf://OWNER/REPO:QUANT, each with an optional @REVISION")
    repo_id, rev, rest = f"{m['owner']}/{m['name']}", m["rev"], m["rest"] or ""
    if rev is None and "@" in rest:
        rest, _, rev = rest.rpartition("@")
    if rev is not None and not rev:
        raise UsageError(f"{spec}: empty revision after @")
    if rest.startswith(":"):
        quant = rest[1:]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", quant):
            raise UsageError(f"{spec}: bad quant tag {quant!r}")
        return HubRef(repo_id, "quant", quant=quant, revision=rev)
    path = rest.strip("/")
    if not path:
        return HubRef(repo_id, "safetensors", revision=rev)
    problem = path_problem(path)
    if problem is not None:
        raise UsageError(f"{ascii(spec)}: the file name {ascii(path)} has {problem}; name a file in the repo")
    if path.endswith(".gguf"):
        return HubRef(repo_id, "gguf", path=path, revision=rev)
    if path.endswith(".safetensors"):
        return HubRef(repo_id, "safetensors", path=path, revision=rev)
    raise UsageError(f"{spec}: {path!r} is neither a .gguf nor a .safetensors file; name a file, "
                     "a :QUANT tag, or the repo itself for its safetensors")
