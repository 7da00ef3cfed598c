"""Serving speed: one image per forward pass (the old predict_redis / predict_poll) vs optik's micro-batching.

Both run as real `optik serve` processes with the same model (random init, 1000 classes at 224: no
download; resnet18 and EfficientNet-Lite0 by default, `--model` for others) on the same photo-sized
JPEGs (640x480 crops of scikit-image's sample photos):

- Redis pub/sub on a real redis-server: a burst of N images published at once; images/s from the
  first publish to the last reply, and p50/p99 latency (publish -> reply) per image.
- File drop: N images in a folder, one pass; images/s from the service's own log (model load and
  compilation excluded for both).
- HTTP: 16 concurrent clients (httpx, one image per POST /predict, keep-alive) send N images in
  all; images/s from the first request to the last answer, and p50/p99 latency per request.

The one-at-a-time reference is `--batch-size 1 --optimize eager --max-wait-ms 0`: a plain PyTorch
forward per message, as the old scripts did. Ours is the default (`--batch-size 32`, `--optimize auto`:
the fastest form that gives eager fp32's answers, raced at start-up; it is named in the service log).

    python benchmarks/serve.py                  # 256-image burst, 500-image file drop, 512 HTTP requests
    python benchmarks/serve.py --burst 128 --files 200 --requests 256
    python benchmarks/serve.py --only http --model resnet18
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from service_helpers import RedisServer, Service  # noqa: E402  (the test helpers: a real redis-server, `optik serve` in the background)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import photo_jpegs  # noqa: E402

REFERENCE = ["--batch-size", "1", "--optimize", "eager", "--max-wait-ms", "0"]
OURS: list[str] = []


def model_package(path: Path, name: str = "resnet18") -> Path:
    from optik.config import load_config
    from optik.config.load import config_to_dict
    from optik.data.transforms import Preprocess
    from optik.models.package import ModelPackage, save_package

    torch.manual_seed(0)
    classes = [f"class{i:03d}" for i in range(1000)]
    cfg = load_config("resnet50_224", [f"model.name={name}", "data.root=unused"])
    model = timm.create_model(name, num_classes=len(classes))
    package = ModelPackage(
        "classify", config_to_dict(cfg), classes, Preprocess.from_data_config(cfg.data).to_dict(), model.state_dict()
    )
    return save_package(package, path)


def burst(server: RedisServer, images: list[bytes]) -> tuple[float, np.ndarray]:
    """Publish every image at once; (images/s, per-image latencies in s)."""
    client = server.client()
    pubsub = client.pubsub()
    pubsub.subscribe("predictions")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    payloads = [json.dumps({"id": i, "image": base64.b64encode(image).decode()}) for i, image in enumerate(images)]
    sent, received = {}, {}
    start = time.perf_counter()
    for i, payload in enumerate(payloads):
        sent[i] = time.perf_counter()
        client.publish("images", payload)
    deadline = time.monotonic() + 600
    while len(received) < len(images) and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        if message is not None:
            reply = json.loads(message["data"])
            assert "result" in reply, reply
            received[reply["id"]] = time.perf_counter()
    elapsed = max(received.values()) - start
    pubsub.close()
    return len(images) / elapsed, np.array([received[i] - sent[i] for i in received])


def redis_figures(model: Path, args: list[str], images: list[bytes], folder: Path) -> tuple[float, np.ndarray]:
    folder.mkdir(parents=True)
    server = RedisServer(folder).start()
    try:
        service = Service("redis", model, "--redis-port", server.port, "--quiet", *args)
        time.sleep(0.5)
        wait_ready(server)
        burst(server, images[:32])  # warm: first-batch checks, allocator
        rate, latencies = burst(server, images)
        service.stop()
        return rate, latencies
    finally:
        server.stop()


def wait_ready(server: RedisServer, timeout: float = 300) -> None:
    client, deadline = server.client(), time.monotonic() + timeout
    while client.pubsub_numpat() < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not subscribe")
        time.sleep(0.2)


def file_drop(model: Path, args: list[str], images: list[bytes], folder: Path) -> float:
    in_dir, out_dir = folder / "in", folder / "out"
    shutil.rmtree(folder, ignore_errors=True)
    in_dir.mkdir(parents=True)
    for i, image in enumerate(images):
        (in_dir / f"{i:05d}.jpg").write_bytes(image)
    done = subprocess.run(
        [sys.executable, "-m", "optik.cli", "serve", "poll", model, "--in", in_dir, "--out", out_dir, *args],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0 or len(list(out_dir.glob("*.json"))) != len(images):
        raise RuntimeError(done.stderr)
    return float(re.search(r"file drop: .*\(([\d.]+) images/s", done.stderr).group(1))


def http_figures(model: Path, args: list[str], images: list[bytes], clients: int = 16) -> tuple[float, np.ndarray]:
    """`clients` threads post the images (one per request) to a real `optik serve http`; (images/s, latencies in s)."""
    service = Service("http", model, "--port", "0", *args)
    try:
        url = service.url("ready: POST", timeout=600)

        def send(part: list[bytes], latencies: list[float]) -> None:
            with httpx.Client(base_url=url, timeout=600) as http:
                for image in part:
                    sent = time.perf_counter()
                    response = http.post("/predict", content=image)
                    assert response.status_code == 200, response.text
                    latencies.append(time.perf_counter() - sent)

        def run(batch: list[bytes]) -> tuple[float, list[float]]:
            latencies: list[float] = []
            threads = [threading.Thread(target=send, args=(batch[i::clients], latencies)) for i in range(clients)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return len(batch) / (time.perf_counter() - start), latencies

        run(images[:32])  # warm: first-batch checks, allocator, connections
        rate, latencies = run(images)
        return rate, np.array(latencies)
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=256, help="images published at once")
    parser.add_argument("--files", type=int, default=500, help="images in the file drop")
    parser.add_argument("--requests", type=int, default=512, help="images posted to the HTTP service by 16 clients")
    parser.add_argument("--only", choices=["redis", "drop", "http"], help="measure one service only")
    parser.add_argument(
        "--model", action="append", help="timm architecture (repeat for several; default resnet18, efficientnet_lite0)"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optik-serve-bench-"))
    images = photo_jpegs(max(args.burst, args.files, args.requests))
    print(f"{os.cpu_count()} CPU threads, torch {torch.__version__}; JPEGs 640x480, models at 224 with 1000 classes")
    for name in args.model or ["resnet18", "efficientnet_lite0"]:
        model = model_package(work / f"{name}.pt", name)
        print(f"-- {name}")
        if args.only in (None, "redis"):
            redis_rows(model, images, args.burst, work / name)
        if args.only in (None, "drop"):
            drop_rows(model, images, args.files, work / name)
        if args.only in (None, "http"):
            http_rows(model, images, args.requests)
    shutil.rmtree(work, ignore_errors=True)


def http_rows(model: Path, images: list[bytes], count: int) -> None:
    rates = {}
    for name, extra in (("one at a time", REFERENCE), ("micro-batch", OURS)):
        rates[name], latencies = http_figures(model, extra, images[:count])
        print(
            f"http, 16 clients, {count:4d} images  {name:14s} {rates[name]:7.1f} images/s   latency p50 {np.percentile(latencies, 50) * 1000:7.0f} ms   p99 {np.percentile(latencies, 99) * 1000:7.0f} ms"
        )
    print(f"http: micro-batching {rates['micro-batch'] / rates['one at a time']:.2f}x the one-at-a-time throughput")


def redis_rows(model: Path, images: list[bytes], count: int, work: Path) -> None:
    rows = {}
    for name, extra in (("one at a time", REFERENCE), ("micro-batch", OURS)):
        rate, latencies = redis_figures(model, extra, images[:count], work / f"redis-{len(rows)}")
        rows[name] = rate
        print(
            f"redis pub/sub burst of {count:4d}  {name:14s} {rate:7.1f} images/s   latency p50 {np.percentile(latencies, 50) * 1000:7.0f} ms   p99 {np.percentile(latencies, 99) * 1000:7.0f} ms"
        )
    print(
        f"redis pub/sub: micro-batching {rows['micro-batch'] / rows['one at a time']:.2f}x the one-at-a-time throughput"
    )


def drop_rows(model: Path, images: list[bytes], count: int, work: Path) -> None:
    drops = {}
    for name, extra in (("one at a time", ["--batch-size", "1", "--optimize", "eager"]), ("micro-batch", OURS)):
        drops[name] = file_drop(model, extra, images[:count], work / "drop")
        print(f"file drop of {count:4d} images     {name:14s} {drops[name]:7.1f} images/s")
    print(
        f"file drop: micro-batching {drops['micro-batch'] / drops['one at a time']:.2f}x the one-at-a-time throughput"
    )


if __name__ == "__main__":
    main()
