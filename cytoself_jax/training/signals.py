"""Stopping a run cleanly: SIGTERM (how clusters preempt jobs) raised like Ctrl-C, and both held back while a
checkpoint is being written, so that the save always completes."""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt (a BaseException, so that no `except
    Exception` swallows it)."""


def raise_terminated(signum, frame) -> None:
    """A SIGTERM handler: raise Terminated (install with signal.signal(signal.SIGTERM, raise_terminated))."""
    raise Terminated()


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are recorded instead of acted on; the first one is then raised
    (KeyboardInterrupt, or Terminated where SIGTERM raises it) as the block ends. Only the main thread can
    handle signals: elsewhere the block runs unguarded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        handler = previous[received[0]]
        if callable(handler):
            handler(received[0], None)  # the handler in place before: raises KeyboardInterrupt or Terminated
        elif handler == signal.SIG_DFL:
            signal.raise_signal(received[0])
