"""SIGTERM as an exception, so that a command unwinds (``finally`` blocks run) when stopped."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def raise_on_sigterm(exception: type[BaseException]) -> Iterator[None]:
    """While the block runs, SIGTERM raises ``exception`` in the main thread (elsewhere: no-op,
    signal handlers belong to the main thread); the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise exception

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
