"""A GGUF file's fingerprint: every metadata entry's and every tensor's sha256, in file order.

Two files with equal fingerprints hold the same keys with the same encoded bytes, in the same
order, and the same tensors (name, shape, type, bytes), in the same order. The converter references
in tests/data/convert-ref/references.json are kept this way instead of as GGUF files, and the
trunks in trunks.json carry one (made by scripts/make_convert_reference.py; see trunks.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..gguf_io import GGUFModel


def fingerprint(path: str | Path) -> dict[str, Any]:
    m = GGUFModel(path)
    keys = [[k, hashlib.sha256(kv.raw).hexdigest()] for k, kv in m.kv.items()]
    tensors = []
    for r in m.refs:
        with open(r.path, "rb") as f:
            f.seek(r.abs_offset)
            digest = hashlib.sha256(f.read(r.info.nbytes)).hexdigest()
        tensors.append([r.name, list(r.info.ne), r.info.type_name, digest])
    return {"keys": keys, "tensors": tensors}
