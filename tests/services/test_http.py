"""`optik serve http` as a client meets it: a real uvicorn server, a real HTTP client (httpx), real models."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import COLOURS, Served, colour_image, run_optik
from service_helpers import RUNNING, Service, metric, scrape

CLASSES = ["red", "green", "blue"]


def jpeg_bytes(colour: str, seed: int, size: int = 40) -> bytes:
    buffer = io.BytesIO()
    colour_image(COLOURS[colour], size, np.random.default_rng(seed)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def http_url(colour_model):
    """One `optik serve http` for the module's tests (each test counts its own requests in the metrics)."""
    service = Service(
        "http",
        colour_model,
        "--port",
        "0",
        "--optimize",
        "fused",
        "--batch-size",
        "8",
        "--max-body-mb",
        "1",
        "--max-wait-ms",
        "20",
    )
    RUNNING.remove(service)  # not the per-test clean-up's to stop
    try:
        service.wait_for("ready: POST")
        yield service.url("ready: POST")
    finally:
        assert service.stop() == 0, service.log


def test_200_images_from_8_clients_equal_optik_predict(http_url, colour_model, tmp_path):
    """Raw bytes, multipart files and JSON envelope lists from 8 clients at once; each answer equals `optik predict`'s."""
    folder = tmp_path / "images"
    folder.mkdir()
    names = [f"{i:03d}_{CLASSES[i % 3]}.jpg" for i in range(200)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(jpeg_bytes(CLASSES[i % 3], i))
    done = run_optik("predict", colour_model, folder, "--optimize", "fused")
    assert done.returncode == 0, done.stderr
    expected = {Path(row["file"]).name: row["prediction"] for row in map(json.loads, done.stdout.splitlines())}
    before = scrape(http_url)

    def client(number: int) -> dict[str, dict]:
        mine, answers = names[number::8], {}
        with httpx.Client(base_url=http_url, timeout=60) as http:
            for start in range(0, len(mine), 5):
                group = mine[start : start + 5]
                if number % 3 == 0:  # one image per request, raw bytes
                    for name in group:
                        response = http.post("/predict", content=(folder / name).read_bytes())
                        assert response.status_code == 200, response.text
                        answers[name] = response.json()
                    continue
                if number % 3 == 1:
                    files = [("images", (name, (folder / name).read_bytes(), "image/jpeg")) for name in group]
                    response = http.post("/predict", files=files)
                else:
                    envelopes = [
                        {"id": name, "image": base64.b64encode((folder / name).read_bytes()).decode()} for name in group
                    ]
                    response = http.post("/predict", json=envelopes)
                assert response.status_code == 200, response.text
                assert [item["id"] for item in response.json()] == group
                answers.update({item["id"]: item["result"] for item in response.json()})
        return answers

    with ThreadPoolExecutor(8) as pool:
        answers = {name: result for part in pool.map(client, range(8)) for name, result in part.items()}
    assert set(answers) == set(expected) == set(names)
    for name in names:
        assert list(answers[name]) == CLASSES
        assert np.allclose(list(answers[name].values()), list(expected[name].values()), atol=1e-5), name

    after = scrape(http_url)
    grew = {key: after[key] - before.get(key, 0) for key in after}
    assert metric(grew, "optik_images_predicted_total") == 200
    assert metric(grew, "optik_image_latency_seconds_count") == 200
    assert metric(grew, "optik_batch_size_sum") == 200
    requests = 3 * 25 + 5 * 5  # three clients send one image per request, five send five
    assert metric(grew, "optik_request_latency_seconds_count", code="200") == requests
    assert sum(metric(grew, "optik_image_errors_total", reason=r) for r in ("request", "decode", "model")) == 0
    assert metric(after, "optik_queue_depth") == 0 and metric(after, "optik_ready") == 1
    (model,) = [dict(labels) for name, labels in after if name == "optik_model_info"]
    assert model["service"] == "http" and model["task"] == "classify" and model["model"] == colour_model.name


def test_garbage_is_400_oversize_is_413_and_the_docs_page_is_there(http_url):
    before = scrape(http_url)
    with httpx.Client(base_url=http_url, timeout=30) as http:
        garbage = http.post("/predict", content=b"\x00\x01 not an image", params={"id": "junk"})
        assert garbage.status_code == 400 and garbage.json()["id"] == "junk"
        assert "not an image" in garbage.json()["error"]
        nameless = http.post("/predict", content=b"\x00\x01 not an image")  # no ?id=: none made up
        assert nameless.status_code == 400 and nameless.json()["id"] is None
        not_json = http.post("/predict", content=b"{oops", headers={"content-type": "application/json"})
        assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
        mixed = http.post(
            "/predict",
            files=[("a", ("good.jpg", jpeg_bytes("red", 1), "image/jpeg")), ("b", ("bad.jpg", b"text", "image/jpeg"))],
        )
        assert mixed.status_code == 400 and mixed.json()["error"].startswith("1 of 2 image(s)")
        good, bad = mixed.json()["results"]
        assert good["id"] == "good.jpg" and list(good["result"]) == CLASSES
        assert bad["id"] == "bad.jpg" and "not an image" in bad["error"]
        too_big = http.post("/predict", content=b"\xff" * (2 << 20))  # --max-body-mb 1
        assert too_big.status_code == 413 and "--max-body-mb 1" in too_big.json()["error"]
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
        assert http.get("/docs").status_code == 200
        wrong_method, no_path = http.get("/predict"), http.post("/predicts", content=b"x")
        assert wrong_method.status_code == 405 and "POST /predict takes the images" in wrong_method.json()["error"]
        assert no_path.status_code == 404 and no_path.json()["error"].startswith("Not Found")
        assert "/predict" in http.get("/openapi.json").json()["paths"]
    grew = {key: value - before.get(key, 0) for key, value in scrape(http_url).items()}
    assert metric(grew, "optik_image_errors_total", reason="decode") == 3
    assert metric(grew, "optik_image_errors_total", reason="request") == 1
    assert metric(grew, "optik_image_errors_total", reason="too_large") == 1
    assert metric(grew, "optik_images_predicted_total") == 1
    assert metric(grew, "optik_request_latency_seconds_count", code="400") == 4
    assert metric(grew, "optik_request_latency_seconds_count", code="413") == 1


def test_readyz_is_503_until_the_model_is_warmed_then_a_detector_answers_opex(shapes_detector):
    """In-process, so that "before ready" is a state, not a race: the server listens, the model is loaded after."""
    from optik.cli.common import make_output
    from optik.services.http import HttpOptions, HttpService
    from optik.tasks.loading import load_predictor
    from optik.tools.shapes import SHAPES

    with HttpService(HttpOptions(port=0)) as service:
        url = "http://{}:{}".format(*service.address)
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/readyz").status_code == 503
            early = http.post("/predict", content=jpeg_bytes("red", 0))
            assert early.status_code == 503 and "/readyz" in early.json()["error"]
            predictor = load_predictor(shapes_detector, device="cpu", batch_size=2, mode="eager")
            predictor.warmup()
            loop = threading.Thread(target=service.serve, args=(predictor, make_output(predictor.task)))
            loop.start()
            try:
                while http.get("/readyz").status_code != 200:
                    assert loop.is_alive()
                    time.sleep(0.01)
                answer = http.post("/predict", content=jpeg_bytes("blue", 3, size=96), params={"id": "shapes.jpg"})
                assert answer.status_code == 200, answer.text
                served = Served("detect", shapes_detector, SHAPES, "eager", many=1)
                served.check_payload(answer.json(), "shapes.jpg")
            finally:
                service.stop.set()
                loop.join(timeout=60)
        assert not loop.is_alive() and service.rate.done == 1


@pytest.mark.parametrize("command", ["http", "poll"])
def test_sigterm_during_start_up_exits_0_and_says_so(colour_model, command, tmp_path):
    """The log line that says the server listens comes before the model loads: a SIGTERM then stops the start-up."""
    (tmp_path / "in").mkdir()
    if command == "http":
        service = Service("http", colour_model, "--port", "0")
        service.wait_for("http on")
    else:
        service = Service(
            "poll", colour_model, "--in", tmp_path / "in", "--out", tmp_path / "out", "--metrics-port", "0"
        )
        service.wait_for("health and metrics on")
    assert service.stop() == 0, service.log
    assert "SIGTERM during start-up: stopped before serving anything" in service.log
    assert re.search(r"\d\d:\d\d:\d\d,\d+ INFO SIGTERM during start-up", service.log), service.log


@pytest.mark.slow
def test_sigterm_under_load_answers_every_accepted_request(colour_model):
    """8 clients post without pause; SIGTERM: every request the service read is answered with a prediction
    (its count in the service's last log line equals the 200s the clients got), the rest are refused, exit 0."""
    service = Service("http", colour_model, "--port", "0", "--optimize", "fused", "--batch-size", "8")
    url = service.url("ready: POST")
    image, answered, refused, wrong, after_signal = jpeg_bytes("green", 5), [], [], [], []
    signalled = threading.Event()

    def client() -> None:
        while True:
            try:  # a new connection per request: a refused one was never accepted
                response = httpx.post(f"{url}/predict", content=image, headers={"connection": "close"}, timeout=60)
            except httpx.TransportError as exc:
                refused.append(exc)
                if signalled.is_set():
                    return
                continue
            if response.status_code != 200 or list(response.json()) != CLASSES:
                wrong.append(response)
                continue
            answered.append(response)
            if signalled.is_set():
                after_signal.append(response)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    while len(answered) < 100:
        assert not wrong and all(t.is_alive() for t in threads), service.log
        time.sleep(0.05)
    signalled.set()
    assert service.stop() == 0, service.log
    for thread in threads:
        thread.join(timeout=60)
    summary = re.search(r"http: (\d+) predicted, (\d+) failed", service.log)
    assert summary is not None, service.log
    assert not wrong, [(r.status_code, r.text) for r in wrong[:3]]
    assert int(summary.group(1)) == len(answered) and summary.group(2) == "0"
    assert after_signal, "no request was in flight when SIGTERM came"
