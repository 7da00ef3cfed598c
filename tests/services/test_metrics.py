"""`--metrics-port` of the file drop and Redis services: /healthz, /readyz, and /metrics whose counters equal what was sent."""

from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
from conftest import COLOURS, colour_image
from service_helpers import Service, metric, scrape

CLASSES = ["red", "green", "blue"]


def jpeg_bytes(colour: str, seed: int, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    colour_image(COLOURS[colour], size, np.random.default_rng(seed)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def scrape_when(url: str, **wanted: float) -> dict:
    """The metrics once the named samples (no labels) have the wanted values: a result is counted just after it is written."""
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(url)
        if all(metric(samples, name) == value for name, value in wanted.items()) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def check_probes(url: str) -> None:
    assert httpx.get(f"{url}/healthz").status_code == 200
    assert httpx.get(f"{url}/readyz").status_code == 200
    assert httpx.get(f"{url}/nothing").status_code == 404


def test_file_drop_metrics_count_the_files_dropped(colour_model, tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    service = Service(
        "poll", colour_model, "--in", in_dir, "--out", out_dir, "--continuous", "--poll-wait", "0.1",
        "--optimize", "fused", "--batch-size", "4", "--metrics-port", "0",
    )  # fmt: skip
    url = service.url("health and metrics on")
    service.wait_for("ready on")
    for i in range(10):
        (in_dir / f"{i}.jpg").write_bytes(jpeg_bytes(CLASSES[i % 3], i))
    (in_dir / "notes.png").write_text("not a picture")
    deadline = time.monotonic() + 60
    while len(list(out_dir.glob("*.json"))) < 11 and time.monotonic() < deadline:
        time.sleep(0.1)
    while any(in_dir.iterdir()) and time.monotonic() < deadline:  # the last image moves on after its output
        time.sleep(0.05)
    check_probes(url)
    samples = scrape_when(url, optik_image_latency_seconds_count=11, optik_queue_depth=0)
    assert metric(samples, "optik_images_predicted_total") == 10
    assert metric(samples, "optik_image_errors_total", reason="decode") == 1
    assert metric(samples, "optik_image_latency_seconds_count") == 11
    assert metric(samples, "optik_batch_size_sum") == 11
    assert metric(samples, "optik_queue_depth") == 0 and metric(samples, "optik_ready") == 1
    (model,) = [dict(labels) for name, labels in samples if name == "optik_model_info"]
    assert model["service"] == "poll" and model["model"] == "model.pt" and len(model["version"]) == 8
    assert service.stop() == 0


def test_stream_metrics_count_entries_and_an_empty_image_field_is_called_empty(colour_model, redis_server):
    client = redis_server.client()
    service = Service(
        "redis", colour_model, "--mode", "stream", "--redis-in", "jobs", "--redis-out", "results",
        "--redis-port", redis_server.port, "--optimize", "fused", "--batch-size", "8", "--metrics-port", "0",
    )  # fmt: skip
    url = service.url("health and metrics on")
    service.wait_for("worker")
    pipe = client.pipeline(transaction=False)
    for i in range(20):
        pipe.xadd("jobs", {"image": jpeg_bytes(CLASSES[i % 3], i), "id": f"img-{i}"})
    pipe.xadd("jobs", {"image": b"", "id": "empty"})
    pipe.xadd("jobs", {"picture": b"oops", "id": "missing"})
    pipe.xadd("jobs", {"image": b"GIF89a but not really", "id": "garbage"})
    pipe.execute()
    deadline = time.monotonic() + 60
    while client.xlen("results") < 23 and time.monotonic() < deadline:
        time.sleep(0.1)
    results = {f[b"id"].decode(): f for _, f in client.xrange("results")}
    assert len(results) == 23
    assert all(set(json.loads(results[f"img-{i}"][b"result"])) == set(CLASSES) for i in range(20))
    assert b"is empty (0 bytes)" in results["empty"][b"error"]
    assert b'no "image" field' in results["missing"][b"error"]
    check_probes(url)
    samples = scrape_when(url, optik_image_latency_seconds_count=23, optik_queue_depth=0)
    assert metric(samples, "optik_images_predicted_total") == 20
    assert metric(samples, "optik_image_errors_total", reason="request") == 2
    assert metric(samples, "optik_image_errors_total", reason="decode") == 1
    assert metric(samples, "optik_image_latency_seconds_count") == 23
    assert metric(samples, "optik_batch_size_sum") == 23
    assert metric(samples, "optik_queue_depth") == 0  # the group's lag: nothing left unread
    assert service.stop() == 0
