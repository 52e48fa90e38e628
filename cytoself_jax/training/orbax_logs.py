"""orbax's and tensorstore's own reports of a failed checkpoint read or write, captured instead of shown.

A damaged checkpoint file makes orbax log errors from its reader threads (through absl, some with tracebacks,
one per array) and makes tensorstore's callbacks hit orbax's closed event loop ('Event loop is closed', reported
as unraisable or thread exceptions, pages of tracebacks), sometimes after the failed call has returned. The
checkpoint module raises its own one-line error (or warns once) instead, so these reports are captured: records
of orbax's modules go to the DEBUG level of the 'cytoself_jax.orbax' logger (message only, no traceback), and so
do asyncio's 'Task exception was never retrieved' reports of orbax's read tasks (logged when the failed task is
garbage-collected, after the read has failed in one line; a task that awaits a tensorstore future itself has no
Python frame of either library, only asyncio's, and is known by tensorstore's message); the closed-loop exceptions
are dropped. Anything else is shown as usual.
"""
from __future__ import annotations

import asyncio
import logging
import re
import sys
import threading
import traceback
from pathlib import Path

import orbax.checkpoint
import tensorstore

ORBAX_DIR = str(Path(orbax.checkpoint.__file__).resolve().parent)
LIBRARY_DIRS = (ORBAX_DIR, str(Path(tensorstore.__file__).resolve().parent))
ASYNCIO_DIR = str(Path(asyncio.__file__).resolve().parent)
TENSORSTORE_ERROR = re.compile(r"[A-Z][A-Z_]+: ")  # tensorstore's messages start with an absl status code
CAPTURED = logging.getLogger("cytoself_jax.orbax")
_installed = False


def _closed_loop(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


def _under(filename: str, folders: tuple[str, ...]) -> bool:
    """Whether a source file lies in one of the (resolved) folders."""
    return str(Path(filename).resolve()).startswith(folders)


class _OrbaxRecords(logging.Filter):
    """Keeps orbax's records off the absl logger's handlers, passing their message on at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _under(record.pathname, (ORBAX_DIR,)):
            return True
        if CAPTURED.isEnabledFor(logging.DEBUG):
            CAPTURED.debug("%s: %s", logging.getLevelName(record.levelno), record.getMessage())
        return False


class _OrbaxTasks(logging.Filter):
    """Keeps asyncio's reports of exceptions raised in orbax's or tensorstore's code off the console, passing their
    first line on at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        frames = traceback.extract_tb(exc.__traceback__) if exc is not None else []
        in_library = any(_under(f.filename, LIBRARY_DIRS) for f in frames)
        # a tensorstore future wrapped in a task (asyncio.ensure_future) fails in C code: asyncio's frames only
        awaited_future = bool(frames) and all(_under(f.filename, (ASYNCIO_DIR,)) for f in frames) \
            and TENSORSTORE_ERROR.match(str(exc)) is not None
        if not (in_library or awaited_future):
            return True
        if CAPTURED.isEnabledFor(logging.DEBUG):
            CAPTURED.debug("asyncio: %s: %s", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return False


def capture_library_reports() -> None:
    """Install the capture (once per process; see module doc)."""
    global _installed
    if _installed:
        return
    _installed = True
    logging.getLogger("absl").addFilter(_OrbaxRecords())
    logging.getLogger("asyncio").addFilter(_OrbaxTasks())
    unraisable, excepthook, thread_hook = sys.unraisablehook, sys.excepthook, threading.excepthook

    def on_unraisable(report) -> None:
        if not _closed_loop(report.exc_value):
            unraisable(report)

    def on_exception(kind, value, tb) -> None:
        if not _closed_loop(value):
            excepthook(kind, value, tb)

    def on_thread_exception(args) -> None:
        if not _closed_loop(args.exc_value):
            thread_hook(args)

    sys.unraisablehook, sys.excepthook, threading.excepthook = on_unraisable, on_exception, on_thread_exception
