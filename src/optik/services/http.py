"""The HTTP service: `POST /predict` (image bytes, multipart files, or JSON envelopes), `/healthz`, `/readyz`,
`/metrics` and the OpenAPI page `/docs`, on FastAPI and uvicorn.

Requests from all clients go into one queue of images; the service's loop gathers them into
micro-batches and predicts them (`gather` and `predict_requests`, the loop of the Redis services) and
each request is answered once its images are done. Uvicorn runs in a thread, so SIGTERM reaches the
service's `Stop` in the main thread: uvicorn stops accepting, the loop answers every request already
taken, then the service returns.
"""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request as HttpRequest

from optik.errors import ConfigError
from optik.services.loop import (
    ModelFailure,
    Rate,
    Request,
    Stop,
    envelope_request,
    gather,
    log,
    predict_requests,
)
from optik.services.metrics import LATENCY_BUCKETS, ServiceMetrics

DRAIN_LIMIT = 256 << 20  # past --max-body-mb, read and drop this much more so the client reads the 413


@dataclass
class HttpOptions:
    """Where to listen and how requests are limited and batched (see `optik serve http --help`)."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_mb: float = 32
    max_wait_ms: float = 10

    @property
    def max_body(self) -> int:
        return int(self.max_body_mb * (1 << 20))


@dataclass
class Pending:
    """An image waiting for the model, and where its reply goes."""

    request: Request
    reply: Future


class BodyTooLarge(Exception):
    """The body passed --max-body-mb (args: the bytes read): answered with 413."""


class BadRequest(Exception):
    """A request that holds no image to predict (a malformed multipart body, an empty list): 400 with the message."""


class HttpService:
    """Serves a predictor over HTTP; `with service:` listens (health answers at once), `serve()` predicts.

    Args:
        options: where to listen, the body limit, the micro-batch wait.
        stop: raised by SIGTERM/SIGINT (`Stop.on_signals`).
        metrics: the service's metrics (`/metrics`), with its readiness.
    """

    def __init__(self, options: HttpOptions, stop: Stop | None = None, metrics: ServiceMetrics | None = None):
        self.options = options
        self.stop = stop if stop is not None else Stop()
        self.metrics = metrics if metrics is not None else ServiceMetrics("http")
        self.request_latency = Histogram(
            "optik_request_latency_seconds",
            "Seconds from an HTTP request's arrival to its answer, by status code",
            ["code"],
            buckets=LATENCY_BUCKETS,
            registry=self.metrics.registry,
        )
        self.predictor = self.output = None
        self.queue: queue.Queue[Pending] = queue.Queue()
        self.rate = Rate()
        self.socket = listening_socket(options.host, options.port)
        self.address = self.socket.getsockname()[:2]
        config = uvicorn.Config(
            build_app(self), log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=None
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, name="optik-http")

    def __enter__(self) -> HttpService:
        self.thread.start()
        try:
            while not self.server.started and self.thread.is_alive():
                time.sleep(0.01)
        except BaseException as exc:  # a signal while uvicorn starts: do not leave its thread running
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if not self.thread.is_alive():
            raise RuntimeError("the HTTP server stopped while starting (see the log above)")
        log.info("http on http://%s:%d: /healthz answers, /readyz says 503 until the model is ready", *self.address)
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.server.should_exit = True
        if kind is not None:  # a second signal, or a failure: do not wait for requests the loop will not answer
            self.server.force_exit = True
        self.thread.join()

    def serve(self, predictor, output) -> Rate:
        """Predict what the clients send until stopped; then answer every request already taken, and return."""
        self.predictor, self.output = predictor, output
        self.metrics.set_ready(True)
        log.info("ready: POST http://%s:%d/predict (OpenAPI page at /docs)", *self.address)
        while not self.stop:
            self.step()
        self.metrics.set_ready(False)
        self.server.should_exit = True  # stop accepting; the requests in flight still need the loop
        while self.thread.is_alive() or not self.queue.empty():
            self.step(first_wait=0.05)
        self.thread.join()
        log.info("http: %s", self.rate.summary())
        return self.rate

    def step(self, first_wait: float = 0.2) -> None:
        """One micro-batch of images from any clients: predict, reply to each."""
        pending = gather(self._take, self.predictor.batch_size, self.options.max_wait_ms / 1000, first_wait)
        if not pending:
            return
        self.metrics.queue_depth.set(self.queue.qsize())
        self.metrics.batch_size.observe(len(pending))
        try:
            results = predict_requests(self.predictor, [p.request for p in pending])
            replies = [self._reply(p.request, result) for p, result in zip(pending, results)]
        except Exception as exc:  # noqa: BLE001 - a client must get an answer, and the service go on
            log.exception("prediction failed for a batch of %d image(s)", len(pending))
            for p in pending:
                p.reply.set_exception(exc)
            return
        self.metrics.count(results, [p.request.received for p in pending], time.monotonic())
        failed = sum(not r.ok for r in results)
        self.rate.add(len(results) - failed, failed)
        for p, result, reply in zip(pending, results, replies):
            p.reply.set_result((result, reply))

    def _take(self, timeout: float) -> Pending | None:
        """The next image; None when none came, or when its client went away (its reply was cancelled)."""
        try:
            pending = self.queue.get(timeout=timeout)
        except queue.Empty:
            return None
        return pending if pending.reply.set_running_or_notify_cancel() else None

    def _reply(self, request: Request, result) -> dict:
        """The JSON of one image's answer (made in the loop's thread: OPEX polygons are work)."""
        if result.ok:
            return {"id": request.id, "result": self.output.payload(result)}
        log.warning("cannot predict image %s: %s", "(no id)" if request.id is None else request.id, result.reason)
        return {"id": request.id, "error": result.reason}

    async def predict(self, requests: list[Request]) -> list[tuple]:
        """Queue the images for the loop and wait for their (result, reply) pairs."""
        pending = [Pending(r, Future()) for r in requests]
        for p in pending:
            self.queue.put(p)
        self.metrics.queue_depth.set(self.queue.qsize())
        return [await asyncio.wrap_future(p.reply) for p in pending]


def listening_socket(host: str, port: int) -> socket.socket:
    """The bound socket, made here so that a port in use is a clear error, and `--port 0` gets a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or --host") from None
    sock.listen(2048)
    return sock


