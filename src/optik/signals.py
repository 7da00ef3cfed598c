"""The one way optik installs its SIGINT/SIGTERM handlers: for a block, in the main thread, restored after."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def handling_stop_signals(handler: Callable[[int, object], None]) -> Iterator[None]:
    """`handler(signum, frame)` for SIGINT and SIGTERM inside the block, the previous handlers back after it.

    Outside the main thread (which alone may set handlers: a service or training run from a thread
    of a caller's program) the block runs with the caller's handlers, untouched.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
