"""Folders that appear complete or not at all: every command writes its output into a hidden staging sibling
``.<name>.tmp-<pid>`` carrying a marker file, then renames it into place as its last step.

A failed write (a full disk, no permission, a read-only disk) or Ctrl-C/SIGTERM removes the staging folder; a
killed process (SIGKILL, power loss) leaves it behind, and the next run of the same command on this host removes
it once its process is gone (clean_stale). Only folders whose marker names the command are ever removed: never
anything a command did not create. Used by the crop store writer (import, prepare, synthetic cells), prepare's QC
report and eval/embed's output folders (analysis/outdir.py).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Iterator

MARKER = "cytoself-output.json"


class OutputFolderError(ValueError):
    """The output folder cannot be used; the message is one line naming it and what to do."""


class WriteFailed(OSError):
    """A write failed (disk full, permission, read-only); the message is one line naming the path, the reason and
    what was kept."""

    def __init__(self, path: Path | str, reason: str, kept: str, code: int | None = None):
        super().__init__(code, reason)
        self.filename = str(path)
        self.kept = kept
        self.message = f"{path}: {reason}; {kept}"

    def __str__(self) -> str:
        return self.message


def os_reason(err: BaseException) -> str:
    """'No space left on device [errno 28]' for an operating-system error; 'TypeName: first line' otherwise
    (tensorstore's errors carry the code inside their text: os_error_code='28')."""
    code = getattr(err, "errno", None)
    if not code:
        found = re.search(r"os_error_code='(\d+)'", str(err))
        code = int(found.group(1)) if found else None
    if code:
        return f"{os.strerror(code)} [errno {code}]"
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def read_marker(folder: Path) -> dict:
    """The marker of a folder written by a command ({} when absent or unreadable)."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


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


def kept_message(out: Path, existed: bool) -> str:
    """What a failed or stopped write kept: the earlier `out` unchanged, or nothing."""
    return (f"{out} keeps its earlier content, unchanged (the partial output was removed)" if existed else
            f"nothing was kept: {out} was not created (the partial output was removed)")


def final_path(path: str | os.PathLike | None, tmp: Path, out: Path) -> Path:
    """A path inside the staging folder `tmp` as the user will know it (inside `out`); `out` for other paths."""
    if not path:
        return out
    try:
        return out / Path(path).relative_to(tmp)
    except ValueError:
        return Path(path)


_UNFINISHED: set[Path] = set()  # this process's staging folders, until renamed into place or removed


def remove_unfinished() -> list[Path]:
    """Remove this process's staging folders that were never renamed into place (each checked to carry this
    process's marker); a command calls it when it stops, whatever instant Ctrl-C or SIGTERM arrived at."""
    removed = []
    for tmp in sorted(_UNFINISHED):
        _UNFINISHED.discard(tmp)
        if read_marker(tmp).get("pid") == os.getpid():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def new_staging(out: Path, command: str, details: dict | None = None) -> Path:
    """A fresh ``.<name>.tmp-<pid>`` sibling of `out` carrying `command`'s marker (with `details`); stale ones of
    killed runs are removed first. Raises WriteFailed (one line) when it cannot be created."""
    out = Path(out)
    existed = out.exists()
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(out, command)
        if tmp.exists():  # this very process's earlier attempt
            shutil.rmtree(tmp)
        tmp.mkdir()
        _UNFINISHED.add(tmp)
        marker = {"written_by": command, "host": socket.gethostname(), "pid": os.getpid(),
                  "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  **(details or {})}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
    except BaseException as err:  # a failed write, or Ctrl-C/SIGTERM while the folder is being made
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, OSError):
            note_kept(err, kept_message(out, existed))
            raise
        raise WriteFailed(final_path(err.filename, tmp, out), os_reason(err), kept_message(out, existed),
                          err.errno) from None
    return tmp


@contextlib.contextmanager
def staged_writes(tmp: Path, out: Path) -> Iterator[None]:
    """Around the writes into the staging folder `tmp` (and its rename to `out`): on any exception `tmp` is
    removed; an OSError becomes WriteFailed naming the file as it would have been in `out` and what was kept;
    Ctrl-C and SIGTERM carry what was kept as their `kept` attribute (for the command's last line)."""
    existed = Path(out).exists()
    try:
        yield
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, WriteFailed):
            raise
        raise WriteFailed(final_path(err.filename, tmp, out), os_reason(err), kept_message(out, existed),
                          err.errno) from None
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        note_kept(err, kept_message(out, existed))
        raise


def note_kept(err: BaseException | None, kept: str) -> None:
    """Record on an exception (Ctrl-C's KeyboardInterrupt, SIGTERM's Terminated, ...) what its command kept, for
    the command's last line (command.run_command); the first record wins: it is the innermost writer's."""
    if err is not None and not getattr(err, "kept", None):
        with contextlib.suppress(AttributeError):
            err.kept = kept  # type: ignore[attr-defined]


def require_space(folder: Path, nbytes: int, out: Path) -> None:
    """Refuse (WriteFailed, ENOSPC) to start writing `nbytes` into `folder` when its disk has less free space:
    a memory-mapped array written onto a full disk kills the process (SIGBUS) instead of raising."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < nbytes:
        raise WriteFailed(out, f"{os.strerror(errno.ENOSPC)} [errno {errno.ENOSPC}]: needs {human_size(nbytes)}, "
                               f"{human_size(free)} free", kept_message(out, out.exists()), errno.ENOSPC)


def human_size(nbytes: int) -> str:
    """'16.4 kB', '1.2 GB': a size in decimal units, 3 significant digits."""
    size, unit = float(nbytes), "B"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            break
        size /= 1000
    return f"{size:.3g} {unit}"


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


def staging_folder(out: Path, command: str, details: dict | None = None) -> Path:
    """A fresh staging folder for `out` (new_staging), after refusing an `out` that `command` did not write."""
    check_replaceable(out, command)
    return new_staging(out, command, details)


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
