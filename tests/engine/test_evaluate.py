"""`optik test` metrics: equal to scikit-learn's on the same predictions; result files and plots."""

import json
import pickle

import numpy as np
import pytest
import yaml
from conftest import tiny_overrides
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    top_k_accuracy_score,
)

from optik.config import load_config
from optik.engine.evaluate import evaluate, plot_evaluation
from optik.engine.train import train
from optik.errors import ConfigError, DataError
from optik.metrics.classification import classification_metrics, top_k_accuracies
from optik.metrics.evaluation import write_results


def test_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, 300)
    probs = rng.dirichlet(np.ones(6), 300)
    probs[np.arange(300), labels] += rng.random(300) * 0.6  # better than chance, not perfect
    probs /= probs.sum(1, keepdims=True)
    classes = list("abcdef")
    m = classification_metrics(probs, labels, classes)
    pred = probs.argmax(1)
    assert m["accuracy_top1"] == pytest.approx((pred == labels).mean())
    assert m["accuracy_top5"] == pytest.approx(top_k_accuracy_score(labels, probs, k=5))
    assert m["mean_class_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    assert m["precision_macro"] == pytest.approx(precision_score(labels, pred, average="macro"))
    assert m["recall_macro"] == pytest.approx(recall_score(labels, pred, average="macro"))
    assert m["f1_macro"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert m["confusion_matrix"] == confusion_matrix(labels, pred).tolist()
    assert [m["per_class"][c]["support"] for c in classes] == np.bincount(labels, minlength=6).tolist()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import make_colour_set, shared_once

    def make(folder):
        root = make_colour_set(folder / "data", per_class=10, splits=("train", "val", "test"))
        result = train(load_config(None, [*tiny_overrides(root, epochs=3), "train.lr=0.003"]), work_dir=folder / "run")
        return root, result.package

    return shared_once(tmp_path_factory, "evaluate_trained", make)


def test_evaluate_files_and_plot(trained, tmp_path):
    root, package = trained
    result = evaluate(package, root, split="test", mode="eager")
    assert result.metrics["images"] == 30 and result.metrics["accuracy_top1"] > 0.5  # 3 classes: chance 0.33
    for name in ("r.json", "r.yaml", "r.pkl"):
        write_results(result, tmp_path / name, include_items=True)
    loaded = [
        json.loads((tmp_path / "r.json").read_text()),
        yaml.safe_load((tmp_path / "r.yaml").read_text()),
        pickle.loads((tmp_path / "r.pkl").read_bytes()),
    ]
    for content in loaded:
        assert content["metrics"]["accuracy_top1"] == pytest.approx(result.metrics["accuracy_top1"])
        assert len(content["predictions"]) == 30 and {"file", "label", "pred", "score"} <= set(
            content["predictions"][0]
        )
    (png,) = plot_evaluation(result, tmp_path / "plots")
    assert png.name == "confusion_matrix.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_data_is_the_runs_own_split(trained):
    root, package = trained
    assert evaluate(package, None, split="val", mode="eager").metrics["data"] == str(root / "val")


def test_unknown_classes_and_bad_images(trained, tmp_path):
    root, package = trained
    odd = tmp_path / "odd"
    (odd / "purple").mkdir(parents=True)
    (odd / "purple" / "x.png").write_bytes((root / "test" / "red" / "red_0.png").read_bytes())
    with pytest.raises(DataError, match="purple"):
        evaluate(package, odd, mode="eager")
    broken = tmp_path / "broken"
    (broken / "red").mkdir(parents=True)
    (broken / "red" / "ok.png").write_bytes((root / "test" / "red" / "red_0.png").read_bytes())
    (broken / "red" / "bad.png").write_bytes(b"")
    result = evaluate(package, broken, mode="eager")
    assert (
        result.metrics["images"] == 1
        and result.metrics["unreadable"] == 1
        and result.failures[0]["error"] == "empty file (0 bytes)"
    )


def test_top5_only_with_more_than_five_classes():
    assert [a.k for a in top_k_accuracies(2)] == [1]
    assert [a.k for a in top_k_accuracies(5)] == [1]
    assert [(a.logged, a.reported) for a in top_k_accuracies(6)] == [
        ("val/acc1", "accuracy_top1"),
        ("val/acc5", "accuracy_top5"),
    ]
    rng = np.random.default_rng(0)
    m = classification_metrics(rng.dirichlet(np.ones(2), 20), rng.integers(0, 2, 20), ["a", "b"])
    assert [key for key in m if key.startswith("accuracy_top")] == ["accuracy_top1"]


def test_a_two_class_run_logs_and_tests_the_same_top_k(tmp_path):
    """No always-1.0 top-5 in a 2-class run, and `optik test` names the accuracies the run logged."""
    import csv
    import shutil

    from conftest import make_colour_set

    root = make_colour_set(tmp_path / "data", per_class=8, splits=("train", "val"))
    for split in ("train", "val"):
        shutil.rmtree(root / split / "blue")
    run = train(load_config(None, tiny_overrides(root, epochs=1)), work_dir=tmp_path / "run")
    with open(tmp_path / "run" / "logs" / "metrics.csv", newline="") as fh:
        logged = {column for column in next(csv.reader(fh)) if column.startswith("val/acc")}
    assert logged == {"val/acc1"}
    tested = evaluate(run.package, root, split="val", mode="eager").metrics
    reported = {key for key in tested if key.startswith("accuracy_top")}
    assert reported == {a.reported for a in top_k_accuracies(2) if a.logged in logged} == {"accuracy_top1"}

    with pytest.raises(ConfigError, match="train.monitor is val/acc5.*2 classes.*val/acc1"):
        train(load_config(None, [*tiny_overrides(root, epochs=1), "train.monitor=val/acc5"]), work_dir=tmp_path / "r2")
