#!/usr/bin/env python3
"""Regenerate docs/CLI.md from the real `--help` of every command (tests check it is current)."""

from __future__ import annotations

import sys
from pathlib import Path

from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent


def render() -> str:
    from mtpgraft.cli import cli

    runner = CliRunner()
    parts = ["# mtpgraft command reference", "",
             "Generated from `--help` by `scripts/gen_cli_docs.py`; `tests/test_docs.py` fails when it drifts.", ""]
    top = runner.invoke(cli, ["--help"], prog_name="mtpgraft", terminal_width=100)
    parts += ["## mtpgraft", "", "```", top.output.rstrip(), "```", ""]
    for name in sorted(cli.commands):
        out = runner.invoke(cli, [name, "--help"], prog_name="mtpgraft", terminal_width=100).output
        parts += [f"## mtpgraft {name}", "", "```", out.rstrip(), "```", ""]
    return "\n".join(parts)


def main() -> None:
    target = ROOT / "docs" / "CLI.md"
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if target.read_text() == text else 1)
    target.write_text(text)
    print(target)


if __name__ == "__main__":
    main()
