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

Two references for the Redis pub/sub and the file drop, and ours:

- "plain PyTorch": the old scripts' loop (`predict_redis.py`, `predict_poll.py`) written with plain
  PyTorch: one message or file at a time, PIL decode, torchvision Resize(256) + CenterCrop(224) +
  ToTensor + Normalize, one eager forward, every class's probability as JSON; run by this script
  (`--plain redis|drop`) in a process of its own;
- "one at a time": `optik serve` with `--batch-size 1 --optimize eager --max-wait-ms 0`: optik's own
  decoding (the next image decodes during the forward pass) and writing, one plain PyTorch forward
  per image, which isolates what micro-batching gives;
- "micro-batch": the default (`--batch-size 32`, `--optimize auto`: the fastest form that gives
  eager fp32's answers, raced at start-up; it is named in the service log).

    python benchmarks/serve.py                  # 256-image burst, 500-image file drop, 512 HTTP requests
    python benchmarks/serve.py --burst 128 --files 200 --requests 256
    python benchmarks/serve.py --only http --model resnet18
"""

from __future__ import annotations

import argparse
import base64
import io
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
import redis
import timm
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from service_helpers import RedisServer, Service  # noqa: E402  (the test helpers: a real redis-server, `optik serve` in the background)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import photo_jpegs  # noqa: E402

REFERENCE = ["--batch-size", "1", "--optimize", "eager", "--max-wait-ms", "0"]
OURS: list[str] = []
PLAIN = "plain PyTorch"


def plain_model(path: Path):
    """(classes, network, transform) as a plain PyTorch script would set them up (the weights from the package)."""
    from torchvision import transforms

    from optik.models.package import load_package

    package = load_package(path)
    network = timm.create_model(package.config["model"]["name"], num_classes=len(package.classes))
    network.load_state_dict(package.state_dict)
    pre = package.preprocess
    transform = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(pre["mean"], pre["std"]),
        ]
    )
    return package.classes, network.eval(), transform


def plain_scores(network, transform, classes: list[str], image: Image.Image) -> dict[str, float]:
    with torch.inference_mode():
        probs = network(transform(image.convert("RGB")).unsqueeze(0)).softmax(dim=-1)[0]
    return dict(zip(classes, probs.tolist()))


def plain_redis(model: Path, port: int) -> None:
    """The old pub/sub script's loop: a message, a forward pass, a reply."""
    classes, network, transform = plain_model(model)
    client = redis.Redis(port=port)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("images")
    for message in pubsub.listen():
        envelope = json.loads(message["data"])
        image = Image.open(io.BytesIO(base64.b64decode(envelope["image"])))
        reply = {"id": envelope["id"], "result": plain_scores(network, transform, classes, image)}
        client.publish("predictions", json.dumps(reply))


def plain_drop(model: Path, in_dir: Path, out_dir: Path) -> None:
    """The old polling script's pass: each file predicted, its JSON written, the file deleted; prints images/s."""
    classes, network, transform = plain_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    start, files = time.perf_counter(), sorted(in_dir.glob("*.jpg"))
    for path in files:
        scores = plain_scores(network, transform, classes, Image.open(path))
        (out_dir / f"{path.stem}.json").write_text(json.dumps(scores))
        path.unlink()
    print(f"file drop: {len(files)} predicted ({len(files) / (time.perf_counter() - start):.1f} images/s)")


def plain_command(*args) -> list[str]:
    """This script as the plain PyTorch loop's process (`--plain redis|drop ...`)."""
    return [sys.executable, __file__, "--plain", *map(str, args)]


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


def redis_figures(model: Path, args: list[str] | None, images: list[bytes], folder: Path) -> tuple[float, np.ndarray]:
    """A burst through `optik serve redis` with `args` (None: the plain PyTorch loop); (images/s, latencies in s)."""
    folder.mkdir(parents=True)
    server = RedisServer(folder).start()
    try:
        if args is None:
            service = subprocess.Popen(plain_command("redis", model, server.port))
        else:
            service = Service("redis", model, "--redis-port", server.port, "--quiet", *args)
        time.sleep(0.5)
        wait_ready(server)
        burst(server, images[:32])  # warm: first-batch checks, allocator
        rate, latencies = burst(server, images)
        if args is None:
            service.terminate()
            service.wait()
        else:
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


def file_drop(model: Path, args: list[str] | None, images: list[bytes], folder: Path) -> float:
    """images/s of one pass of `optik serve poll` with `args` (None: the plain PyTorch loop), from its own log."""
    in_dir, out_dir = folder / "in", folder / "out"
    shutil.rmtree(folder, ignore_errors=True)
    in_dir.mkdir(parents=True)
    for i, image in enumerate(images):
        (in_dir / f"{i:05d}.jpg").write_bytes(image)
    if args is None:
        process = subprocess.run(plain_command("drop", model, in_dir, out_dir), capture_output=True, text=True)
        log = process.stdout + process.stderr
    else:
        process = subprocess.run(
            [sys.executable, "-m", "optik.cli", "serve", "poll", model, "--in", in_dir, "--out", out_dir, *args],
            capture_output=True,
            text=True,
        )
        log = process.stderr
    if process.returncode != 0 or len(list(out_dir.glob("*.json"))) != len(images):
        raise RuntimeError(log)
    return float(re.search(r"file drop: .*\(([\d.]+) images/s", log).group(1))


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
    parser.add_argument("--plain", nargs="+", metavar="ARG", help=argparse.SUPPRESS)  # the plain PyTorch loops' process
    args = parser.parse_args()
    if args.plain:
        mode, model, *rest = args.plain
        return plain_redis(Path(model), int(rest[0])) if mode == "redis" else plain_drop(Path(model), *map(Path, rest))
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
    for name, extra in ((PLAIN, None), ("one at a time", REFERENCE), ("micro-batch", OURS)):
        rate, latencies = redis_figures(model, extra, images[:count], work / f"redis-{len(rows)}")
        rows[name] = rate
        print(
            f"redis pub/sub burst of {count:4d}  {name:14s} {rate:7.1f} images/s   latency p50 {np.percentile(latencies, 50) * 1000:7.0f} ms   p99 {np.percentile(latencies, 99) * 1000:7.0f} ms"
        )
    print(f"redis pub/sub: micro-batching {ratios(rows)}")


def drop_rows(model: Path, images: list[bytes], count: int, work: Path) -> None:
    rows = {}
    for name, extra in (
        (PLAIN, None),
        ("one at a time", ["--batch-size", "1", "--optimize", "eager"]),
        ("micro-batch", OURS),
    ):
        rows[name] = file_drop(model, extra, images[:count], work / "drop")
        print(f"file drop of {count:4d} images     {name:14s} {rows[name]:7.1f} images/s")
    print(f"file drop: micro-batching {ratios(rows)}")


def ratios(rows: dict[str, float]) -> str:
    ours = rows["micro-batch"]
    return f"{ours / rows['one at a time']:.2f}x optik one at a time, {ours / rows[PLAIN]:.2f}x the plain PyTorch loop"


if __name__ == "__main__":
    main()
