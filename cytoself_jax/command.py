"""How every command but training ends when it cannot finish (eval, embed, prepare, import_crops, make_synthetic):
one line on stderr, never a traceback.

- A write that failed (a full disk, no permission, a read-only disk: OSError): 'error: PATH: REASON; WHAT WAS
  KEPT', exit status 1.
- Ctrl-C: 'interrupted: WHAT WAS KEPT', status 130; SIGTERM (how clusters stop jobs): 'terminated (SIGTERM): WHAT
  WAS KEPT', status 143. Output being written is removed first (staging.py), so nothing half-written remains.

What was kept comes from the innermost writer (the exception's `kept`, staging.note_kept), else from the command.
"""
from __future__ import annotations

import signal
import sys
from typing import Callable

from cytoself_jax.staging import WriteFailed, os_reason, remove_unfinished
from cytoself_jax.training.signals import Terminated, raise_terminated

EXIT_FAILED, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 128 + signal.SIGINT, 128 + signal.SIGTERM


def _line(err: BaseException, kept: str, note: str) -> str:
    """What the last line says after its prefix: for a failed write 'PATH: REASON', then what was kept (the
    exception's own record, else the command's `kept`) and the command's `note`."""
    own = getattr(err, "kept", None)
    if isinstance(err, WriteFailed):
        head = [str(err)]  # already 'PATH: REASON; WHAT WAS KEPT'
    elif isinstance(err, OSError):
        head = [f"{err.filename}: {os_reason(err)}" if err.filename else os_reason(err), own or kept]
    else:
        head = [own or kept]
    return "; ".join(part for part in (*head, note) if part)


def _guarded(body: Callable[[], int]) -> int:
    """body() with SIGTERM raised as Terminated; this process's unfinished staging folders removed if it fails."""
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return body()
    except BaseException:
        remove_unfinished()  # whatever instant the failure or the signal arrived at: no partial output remains
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(body: Callable[[], int], kept: Callable[[], str], note: Callable[[], str] = lambda: "") -> int:
    """Run a command's `body` (returning its exit status) with SIGTERM raised as Terminated, and end a failed
    write, Ctrl-C or SIGTERM in one line on stderr (see module doc). `kept()` says what the command keeps when the
    exception does not; `note()`, when not empty, is added to every such line (e.g. how to resume)."""
    try:
        return _guarded(body)
    except OSError as err:
        print(f"error: {_line(err, kept(), note())}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt as err:
        print(f"interrupted: {_line(err, kept(), note())}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated as err:
        print(f"terminated (SIGTERM): {_line(err, kept(), note())}", file=sys.stderr)
        return EXIT_TERMINATED
