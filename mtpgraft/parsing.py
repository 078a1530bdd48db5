"""Input that mtpgraft did not write, parsed with bounds: JSON with a size and a depth limit, fields
checked for their type and range before anything is sized by them, names that become file names.

Every refusal is the caller's error class (a SourceError for a checkpoint, a UsageError for a report,
a RecipeError for a recipe) with a message that names the input and what is wrong with it.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from .errors import MtpgraftError, SourceError

MAX_JSON_BYTES = 16 << 20  # config.json, an index, a report: far above any real one (a few MB at most)
MAX_JSON_DEPTH = 64  # real configs nest 3 deep; Python's own parser fails near 1,000
MAX_NAME = 200  # characters of a name that becomes part of a file name (filesystems take 255 bytes)


def json_depth(obj: Any) -> int:
    """The deepest nesting of lists and dicts in a parsed value, walked without recursion."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        v, d = todo.pop()
        if isinstance(v, (list, dict)):
            deepest = max(deepest, d)
            todo.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def load_json(data: bytes | str, what: str, *, error: type[MtpgraftError] = SourceError,
              max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`data` parsed as JSON (UTF-8), or `error` naming `what`: too large, too deep, not JSON."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
    if len(raw) > max_bytes:
        raise error(f"{what}: {len(raw):,} bytes of JSON, more than the {max_bytes:,} mtpgraft reads")
    too_deep = f"{what}: JSON nested more than {max_depth} deep (mtpgraft reads at most {max_depth})"
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise error(f"{what}: not UTF-8 text (byte {e.start})") from None
    except RecursionError:  # the C parser's own guard, near 1,000 deep: a clean unwind
        raise error(too_deep) from None
    except ValueError as e:
        raise error(f"{what}: not valid JSON ({getattr(e, 'msg', str(e))[:120]})") from None
    if json_depth(obj) > max_depth:
        raise error(too_deep)
    return obj


def read_text(path: str | os.PathLike[str], what: str, max_bytes: int, *,
              error: type[MtpgraftError] = SourceError) -> str:
    """A text file read whole: at most `max_bytes` (a larger file, /dev/zero, is refused after reading
    max_bytes + 1), decoded as UTF-8 with an error that says where it is not."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {path} is larger than {max_bytes >> 20} MB, the most mtpgraft reads")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{what} {path}: not UTF-8 text (line {line}, byte {e.start}); save it as UTF-8") from None


def read_json_file(path: str | os.PathLike[str], what: str | None = None, *,
                   error: type[MtpgraftError] = SourceError, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file read through load_json, never more than max_bytes + 1 of it (/dev/zero is refused)."""
    what = what or str(path)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    return load_json(data, what, error=error, max_bytes=max_bytes)


# --------------------------------------------------------------------------- typed fields


def is_int(v: Any) -> bool:
    """An integer as JSON/TOML gives one: int (never bool), or a float with an integral value."""
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and math.isfinite(v) and v.is_integer())


def int_field(v: Any, what: str, lo: int, hi: int, *, error: type[MtpgraftError] = SourceError) -> int:
    """`v` as an int in [lo, hi], or `error`: `what` is the field as the message names it."""
    if not is_int(v):
        raise error(f"{what} = {_shown(v)}: not an integer")
    n = int(v)
    if not lo <= n <= hi:
        raise error(f"{what} = {n}: out of range (mtpgraft takes {lo} to {hi:,})")
    return n


def number_field(v: Any, what: str, lo: float, hi: float, *, error: type[MtpgraftError] = SourceError) -> float:
    """`v` as a float in [lo, hi], or `error`; an int is compared as it is (float() of a huge one overflows)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise error(f"{what} = {_shown(v)}: not a number")
    if not lo <= v <= hi:
        raise error(f"{what} = {_shown(v)}: out of range (mtpgraft takes {lo} to {hi})")
    return float(v)


def str_list_field(v: Any, what: str, *, error: type[MtpgraftError] = SourceError, max_len: int = 1 << 16) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise error(f"{what} = {_shown(v)}: not a list of strings")
    if len(v) > max_len:
        raise error(f"{what}: {len(v):,} entries, more than the {max_len:,} mtpgraft takes")
    return v


def _shown(v: Any) -> str:
    text = json.dumps(v, default=repr) if not isinstance(v, str) else repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- names


_UNPLAIN = re.compile(r"[\x00-\x1f\x7f-\x9f/\\\u2028\u2029]")


def is_plain(name: str) -> bool:
    """Whether `name` can be part of a file name as it is (see plain_name)."""
    return bool(name) and name not in (".", "..") and not _UNPLAIN.search(name) and len(name) <= MAX_NAME


def plain_name(name: str, what: str, *, error: type[MtpgraftError] = SourceError) -> str:
    """`name` if it can be part of a file name as it is: no control characters, no path separators,
    not `.` or `..`, at most MAX_NAME characters; else `error` naming `what`."""
    if not is_plain(name):
        shown = name.encode("unicode_escape").decode("ascii")
        raise error(f"{what} {shown[:60]!r} cannot be part of a file name: use letters, digits, '.', '-', "
                    f"'_' (no control characters or path separators, at most {MAX_NAME} characters)")
    return name
