"""The services' Prometheus metrics, one set of names for the file drop, Redis and HTTP, and the small side
server that answers `/healthz`, `/readyz` and `/metrics` for the file drop and Redis services.

The side server is the standard library's `http.server` in a thread rather than prometheus-client's
`start_http_server`, which answers every path with the metrics and has no readiness answer.
"""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from optik.errors import ConfigError
from optik.services.loop import ModelFailure, RequestFailure, log

# Error reasons, a fixed set so that the label's values stay few: the text of each error is in the log.
REASONS = ("request", "decode", "model", "too_large")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def reason_of(result) -> str:
    """The `reason` label of a failed result: the request carried no image, the image cannot be decoded, or the model raised."""
    if isinstance(result, ModelFailure):
        return "model"
    return "request" if isinstance(result, RequestFailure) else "decode"


def file_version(path: Path) -> str:
    """The first 8 hex digits of the file's sha256: the name `optik publish` appends, so a model is known by it."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:8]


class ServiceMetrics:
    """What a service counts, in its own registry (a test can run several services in one process).

    Metric names (all services):
        optik_images_predicted_total: images answered with a prediction.
        optik_image_errors_total{reason}: images answered with an error, by `REASONS`.
        optik_image_latency_seconds: from an image's arrival (HTTP request read, Redis message or entry
            read, file taken from the folder) to its answer written.
        optik_batch_size: images per micro-batch handed to the model.
        optik_queue_depth: images waiting: files in the drop folder, entries of the input stream not yet
            read by the group (its lag), pub/sub messages taken but not yet answered, HTTP images waiting
            for the model.
        optik_ready: 1 once the model is loaded and warmed, 0 before and while stopping.
        optik_model_info{service, model, task, version, optik}: the model served (version: `file_version`).
    HTTP adds optik_request_latency_seconds{code} (per request, which may hold several images).
    """

    def __init__(self, service: str):
        self.service = service
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.predicted = Counter("optik_images_predicted", "Images answered with a prediction", registry=self.registry)
        self.errors = Counter(
            "optik_image_errors", "Images answered with an error, by reason", ["reason"], registry=self.registry
        )
        for reason in REASONS:
            self.errors.labels(reason)
        self.latency = Histogram(
            "optik_image_latency_seconds",
            "Seconds from an image's arrival to its answer",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "optik_batch_size",
            "Images per micro-batch handed to the model",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge("optik_queue_depth", "Images waiting to be predicted", registry=self.registry)
        self.ready_gauge = Gauge("optik_ready", "1 once the model is loaded and warmed", registry=self.registry)
        self.model_info = Info("optik_model", "The model this service serves", registry=self.registry)
        self.ready = False

    def set_model(self, model: Path, task: str) -> None:
        try:
            optik_version = version("optik")
        except PackageNotFoundError:
            optik_version = "unknown"
        self.model_info.info(
            {
                "service": self.service,
                "model": Path(model).name,
                "task": task,
                "version": file_version(Path(model)),
                "optik": optik_version,
            }
        )

    def set_ready(self, ready: bool) -> None:
        self.ready = ready
        self.ready_gauge.set(int(ready))

    def count(self, results: list, received: list[float] | float, now: float) -> None:
        """Count answered results by outcome, and each one's latency from its `received` time (monotonic s)."""
        arrivals = received if isinstance(received, list) else [received] * len(results)
        for result, arrival in zip(results, arrivals):
            if result.ok:
                self.predicted.inc()
            else:
                self.errors.labels(reason_of(result)).inc()
            self.latency.observe(max(0.0, now - arrival))

    def text(self) -> bytes:
        """The metrics in Prometheus text format."""
        return generate_latest(self.registry)


class HealthServer:
    """`/healthz` (alive), `/readyz` (model loaded and warmed) and `/metrics` on a port, served by a thread."""

    def __init__(self, metrics: ServiceMetrics, host: str, port: int):
        self.metrics = metrics
        handler = _handler(metrics)
        try:
            self.server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {host}:{port} ({exc.strerror}); pick another --metrics-port"
            ) from None
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="optik-metrics", daemon=True)

    def __enter__(self) -> HealthServer:
        self.thread.start()
        host, port = self.server.server_address[:2]
        log.info("health and metrics on http://%s:%d (/healthz, /readyz, /metrics)", host, port)
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(metrics: ServiceMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._answer(200, metrics.text(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._answer(200, b"ok\n")
            elif path == "/readyz" and metrics.ready:
                self._answer(200, b"ready\n")
            elif path == "/readyz":
                self._answer(503, b"not ready\n")
            else:
                self._answer(404, b"not found: try /healthz, /readyz or /metrics\n")

        def _answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args) -> None:  # noqa: A002 - probes every few seconds would flood the log
            pass

    return Handler
