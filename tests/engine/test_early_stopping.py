"""train.early_stopping: a run whose val/acc1 stops improving stops early, says why, keeps its best epoch in
model.pt, and a resumed run stops where the uninterrupted one did. Also the run summary's class balance line."""

import csv

import pytest
import torch
from conftest import make_colour_set, run_optik

from optik.models.package import inference_weights

NET = """
import torch.nn as nn


def tiny(num_classes: int):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, num_classes))
"""
PATIENCE, MIN_DELTA, MAX_EPOCHS = 2, 0.001, 12


def settings(root, net, epochs=MAX_EPOCHS) -> list[str]:
    values = [
        f"data.root={root}",
        f"model.name={net}:tiny",
        "data.image_size=16",
        "data.batch_size=8",
        "data.num_workers=0",
        f"train.epochs={epochs}",
        "train.optimizer=sgd",
        "train.lr=0.1",
        "train.scheduler=constant",  # the same steps whatever train.epochs says, so a resumed run can run longer
        "train.accelerator=cpu",
        "train.keep_checkpoints=-1",
        f"train.early_stopping.patience={PATIENCE}",
        f"train.early_stopping.min_delta={MIN_DELTA}",
        "train.class_weights=balanced",
    ]
    return [arg for value in values for arg in ("--set", value)]


def val_acc(work_dir) -> list[float]:
    with open(work_dir / "logs" / "metrics.csv", newline="") as fh:
        return [float(row["val/acc1"]) for row in csv.DictReader(fh) if row.get("val/acc1")]


def expected_stop(values: list[float]) -> tuple[int, float, int]:
    """The epoch EarlyStopping stops at (1-based), and the best value and its first epoch up to then."""
    best, wait = float("-inf"), 0
    for epoch, value in enumerate(values, 1):
        best, wait = (value, 0) if value - MIN_DELTA > best else (best, wait + 1)
        if wait >= PATIENCE:
            top = max(values[:epoch])
            return epoch, top, values.index(top) + 1
    raise AssertionError(f"val/acc1 {values} never stopped improving")


def stop_line(epoch: int, best: float, best_epoch: int) -> str:
    return (
        f"stopped at epoch {epoch}: val/acc1 has not improved by {MIN_DELTA:g} for {PATIENCE} epochs "
        f"(best {best:.4f} at epoch {best_epoch})"
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Three colour classes, red cut to a third in train (4, 12, 12), and the tiny network's file."""
    tmp = tmp_path_factory.mktemp("early")
    root = make_colour_set(tmp / "data", per_class=12, size=16, splits=("train", "val"))
    for path in sorted((root / "train" / "red").iterdir())[4:]:
        path.unlink()
    net = tmp / "net.py"
    net.write_text(NET)
    return tmp, root, net


@pytest.fixture(scope="module")
def stopped(setup):
    tmp, root, net = setup
    run = run_optik("train", "resnet18_small", "--work-dir", tmp / "whole", *settings(root, net), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return tmp / "whole", run.stdout


@pytest.mark.slow  # a training run of a few seconds an epoch
def test_training_stops_when_the_monitor_stops_improving(stopped):
    work, stdout = stopped
    values = val_acc(work)
    epoch, best, best_epoch = expected_stop(values)
    assert len(values) == epoch < MAX_EPOCHS
    assert stop_line(epoch, best, best_epoch) in stdout
    package = torch.load(work / "model.pt", weights_only=True)["state_dict"]
    best_ckpt = torch.load(work / "checkpoints" / f"epoch-{best_epoch}.ckpt", weights_only=True)["state_dict"]
    last = torch.load(work / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(package[k], v) for k, v in inference_weights(best_ckpt).items())
    assert not all(torch.equal(package[k], v) for k, v in inference_weights(last).items())  # later epochs trained on


@pytest.mark.slow
def test_run_summary_names_class_counts_weights_and_sampler(stopped):
    _, stdout = stopped
    assert (
        "train images per class: blue 12, green 12, red 4; loss weights: balanced (blue 0.778, green 0.778, red 2.33); "
        "sampler: random" in stdout
    )


@pytest.mark.slow  # two more training runs
def test_a_resumed_run_keeps_the_patience_counter(setup, stopped):
    tmp, root, net = setup
    whole, _ = stopped
    epoch, best, best_epoch = expected_stop(val_acc(whole))
    # end the first part one epoch after the best: the counter then stands at 1 of PATIENCE
    part = tmp / "part"
    first = run_optik("train", "resnet18_small", "--work-dir", part, *settings(root, net, best_epoch + 1), timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "stopped at epoch" not in first.stdout
    resumed = run_optik("train", "--resume", "--work-dir", part, "--set", f"train.epochs={MAX_EPOCHS}", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert len(val_acc(part)) == epoch  # a fresh counter would have waited PATIENCE epochs more from the resume
    assert stop_line(epoch, best, best_epoch) in resumed.stdout


def test_early_stopping_without_validation_is_refused(setup, tmp_path):
    _, root, net = setup
    run = run_optik("train", "resnet18_small", "--work-dir", tmp_path / "run", *settings(root, net), "--no-validate")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "train.early_stopping watches a validation metric, but train.validation is off" in run.stderr


def test_class_weights_must_name_every_class(setup, tmp_path):
    _, root, net = setup
    run = run_optik(
        "train",
        "resnet18_small",
        "--work-dir",
        tmp_path / "run",
        *settings(root, net),
        "--set",
        "train.class_weights=[1, 2]",
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "train.class_weights lists 2 weight(s), but the data has 3 classes" in run.stderr
    assert not (tmp_path / "run" / "model.pt").exists()
