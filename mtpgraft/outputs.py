"""The rules every stage applies to the files it is about to write."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from .errors import OutputExistsError, UsageError


def check_outputs(outputs: Iterable[str | os.PathLike[str]], inputs: Iterable[str | os.PathLike[str]] = (),
                  *, force: bool) -> None:
    """Refuse an output that is one of the inputs (always), a directory, an existing file without
    --force, or one whose directory does not exist."""
    ins = [Path(i) for i in inputs]
    for o in map(Path, outputs):
        for i in ins:
            if o.resolve() == i.resolve() or (o.exists() and i.exists() and os.path.samefile(o, i)):
                raise OutputExistsError(f"output {o} is one of the inputs; write to a new file")
        if o.is_dir():
            raise OutputExistsError(f"output {o} is a directory")
        if o.exists() and not force:
            raise OutputExistsError(f"{o} exists; pass --force to overwrite it")
        if not o.parent.is_dir():
            raise UsageError(f"output directory {o.parent} does not exist")
