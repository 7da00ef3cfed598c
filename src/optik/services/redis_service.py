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

import fnmatch
import json
import os
import socket
import time
from dataclasses import dataclass, field

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from optik.errors import ConfigError
from optik.services.loop import (
    Backoff,
    Behind,
    ModelFailure,
    Rate,
    Request,
    Stop,
    envelope_request,
    gather,
    log,
    predict_requests,
)
from optik.services.metrics import ServiceMetrics

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
            host=self.host,
            port=self.port,
            db=self.db,
            username=self.username,
            password=self.password,
            ssl=self.ssl,
            ssl_ca_certs=self.ssl_ca_certs,
            socket_connect_timeout=5,
            socket_timeout=30,
            socket_keepalive=True,
            health_check_interval=15,
            protocol=2,
            retry=Retry(NoBackoff(), 0),  # the services reconnect themselves (logged, with backoff, forever)
        )

    def where(self) -> str:
        return f"{'rediss' if self.ssl else 'redis'}://{self.host}:{self.port}/{self.db}"


def unreachable_hint(options: RedisOptions) -> str:
    """What to check when nothing answers at host:port (a wrong --redis-port retries forever otherwise)."""
    return (
        f"is redis-server running on {options.host}:{options.port}, and is the port right (--redis-host, --redis-port)?"
    )


def check_auth(options: RedisOptions) -> None:
    """Fail fast, with a clear message, when the server refuses our credentials."""
    client = options.client()
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        if not isinstance(exc, redis.AuthenticationError) and not any(
            code in str(exc) for code in ("NOAUTH", "WRONGPASS")
        ):
            raise
        if options.password is None:
            raise ConfigError(
                f"Redis at {options.where()} needs a password ({exc}); give --redis-password-env VAR or --redis-password"
            ) from None
        raise ConfigError(
            f"Redis at {options.where()} refused the login ({exc}); check --redis-password / --redis-password-env"
        ) from None
    except REDIS_ERRORS as exc:
        if any(
            sign in str(exc)
            for sign in ("SSL", "certificate", "Name or service not known", "name resolution", "nodename nor servname")
        ):
            raise ConfigError(
                f"cannot connect to Redis at {options.where()}: {_first_line(exc)}; check --redis-host and the TLS options"
            ) from None
        log.warning(
            "Redis at %s is not reachable yet (%s); %s; the service keeps trying",
            options.where(),
            _first_line(exc),
            unreachable_hint(options),
        )
    finally:
        client.close()


def parse_message(data: bytes) -> Request:
    """Raw encoded image bytes, or a JSON envelope `{"id": ..., "image": base64}`."""
    if not data.lstrip()[:1] == b"{":
        return Request(data)
    try:
        envelope = json.loads(data)
    except ValueError:
        return Request(None, error='message is neither image bytes nor a JSON envelope {"id": ..., "image": base64}')
    return envelope_request(envelope)


class RedisService:
    """Reconnect with backoff around a serving loop; subclasses implement `serve(client)`."""

    def __init__(
        self, predictor, output, options: RedisOptions, stop: Stop | None = None, metrics: ServiceMetrics | None = None
    ):
        self.predictor, self.output, self.options = predictor, output, options
        self.stop = stop if stop is not None else Stop()
        self.metrics = metrics if metrics is not None else ServiceMetrics("redis")
        self.rate = Rate()
        self.answers = Behind("optik-answer")  # replies go out while the next batch is predicted
        self.backoff = Backoff()
        self.hinted = False  # the first connection failure says what to check; the retries after it do not

    def run(self) -> Rate:
        while not self.stop:
            client = self.options.client()
            try:
                with self.answers.draining():
                    self.serve(client)
            except REDIS_ERRORS as exc:
                hint = "" if self.hinted else f"; {unreachable_hint(self.options)}"
                self.hinted = True
                self._retry(f"Redis at {self.options.where()} unavailable ({_first_line(exc)}){hint}")
            except redis.ResponseError as exc:
                if str(exc).startswith("WRONGTYPE"):
                    raise ConfigError(
                        f"a key this service uses on {self.options.where()} holds another type ({exc}); pick other --redis-in / --redis-out names"
                    ) from None
                # OOM, READONLY, LOADING, NOGROUP...
                self._retry(f"Redis at {self.options.where()} answered {_first_line(exc)!r}")
            finally:
                client.close()
        log.info("redis: %s", self.rate.summary())
        return self.rate

    def _retry(self, why: str) -> None:
        delay = self.backoff.next()
        log.warning("%s; reconnecting in %.1f s", why, delay)
        self.stop.wait(delay)

    def serve(self, client: redis.Redis) -> None:
        raise NotImplementedError

    def _predict(self, requests: list[Request]) -> list:
        self.metrics.batch_size.observe(len(requests))
        return predict_requests(self.predictor, requests)

    def _count(self, results: list, received: list[float]) -> None:
        """Count answered results (the log's rate, and the metrics, with each one's latency since `received`)."""
        self.metrics.count(results, received, time.monotonic())
        failed = sum(not r.ok for r in results)
        self.rate.add(len(results) - failed, failed)
        log.debug("%d answered, %d failed (%s)", len(results) - failed, failed, self.rate.summary())


