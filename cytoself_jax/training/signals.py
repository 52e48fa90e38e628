"""Stopping a run cleanly: SIGTERM (how clusters preempt jobs) raised like Ctrl-C, both held back while a
checkpoint is being written, so that the save always completes, and SIGTERM deferred to the training loop's next
step boundary, where the loop saves a checkpoint before acting on it."""

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


def _deliver(signum: int, handler) -> None:
    """Act on a signal that was held back as `handler` (the handler in place before) would have."""
    if callable(handler):
        handler(signum, None)  # raises KeyboardInterrupt or Terminated
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signum)


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
        _deliver(received[0], previous[received[0]])


class DeferredSigterm:
    """Context manager under which SIGTERM only sets `received`: the training loop looks at it at each step
    boundary, saves a checkpoint and calls act(), which then does what SIGTERM did before the block (train.py:
    raise Terminated; the default: end the process). A SIGTERM not acted on inside is acted on as the block ends
    without an exception. Ignored SIGTERM stays ignored; outside the main thread nothing is deferred."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self) -> "DeferredSigterm":
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)
            if previous not in (signal.SIG_IGN, None):
                self._previous = previous
                signal.signal(signal.SIGTERM, self._record)
        return self

    def _record(self, signum, frame) -> None:
        self.received = True

    def act(self) -> None:
        """If SIGTERM came: restore the handler from before the block and act on the signal with it."""
        if self.received and self._previous is not None:
            previous, self._previous = self._previous, None
            signal.signal(signal.SIGTERM, previous)
            _deliver(signal.SIGTERM, previous)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.act()
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