async def read_body(request: HttpRequest, limit: int) -> bytes:
    """The body, or BodyTooLarge once it passes `limit` bytes (the rest is read and dropped, up to `DRAIN_LIMIT`)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit + DRAIN_LIMIT:
            break
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise BodyTooLarge(size)
    return b"".join(chunks)


async def parse_images(request: HttpRequest, body: bytes) -> tuple[list[Request], bool]:
    """The images of a request, and whether it may hold many (a JSON list, multipart): then the answer is a list."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _multipart(request, body), True
    if kind == "application/json":
        try:
            document = json.loads(body)
        except ValueError:
            return [
                Request(None, error='the body is not JSON: send {"id": ..., "image": base64} or a list of them')
            ], False
        if isinstance(document, list):
            if not document:
                raise BadRequest('the JSON list is empty: send [{"id": ..., "image": base64}, ...]')
            return [envelope_request(item) for item in document], True
        return [envelope_request(document)], False
    # no ?id=: the reply's id is null, as for a JSON envelope without one
    name = request.query_params.get("id")
    if not body:
        return [Request(None, name, error="the body is empty: send the encoded image bytes")], False
    return [Request(body, name)], False


async def _multipart(request: HttpRequest, body: bytes) -> list[Request]:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with HttpRequest(request.scope, replay).form(max_files=10_000) as form:
            files = [(key, value) for key, value in form.multi_items() if isinstance(value, UploadFile)]
            if not files:
                raise BadRequest("the multipart body has no file part: send each image as one (curl -F image=@cat.jpg)")
            return [Request(await upload.read(), upload.filename or key) for key, upload in files]
    except HTTPException as exc:  # what Starlette makes of a malformed multipart body
        raise BadRequest(f"the multipart body cannot be read ({exc.detail})") from None


