"""When the model itself raises on an input, every service answers the others, reports that one, and goes on.

The model is a real plug-in (`file.py:build`) whose forward pass raises on an all-black image, the way
a custom model can fail on an input its author did not expect.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import COLOURS, colour_image, run_optik
from PIL import Image
from service_helpers import Service

PLUGIN = '''
import torch
from torch import nn


class Picky(nn.Module):
    """Mean colour -> class; refuses an all-black batch member."""

    def __init__(self, num_classes=3):
        super().__init__()
        self.head = nn.Linear(3, num_classes)

    def forward(self, x):
        if (x.flatten(2).std(dim=2).amax(dim=1) < 1e-6).any():
            raise RuntimeError("cannot handle a blank image")
        return self.head(x.mean(dim=(2, 3)))


def build(num_classes=3):
    return Picky(num_classes)
'''


@pytest.fixture(scope="module")
def picky_model(tmp_path_factory) -> Path:
    from optik.config.load import config_to_dict, load_config
    from optik.data.transforms import Preprocess
    from optik.models.classify import build_plugin
    from optik.models.package import ModelPackage, save_package

    root = tmp_path_factory.mktemp("picky")
    (root / "picky.py").write_text(PLUGIN)
    cfg = load_config(
        "resnet18_small", [f"model.name={root / 'picky.py'}:build", "data.root=unused", "data.image_size=32"]
    )
    model = build_plugin(cfg.model.name, 3)
    package = ModelPackage(
        "classify",
        config_to_dict(cfg),
        ["red", "green", "blue"],
        Preprocess.from_data_config(cfg.data).to_dict(),
        model.state_dict(),
    )
    return save_package(package, root / "model.pt")


def image_bytes(colour, fmt: str = "PNG", seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    picture = Image.new("RGB", (40, 40)) if colour is None else colour_image(colour, 40, np.random.default_rng(seed))
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def test_file_drop_reports_the_image_the_model_fails_on(picky_model, tmp_path):
    in_dir, out_dir = tmp_path / "in", tmp_path / "out"
    in_dir.mkdir()
    for i, colour in enumerate(["red", "green", None, "blue"]):
        (in_dir / f"{i}.png").write_bytes(image_bytes(COLOURS.get(colour) if colour else None, seed=i))
    done = run_optik("serve", "poll", picky_model, "--in", in_dir, "--out", out_dir, "--optimize", "eager")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out_dir.glob("*.json")) == ["0.json", "1.json", "2.error.json", "3.json"]
    assert "cannot handle a blank image" in json.loads((out_dir / "2.error.json").read_text())["error"]
    assert [p.name for p in (out_dir / "failed").iterdir()] == ["2.png"] and list(in_dir.iterdir()) == []


def test_pubsub_replies_an_error_for_it_and_results_for_the_rest(picky_model, redis_server):
    service = Service(
        "redis", picky_model, "--redis-port", redis_server.port, "--optimize", "eager", "--max-wait-ms", "200"
    )
    service.wait_for("listening on")
    client = redis_server.client()
    pubsub = client.pubsub()
    pubsub.subscribe("predictions")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    for i, colour in enumerate(["red", None, "blue"]):  # one micro-batch: the blank one must not fail the others
        client.publish(
            "images",
            json.dumps(
                {
                    "id": i,
                    "image": __import__("base64")
                    .b64encode(image_bytes(COLOURS.get(colour) if colour else None))
                    .decode(),
                }
            ),
        )
    replies, deadline = {}, time.monotonic() + 30
    while len(replies) < 3 and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            reply = json.loads(message["data"])
            replies[reply["id"]] = reply
    assert "result" in replies[0] and "result" in replies[2]
    assert "cannot handle a blank image" in replies[1]["error"]
    assert service.stop() == 0


@pytest.mark.parametrize("restarted", [False, True])
def test_stream_entry_the_model_fails_on_is_retried_then_dead_lettered(picky_model, redis_server, restarted):
    """Retried after --claim-idle-ms, dead after --max-attempts, with the others answered. A worker
    restarted under the same --consumer name counts the deliveries of its earlier lives, so an entry
    that keeps crashing it ends in the dead letters instead of a crash loop."""
    client = redis_server.client()
    blank = client.xadd("jobs", {"image": image_bytes(None), "id": "blank"})
    claim_idle = "300"
    if restarted:  # as if worker w0 had died on this entry three times
        client.xgroup_create("jobs", "optik", id="0")
        client.xreadgroup("optik", "w0", {"jobs": ">"}, count=1)
        client.xclaim("jobs", "optik", "w0", 0, [blank], retrycount=3)
        claim_idle = "600000"  # no claiming of idle entries: only the restart rule can dead-letter it
    client.xadd("jobs", {"image": image_bytes(COLOURS["green"]), "id": "fine"})
    args = [
        "redis",
        picky_model,
        "--redis-port",
        redis_server.port,
        "--optimize",
        "eager",
        "--mode",
        "stream",
        "--redis-in",
        "jobs",
        "--redis-out",
        "results",
        "--claim-idle-ms",
        claim_idle,
        "--max-attempts",
        "3",
    ]
    service = Service(*args, "--consumer", "w0")
    deadline = time.monotonic() + 60
    # both answers: after a restart the dead letter comes first, before "fine" is even read
    while (client.xlen("jobs:dead") < 1 or client.xlen("results") < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.stop() == 0
    results = {f[b"id"].decode(): f for _, f in client.xrange("results")}
    assert b"result" in results["fine"]
    assert b"failed 3 times" in results["blank"][b"error"]
    (dead,) = client.xrange("jobs:dead")
    assert dead[1][b"id"] == b"blank" and dead[1][b"attempts"] == b"3" and dead[1][b"image"] == image_bytes(None)
    assert client.xpending("jobs", "optik")["pending"] == 0
