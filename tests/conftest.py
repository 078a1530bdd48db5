"""Shared fixtures. Tests that run llama.cpp binaries are marked `tools`; CI always builds the tools, so
a missing tool FAILS such a test (with the places that were searched), it is never skipped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `tools` (the real llama.cpp tools, slow) run after every offline test."""
    items.sort(key=lambda item: item.get_closest_marker("tools") is not None)


@pytest.fixture(scope="session")
def llama_server_bin() -> Path:
    """Path of the llama-server that `mtpgraft.tools` finds (flag-less lookup: env, PATH, cache)."""
    from mtpgraft.errors import ToolNotFoundError
    from mtpgraft.tools import find_tool

    try:
        return find_tool("llama-server")
    except ToolNotFoundError as e:
        pytest.fail(f"{e} (tests marked `tools` need the llama.cpp tools: run `mtpgraft toolchain`)",
                    pytrace=False)


@pytest.fixture(scope="session")
def llama_cpp_dir(llama_server_bin: Path) -> Path:
    """The directory holding the llama.cpp tools (pass as `llama_cpp=` / `--llama-cpp`)."""
    return llama_server_bin.parent


def _test_set(tmp_path_factory: pytest.TempPathFactory, arch: str) -> dict[str, Path]:
    from mtpgraft.testmodels import build_test_set

    return build_test_set(tmp_path_factory.mktemp(f"tiny-{arch}"), arch=arch)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny qwen35 test model (mtpgraft.testmodels.TEST_SET), built once per session."""
    return _test_set(tmp_path_factory, "qwen35")


@pytest.fixture(scope="session")
def tiny_moe_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny qwen35moe test model, built once per session."""
    return _test_set(tmp_path_factory, "qwen35moe")


@pytest.fixture(scope="session")
def tiny_glm_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tiny glm4moe test model (mtpgraft.testmodels.glm4moe.TEST_SET), built once per session."""
    return _test_set(tmp_path_factory, "glm4moe")


@pytest.fixture(scope="session")
def tiny_gemma_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny gemma4 target ("base") and its gemma4-assistant drafters, built once per session."""
    return _test_set(tmp_path_factory, "gemma4")


@pytest.fixture
def hf_hermetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real token or cache: HF_HOME, the HF cache, the stored token and the mtpgraft cache live
    under tmp_path; returns the HF hub cache folder."""
    from huggingface_hub import constants

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("MTPGRAFT_CACHE_DIR", str(tmp_path / "mtpgraft_cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf_home" / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    return tmp_path / "hf_home" / "hub"


@pytest.fixture
def hf_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The environment of a test that talks to the loopback Hub, for huggingface_hub and llama.cpp's
    `-hf` alike (fakehub.hermetic_hf_env); returns the private HF cache."""
    from fakehub import hermetic_hf_env

    return hermetic_hf_env(monkeypatch, tmp_path)


@pytest.fixture
def hub(tmp_path: Path):
    """A loopback Hub (tests/fakehub.py) with nothing in it, stopped after the test."""
    from fakehub import FakeHub

    h = FakeHub(tmp_path / "cas").start()
    yield h
    h.stop()


@pytest.fixture(scope="session")
def ik_bin_dir() -> Path:
    """ik_llama.cpp's cached build; skipped without it, failed when MTPGRAFT_REQUIRE_IK is set (CI)."""
    from mtpgraft.pins import cached_bin_dir

    d = cached_bin_dir("ik")
    if d is None:
        if os.environ.get("MTPGRAFT_REQUIRE_IK"):
            pytest.fail("ik_llama.cpp is not built: run `mtpgraft toolchain --runtime ik`", pytrace=False)
        pytest.skip("ik_llama.cpp is not built (`mtpgraft toolchain --runtime ik`)")
    return d
