"""Redis services: pub/sub (what the old images and `simple-redis-helper` speak) and streams (nothing lost).

Pub/sub: a message on the input channel (pattern) is raw image bytes, or a JSON envelope
`{"id": ..., "image": base64}`; the reply on the output channel is the prediction JSON (raw
input) or `{"id": ..., "result": ...}` (envelope); a failure replies `{"error": ..., "id": ...}`.
Pub/sub forgets messages published while no worker listens.

Streams: workers in a consumer group share the input stream; an entry (`image`, optional `id`)
is acknowledged in the same transaction that adds its result (`id` plus `result` or `error`) to
the output stream. Entries of a worker that died are claimed by the others after `claim_idle_ms`;
one delivered `max_attempts` times without success, or one that cannot be decoded, goes to
`<input>:dead`. Delivery is at least once: a worker that stalls past `claim_idle_ms` and then
finishes adds a second result with the same `id`, so clients keep the first result per `id`.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from optik.errors import ConfigError, OptikError
from optik.services.loop import Backoff, Rate, Stop, log

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


@dataclass
class RedisOptions:
    """How to reach the Redis server."""

    host: str = "localhost"
    port: int = 6379
    db: int = 0
    password: str | None = None
    username: str | None = None
    ssl: bool = False
    ssl_ca_certs: str | None = None

    def client(self) -> redis.Redis:
        return redis.Redis(
            host=self.host, port=self.port, db=self.db, username=self.username, password=self.password,
            ssl=self.ssl, ssl_ca_certs=self.ssl_ca_certs, socket_connect_timeout=5, socket_timeout=30,
            socket_keepalive=True, health_check_interval=15, protocol=2,
            retry=Retry(NoBackoff(), 0),  # the services reconnect themselves (logged, with backoff, forever)
        )

    def where(self) -> str:
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.db}"


def check_auth(options: RedisOptions) -> None:
    """Fail fast, with a clear message, when the server refuses our credentials."""
    client = options.client()
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        if not isinstance(exc, redis.AuthenticationError) and not any(code in str(exc) for code in ("NOAUTH", "WRONGPASS")):
            raise
        if options.password is None:
            raise ConfigError(f"Redis at {options.where()} needs a password ({exc}); give --redis-password-env VAR or --redis-password") from None
        raise ConfigError(f"Redis at {options.where()} refused the login ({exc}); check --redis-password / --redis-password-env") from None
    except REDIS_ERRORS:
        log.warning("Redis at %s is not reachable yet; the service will keep trying", options.where())
    finally:
        client.close()


@dataclass
class Request:
    """One image to predict, as it came in."""

    image: bytes | None
    id: object = None
    error: str | None = None
    envelope: bool = False


def parse_message(data: bytes) -> Request:
    """Raw encoded image bytes, or a JSON envelope `{"id": ..., "image": base64}`."""
    if not data.lstrip()[:1] == b"{":
        return Request(data)
    try:
        envelope = json.loads(data)
    except ValueError:
        return Request(None, error="message is neither image bytes nor a JSON envelope {\"id\": ..., \"image\": base64}")
    if not isinstance(envelope, dict):
        return Request(None, error="a JSON message must be an object {\"id\": ..., \"image\": base64}")
    request = Request(None, envelope.get("id"), envelope=True)
    if not isinstance(envelope.get("image"), str):
        request.error = "the JSON envelope has no \"image\" field (base64 of the encoded image)"
        return request
    try:
        request.image = base64.b64decode(envelope["image"], validate=True)
    except (binascii.Error, ValueError):
        request.error = "the envelope's \"image\" is not valid base64"
    return request


def predict_requests(predictor, requests: list[Request]) -> list[tuple[object, str | None]]:
    """(result, error) per request, in one micro-batch forward pass for those that are images."""
    todo = [r for r in requests if r.error is None]
    names = [str(r.id) if r.id is not None else "message" for r in todo]
    predicted = iter(predictor.predict([r.image for r in todo], names=names))
    answers = []
    for request in requests:
        if request.error is not None:
            answers.append((None, request.error))
            continue
        result = next(predicted)
        answers.append((result, None) if result.ok else (None, result.reason))
    return answers


class RedisService:
    """Reconnect with backoff around a serving loop; subclasses implement `serve(client)`."""

    def __init__(self, predictor, output, options: RedisOptions, stop: Stop | None = None):
        self.predictor, self.output, self.options = predictor, output, options
        self.stop = stop if stop is not None else Stop()
        self.rate = Rate()
        self.backoff = Backoff()

    def run(self) -> Rate:
        while not self.stop:
            client = self.options.client()
            try:
                self.serve(client)
            except REDIS_ERRORS as exc:
                delay = self.backoff.next()
                log.warning("Redis at %s unavailable (%s); reconnecting in %.1f s", self.options.where(), str(exc).splitlines()[0], delay)
                self.stop.wait(delay)
            finally:
                client.close()
        log.info("redis: %s", self.rate.summary())
        return self.rate

    def serve(self, client: redis.Redis) -> None:
        raise NotImplementedError

    def _count(self, answers) -> None:
        failed = sum(error is not None for _, error in answers)
        self.rate.add(len(answers) - failed, failed)
        log.debug("%d answered, %d failed (%s)", len(answers) - failed, failed, self.rate.summary())


class PubSubService(RedisService):
    """Pattern-subscribes to `channel_in`, publishes each prediction to `channel_out`."""

    def __init__(self, predictor, output, options: RedisOptions, channel_in: str, channel_out: str, max_wait_ms: float = 10, stop: Stop | None = None):
        super().__init__(predictor, output, options, stop)
        self.channel_in, self.channel_out, self.max_wait = channel_in, channel_out, max_wait_ms / 1000

    def serve(self, client: redis.Redis) -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.psubscribe(self.channel_in)
            log.info("listening on %s channel %r, replying on %r", self.options.where(), self.channel_in, self.channel_out)
            self.backoff.reset()
            while not self.stop:
                messages = self._collect(pubsub)
                if messages:
                    self._answer(client, [parse_message(data) for data in messages])
        finally:
            pubsub.close()

    def _collect(self, pubsub) -> list[bytes]:
        """Up to a batch of messages: the first one, then what else arrives within `max_wait`."""
        first = pubsub.get_message(timeout=1.0)
        if first is None:
            return []
        batch, deadline = [first["data"]], time.monotonic() + self.max_wait
        while len(batch) < self.predictor.batch_size:
            message = pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
            if message is not None:
                batch.append(message["data"])
            elif time.monotonic() >= deadline:
                break
        return batch

    def _answer(self, client: redis.Redis, requests: list[Request]) -> None:
        answers = predict_requests(self.predictor, requests)
        pipe = client.pipeline(transaction=False)
        for request, (result, error) in zip(requests, answers):
            if error is not None:
                log.warning("cannot predict message %s: %s", request.id if request.id is not None else "(raw bytes)", error)
                reply = {"error": error, "id": request.id}
            else:
                payload = self.output.payload(result)
                reply = {"id": request.id, "result": payload} if request.envelope else payload
            pipe.publish(self.channel_out, json.dumps(reply))
        pipe.execute()
        self._count(answers)


@dataclass
class StreamOptions:
    """Streams, consumer group and retry rules of the stream mode."""

    stream_in: str
    stream_out: str
    group: str = "optik"
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    claim_idle_ms: int = 30000
    max_attempts: int = 3
    max_wait_ms: float = 10
    maxlen: int | None = None

    @property
    def dead(self) -> str:
        return f"{self.stream_in}:dead"


class StreamService(RedisService):
    """One worker of a consumer group; see the module docstring for the delivery rules."""

    def __init__(self, predictor, output, options: RedisOptions, streams: StreamOptions, stop: Stop | None = None):
        super().__init__(predictor, output, options, stop)
        if streams.max_attempts < 1 or streams.claim_idle_ms < 1:
            raise ConfigError("--max-attempts and --claim-idle-ms must be at least 1")
        self.streams = streams
        self.next_claim = 0.0

    def serve(self, client: redis.Redis) -> None:
        s = self.streams
        try:
            client.xgroup_create(s.stream_in, s.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        log.info("worker %r of group %r on %s: %r -> %r", s.consumer, s.group, self.options.where(), s.stream_in, s.stream_out)
        self.backoff.reset()
        self._recover_own(client)
        while not self.stop:
            if time.monotonic() >= self.next_claim:
                self._claim_stale(client)
                self.next_claim = time.monotonic() + s.claim_idle_ms / 2000
            entries = self._read(client)
            if entries:
                self._handle(client, entries)

    def _read(self, client: redis.Redis) -> list:
        """Up to a batch of new entries: what is there within 1 s, then what else arrives within `max_wait_ms`."""
        s, size = self.streams, self.predictor.batch_size
        entries = _entries(client.xreadgroup(s.group, s.consumer, {s.stream_in: ">"}, count=size, block=1000))
        deadline = time.monotonic() + s.max_wait_ms / 1000
        while entries and len(entries) < size:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms < 1:  # BLOCK 0 would wait forever
                break
            more = _entries(client.xreadgroup(s.group, s.consumer, {s.stream_in: ">"}, count=size - len(entries), block=remaining_ms))
            if not more:
                break
            entries += more
        return entries

    def _recover_own(self, client: redis.Redis) -> None:
        """Entries delivered to this consumer name before a restart, not yet acknowledged."""
        s = self.streams
        while not self.stop:
            entries = _entries(client.xreadgroup(s.group, s.consumer, {s.stream_in: "0"}, count=self.predictor.batch_size))
            if not entries:
                return
            log.info("%d unacknowledged entr%s of this worker from before; answering", len(entries), "y" if len(entries) == 1 else "ies")
            if not self._handle(client, entries):
                return  # they stay pending; the claim of stale entries retries them

    def _claim_stale(self, client: redis.Redis) -> None:
        """Take over entries idle for `claim_idle_ms` (their worker died); dead-letter those tried too often."""
        s = self.streams
        while not self.stop:
            pending = client.xpending_range(s.stream_in, s.group, "-", "+", count=self.predictor.batch_size, idle=s.claim_idle_ms)
            if not pending:
                return
            attempts = {p["message_id"]: p["times_delivered"] for p in pending}
            claimed = client.xclaim(s.stream_in, s.group, s.consumer, s.claim_idle_ms, list(attempts))
            if not claimed:
                return
            retry = [(i, f) for i, f in claimed if attempts.get(i, 0) < s.max_attempts]
            dead = [(i, f) for i, f in claimed if attempts.get(i, 0) >= s.max_attempts]
            log.info("claimed %d stale entr%s of stopped workers", len(claimed), "y" if len(claimed) == 1 else "ies")
            if dead:
                self._finish(client, dead, [(None, f"failed {attempts[i]} times (worker crashed or prediction raised)") for i, _ in dead], attempts)
            if retry:
                self._handle(client, retry)

    def _handle(self, client: redis.Redis, entries: list) -> bool:
        """Predict and answer entries; False (entries left pending) when the prediction itself raised."""
        requests = [self._request(entry_id, fields) for entry_id, fields in entries]
        try:
            answers = predict_requests(self.predictor, requests)
        except Exception:  # not the image's fault: leave the entries pending; they are retried, then dead-lettered
            log.exception("prediction failed for %d entries; they stay pending and are retried after %d ms", len(entries), self.streams.claim_idle_ms)
            return False
        self._finish(client, entries, answers)
        return True

    def _request(self, entry_id: bytes, fields: dict | None) -> Request:
        fields = fields or {}
        given = fields.get(b"id")
        request = Request(fields.get(b"image"), given.decode(errors="replace") if given is not None else entry_id.decode())
        if not request.image:
            request.error = "the entry has no \"image\" field (the encoded image bytes)"
        return request

    def _finish(self, client: redis.Redis, entries: list, answers: list, attempts: dict | None = None) -> None:
        """Add each result (and dead letters) to the output stream and acknowledge, in one transaction."""
        s = self.streams
        pipe = client.pipeline(transaction=True)
        trim = {"maxlen": s.maxlen, "approximate": True} if s.maxlen else {}
        for (entry_id, fields), (result, error) in zip(entries, answers):
            request_id = self._request(entry_id, fields).id
            if error is None:
                pipe.xadd(s.stream_out, {"id": request_id, "result": json.dumps(self.output.payload(result))}, **trim)
                continue
            log.warning("entry %s (id %s) goes to %s: %s", entry_id.decode(), request_id, s.dead, error)
            pipe.xadd(s.stream_out, {"id": request_id, "error": error}, **trim)
            tries = (attempts or {}).get(entry_id, 1)
            pipe.xadd(s.dead, {**(fields or {}), "id": request_id, "entry": entry_id, "error": error, "attempts": tries, "consumer": s.consumer})
        pipe.xack(s.stream_in, s.group, *[entry_id for entry_id, _ in entries])
        pipe.execute()
        self._count(answers)


def _entries(response) -> list:
    """The (id, fields) entries of an XREAD/XREADGROUP reply for one stream."""
    if not response:
        return []
    if isinstance(response, dict):
        return list(next(iter(response.values()))[0] if response else [])
    return list(response[0][1])


# ----------------------------------------------------------------------------- client


def send_images(options: RedisOptions, paths: list[Path], channel_in: str, channel_out: str, mode: str = "pubsub", raw: bool = False, timeout: float = 30.0) -> Iterator[dict]:
    """Send images to a running service and yield its replies as they come (for trying a service).

    Raises OptikError when nobody listens (pub/sub) or replies are missing after `timeout` seconds.
    """
    client = options.client()
    try:
        client.ping()
    except REDIS_ERRORS as exc:
        raise OptikError(f"cannot reach Redis at {options.where()}: {str(exc).splitlines()[0]}") from None
    try:
        if mode == "pubsub":
            yield from _send_pubsub(client, paths, channel_in, channel_out, raw, timeout)
        else:
            yield from _send_stream(client, paths, channel_in, channel_out, timeout)
    finally:
        client.close()


def _send_pubsub(client, paths, channel_in, channel_out, raw, timeout) -> Iterator[dict]:
    pubsub = client.pubsub()
    pubsub.subscribe(channel_out)
    while (message := pubsub.get_message(timeout=5)) is None or message["type"] != "subscribe":
        pass  # replies may only be published once our subscription is in place
    for path in paths:
        data = path.read_bytes()
        payload = data if raw else json.dumps({"id": str(path), "image": base64.b64encode(data).decode()})
        if client.publish(channel_in, payload) == 0:
            raise OptikError(f"nobody listens on channel {channel_in!r}; start `optik serve redis MODEL --redis-in {channel_in} --redis-out {channel_out}` first")
    yield from _gather(lambda wait: _pubsub_replies(pubsub, wait), len(paths), timeout)
    pubsub.close()


def _pubsub_replies(pubsub, wait: float) -> list[dict]:
    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
    return [json.loads(message["data"])] if message is not None else []


def _send_stream(client, paths, stream_in, stream_out, timeout) -> Iterator[dict]:
    try:
        last = client.xinfo_stream(stream_out)["last-generated-id"]
    except redis.ResponseError:  # no such stream yet
        last = b"0-0"
    wanted = set()
    for path in paths:
        client.xadd(stream_in, {"image": path.read_bytes(), "id": str(path)})
        wanted.add(str(path))
    position = {"last": last}

    def replies(wait: float) -> list[dict]:
        found = []
        for entry_id, fields in _entries(client.xread({stream_out: position["last"]}, count=100, block=max(1, int(wait * 1000)))):
            position["last"] = entry_id
            reply = {k.decode(): v.decode(errors="replace") for k, v in fields.items()}
            if reply.get("id") in wanted:
                wanted.discard(reply["id"])  # at-least-once: keep the first result per id
                if "result" in reply:
                    reply["result"] = json.loads(reply["result"])
                found.append(reply)
        return found

    yield from _gather(replies, len(paths), timeout)


def _gather(poll, expected: int, timeout: float) -> Iterator[dict]:
    deadline, received = time.monotonic() + timeout, 0
    while received < expected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise OptikError(f"{expected - received} of {expected} image(s) got no reply within {timeout:g} s; is `optik serve redis` running with these channels?")
        for reply in poll(min(remaining, 1.0)):
            received += 1
            yield reply
