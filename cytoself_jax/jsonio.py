"""Reading the JSON files of runs and stores: every error is one line naming the file, and a JSON-lines log may end
in a partial line (what a crash or a full disk leaves mid-append), which is dropped with a warning."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any


class JsonFileError(ValueError):
    """A JSON file is unreadable or malformed; the message is one line naming the file and the place."""


def read_json(path: str | Path, action: str = "") -> Any:
    """The JSON value in `path`. Raises JsonFileError naming the file (and line/column), followed by `action`
    (what the user can do) when given; a missing file raises FileNotFoundError as usual."""
    path = Path(path)
    hint = f"; {action}" if action else ""
    try:
        text = path.read_text()
    except (FileNotFoundError, IsADirectoryError):
        raise
    except (OSError, UnicodeDecodeError) as err:
        raise JsonFileError(f"{path}: unreadable ({getattr(err, 'strerror', None) or err}){hint}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        what = "empty file" if not text.strip() else f"line {err.lineno} column {err.colno}: {err.msg}"
        raise JsonFileError(f"{path}: not valid JSON ({what}; truncated or edited?){hint}") from None


def read_json_lines(path: str | Path) -> list[Any]:
    """The values of a JSON-lines file, one per non-empty line. A last line that is cut short (no final newline,
    not valid JSON) is dropped with a warning; any other bad line raises JsonFileError naming file and line."""
    path = Path(path)
    text = path.read_text()
    lines = text.split("\n")  # the piece after the last "\n" is a partial line unless it is empty
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                warnings.warn(f"{path}: line {number} is incomplete (the run stopped while writing it); ignored",
                              stacklevel=2)
                break
            raise JsonFileError(f"{path}: line {number}: not valid JSON ({err.msg})") from None
    return records
