"""The command reference in docs/CLI.md is the real --help output, so it cannot drift."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_current():
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (ROOT / "docs" / "CLI.md").read_text() == mod.render(), "run scripts/gen_cli_docs.py"


def test_readme_names_every_command():
    from mtpgraft.cli import cli

    readme = (ROOT / "README.md").read_text()
    for name in cli.commands:
        assert f"mtpgraft {name}" in readme, name
