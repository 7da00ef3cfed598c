"""`optik serve redis` against a real redis-server: pub/sub replies, streams that lose nothing, reconnects."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, Served, colour_image, run_optik
from service_helpers import RedisServer, Service, running_redis

CLASSES = ["red", "green", "blue"]


def jpeg_bytes(colour: str, seed: int, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    colour_image(COLOURS[colour], size, np.random.default_rng(seed)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def serve_redis(
    model: Path, server: RedisServer, *args: str, optimize: str = "fused", ready: str = "listening on"
) -> Service:
    service = Service("redis", model, "--redis-port", server.port, "--optimize", optimize, "--batch-size", "8", *args)
    service.wait_for(ready)
    return service


def collect(pubsub, count: int, timeout: float = 30) -> list[dict]:
    replies, deadline = [], time.monotonic() + timeout
    while len(replies) < count and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            replies.append(json.loads(message["data"]))
    return replies


def subscribed(client, channel: str):
    pubsub = client.pubsub()
    pubsub.subscribe(channel)
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    return pubsub


def test_pubsub_answers_raw_bytes_envelopes_and_garbage(served: Served, redis_server):
    """The srh-broadcast -b / srh-listen way (raw bytes in, JSON out), envelopes with ids, and errors.

    A detector's reply is an OPEX document, which has an `id` of its own (raw bytes have no name: "unnamed")."""
    # old option names
    service = serve_redis(
        served.model,
        redis_server,
        *served.options,
        "--redis_in",
        "images",
        "--redis_out",
        "predictions",
        optimize=served.optimize,
    )
    client = redis_server.client()
    pubsub = subscribed(client, "predictions")
    colours = ["red", "green", "blue"] * 4
    for i, colour in enumerate(colours):
        assert client.publish("images", jpeg_bytes(colour, i)) == 1
    replies = collect(pubsub, len(colours))
    assert len(replies) == len(colours)
    assert sum(served.check_payload(reply, "unnamed") for reply in replies) > 0
    if served.kind == "classify":
        labels = [max(reply, key=reply.get) for reply in replies]
        assert sum(a == b for a, b in zip(labels, colours)) >= 10  # a trained model: right on (nearly) all

    client.publish("images", json.dumps({"id": "job-7", "image": base64.b64encode(jpeg_bytes("blue", 99)).decode()}))
    client.publish("images", b"\x00\x01 definitely not an image")
    client.publish("images", json.dumps({"id": 42, "image": "###"}))
    client.publish("images", json.dumps({"id": "no-image"}))
    envelope, garbage, bad_base64, missing = collect(pubsub, 4)
    assert envelope["id"] == "job-7"
    served.check_payload(envelope["result"], "job-7")
    assert garbage["id"] is None and "not an image" in garbage["error"]
    assert bad_base64 == {"error": bad_base64["error"], "id": 42} and "base64" in bad_base64["error"]
    assert missing["id"] == "no-image" and "image" in missing["error"]
    assert service.stop() == 0  # SIGTERM: a clean exit


def test_redis_send_prints_one_reply_per_image(colour_model, redis_server, tmp_path):
    service = serve_redis(colour_model, redis_server, "--top-k", "1")
    paths = []
    for i, colour in enumerate(["red", "green"]):
        paths.append(tmp_path / f"{colour}.jpg")
        paths[-1].write_bytes(jpeg_bytes(colour, i))
    done = run_optik("redis", "send", *paths, "--redis-port", redis_server.port)
    assert done.returncode == 0, done.stderr
    replies = {r["id"]: r["result"] for r in map(json.loads, done.stdout.splitlines())}
    assert set(replies) == {str(p) for p in paths}  # the envelope's id is the file name
    assert all(
        len(top) == 1 and set(top) <= set(CLASSES) and 0 < next(iter(top.values())) <= 1 for top in replies.values()
    )
    (tmp_path / "notes.jpg").write_text("not a picture")
    mixed = run_optik("redis", "send", paths[0], tmp_path / "notes.jpg", "--redis-port", redis_server.port)
    assert (
        mixed.returncode == 2
        and "1 of 2 image(s) could not be predicted" in mixed.stderr
        and len(mixed.stdout.splitlines()) == 2
    )
    service.stop()
    nobody = run_optik("redis", "send", paths[0], "--redis-port", redis_server.port, "--timeout", "2")
    assert nobody.returncode == 2 and "nobody listens" in nobody.stderr


def send_stream(client, stream: str, images: list[bytes], ids: list[str]) -> None:
    pipe = client.pipeline(transaction=False)
    for image, entry_id in zip(images, ids):
        pipe.xadd(stream, {"image": image, "id": entry_id})
    pipe.execute()


