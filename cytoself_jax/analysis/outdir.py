"""Output folders that only the command which wrote them may replace.

A command (eval, embed) writes into a hidden sibling ``.<name>.tmp-<pid>`` that carries a marker file naming the
command, then renames it into place, so a failed or killed run never leaves a partial folder. An existing folder
is replaced only when it is empty or carries the same command's marker and nothing besides the files the marker
lists: a run directory, a data folder, any folder with other files (or a user's file added to an output) is
refused, never deleted. Stale temporary folders of killed processes (marker present,
process gone on this host) are removed when the command next writes beside them.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import socket
from pathlib import Path

MARKER = "cytoself-output.json"


class OutputFolderError(ValueError):
    """The output folder cannot be used; the message is one line naming it and what to do."""


def read_marker(folder: Path) -> dict:
    """The marker of a folder written by a command ({} when absent or unreadable)."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def check_replaceable(out: Path, command: str, option: str = "--out") -> None:
    """Refuse (OutputFolderError) an existing `out` that is a file or a non-empty folder `command` did not write."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise OutputFolderError(f"{out}: {option}: exists and is not a folder {command} wrote; choose another {option}")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return
    marker = read_marker(out)
    if marker.get("written_by") != command:
        raise OutputFolderError(f"{out}: {option}: holds files {command} did not write (no {command} {MARKER}), so it "
                                f"is never replaced; choose a new folder with {option} (or remove this one yourself)")
    added = sorted(entries - set(marker.get("files", entries)) - {MARKER})
    if added:
        raise OutputFolderError(f"{out}: {option}: holds files {command} did not write ({', '.join(added[:3])}), so it "
                                f"is never replaced; move them, or choose a new folder with {option}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


def clean_stale(out: Path, command: str) -> list[Path]:
    """Remove the ``.<name>.tmp-<pid>`` / ``.<name>.old-<pid>`` siblings of `out` left by killed runs of
    `command` on this host (marker present, process gone); returns the folders removed."""
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)")
    removed = []
    for folder in out.parent.iterdir():
        match = pattern.fullmatch(folder.name)
        if match is None or not folder.is_dir() or folder.is_symlink():
            continue
        marker = read_marker(folder)
        if (marker.get("written_by") == command and marker.get("host") == socket.gethostname()
                and not _alive(int(match[1]))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def staging_folder(out: Path, command: str, details: dict | None = None) -> Path:
    """A fresh ``.<name>.tmp-<pid>`` sibling of `out` carrying `command`'s marker (with `details`); stale ones of
    killed runs are removed first. Fill it, then commit() it."""
    out = Path(out)
    check_replaceable(out, command)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out, command)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():  # this very process's earlier attempt
        shutil.rmtree(tmp)
    tmp.mkdir()
    marker = {"written_by": command, "host": socket.gethostname(), "pid": os.getpid(),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **(details or {})}
    (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
    return tmp


def commit(tmp: Path, out: Path, command: str) -> None:
    """Move the finished staging folder to `out`, replacing only an earlier output of `command` (checked again:
    the folder may have appeared while the command ran)."""
    check_replaceable(out, command)
    marker = read_marker(tmp)
    marker["files"] = sorted(p.name for p in tmp.iterdir())
    (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
