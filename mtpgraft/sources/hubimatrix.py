"""An importance matrix that a quantizer published: `quantize --imatrix hf://OWNER/REPO/PATH[@REV]`.

The file (`*.imatrix.gguf`, or the legacy `imatrix.dat`) is fetched whole through the same cached,
resumable range reader as the `hf://` MTP sources, then linked under its own file name into
`$MTPGRAFT_CACHE_DIR/mtp-sources/imatrix/OWNER--NAME/COMMIT/` (llama-quantize records the name it is
given in `quantize.imatrix.file`, and its dataset from the file itself, as for a local one). A rerun
fetches nothing. quantize then checks it against the model's tensors before using it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import SourceError, UsageError
from ..hub.client import make_api
from .hubfiles import open_repo
from .resolve import sources_cache
from .spec import HubRef, parse_hub

IMATRIX_CAP = 4 << 30  # bytes: an imatrix holds two small rows per weight; past this it is something else
_DAT = re.compile(r"\.dat(?=@[^/]*$|$)")


def parse_imatrix_ref(spec: str) -> HubRef:
    """hf://OWNER/REPO/PATH.gguf or PATH.dat, with an optional @REV (after the repo or at the end)."""
    dat = _DAT.search(spec)
    ref = parse_hub(_DAT.sub(".gguf", spec) if dat else spec)
    if ref.kind != "gguf" or ref.path is None:
        raise UsageError(f"{spec}: name the imatrix file in the repo: hf://OWNER/REPO/PATH.gguf (or .dat)")
    return HubRef(ref.repo_id, "gguf", path=ref.path[:-5] + ".dat" if dat else ref.path, revision=ref.revision)


def fetch_imatrix(spec: str, *, token: str | None = None, endpoint: str | None = None) -> Path:
    """The local copy of a published imatrix (fetched unless the cache holds it)."""
    ref = parse_imatrix_ref(spec)
    assert ref.path is not None
    root = sources_cache()
    repo = open_repo(ref, api=make_api(endpoint=endpoint, token=token), cache_root=root / "ranges")
    size = repo.require(ref.path)
    if not 0 < size <= IMATRIX_CAP:
        raise SourceError(f"{repo.label(ref.path)} is {size:,} bytes: not an importance matrix")
    owner, name = ref.repo_id.split("/")
    out = root / "imatrix" / f"{owner}--{name}" / repo.commit / Path(ref.path).name
    if out.is_file() and out.stat().st_size == size:
        return out
    whole = repo.fetch(ref.path, 0, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        os.link(whole, tmp)  # the range cache's bytes, once on disk
    except OSError:
        tmp.write_bytes(whole.read_bytes())
    os.replace(tmp, out)
    return out
