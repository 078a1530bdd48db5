"""The prompt suite `mtpgraft check` runs: a built-in one (data/prompts.jsonl) or a user JSONL file.

Prompts are raw text for llama-server's /completion (no chat template), written as the start of a
document the model continues: code prompts stop where code or a numbered list begins (a newline,
a colon, a period), creative prompts stop mid-sentence on a word. Each line of a prompt file is a
JSON object with `category` and `prompt` (or `text`), optionally `id` and `task`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UsageError

CATEGORIES = ("code", "factual", "analysis", "creative")


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    text: str
    task: str = ""


def _parse_lines(lines: Iterable[str], source: str) -> list[Prompt]:
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise UsageError(f"{source}:{no}: not valid JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise UsageError(f"{source}:{no}: expected a JSON object with category and prompt")
        text = obj.get("prompt", obj.get("text"))
        category = obj.get("category")
        if not isinstance(text, str) or not text:
            raise UsageError(f"{source}:{no}: missing a non-empty \"prompt\" string")
        if not isinstance(category, str) or not category.strip():
            raise UsageError(f"{source}:{no}: missing a \"category\" string")
        pid = str(obj.get("id") or f"{category}-{no}")
        if pid in seen:
            raise UsageError(f"{source}:{no}: duplicate prompt id {pid!r}")
        seen.add(pid)
        prompts.append(Prompt(pid, category.strip(), text, str(obj.get("task") or "")))
    if not prompts:
        raise UsageError(f"{source}: no prompts")
    return prompts


def builtin_prompts() -> list[Prompt]:
    """The suite shipped with mtpgraft: code, factual, analysis and creative prompts."""
    text = resources.files("mtpgraft").joinpath("data/prompts.jsonl").read_text(encoding="utf-8")
    return _parse_lines(text.splitlines(), "built-in prompts")


def load_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Read a JSONL prompt file; raise UsageError naming the line of the first bad entry."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read prompt file {p}: {e.strerror}") from e
    return _parse_lines(text.splitlines(), str(p))


def select_prompts(prompts: Sequence[Prompt], categories: Sequence[str] | None = None,
                   per_category: int | None = None) -> list[Prompt]:
    """Keep the given categories (in that order) and at most `per_category` prompts of each."""
    present = list(dict.fromkeys(p.category for p in prompts))
    wanted = list(categories) if categories else present
    unknown = [c for c in wanted if c not in present]
    if unknown:
        raise UsageError(f"no prompts in categor{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(unknown)} (the prompts have: {', '.join(present)})")
    out: list[Prompt] = []
    for cat in wanted:
        of_cat = [p for p in prompts if p.category == cat]
        out.extend(of_cat[:per_category] if per_category else of_cat)
    return out
