"""What every service shares: stopping on SIGTERM/SIGINT after the batch in hand, gathering requests into
micro-batches and predicting them, retry backoff, timing."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NoReturn, TypeVar

from optik.results import ImageFailure
from optik.signals import handling_stop_signals

log = logging.getLogger("optik.services")


def stopped_during_start_up(signum: int) -> NoReturn:
    """SIGTERM or SIGINT while the service starts (loading, compiling): nothing is served or written yet, so
    the process ends at once with exit code 0, saying so.

    Not by raising an exception from the handler: it would land wherever the main thread is, inside
    torch's imports or inductor's compilation, which can abort the process or leave compile workers
    that keep it alive for minutes.
    """
    log.info("%s during start-up: stopped before serving anything", signal.Signals(signum).name)
    logging.shutdown()  # the log line is out before the process goes
    sys.stdout.flush()
    os._exit(0)


class Stop:
    """A flag that SIGTERM and SIGINT raise; the service finishes the batch in hand, then returns.

    While `starting` (until `started()`), a signal ends the process at once instead (`stopped_during_start_up`): there is
    nothing in hand to finish, and loading or compiling a model can take longer than a platform
    waits after SIGTERM. `wait(seconds)` sleeps, but wakes as soon as a stop is asked for.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.starting = True

    def started(self) -> None:
        self.starting = False

    def __bool__(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(max(0.0, seconds))

    @contextmanager
    def on_signals(self) -> Iterator[Stop]:
        """Install the SIGTERM/SIGINT handlers for the duration (main thread only)."""

        def handler(signum, frame):
            if self.starting:
                stopped_during_start_up(signum)
            if self:
                log.warning("second %s: stopping now", signal.Signals(signum).name)
                raise KeyboardInterrupt
            log.info("%s: finishing the batch in hand, then stopping", signal.Signals(signum).name)
            self.set()

        with handling_stop_signals(handler):
            yield self


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
        rate = self.done / max(seconds, 1e-9)  # over the uptime, idle time included: /metrics has the latencies
        return f"{self.done} predicted, {self.failed} failed in {seconds:.1f} s of uptime ({rate:.1f} images/s, idle time included)"


class ModelFailure(ImageFailure):
    """The model raised on this image (not the image's fault): a stream entry is retried, then dead-lettered."""


class Behind:
    """Runs a service's answering (writing outputs, publishing replies, acknowledging) in a thread of its
    own while the caller predicts the next batch: one job at a time, in order. `submit` first waits for the
    job before it, so a job's error comes out there (or at `wait`), and nothing runs two batches behind.

    On two cores this gives the model the core the writing would have kept idle: about 5% more images/s
    for a 1000-class classifier, whose replies cost ~1.5 ms an image in Python.
    """

    def __init__(self, name: str):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._pending: Future | None = None

    def submit(self, job: Callable, *args) -> None:
        self.wait()
        self._pending = self._pool.submit(job, *args)

    def wait(self) -> None:
        """Until the job in hand is done; its error, if any, is raised here."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    @contextmanager
    def draining(self) -> Iterator[Behind]:
        """The last job is finished on the way out; when the caller is already failing, that error wins
        and the job's own is logged."""
        try:
            yield self
        except BaseException:
            try:
                self.wait()
            except Exception as exc:  # noqa: BLE001 - the caller's error is the one to report
                log.warning("answering the last batch failed too (%s: %s)", type(exc).__name__, exc)
            raise
        self.wait()


def predict_batches(predictor, sources: Sequence, names: Sequence[str]) -> Iterator[list]:
    """Results of `sources` in batches of the predictor's batch size: the one loop every service runs.

    The next batch decodes while this one runs. When the model raises on a batch, its images are
    tried one at a time, so one bad input cannot fail its neighbours; an image on which the model
    still raises gets a `ModelFailure`, and the service goes on.
    """
    size, start = predictor.batch_size, 0
    while start < len(sources):
        batch: list = []
        stream = predictor.predict_stream(sources[start:], names[start:])
        try:
            for result in stream:
                batch.append(result)
                if len(batch) == size or start + len(batch) == len(sources):
                    yield batch
                    start, batch = start + len(batch), []
            return
        except Exception as exc:  # noqa: BLE001 - a service outlives a failing forward pass
            log.warning(
                "prediction failed for a batch (%s: %s); trying its images one at a time", type(exc).__name__, exc
            )
        finally:
            stream.close()
        end = min(start + size, len(sources))
        batch += [
            _predict_one(predictor, source, name)
            for source, name in zip(sources[start + len(batch) : end], names[start + len(batch) : end])
        ]
        yield batch
        start = end


def _predict_one(predictor, source, name: str):
    try:
        return predictor.predict([source], names=[name])[0]
    except Exception as exc:  # noqa: BLE001
        log.exception("prediction failed for %s", name)
        return ModelFailure(name, f"prediction failed ({type(exc).__name__}: {exc})")


class RequestFailure(ImageFailure):
    """The request carries no image to decode (no `image` field, not base64, not JSON): the sender's mistake."""


@dataclass
class Request:
    """One image to predict, as it came in (a Redis message or entry, or part of an HTTP request).

    `error` says why it cannot be predicted before decoding; `envelope` is True when it came as
    `{"id": ..., "image": base64}`, whose reply carries the id; `received` is its arrival (monotonic s).
    """

    image: bytes | None
    id: object = None
    error: str | None = None
    envelope: bool = False
    received: float = field(default_factory=time.monotonic)


JSON_KINDS = {bool: "true or false", int: "a number", float: "a number", list: "a list", dict: "an object"}
UNNAMED = "unnamed"  # a detection's id (OPEX) or file (ROI CSV) when its request gave no id


def envelope_request(envelope: object) -> Request:
    """The request of a JSON envelope `{"id": ..., "image": base64}` (Redis pub/sub, HTTP)."""
    if not isinstance(envelope, dict):
        return Request(None, error='a JSON message must be an object {"id": ..., "image": base64}', envelope=True)
    request = Request(None, envelope.get("id"), envelope=True)
    image = envelope.get("image")
    if not isinstance(image, str):
        request.error = (
            'the JSON envelope has no "image" field (base64 of the encoded image)'
            if image is None
            else f'the envelope\'s "image" is {JSON_KINDS.get(type(image), type(image).__name__)}, not a base64 string'
        )
        return request
    try:
        request.image = base64.b64decode(envelope["image"], validate=True)
    except (binascii.Error, ValueError):
        request.error = 'the envelope\'s "image" is not valid base64'
    return request


def predict_requests(predictor, requests: list[Request]) -> list:
    """A result per request (a `RequestFailure` for those that carry no image), in micro-batches."""
    todo = [r for r in requests if r.error is None]
    names = [str(r.id) if r.id is not None else UNNAMED for r in todo]
    predicted = iter(
        [result for batch in predict_batches(predictor, [r.image for r in todo], names) for result in batch]
    )
    return [next(predicted) if r.error is None else RequestFailure(str(r.id), r.error) for r in requests]


Item = TypeVar("Item")


def gather(take: Callable[[float], Item | None], size: int, max_wait: float, first_wait: float = 1.0) -> list[Item]:
    """A micro-batch: the first item `take(timeout)` gives within `first_wait` s, then up to `size` in all
    of what else it gives within `max_wait` s of the first (none: an empty list)."""
    first = take(first_wait)
    if first is None:
        return []
    batch, deadline = [first], time.monotonic() + max_wait
    while len(batch) < size:
        item = take(max(0.0, deadline - time.monotonic()))
        if item is not None:
            batch.append(item)
        elif time.monotonic() >= deadline:
            break
    return batch
