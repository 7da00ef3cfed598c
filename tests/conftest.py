"""Shared fixtures: tiny image sets made on the fly, and a helper to run the real `optik` CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Never reach for a hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for var in ("OPTIK_CLASSES", "MMCLS_CLASSES", "MMDET_CLASSES"):
    os.environ.pop(var, None)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}


def colour_image(colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    """A noisy picture dominated by one colour, with a random bright square: easy but not trivial."""
    pixels = np.clip(rng.normal(colour, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    x, y = rng.integers(0, size // 2, 2)
    pixels[y : y + size // 3, x : x + size // 3] = rng.integers(150, 255, 3)
    return Image.fromarray(pixels)


def make_colour_set(root: Path, per_class: int = 12, size: int = 32, splits: tuple[str, ...] = (), ext: str = ".png", seed: int = 0) -> Path:
    """`root/[split/]<colour>/<n><ext>` for the three colour classes."""
    rng = np.random.default_rng(seed)
    for split in splits or ("",):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                colour_image(colour, size, rng).save(folder / f"{name}_{i}{ext}")
    return root


@pytest.fixture
def colour_set(tmp_path) -> Path:
    """Three colour classes, 12 images each, no split folders."""
    return make_colour_set(tmp_path / "colours")


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """sklearn's real handwritten digits as train/val/test class folders (16 px)."""
    from optik.tools.digits import write_digits

    root = tmp_path_factory.mktemp("digits")
    write_digits(root, size=16)
    return root


def tiny_overrides(root: Path, epochs: int = 2, size: int = 32) -> list[str]:
    """--set values that make any preset train in seconds on the CPU."""
    return [f"data.root={root}", f"train.epochs={epochs}", f"data.image_size={size}", "data.batch_size=8", "data.num_workers=0", "train.log_every_n_steps=1",
            "train.keep_checkpoints=1"]


def run_optik(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the installed `optik` command as a user would; returns the finished process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "optik.cli", *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def optik():
    return run_optik


@pytest.fixture(scope="session")
def colour_model(tmp_path_factory) -> Path:
    """A small resnet trained on the three colour classes (32 px), as a model package: a real model to serve."""
    from optik.config.load import load_config
    from optik.engine.train import train

    root = tmp_path_factory.mktemp("colour_model")
    data = make_colour_set(root / "data", per_class=16)
    cfg = load_config("resnet18_small", tiny_overrides(data, epochs=4) + ["data.classes=[red,green,blue]"])
    work_dir = train(cfg, work_dir=root / "run").work_dir
    shutil.rmtree(work_dir / "checkpoints")  # only the package is served; keeps the session's disk use small
    return work_dir / "model.pt"


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free port, for this test only."""
    from service_helpers import running_redis

    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture(autouse=True)
def stop_leftover_services():
    """A test that fails halfway must not leave `optik serve` processes behind."""
    yield
    from service_helpers import RUNNING

    while RUNNING:
        service = RUNNING.pop()
        if service.process.poll() is None:
            service.kill()
