"""What both services share: stopping on SIGTERM/SIGINT after the batch in hand, retry backoff, timing."""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from typing import Iterator

log = logging.getLogger("optik.services")


class Stop:
    """A flag that SIGTERM and SIGINT raise; the service finishes the batch in hand, then returns.

    `wait(seconds)` sleeps, but wakes as soon as a stop is asked for.
    """

    def __init__(self) -> None:
        self._event = threading.Event()

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(max(0.0, seconds))

    @contextmanager
    def on_signals(self) -> Iterator["Stop"]:
        """Install the SIGTERM/SIGINT handlers for the duration (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return

        def handler(signum, frame):
            if self:
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                raise KeyboardInterrupt
            log.info("%s: finishing the batch in hand, then stopping", signal.Signals(signum).name)
            self.set()

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class Backoff:
    """Delays for reconnecting: 0.1 s doubling up to `limit`, back to the start after a success."""

    def __init__(self, start: float = 0.1, limit: float = 5.0) -> None:
        self.start, self.limit, self.delay = start, limit, start

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.limit, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.start


class Rate:
    """Counts images and reports throughput in the service log."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.done = self.failed = 0

    def add(self, done: int, failed: int) -> None:
        self.done += done
        self.failed += failed

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        return f"{self.done} predicted, {self.failed} failed in {seconds:.1f} s ({self.done / max(seconds, 1e-9):.1f} images/s)"
