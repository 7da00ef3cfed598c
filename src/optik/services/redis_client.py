"""`optik redis send`: a client of `optik serve redis` that sends image files and gathers the replies
(pub/sub or streams), so a service can be tried and measured without writing one."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import redis

from optik.errors import OptikError
from optik.services.redis_service import REDIS_ERRORS, RedisOptions, entries_of


def send_images(
    options: RedisOptions,
    paths: list[Path],
    channel_in: str,
    channel_out: str,
    mode: str = "pubsub",
    raw: bool = False,
    timeout: float = 30.0,
) -> Iterator[dict]:
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
    try:
        pubsub.subscribe(channel_out)
        deadline = time.monotonic() + 10
        while (message := pubsub.get_message(timeout=1)) is None or message["type"] != "subscribe":
            if time.monotonic() > deadline:  # replies may only be published once the subscription is in place
                raise OptikError(f"could not subscribe to {channel_out!r} on Redis")
        ids = _unique_ids(paths)
        for path, request_id in zip(paths, ids):
            data = path.read_bytes()
            payload = data if raw else json.dumps({"id": request_id, "image": base64.b64encode(data).decode()})
            if client.publish(channel_in, payload) == 0:
                raise OptikError(
                    f"nobody listens on channel {channel_in!r}; start `optik serve redis MODEL --redis-in {channel_in} --redis-out {channel_out}` first"
                )
        wanted = None if raw else set(ids)  # raw bytes carry no id: count the replies instead

        def replies(wait: float) -> list[dict]:
            message = pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
            if message is None:
                return []
            reply = json.loads(message["data"])
            if wanted is None:
                return [reply]
            if isinstance(reply, dict) and reply.get("id") in wanted:  # other clients' replies share the channel
                wanted.discard(reply["id"])
                return [reply]
            return []

        yield from _gather(replies, len(paths), timeout)
    finally:
        pubsub.close()


def _unique_ids(paths: list[Path]) -> list[str]:
    """The file path as the id, with `#2`, `#3`... when a path is given more than once."""
    counts: dict[str, int] = {}
    ids = []
    for path in paths:
        counts[str(path)] = counts.get(str(path), 0) + 1
        ids.append(str(path) if counts[str(path)] == 1 else f"{path}#{counts[str(path)]}")
    return ids


def _send_stream(client, paths, stream_in, stream_out, timeout) -> Iterator[dict]:
    try:
        last = client.xinfo_stream(stream_out)["last-generated-id"]
    except redis.ResponseError:  # no such stream yet
        last = b"0-0"
    ids = _unique_ids(paths)
    pipe = client.pipeline(transaction=False)
    for path, request_id in zip(paths, ids):
        pipe.xadd(stream_in, {"image": path.read_bytes(), "id": request_id})
    pipe.execute()
    wanted, position = set(ids), {"last": last}

    def replies(wait: float) -> list[dict]:
        found = []
        for entry_id, fields in entries_of(
            client.xread({stream_out: position["last"]}, count=100, block=max(1, int(wait * 1000)))
        ):
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
            raise OptikError(
                f"{expected - received} of {expected} image(s) got no reply within {timeout:g} s; is `optik serve redis` running with these channels?"
            )
        for reply in poll(min(remaining, 1.0)):
            received += 1
            yield reply
