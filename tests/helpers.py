"""Helpers more than one test file uses (fixtures are in conftest.py): a tensor's stored bytes, and the
pieces of a recipe that runs on the tiny models and pushes to the loopback Hub."""

from __future__ import annotations

import json
from typing import Any

from mtpgraft.gguf_io import GGUFModel


def gguf_tensors(path) -> dict[str, bytes]:
    """Every tensor's bytes, by name, in file order (read by gguf-py, not by mtpgraft)."""
    from gguf import GGUFReader

    return {t.name: bytes(t.data) for t in GGUFReader(path).tensors}


def gguf_keys(path) -> dict:
    """The metadata a converter's file and a graft must agree on (gguf-py's reading), without the
    vocabulary, mtpgraft's own keys and the name."""
    from gguf import GGUFReader

    return {k: f.contents() for k, f in GGUFReader(path).fields.items()
            if not k.startswith(("GGUF.", "tokenizer.", "mtpgraft.", "general.name"))}


def tensor_bytes(m: GGUFModel, name: str) -> bytes:
    """The bytes of tensor `name` as stored in its file (any shard of a split set)."""
    r = m.by_name[name]
    with open(r.path, "rb") as f:
        f.seek(r.abs_offset)
        return f.read(r.info.nbytes)


def tiny_model_section(name: str) -> str:
    """A recipe's [model]: the builtin tiny qwen35 base grafted with its full model's aligned head."""
    return f'\n[model]\nname = "{name}"\nbase = "builtin:tiny-qwen35-base"\nmtp_from = "builtin:tiny-qwen35-full"\n'


def quick_check_section(categories: tuple[str, ...] = ("code",), **extra: Any) -> str:
    """A recipe's [check] that runs in seconds on the tiny models: n_max 3, one 32-token prompt per
    category, acceptance at least 0.9; `extra` adds keys (lists and strings as TOML)."""
    lines = ["[check]", "n_max = [3]", "n_predict = 32", "ctx = 1024", f"categories = {json.dumps(list(categories))}",
             "per_category = 1", "min_acceptance = 0.9", *(f"{k} = {json.dumps(v)}" for k, v in extra.items())]
    return "\n" + "\n".join(lines) + "\n"


def hub_api(hub_settings: Any) -> Any:
    """The `hub_api` a recipe run takes to push to the loopback Hub: the real client, FakeHub's token."""
    from fakehub import FakeHub

    from mtpgraft.hub import make_api

    return make_api(endpoint=hub_settings.endpoint, token=FakeHub.TOKEN)