class PubSubService(RedisService):
    """Pattern-subscribes to `channel_in`, publishes each prediction to `channel_out`."""

    def __init__(
        self,
        predictor,
        output,
        options: RedisOptions,
        channel_in: str,
        channel_out: str,
        max_wait_ms: float = 10,
        stop: Stop | None = None,
        metrics: ServiceMetrics | None = None,
    ):
        super().__init__(predictor, output, options, stop, metrics)
        if fnmatch.fnmatchcase(channel_out, channel_in):
            raise ConfigError(
                f"the output channel {channel_out!r} matches the input pattern {channel_in!r}: the service would answer its own replies"
            )
        self.channel_in, self.channel_out, self.max_wait = channel_in, channel_out, max_wait_ms / 1000

    def serve(self, client: redis.Redis) -> None:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.psubscribe(self.channel_in)
            log.info(
                "listening on %s channel %r, replying on %r", self.options.where(), self.channel_in, self.channel_out
            )
            self.backoff.reset()
            while not self.stop:
                messages = self._collect(pubsub)
                if messages:
                    self.metrics.queue_depth.set(len(messages))
                    self._answer(client, [parse_message(data) for data in messages])
                    self.metrics.queue_depth.set(0)
        finally:
            pubsub.close()

    def _collect(self, pubsub) -> list[bytes]:
        """Up to a batch of messages: the first one, then what else arrives within `max_wait`."""

        def take(timeout: float) -> bytes | None:
            message = pubsub.get_message(timeout=timeout)
            return None if message is None else message["data"]

        return gather(take, self.predictor.batch_size, self.max_wait)

    def _answer(self, client: redis.Redis, requests: list[Request]) -> None:
        results = self._predict(requests)
        self.answers.submit(self._reply, client, requests, results)

    def _reply(self, client: redis.Redis, requests: list[Request], results: list) -> None:
        pipe = client.pipeline(transaction=False)
        for request, result in zip(requests, results):
            if not result.ok:
                log.warning(
                    "cannot predict message %s: %s",
                    request.id if request.id is not None else "(no id)" if request.envelope else "(raw bytes)",
                    result.reason,
                )
                reply = {"error": result.reason, "id": request.id}
            else:
                payload = self.output.payload(result)
                reply = {"id": request.id, "result": payload} if request.envelope else payload
            pipe.publish(self.channel_out, json.dumps(reply))
        pipe.execute()
        self._count(results, [r.received for r in requests])


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
    delete_processed: bool = False

    @property
    def dead(self) -> str:
        return f"{self.stream_in}:dead"


