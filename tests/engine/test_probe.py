"""`optik probe`: kNN and linear-probe scores of frozen features, per class and their mean."""

import json

import numpy as np
import pytest
from conftest import make_colour_set

from optik.engine.probe import knn_predict, scores


def test_knn_votes_by_similarity():
    rng = np.random.default_rng(0)
    centres = np.eye(4, 16) * 10
    train = np.concatenate([centres[i] + rng.normal(0, 1, (20, 16)) for i in range(4)])
    labels = np.repeat(np.arange(4), 20)
    test = np.concatenate([centres[i] + rng.normal(0, 1, (5, 16)) for i in range(4)])
    assert (knn_predict(train, labels, test, 4, k=5) == np.repeat(np.arange(4), 5)).all()


def test_scores_per_class_and_mean():
    truth = np.array([0, 0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 0, 1, 1, 0, 2])
    result = scores(predicted, truth, ["a", "b", "c"])
    assert result.per_class == {"a": 0.75, "b": 0.5, "c": 1.0}
    assert result.accuracy == pytest.approx(5 / 7) and result.mean_class_accuracy == pytest.approx(0.75)


@pytest.mark.slow  # two probes through the CLI
def test_probe_cli_on_a_trained_classifier_and_a_timm_name(colour_model, tmp_path, optik):
    data = make_colour_set(tmp_path / "data", per_class=10, splits=("train", "test"), seed=3)
    done = optik("probe", colour_model, data, "--out", tmp_path / "probe.json", "--workers", "0")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "probe.json").read_text())
    assert report["images"] == {"train": 30, "test": 30} and set(report["linear"]["per_class"]) == {
        "red",
        "green",
        "blue",
    }
    for kind in ("knn", "linear"):
        assert report[kind]["accuracy"] > 0.9  # features of a model trained on these colours separate them
        assert report[kind]["mean_class_accuracy"] == pytest.approx(np.mean(list(report[kind]["per_class"].values())))
    assert "mean class accuracy" in done.stdout
    random = optik("probe", "resnet18", data, "--image-size", "32", "--workers", "0", "--k", "5")
    assert random.returncode == 0 and "(random init)" in random.stdout


def test_probe_mistakes(colour_model, tmp_path, optik):
    for args, message in (
        ((colour_model, tmp_path / "missing"), "data not found"),
        (("no_such_arch", tmp_path), "neither a file nor a timm architecture"),
    ):
        done = optik("probe", *args)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_probe_checks_the_images_it_uses_and_skips_bad_ones_when_asked(colour_model, tmp_path, optik):
    data = make_colour_set(tmp_path / "data", per_class=4, splits=("train", "val", "test"), ext=".jpg", seed=4)
    cut = data / "test" / "red" / "red_0.jpg"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])  # the header reads, the pixels do not
    (data / "val" / "blue" / "blue_0.jpg").write_bytes(b"")  # val is not probed: not checked
    refused = optik("probe", colour_model, data, "--workers", "0")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "1 unreadable image(s)" in refused.stderr and "red_0.jpg" in refused.stderr
    assert "pass --skip-bad" in refused.stderr and "blue_0.jpg" not in refused.stderr
    skipped = optik(
        "probe", colour_model, data, "--workers", "0", "--skip-bad", "--k", "3", "--out", tmp_path / "p.json"
    )
    assert skipped.returncode == 0, skipped.stderr
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["images"] == {"train": 12, "test": 11} and list(report["left_out"]) == [str(cut)]
    assert "left out 1 unreadable image(s)" in skipped.stdout and "note: --k" not in skipped.stdout
    many = optik("probe", colour_model, data, "--workers", "0", "--skip-bad", "--k", "50")
    assert many.returncode == 0 and "note: --k 50 is more than the 12 train images: all of them vote" in many.stdout