def stream_results(client, stream: str) -> list[dict]:
    return [{k.decode(): v.decode(errors="replace") for k, v in fields.items()} for _, fields in client.xrange(stream)]


def wait_for_results(client, stream: str, expected: set[str], timeout: float = 180) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = stream_results(client, stream)
        if expected <= {r["id"] for r in results}:
            return results
        time.sleep(0.2)
    missing = expected - {r["id"] for r in stream_results(client, stream)}
    raise AssertionError(f"{len(missing)} entries without a result, e.g. {sorted(missing)[:5]}")


@pytest.mark.slow
def test_streams_lose_nothing_when_a_worker_is_killed(colour_model, redis_server):
    """1000 entries, 3 workers, one SIGKILLed halfway: every id gets a result; a poison entry ends in X:dead."""
    client = redis_server.client()
    args = ["--mode", "stream", "--redis-in", "jobs", "--redis-out", "results", "--claim-idle-ms", "1000"]
    workers = [serve_redis(colour_model, redis_server, *args, "--consumer", f"w{i}", ready="worker") for i in range(3)]
    colours = list(COLOURS)
    images = [jpeg_bytes(colours[i % 3], i, size=32) for i in range(1000)]
    ids = [f"img-{i}" for i in range(1000)]
    send_stream(client, "jobs", images[:500], ids[:500])
    client.xadd("jobs", {"image": b"GIF89a but not really", "id": "poison"})
    deadline = time.monotonic() + 60
    while client.xlen("results") < 250 and time.monotonic() < deadline:
        time.sleep(0.01)
    workers[0].kill()  # SIGKILL halfway through: its delivered, unacknowledged entries must be claimed
    send_stream(client, "jobs", images[500:], ids[500:])
    results = wait_for_results(client, "results", set(ids) | {"poison"})
    by_id: dict[str, list[dict]] = {}
    for result in results:
        by_id.setdefault(result["id"], []).append(result)
    good = [json.loads(by_id[i][0]["result"]) for i in ids]
    assert all(set(r) == set(CLASSES) for r in good)
    assert sum(max(r, key=r.get) == colours[i % 3] for i, r in enumerate(good)) > 950
    assert "error" in by_id["poison"][0]
    dead = stream_results(client, "jobs:dead")
    assert [d["id"] for d in dead] == ["poison"] and "not an image" in dead[0]["error"]
    # every entry acknowledged: nothing pending in the group
    assert client.xpending("jobs", "optik")["pending"] == 0
    duplicates = sum(len(v) - 1 for v in by_id.values())
    print(f"results: {len(results)} for {len(ids) + 1} entries ({duplicates} duplicates, kept first per id)")
    assert all(w.stop() == 0 for w in workers[1:])


def test_stream_entry_delivered_too_often_is_dead_lettered(served: Served, redis_server):
    """An entry that crashed its workers (delivered --max-attempts times) goes to X:dead, with an error result;
    one a dead worker held once is taken over and answered; each is acknowledged once its result is in."""
    client = redis_server.client()
    client.xgroup_create("jobs", "optik", id="0", mkstream=True)
    entry = client.xadd("jobs", {"image": jpeg_bytes("red", 0), "id": "crasher"})
    client.xadd("jobs", {"image": jpeg_bytes("blue", 2), "id": "orphan"})
    client.xreadgroup("optik", "ghost", {"jobs": ">"})  # a worker that took both, then died
    client.xclaim("jobs", "optik", "ghost", 0, [entry], retrycount=3)  # as if three workers died on it
    ok = client.xadd("jobs", {"image": jpeg_bytes("green", 1)})  # no id: the entry ID stands in
    service = serve_redis(
        served.model,
        redis_server,
        *served.options,
        "--mode",
        "stream",
        "--redis-in",
        "jobs",
        "--redis-out",
        "results",
        "--claim-idle-ms",
        "200",
        "--max-attempts",
        "3",
        optimize=served.optimize,
        ready="worker",
    )
    results = {r["id"]: r for r in wait_for_results(client, "results", {"crasher", "orphan", ok.decode()}, timeout=60)}
    assert "failed 3 times" in results["crasher"]["error"]
    served.check_payload(json.loads(results[ok.decode()]["result"]), ok.decode())
    served.check_payload(json.loads(results["orphan"]["result"]), "orphan")
    dead = stream_results(client, "jobs:dead")
    assert len(dead) == 1 and dead[0]["id"] == "crasher" and dead[0]["attempts"] == "3"
    assert client.xpending("jobs", "optik")["pending"] == 0
    assert service.stop() == 0


