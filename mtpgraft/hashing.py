"""sha256 of big files, cached by (absolute path, size, mtime_ns) so a 60 GB quant is hashed once."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from .outputs import write_text
from .pins import cache_dir

CHUNK = 8 << 20
_lock = threading.Lock()


def _cache_file() -> Path:
    return cache_dir() / "sha256-cache.json"


def _load() -> dict[str, dict]:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def sha256_file(path: str | os.PathLike[str], *, use_cache: bool = True) -> str:
    """Hex sha256 of a file's bytes, streamed in 8 MiB chunks; cached unless use_cache is False."""
    p = Path(path)
    name, size, mtime = _key(p)
    if use_cache:
        entry = _load().get(name)
        if entry and entry.get("size") == size and entry.get("mtime_ns") == mtime:
            return entry["sha256"]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    digest = h.hexdigest()
    if use_cache:
        with _lock:
            data = _load()
            data[name] = {"size": size, "mtime_ns": mtime, "sha256": digest}
            cf = _cache_file()
            try:
                cf.parent.mkdir(parents=True, exist_ok=True)
                write_text(cf, json.dumps(data))
            except OSError:
                pass  # a read-only cache only costs a re-hash next time
    return digest
