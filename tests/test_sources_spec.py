"""Parsing --mtp-from hf:// references (no network)."""

from __future__ import annotations

import pytest

from mtpgraft.errors import UsageError
from mtpgraft.sources import HubRef, parse_hub


@pytest.mark.parametrize(("spec", "want"), [
    ("hf://Qwen/Qwen3.6-27B", HubRef("Qwen/Qwen3.6-27B", "safetensors")),
    ("hf://Qwen/Qwen3.6-27B@main", HubRef("Qwen/Qwen3.6-27B", "safetensors", revision="main")),
    ("hf://o/r/sub/M-Q8_0-00001-of-00003.gguf", HubRef("o/r", "gguf", path="sub/M-Q8_0-00001-of-00003.gguf")),
    ("hf://o/r/M.gguf@v1.0", HubRef("o/r", "gguf", path="M.gguf", revision="v1.0")),
    ("hf://o/r@abc123/M.gguf", HubRef("o/r", "gguf", path="M.gguf", revision="abc123")),
    ("hf://o/r:Q4_K_M", HubRef("o/r", "quant", quant="Q4_K_M")),
    ("hf://o/r:Q8_0@refs/pr/1", HubRef("o/r", "quant", quant="Q8_0", revision="refs/pr/1")),
    ("hf://o/r@dev:Q8_0", HubRef("o/r", "quant", quant="Q8_0", revision="dev")),
    ("hf://o/r/model-00002-of-00002.safetensors", HubRef("o/r", "safetensors", path="model-00002-of-00002.safetensors")),
])
def test_parse(spec, want):
    assert parse_hub(spec) == want


def test_label_pins_the_commit():
    assert parse_hub("hf://o/r:Q8_0@main").label("c" * 40) == "hf://o/r:Q8_0@" + "c" * 40
    assert parse_hub("hf://o/r/a/b.gguf").label() == "hf://o/r/a/b.gguf"


@pytest.mark.parametrize(("spec", "message"), [
    ("hf://justone", "hf://justone: not a Hub reference; use hf://OWNER/REPO, hf://OWNER/REPO/PATH.gguf or "
                     "hf://OWNER/REPO:QUANT, each with an optional @REVISION"),
    ("hf://o/r/folder", "hf://o/r/folder: 'folder' is neither a .gguf nor a .safetensors file; name a file, "
                        "a :QUANT tag, or the repo itself for its safetensors"),
    ("hf://o/r/M.gguf@", "hf://o/r/M.gguf@: empty revision after @"),
    ("hf://o/r:Q8 0", "hf://o/r:Q8 0: bad quant tag 'Q8 0'"),
])
def test_bad_references(spec, message):
    with pytest.raises(UsageError) as e:
        parse_hub(spec)
    assert str(e.value) == message