def test_stream_worker_survives_a_redis_restart(colour_model, tmp_path):
    """Redis goes down and comes back (append-only file): the worker reconnects and every entry is answered."""
    with running_redis(tmp_path, persist=True) as server:
        service = serve_redis(
            colour_model,
            server,
            "--mode",
            "stream",
            "--redis-in",
            "jobs",
            "--redis-out",
            "results",
            "--claim-idle-ms",
            "1000",
            ready="worker",
        )
        images = [jpeg_bytes("blue", i) for i in range(60)]
        ids = [f"a{i}" for i in range(60)]
        send_stream(server.client(), "jobs", images[:30], ids[:30])
        server.restart(down_for=2.0)
        service.wait_for("reconnecting")
        send_stream(server.client(), "jobs", images[30:], ids[30:])
        results = wait_for_results(server.client(), "results", set(ids), timeout=90)
        assert {r["id"] for r in results} == set(ids)
        assert service.stop() == 0


def test_pubsub_reconnects_after_redis_restart(colour_model, tmp_path):
    with running_redis(tmp_path) as server:
        service = serve_redis(colour_model, server)
        server.restart(down_for=1.0)
        service.wait_for("reconnecting")
        deadline = time.monotonic() + 30
        client = server.client()
        while client.pubsub_numpat() < 1 and time.monotonic() < deadline:  # resubscribed
            time.sleep(0.1)
        pubsub = subscribed(client, "predictions")
        client.publish("images", jpeg_bytes("green", 3))
        (reply,) = collect(pubsub, 1)
        assert set(reply) == set(CLASSES)
        assert service.stop() == 0


def test_password_from_environment_and_clear_error_when_wrong(colour_model, tmp_path):
    with running_redis(tmp_path, password="s3cret") as server:
        wrong = run_optik("serve", "redis", colour_model, "--redis-port", server.port, "--redis-password", "nope")
        assert wrong.returncode == 2 and "refused the login" in wrong.stderr and "Traceback" not in wrong.stderr
        missing = run_optik("serve", "redis", colour_model, "--redis-port", server.port)
        assert missing.returncode == 2 and "needs a password" in missing.stderr
        unset = run_optik(
            "serve", "redis", colour_model, "--redis-port", server.port, "--redis-password-env", "OPTIK_TEST_UNSET"
        )
        assert unset.returncode == 2 and "OPTIK_TEST_UNSET" in unset.stderr
        service = Service(
            "redis",
            colour_model,
            "--redis-port",
            server.port,
            "--redis_password_env",
            "REDIS_PW",
            "--optimize",
            "fused",
            env={"REDIS_PW": "s3cret"},
        )
        service.wait_for("listening on")
        client = server.client()
        pubsub = subscribed(client, "predictions")
        client.publish("images", jpeg_bytes("red", 5))
        (reply,) = collect(pubsub, 1)
        assert max(reply, key=reply.get) == "red"
        assert service.stop() == 0


def self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate (`make test` installs it)")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_with_a_ca_file_and_a_clear_error_with_the_wrong_one(colour_model, tmp_path):
    cert, key = self_signed(tmp_path, "server")
    other, _ = self_signed(tmp_path, "other")
    with running_redis(tmp_path, tls=(cert, key)) as server:
        wrong = run_optik("serve", "redis", colour_model, "--redis-port", server.port, "--redis-ssl-ca", other)
        assert wrong.returncode == 2 and "TLS" in wrong.stderr and "Traceback" not in wrong.stderr
        service = serve_redis(colour_model, server, "--redis-ssl", "--redis-ssl-ca", cert)
        client = server.client()
        pubsub = subscribed(client, "predictions")
        client.publish("images", jpeg_bytes("blue", 8))
        (reply,) = collect(pubsub, 1)
        assert set(reply) == set(CLASSES)
        assert service.stop() == 0


def test_nothing_listening_on_the_port_says_so_in_the_first_retry_and_keeps_trying(colour_model):
    from service_helpers import free_port

    port = free_port()
    service = Service("redis", colour_model, "--redis-port", port, "--optimize", "fused")
    service.wait_for("reconnecting")
    assert service.process.poll() is None  # still trying
    assert service.stop() == 0
    first = next(line for line in service.lines if "not reachable" in line or "unavailable" in line)
    assert f"localhost:{port}" in first and "is redis-server running" in first and "is the port right" in first
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ WARNING ", first), first  # as the other service lines
    hints = [line for line in service.lines if "is the port right" in line]
    assert len(hints) <= 2  # the connection check and the service's first retry, not every retry
