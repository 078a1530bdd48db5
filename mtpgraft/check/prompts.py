"""The prompt suite `mtpgraft check` runs: a built-in one (data/prompts.jsonl) or a user JSONL file.

Each prompt has two forms. `prompt` is raw text for llama-server's /completion (no chat template),
written as the start of a document the model continues: code prompts stop where code or a numbered
list begins (a newline, a colon, a period), creative prompts stop mid-sentence on a word. `chat` is
the same request as a user message for /v1/chat/completions (the model's own template); without it
the raw text is sent as the message. Each line of a prompt file is a JSON object with `category` and
`prompt` (or `text`), optionally `chat`, `id` and `task`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import UsageError
from ..parsing import load_json, read_text

CATEGORIES = ("code", "factual", "analysis", "creative", "edit")
MAX_PROMPT_FILE = 16 << 20  # bytes: a suite of thousands of long prompts is a few MB
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    text: str
    task: str = ""
    chat: str = ""  # the user message in chat mode ('' : the raw text)

    @property
    def message(self) -> str:
        return self.chat or self.text


def _parse_lines(lines: Iterable[str], source: str) -> list[Prompt]:
    prompts: list[Prompt] = []
    seen: set[str] = set()
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        obj = load_json(line, f"{source}:{no}", error=UsageError)
        if not isinstance(obj, dict):
            raise UsageError(f"{source}:{no}: expected a JSON object with category and prompt")
        text = obj.get("prompt", obj.get("text"))
        category = obj.get("category")
        if not isinstance(text, str) or not text:
            raise UsageError(f"{source}:{no}: missing a non-empty \"prompt\" string")
        if not isinstance(category, str) or not category.strip():
            raise UsageError(f"{source}:{no}: missing a \"category\" string")
        pid = str(obj.get("id") or f"{category}-{no}")
        for what, value in (("category", category), ("id", pid)):  # printed in every table: one plain line
            if _CONTROL.search(value) or len(value) > 100:
                raise UsageError(f"{source}:{no}: the {what} must be one line of at most 100 characters "
                                 "without control characters")
        if pid in seen:
            raise UsageError(f"{source}:{no}: duplicate prompt id {pid!r}")
        seen.add(pid)
        chat = obj.get("chat") or ""
        if not isinstance(chat, str):
            raise UsageError(f"{source}:{no}: \"chat\" must be a string")
        prompts.append(Prompt(pid, category.strip(), text, str(obj.get("task") or ""), chat))
    if not prompts:
        raise UsageError(f"{source}: no prompts")
    return prompts


def builtin_prompts() -> list[Prompt]:
    """The suite shipped with mtpgraft: code, factual, analysis, creative and edit prompts (an edit
    prompt carries the text to change, so most of its answer repeats the prompt)."""
    text = resources.files("mtpgraft").joinpath("data/prompts.jsonl").read_text(encoding="utf-8")
    return _parse_lines(text.splitlines(), "built-in prompts")


def context_kind(category: str) -> str:
    """Which built-in context a category's prompts get at depth: code for code, prose for the rest."""
    return "code" if category == "code" else "prose"


def builtin_context(kind: str) -> str:
    """The fixed text (data/context-code.txt or context-prose.txt) --context-depth repeats and trims."""
    return resources.files("mtpgraft").joinpath(f"data/context-{kind}.txt").read_text(encoding="utf-8")


def load_prompts(path: str | os.PathLike[str]) -> list[Prompt]:
    """Read a JSONL prompt file (UTF-8, at most MAX_PROMPT_FILE bytes); raise UsageError naming the
    line of the first bad entry."""
    p = Path(path)
    return _parse_lines(read_text(p, "prompt file", MAX_PROMPT_FILE, error=UsageError).splitlines(), str(p))


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
