"""Shared fixtures: tiny image sets made on the fly, and a helper to run the real `optik` CLI."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cli_runner
import detections
import numpy as np
import pytest
from PIL import Image

# Never reach for a hub from tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
for var in ("OPTIK_CLASSES", "MMCLS_CLASSES", "MMDET_CLASSES"):
    os.environ.pop(var, None)

# Under pytest-xdist (`make test` runs `-n 2`) every worker keeps to one thread, and so do the
# processes it starts (the environment is inherited): two workers of two threads each on a
# 2-core machine would fight over the cores. `OPTIK_TEST_THREADS` overrides.
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if XDIST_WORKER is not None:
    os.environ.setdefault("OMP_NUM_THREADS", os.environ.get("OPTIK_TEST_THREADS", "1"))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def shared_once(tmp_path_factory, name: str, make):
    """`make(folder)` run once per test session, even across pytest-xdist workers; its result (a Path or a tuple of Paths).

    Without xdist: a fresh `tmp_path_factory` folder. With it: the first worker to ask makes it, under a file
    lock, in the session's folder above the workers' own; the others wait and reuse it. What is made
    must not be changed by a test: one that needs to change it copies it first.
    """
    if XDIST_WORKER is None:
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "shared"
    shared.mkdir(exist_ok=True)
    folder, done = shared / name, shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            result = make(folder)
            paths = [str(result)] if isinstance(result, Path) else [str(p) for p in result]
            done.write_text(json.dumps({"tuple": not isinstance(result, Path), "paths": paths}))
        saved = json.loads(done.read_text())
    paths = [Path(p) for p in saved["paths"]]
    return tuple(paths) if saved["tuple"] else paths[0]


COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}


def colour_image(colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    """A noisy picture dominated by one colour, with a random bright square: easy but not trivial."""
    pixels = np.clip(rng.normal(colour, 40, (size, size, 3)), 0, 255).astype(np.uint8)
    x, y = rng.integers(0, size // 2, 2)
    pixels[y : y + size // 3, x : x + size // 3] = rng.integers(150, 255, 3)
    return Image.fromarray(pixels)


def jpeg_with_thumbnail(size: int = 64, seed: int = 0) -> bytes:
    """A JPEG whose EXIF block (APP1) holds a JPEG thumbnail, with its own end-of-image marker, as cameras write."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    thumb, main = io.BytesIO(), io.BytesIO()
    Image.fromarray(pixels).resize((16, 16)).save(thumb, "JPEG")
    Image.fromarray(pixels).save(main, "JPEG")
    # TIFF (little-endian): IFD0 with the orientation, IFD1 pointing at the thumbnail right after it
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x0112, 3, 1, 1) + struct.pack("<I", 26)
    ifd1 = (
        struct.pack("<H", 2)
        + struct.pack("<HHII", 0x0201, 4, 1, 56)
        + struct.pack("<HHII", 0x0202, 4, 1, len(thumb.getvalue()))
    )
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1 + struct.pack("<I", 0) + thumb.getvalue()
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    data = main.getvalue()
    return data[:2] + app1 + data[2:]


def make_colour_set(
    root: Path, per_class: int = 12, size: int = 32, splits: tuple[str, ...] = (), ext: str = ".png", seed: int = 0
) -> Path:
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

    def make(root: Path) -> Path:
        write_digits(root, size=16)
        return root

    return shared_once(tmp_path_factory, "digits", make)


def tiny_overrides(root: Path, epochs: int = 2, size: int = 32) -> list[str]:
    """--set values that make any preset train in seconds on the CPU."""
    return [
        f"data.root={root}",
        f"train.epochs={epochs}",
        f"data.image_size={size}",
        "data.batch_size=8",
        "data.num_workers=0",
        "train.log_every_n_steps=1",
        "train.keep_checkpoints=1",
    ]


def run_optik(
    *args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600, process: bool = False
) -> subprocess.CompletedProcess:
    """Run the real `optik` command on `args`; returns the finished run (returncode, stdout, stderr).

    In this process by default, as a new process would see it (tests/cli_runner.py); `process=True` (or
    OPTIK_TEST_PROCESSES=1) starts `python -m optik.cli` instead, for what needs a process of its own
    (signals, pipes, start-up) and for `timeout`.
    """
    args = [str(a) for a in args]
    if process or cli_runner.ALWAYS_PROCESS:
        return cli_runner.run_process(args, cwd, env, timeout)
    return cli_runner.run_in_process(args, cwd, env)