def answer(requests: list[Request], outcomes: list[tuple], many: bool) -> JSONResponse:
    """200 with the prediction(s); 400 when an image is at fault, 500 when the model raised, with `error`."""
    results = [result for result, _ in outcomes]
    replies = [reply for _, reply in outcomes]
    failed = [r for r in results if not r.ok]
    code = 200 if not failed else 500 if all(isinstance(r, ModelFailure) for r in failed) else 400
    if many:
        if not failed:
            return JSONResponse(replies)
        error = f"{len(failed)} of {len(results)} image(s) could not be predicted (first: {failed[0].reason})"
        return JSONResponse({"error": error, "results": replies}, status_code=code)
    (request,), (reply,) = requests, replies
    if failed:
        return JSONResponse({"error": reply["error"], "id": request.id}, status_code=code)
    return JSONResponse(reply if request.envelope else reply["result"])


ENVELOPE = {
    "type": "object",
    "properties": {"id": {"description": "returned with the result"}, "image": {"type": "string", "format": "byte"}},
    "required": ["image"],
}
PREDICT_BODY = {
    "description": "one encoded image (any content type but these two; `?id=NAME` names it), multipart files "
    "(one or many), or JSON `{'id': ..., 'image': base64}` (one, or a list)",
    "required": True,
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
        "application/json": {"schema": {"oneOf": [ENVELOPE, {"type": "array", "items": ENVELOPE}]}},
    },
}
PREDICT_RESPONSES = {
    200: {
        "description": "the prediction as `optik predict` writes it; `{id, result}` for an envelope; a list of them for many"
    },
    400: {
        "description": "an image cannot be decoded, or the request has no image: `{error, id}` (many: `{error, results}`)"
    },
    413: {"description": "the body is over --max-body-mb"},
    500: {"description": "the model raised on the image"},
    503: {"description": "the model is not loaded and warmed yet (see /readyz)"},
}


def build_app(service: HttpService) -> FastAPI:
    app = FastAPI(
        title="optik",
        description="Image classification and object detection with a model served by `optik serve http`.",
    )

    @app.post("/predict", openapi_extra={"requestBody": PREDICT_BODY}, responses=PREDICT_RESPONSES)
    async def predict(request: HttpRequest) -> Response:
        """Predict one image or many; every client's images share the micro-batches."""
        arrived = time.monotonic()
        response = await _predict(service, request)
        service.request_latency.labels(str(response.status_code)).observe(time.monotonic() - arrived)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: HttpRequest, exc: HTTPException) -> Response:
        """Starlette's own answers (404 no such path, 405 wrong method) in the `{"error": ...}` shape of every other."""
        hint = (
            " (POST /predict takes the images; GET /healthz, /readyz, /metrics, /docs)"
            if exc.status_code in (404, 405)
            else ""
        )
        return JSONResponse({"error": f"{exc.detail}{hint}"}, status_code=exc.status_code, headers=exc.headers)

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        """Alive: the service answers."""
        return "ok\n"

    @app.get("/readyz", response_class=PlainTextResponse, responses={503: {"description": "not ready"}})
    async def readyz() -> Response:
        """Ready: the model is loaded and warmed, and the service is not stopping."""
        if service.metrics.ready:
            return PlainTextResponse("ready\n")
        return PlainTextResponse("not ready\n", status_code=503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """The service's metrics in Prometheus text format."""
        return Response(service.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return app


async def _predict(service: HttpService, request: HttpRequest) -> Response:
    if service.predictor is None:
        return JSONResponse(
            {"error": "the model is not ready yet (loading or warming up); retry when GET /readyz answers 200"},
            status_code=503,
            headers={"Retry-After": "1"},
        )
    try:
        body = await read_body(request, service.options.max_body)
    except BodyTooLarge as exc:
        service.metrics.errors.labels("too_large").inc()
        return JSONResponse(
            {
                "error": f"the body ({exc.args[0]} bytes or more) is over --max-body-mb {service.options.max_body_mb:g}: "
                "send fewer or smaller images per request"
            },
            status_code=413,
        )
    try:
        requests, many = await parse_images(request, body)
    except BadRequest as exc:
        service.metrics.errors.labels("request").inc()
        return JSONResponse({"error": str(exc)}, status_code=400)
    return answer(requests, await service.predict(requests), many)
