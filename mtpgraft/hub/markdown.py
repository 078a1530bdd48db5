"""Text from a GGUF, a report or the Hub made safe for a Markdown card: on one line, escaped, cut to
MAX_SHOWN characters; with link paths and sizes as the Hub shows them."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import quote

# Everything a GGUF, a report or the Hub says is text to show, never markup: it lands in the body
# escaped (one line, Markdown's and HTML's special characters neutralised, at most MAX_SHOWN chars).
MAX_SHOWN = 200
_BLANKS = re.compile(r"[\x00-\x20\x7f-\x9f\u2028\u2029]+")
_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")


def plain_line(value: Any) -> str:
    """`value` on one line (control characters and runs of blanks as one space), at most MAX_SHOWN chars."""
    text = _BLANKS.sub(" ", str(value)).strip()
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 1] + "…"


def md(value: Any) -> str:
    """`value` as plain text in Markdown (a paragraph, a heading or a table cell): one line, HTML
    escaped, and \\ ` * [ ] | backslash-escaped (no link, image, code span or new table cell; an
    intraword `_` as in Q4_K_M stays as it is)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(plain_line(value), quote=False))


def md_code(value: Any) -> str:
    """`value` as an inline code span (outside tables): one line, fenced by more backticks than it holds."""
    text = plain_line(value)
    fence = "`" * (max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def url_path(path: str) -> str:
    """A repo path or revision as part of a link's URL (percent-encoded: no `)`, space or newline)."""
    return quote(path, safe="/")


def human_size(n: int) -> str:
    """Decimal units, as the Hub shows sizes."""
    for unit, div in (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"
