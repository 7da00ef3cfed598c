"""Test-time augmentation: the softmax averaged over the original and its flips, in one forward pass,
the same in PyTorch and onnxruntime, from every command; refused for detectors and backbones."""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import colour_image, run_optik

from optik.config.load import config_to_dict, load_config
from optik.data.transforms import Preprocess
from optik.errors import ConfigError
from optik.inference.predictor import Classifier
from optik.models.package import ModelPackage, load_package, save_package
from optik.tasks import get_task
from optik.tasks.loading import build_model, load_predictor
from optik.tools.export import export_model

# What each --tta value means, written out by hand: the dims each extra view flips (3: width, 2: height).
VIEWS = {"hflip": [(3,)], "vflip": [(2,)], "hflip,vflip": [(3,), (2,)]}


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Noisy colour pictures with an off-centre bright square, so every flip is a different picture."""
    folder = tmp_path_factory.mktemp("tta_pictures")
    rng = np.random.default_rng(3)
    paths = []
    for i, colour in enumerate([(220, 30, 30), (30, 200, 40), (30, 60, 220), (120, 120, 40), (90, 30, 160)]):
        path = folder / f"p{i}.png"
        colour_image(colour, 40, rng).save(path)
        paths.append(path)
    return paths


def by_hand(colour_model, paths, tta: str) -> np.ndarray:
    """softmax(model(x)) averaged with softmax(model(flip(x))) for each flip of `tta`, in plain torch."""
    package = load_package(colour_model)
    network = build_model(package)
    loader = Classifier(network, package.classes, Preprocess.from_dict(package.preprocess), device="cpu", mode="eager")
    x = torch.stack([loader.load(path) for path in paths])
    with torch.no_grad():
        views = [network(x).softmax(-1)] + [network(x.flip(dims)).softmax(-1) for dims in VIEWS[tta]]
    return torch.stack(views).mean(0).numpy()


def probs_of(results) -> np.ndarray:
    assert all(result.ok for result in results)
    return np.stack([result.probs for result in results])


@pytest.mark.parametrize("tta", ["hflip", "vflip", "hflip,vflip"])
def test_tta_is_the_hand_averaged_softmax_of_the_flipped_views(colour_model, pictures, tta):
    predictor = load_predictor(colour_model, device="cpu", mode="eager", batch_size=2, tta=tta)
    got = probs_of(predictor.predict(pictures))  # 5 pictures: batches of 2, 2, 1
    expected = by_hand(colour_model, pictures, tta)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    plain = probs_of(load_predictor(colour_model, device="cpu", mode="eager").predict(pictures))
    assert np.abs(got - plain).max() > 1e-4  # the flips change the answer: they were really applied
    fused = probs_of(load_predictor(colour_model, device="cpu", mode="fused", tta=tta).predict(pictures))
    np.testing.assert_allclose(fused, expected, atol=1e-5)


def test_onnxruntime_applies_the_tta_the_export_records(colour_model, pictures, tmp_path):
    path, _ = export_model(colour_model, tmp_path / "model.onnx", tta="hflip,vflip")
    from optik.inference.onnx import read_metadata

    assert read_metadata(path)["preprocess"]["tta"] == "hflip,vflip"
    recorded = probs_of(load_predictor(path, batch_size=2).predict(pictures))
    np.testing.assert_allclose(recorded, by_hand(colour_model, pictures, "hflip,vflip"), atol=1e-4)
    overridden = probs_of(load_predictor(path, tta="hflip").predict(pictures))
    np.testing.assert_allclose(overridden, by_hand(colour_model, pictures, "hflip"), atol=1e-4)
    in_memory = load_predictor(colour_model, backend="onnxruntime", tta="vflip")
    np.testing.assert_allclose(
        probs_of(in_memory.predict(pictures)), by_hand(colour_model, pictures, "vflip"), atol=1e-4
    )


def test_one_forward_pass_per_batch_holds_every_view(colour_model, pictures):
    package = load_package(colour_model)
    network = build_model(package)
    seen = []
    network.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    preprocess = Preprocess.from_dict(package.preprocess).with_tta("hflip,vflip")
    predictor = Classifier(network, package.classes, preprocess, device="cpu", mode="eager", batch_size=2)
    predictor.predict(pictures)  # 5 pictures in batches of 2, 2, 1; three views each
    assert seen == [6, 6, 3]


def test_a_package_records_a_default_that_the_option_overrides(colour_model, pictures, tmp_path):
    package = load_package(colour_model)
    recorded = save_package(replace(package, preprocess={**package.preprocess, "tta": "hflip"}), tmp_path / "model.pt")
    default = probs_of(load_predictor(recorded, device="cpu", mode="eager").predict(pictures))
    np.testing.assert_allclose(default, by_hand(colour_model, pictures, "hflip"), atol=1e-5)
    off = probs_of(load_predictor(recorded, device="cpu", mode="eager", tta="none").predict(pictures))
    plain = probs_of(load_predictor(colour_model, device="cpu", mode="eager").predict(pictures))
    np.testing.assert_allclose(off, plain, atol=1e-6)


def test_the_config_key_is_checked_and_only_classifiers_have_it():
    from optik.config.schema import TTA_CHOICES
    from optik.inference.backends import TEST_TIME_FLIPS

    assert set(TEST_TIME_FLIPS) == set(TTA_CHOICES)  # every value the config and CLI accept has its flips
    assert load_config("resnet18_small", ["data.tta=hflip,vflip"]).data.tta == "hflip,vflip"
    with pytest.raises(ConfigError, match="tta"):
        load_config("resnet18_small", ["data.tta=rotate"])
    with pytest.raises(ConfigError, match="tta"):
        load_config("fcos_resnet18_small", ["data.tta=hflip"])
    with pytest.raises(ConfigError, match="test-time augmentation .* pretrain model"):
        get_task("pretrain").with_tta({"image_size": 32}, "hflip", "backbone.pt")


@pytest.fixture(scope="module")
def untrained_detector(tmp_path_factory):
    """An untrained detector package: --tta is refused before it would run."""
    from optik.models.detect import build_detector

    cfg = load_config(
        None, ["task=detect", "model.name=fcos_resnet50_fpn", "model.backbone=resnet18", "data.image_size=64"]
    )
    model = build_detector(cfg.model, cfg.data, 2)
    preprocess = {"task": "detect", "image_size": 64, "mean": list(cfg.data.mean), "std": list(cfg.data.std)}
    path = tmp_path_factory.mktemp("tta_detector") / "model.pt"
    return save_package(ModelPackage("detect", config_to_dict(cfg), ["a", "b"], preprocess, model.state_dict()), path)


@pytest.mark.parametrize("command", ["predict", "test", "serve poll", "export"])
def test_a_detector_refuses_tta_in_every_command(untrained_detector, pictures, tmp_path, command):
    folder = pictures[0].parent
    args = {
        "predict": ["predict", untrained_detector, pictures[0]],
        "test": ["test", untrained_detector, folder],
        "serve poll": ["serve", "poll", untrained_detector, "--in", folder, "--out", tmp_path / "out"],
        "export": ["export", untrained_detector, "--out", tmp_path / "d.onnx"],
    }[command]
    run = run_optik(*args, "--tta", "hflip")
    assert run.returncode == 2, run.stderr[-2000:]
    assert "--tta hflip: test-time augmentation averages a classifier's class probabilities" in run.stderr
    assert "is a detect model; drop --tta" in run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.slow  # four CLI runs
def test_predict_test_batch_predict_and_serve_poll_with_tta(colour_model, pictures, tmp_path):
    expected = by_hand(colour_model, pictures, "hflip")
    classes = load_package(colour_model).classes

    run = run_optik("predict", colour_model, *pictures, "--out-dir", tmp_path / "predicted", "--tta", "hflip")
    assert run.returncode == 0, run.stderr[-2000:]
    for path, row in zip(pictures, expected):
        scores = json.loads((tmp_path / "predicted" / f"{path.stem}.json").read_text())
        np.testing.assert_allclose([scores[c] for c in classes], row, atol=1e-5)

    labelled = tmp_path / "labelled"
    for i, path in enumerate(pictures):
        (labelled / classes[i % len(classes)]).mkdir(parents=True, exist_ok=True)
        (labelled / classes[i % len(classes)] / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "results.json"
    run = run_optik("test", colour_model, labelled, "--tta", "hflip", "--out", out, "--out-items", "pred")
    assert run.returncode == 0, run.stderr[-2000:]
    items = {item["file"].rsplit("/", 1)[-1]: item["probs"] for item in json.loads(out.read_text())["predictions"]}
    np.testing.assert_allclose([items[p.name] for p in pictures], expected, atol=1e-5)

    rows = tmp_path / "rows.csv"
    run = run_optik(
        "batch-predict", pictures[0].parent, rows, colour_model, "--format", "csv", "--top-k", "1", "--tta", "hflip"
    )
    assert run.returncode == 0, run.stderr[-2000:]
    top = {row["filename"]: float(row["c1"]) for row in csv.DictReader(rows.open())}
    np.testing.assert_allclose([top[p.name] for p in pictures], expected.max(1), atol=1e-5)

    drop, served = tmp_path / "drop", tmp_path / "served"
    drop.mkdir()
    for path in pictures:
        (drop / path.name).write_bytes(path.read_bytes())
    run = run_optik("serve", "poll", colour_model, "--in", drop, "--out", served, "--tta", "hflip")
    assert run.returncode == 0, run.stderr[-2000:]
    for path, row in zip(pictures, expected):
        scores = json.loads((served / f"{path.stem}.json").read_text())
        np.testing.assert_allclose([scores[c] for c in classes], row, atol=1e-5)