class StreamService(RedisService):
    """One worker of a consumer group; see the module docstring for the delivery rules."""

    def __init__(
        self,
        predictor,
        output,
        options: RedisOptions,
        streams: StreamOptions,
        stop: Stop | None = None,
        metrics: ServiceMetrics | None = None,
    ):
        super().__init__(predictor, output, options, stop, metrics)
        if streams.max_attempts < 1 or streams.claim_idle_ms < 1:
            raise ConfigError("--max-attempts and --claim-idle-ms must be at least 1")
        if streams.stream_out in (streams.stream_in, streams.dead):
            raise ConfigError("the output stream must differ from the input stream and its dead-letter stream")
        self.streams = streams
        self.next_claim = 0.0

    def serve(self, client: redis.Redis) -> None:
        s = self.streams
        try:
            client.xgroup_create(s.stream_in, s.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        log.info(
            "worker %r of group %r on %s: %r -> %r",
            s.consumer,
            s.group,
            self.options.where(),
            s.stream_in,
            s.stream_out,
        )
        self.backoff.reset()
        self._take_pending(client, consumer=s.consumer, idle=None)  # what this worker name held before a restart
        while not self.stop:
            if time.monotonic() >= self.next_claim:
                self._take_pending(client, consumer=None, idle=s.claim_idle_ms)  # what stopped workers left
                self.next_claim = time.monotonic() + s.claim_idle_ms / 2000
            entries = self._read(client)
            if entries:
                self._handle(client, entries)
            self._measure_lag(client)

    def _measure_lag(self, client: redis.Redis) -> None:
        """The group's lag (entries not yet read by any worker; Redis 7+) as the queue depth."""
        s = self.streams
        group = next((g for g in client.xinfo_groups(s.stream_in) if g["name"].decode() == s.group), None)
        if group is not None and group.get("lag") is not None:
            self.metrics.queue_depth.set(group["lag"])

    def _read(self, client: redis.Redis) -> list:
        """Up to a batch of new entries: what is there within 1 s, then what else arrives within `max_wait_ms`."""
        s, size = self.streams, self.predictor.batch_size
        entries = entries_of(client.xreadgroup(s.group, s.consumer, {s.stream_in: ">"}, count=size, block=1000))
        deadline = time.monotonic() + s.max_wait_ms / 1000
        while entries and len(entries) < size:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms < 1:  # BLOCK 0 would wait forever
                break
            more = entries_of(
                client.xreadgroup(
                    s.group, s.consumer, {s.stream_in: ">"}, count=size - len(entries), block=remaining_ms
                )
            )
            if not more:
                break
            entries += more
        return entries

    def _take_pending(self, client: redis.Redis, consumer: str | None, idle: int | None) -> None:
        """Claim delivered, unacknowledged entries (of `consumer`, or idle `idle` ms), and answer them;
        those already delivered `max_attempts` times go to the dead-letter stream instead."""
        s, seen = self.streams, set()
        while not self.stop:
            pending = client.xpending_range(
                s.stream_in, s.group, "-", "+", count=self.predictor.batch_size, consumername=consumer, idle=idle
            )
            attempts = {p["message_id"]: p["times_delivered"] for p in pending if p["message_id"] not in seen}
            if not attempts:
                return
            seen |= set(attempts)
            claimed = client.xclaim(s.stream_in, s.group, s.consumer, idle or 0, list(attempts))
            if not claimed:
                continue
            log.info("took over %d unacknowledged entr%s", len(claimed), "y" if len(claimed) == 1 else "ies")
            dead = [(i, f) for i, f in claimed if attempts[i] >= s.max_attempts]
            if dead:
                failures = [
                    ModelFailure(str(i), f"failed {attempts[i]} times (its workers crashed, or the model raised)")
                    for i, _ in dead
                ]
                self.answers.submit(self._finish, client, dead, failures, attempts)
            self._handle(client, [(i, f) for i, f in claimed if attempts[i] < s.max_attempts], attempts)

    def _handle(self, client: redis.Redis, entries: list, attempts: dict | None = None) -> None:
        if entries:
            requests = [self._request(i, f) for i, f in entries]
            self.answers.submit(self._finish, client, entries, self._predict(requests), attempts, requests)

    def _request(self, entry_id: bytes, fields: dict | None) -> Request:
        fields = fields or {}
        given = fields.get(b"id")
        request = Request(
            fields.get(b"image"), given.decode(errors="replace") if given is not None else entry_id.decode()
        )
        if request.image is None:
            request.error = 'the entry has no "image" field (the encoded image bytes)'
        elif not request.image:
            request.error = 'the entry\'s "image" field is empty (0 bytes): it must hold the encoded image bytes'
        return request

    def _finish(
        self,
        client: redis.Redis,
        entries: list,
        results: list,
        attempts: dict | None = None,
        requests: list[Request] | None = None,
    ) -> None:
        """Add results (and dead letters) to their streams and acknowledge, in one transaction.

        An entry the model raised on (`ModelFailure`) is left pending: it is retried after
        `claim_idle_ms`, and dead-lettered after `max_attempts` deliveries; only answered entries are counted.
        """
        s, attempts = self.streams, attempts or {}
        trim = {"maxlen": s.maxlen, "approximate": True} if s.maxlen else {}
        pipe, done, answered, received = client.pipeline(transaction=True), [], [], []
        arrivals = [r.received for r in requests] if requests else [time.monotonic()] * len(entries)
        for (entry_id, fields), result, arrival in zip(entries, results, arrivals):
            request_id, tries = self._request(entry_id, fields).id, attempts.get(entry_id, 1)
            if result.ok:
                pipe.xadd(s.stream_out, {"id": request_id, "result": json.dumps(self.output.payload(result))}, **trim)
            elif isinstance(result, ModelFailure) and tries < s.max_attempts:
                continue
            else:
                log.warning("entry %s (id %s) goes to %s: %s", entry_id.decode(), request_id, s.dead, result.reason)
                pipe.xadd(s.stream_out, {"id": request_id, "error": result.reason}, **trim)
                original = {k.decode(errors="replace"): v for k, v in (fields or {}).items() if k != b"id"}
                pipe.xadd(
                    s.dead,
                    {
                        **original,
                        "id": request_id,
                        "entry": entry_id,
                        "error": result.reason,
                        "attempts": tries,
                        "consumer": s.consumer,
                    },
                )
            done.append(entry_id)
            answered.append(result)
            received.append(arrival)
        if done:
            pipe.xack(s.stream_in, s.group, *done)
            if s.delete_processed:
                pipe.xdel(s.stream_in, *done)
            pipe.execute()
        self._count(answered, received)


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def entries_of(response) -> list:
    """The (id, fields) entries of an XREAD/XREADGROUP reply for one stream."""
    if not response:
        return []
    if isinstance(response, dict):
        return list(next(iter(response.values()))[0] if response else [])
    return list(response[0][1])
