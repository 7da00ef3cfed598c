"""`Detector`: detections in the image's own coordinates, fused equal to eager, bad images reported, predict CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from optik.config.load import config_to_dict, load_config
from optik.inference.detector import Detector
from optik.inference.predictor import Classifier
from optik.models.detect import build_detector
from optik.models.package import ModelPackage, load_package, save_package
from optik.tasks.loading import build_model, load_predictor

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture(scope="module")
def detector_package(tmp_path_factory):
    """An untrained FCOS (timm resnet18) package: many low-score boxes, enough to check plumbing."""
    cfg = load_config(
        None,
        [
            "task=detect",
            "model.name=fcos_resnet50_fpn",
            "model.backbone=resnet18",
            "data.image_size=96",
            "model.score_threshold=0.0",
        ],
    )
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.data, len(CLASSES))
    preprocess = {"task": "detect", "image_size": 96, "mean": list(cfg.data.mean), "std": list(cfg.data.std)}
    path = tmp_path_factory.mktemp("detector") / "model.pt"
    return save_package(ModelPackage("detect", config_to_dict(cfg), CLASSES, preprocess, model.state_dict()), path)


def noise_image(path, width: int, height: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def test_load_predictor_picks_the_task(detector_package, colour_model):
    assert isinstance(load_predictor(detector_package, device="cpu"), Detector)
    classifier = load_predictor(colour_model, device="cpu")
    assert isinstance(classifier, Classifier) and not isinstance(classifier, Detector)


def test_batch_predict_refuses_a_detector_with_what_it_is_for(detector_package, tmp_path, optik):
    (tmp_path / "images").mkdir()
    noise_image(tmp_path / "images" / "a.png", 64, 64)
    run = optik("batch-predict", tmp_path / "images", tmp_path / "out.csv", detector_package)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "is a detect model; batch-predict writes one row of classes per image, for classifiers" in run.stderr
    assert not (tmp_path / "out.csv").exists()


def test_detections_are_in_the_image_coordinates(detector_package, tmp_path):
    detector = load_predictor(detector_package, device="cpu", batch_size=2)
    wide, tall = noise_image(tmp_path / "wide.png", 300, 120), noise_image(tmp_path / "tall.png", 90, 200, seed=1)
    results = detector.predict([wide, tall])
    for result, (w, h) in zip(results, [(300, 120), (90, 200)]):
        assert result.ok and (result.width, result.height) == (w, h)
        assert len(result) > 0
        assert result.boxes[:, [0, 2]].max() <= w and result.boxes[:, [1, 3]].max() <= h and result.boxes.min() >= 0
        assert set(result.labels.tolist()) <= {0, 1, 2}
        assert np.all(np.diff(result.scores) <= 1e-6), "highest score first"


def test_an_image_gets_the_same_objects_alone_or_in_a_mixed_batch(detector_package, tmp_path):
    """torchvision pads a batch to its largest image; grouped by size, a small image is not padded by a big one's size."""
    images = [
        noise_image(tmp_path / f"m{i}.png", *size, seed=i)
        for i, size in enumerate([(300, 120), (90, 200), (300, 120), (64, 64)])
    ]
    together = load_predictor(detector_package, device="cpu", mode="eager", batch_size=4).predict(images)
    alone = load_predictor(detector_package, device="cpu", mode="eager", batch_size=1).predict(images)
    for x, y in zip(together, alone):
        assert len(x) == len(y) > 0 and np.array_equal(x.labels, y.labels)
        np.testing.assert_allclose(x.boxes, y.boxes, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(x.scores, y.scores, rtol=1e-5, atol=1e-6)


def test_fused_equals_eager(detector_package, tmp_path):
    images = [noise_image(tmp_path / f"{i}.png", 128, 96, seed=i) for i in range(3)]
    fused = load_predictor(detector_package, device="cpu", mode="fused")
    eager = load_predictor(detector_package, device="cpu", mode="eager")
    a, b = fused.predict(images), eager.predict(images)
    assert fused.backend.mode == "fused" and eager.backend.mode == "eager"
    for x, y in zip(a, b):
        assert np.array_equal(x.labels, y.labels)
        np.testing.assert_allclose(x.boxes, y.boxes, rtol=1e-3, atol=1e-2)


def test_bad_images_are_reported_and_the_rest_predicted(detector_package, tmp_path):
    good = noise_image(tmp_path / "good.png", 64, 64)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:200])
    results = load_predictor(detector_package, device="cpu").predict(
        [tmp_path / "empty.png", good, tmp_path / "cut.png"]
    )
    assert [r.ok for r in results] == [False, True, False]
    assert "empty" in results[0].reason or "0 bytes" in results[0].reason


def test_min_score_keeps_the_confident_objects(detector_package, tmp_path):
    image = noise_image(tmp_path / "a.png", 96, 96)
    package = load_package(detector_package)
    everything = Detector(build_model(package), package.classes, package.preprocess, device="cpu").predict([image])[0]
    cut = float(np.median(everything.scores))
    confident = Detector(
        build_model(package), package.classes, package.preprocess, device="cpu", min_score=cut
    ).predict([image])[0]
    assert 0 < len(confident) < len(everything) and confident.scores.min() >= cut


@pytest.mark.slow  # every output option through the CLI, each a run of the detector
def test_predict_cli_writes_opex_and_roi(detector_package, tmp_path, optik):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        noise_image(images / f"img{i}.png", 100, 80, seed=i)
    done = optik("predict", detector_package, images, "--out-dir", tmp_path / "opex", "--score", "0.0")
    assert done.returncode == 0, done.stderr
    opex = json.loads((tmp_path / "opex" / "img0.json").read_text())
    assert (
        opex["id"] == "img0.png"
        and opex["objects"]
        and {"label", "score", "bbox", "polygon"} <= set(opex["objects"][0])
    )
    done = optik("predict", detector_package, images, "--out-dir", tmp_path / "roi", "--format", "roi")
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "roi" / "img1-rois.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames[:12] == [
        "file",
        "x0",
        "y0",
        "x1",
        "y1",
        "x0n",
        "y0n",
        "x1n",
        "y1n",
        "label",
        "label_str",
        "score",
    ]
    assert rows and all(row["label_str"] in CLASSES for row in rows)
    refused = optik("predict", detector_package, images, "--top-k", "2")
    assert refused.returncode == 2 and "--score" in refused.stderr