def run_torchrun(processes: int, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --standalone` with `processes` workers (gloo on the CPU); it must succeed."""
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


@pytest.fixture
def optik():
    return run_optik


@pytest.fixture(scope="session")
def colour_model(tmp_path_factory) -> Path:
    """A small resnet trained on the three colour classes (32 px), as a model package: a real model to serve."""
    from optik.config.load import load_config
    from optik.engine.train import train

    def make(root: Path) -> Path:
        data = make_colour_set(root / "data", per_class=16)
        cfg = load_config("resnet18_small", tiny_overrides(data, epochs=4) + ["data.classes=[red,green,blue]"])
        work_dir = train(cfg, work_dir=root / "run").work_dir
        shutil.rmtree(work_dir / "checkpoints")  # only the package is served; keeps the session's disk use small
        return work_dir / "model.pt"

    return shared_once(tmp_path_factory, "colour_model", make)


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free port, for this test only."""
    from service_helpers import running_redis

    with running_redis(tmp_path) as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def optik_cache(tmp_path_factory) -> Path:
    """Compiled models (OpenVINO, inductor) go to a folder of this session, not the user's ~/.cache/optik."""
    folder = tmp_path_factory.mktemp("optik-cache")
    os.environ["OPTIK_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(autouse=True)
def stop_leftover_services():
    """A test that fails halfway must not leave `optik serve` processes behind."""
    yield
    from service_helpers import RUNNING

    while RUNNING:
        service = RUNNING.pop()
        if service.process.poll() is None:
            service.kill()


@pytest.fixture(scope="session")
def shapes_detector(tmp_path_factory) -> Path:
    """An FCOS (ResNet-18) trained one epoch on 16 synthetic shapes images, as a model package: a real detector to serve.

    One epoch is enough: it finds (poor) objects in any picture, and the services' tests check the
    outputs' form, not their quality. No validation pass: it would double the training time (COCO evaluation).
    """
    from optik.config.load import load_config
    from optik.engine.train import train
    from optik.tools.shapes import write_shapes_set

    def make(root: Path) -> Path:
        data = write_shapes_set(root / "data", "coco", train=16, val=8, size=96)
        cfg = load_config(
            "fcos_resnet18_small",
            [
                f"data.root={data}",
                "train.epochs=1",
                "data.num_workers=0",
                "train.keep_checkpoints=1",
                "data.batch_size=4",
                "train.validation=false",
            ],
        )
        work_dir = train(cfg, work_dir=root / "run").work_dir
        shutil.rmtree(work_dir / "checkpoints")  # only the package is served; keeps the session's disk use small
        return work_dir / "model.pt"

    return shared_once(tmp_path_factory, "shapes_detector", make)


ROI_HEADER = "file,x0,y0,x1,y1,x0n,y0n,x1n,y1n,label,label_str,score"  # DESIGN §9, for a detector without masks


@dataclass(frozen=True)
class Served:
    """A model as the services' tests serve it, and what every answer of it must look like.

    `kind` is "classify" (`<stem>.json` with a score per class), "detect" (OPEX `<stem>.json`) or
    "detect-roi" (`<stem>-rois.csv`). `optimize` is the `--optimize` value: detectors run eagerly, which
    skips the fused check at start-up (tests/inference covers it). `many` is how many images a test of
    "many images" drops: a detector answers a few a second on a small CPU, a classifier hundreds.
    """

    kind: str
    model: Path
    classes: tuple[str, ...]
    optimize: str
    many: int

    @property
    def options(self) -> tuple[str, ...]:
        """The output options for `optik serve` (`--optimize` is given apart)."""
        return ("--format", "roi") if self.kind == "detect-roi" else ()

    @property
    def suffix(self) -> str:
        return "-rois.csv" if self.kind == "detect-roi" else ".json"

    def output(self, image: str) -> str:
        """The output file name of an image (no two images with one stem)."""
        return f"{Path(image).stem}{self.suffix}"

    def check_output(self, path: Path, image: str) -> int:
        """Assert that `path` is a complete answer for the image file named `image`; how many classes or objects it holds."""
        if self.kind != "detect-roi":
            return self.check_payload(json.loads(path.read_text()), image)
        with open(path, newline="") as fh:
            assert fh.readline().rstrip("\r\n") == ROI_HEADER
            fh.seek(0)
            rows = list(csv.DictReader(fh))
        for row in rows:
            assert row["file"] == image and row["label_str"] == self.classes[int(row["label"])]
            x0, y0, x1, y1, score = (float(row[k]) for k in ("x0", "y0", "x1", "y1", "score"))
            assert x0 <= x1 and y0 <= y1 and 0 <= score <= 1 and 0 <= float(row["x1n"]) <= 1
        return len(rows)

    def check_payload(self, payload, image: str) -> int:
        """Assert that a service's JSON answer is a complete prediction (a detector's OPEX `id` is `image`); how many classes or objects it holds."""
        if self.kind == "classify":
            assert set(payload) == set(self.classes) and abs(sum(payload.values()) - 1) < 1e-4, payload
            return len(payload)
        assert isinstance(payload, dict) and payload["id"] == image and payload["timestamp"], payload
        for obj in payload["objects"]:
            box = obj["bbox"]
            assert obj["label"] in self.classes and 0 <= obj["score"] <= 1
            assert box["left"] <= box["right"] and box["top"] <= box["bottom"] and len(obj["polygon"]["points"]) >= 3
        return len(payload["objects"])


@pytest.fixture(params=["classify", "detect"])
def served(request) -> Served:
    """The services' tests run once per task kind; a test parametrises it indirectly for "detect-roi"."""
    from optik.tools.shapes import SHAPES

    if request.param == "classify":
        return Served("classify", request.getfixturevalue("colour_model"), tuple(COLOURS), "fused", many=285)
    return Served(request.param, request.getfixturevalue("shapes_detector"), SHAPES, "eager", many=15)


# ----------------------------------------------------------------------------- hand-made detections (tests/outputs)


@pytest.fixture
def detection():
    """Two objects with masks (see `make_detection`)."""
    return detections.make_detection()


@pytest.fixture
def boxes_only():
    """The same two objects from a model without masks."""
    return detections.make_detection(masks=False)


@pytest.fixture
def nothing():
    """No objects, from a model with masks."""
    return detections.empty_detection()


@pytest.fixture
def nothing_boxes_only():
    """No objects, from a model without masks."""
    return detections.empty_detection(masks=False)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, the `slow` tests go first (in their usual order, and so do the others after them): the
    long runs start while there is other work for the second worker, instead of one of them ending the session alone."""
    if XDIST_WORKER is not None or getattr(config.option, "numprocesses", None):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
