"""`optik train` under torchrun: two CPU processes (gloo) train as one process on the combined batch."""

import csv
from pathlib import Path

import pytest
import torch
from conftest import make_colour_set, run_optik, run_torchrun

pytestmark = pytest.mark.xdist_group("ddp_train")  # one worker makes the `runs` fixture, for both tests that read it

NET = '''
import torch.nn as nn


def tiny(num_classes: int):
    """No batch norm, no dropout: a step on 2 x 12 images equals a step on 24."""
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, num_classes))
'''


def settings(root: Path, net: Path, batch_size: int) -> list[str]:
    values = [
        f"data.root={root}",
        f"model.name={net}:tiny",
        "train.epochs=3",
        "data.image_size=32",
        "data.num_workers=0",
        f"data.batch_size={batch_size}",
        "train.optimizer=sgd",
        "train.lr=0.1",
        "train.weight_decay=0",
        "train.accelerator=cpu",
        "train.log_every_n_steps=1",
    ]
    return [arg for value in values for arg in ("--set", value)]


def losses(work_dir: Path) -> list[float]:
    with open(work_dir / "logs" / "metrics.csv", newline="") as f:
        return [float(row["train/loss_step"]) for row in csv.DictReader(f) if row["train/loss_step"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run twice: one process with batches of 24, and torchrun with 2 processes of 12 each."""
    tmp = tmp_path_factory.mktemp("ddp")
    root = make_colour_set(tmp / "data", per_class=8, splits=("train", "val"))
    net = tmp / "net.py"
    net.write_text(NET)
    one = run_optik("train", "resnet18_small", "--work-dir", tmp / "one", *settings(root, net, 24), timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_torchrun(
        2,
        "-m",
        "optik.cli",
        "train",
        "resnet18_small",
        "--work-dir",
        tmp / "two",
        *settings(root, net, 12),
        "--set",
        "train.devices=2",
        "--set",
        "train.strategy=ddp",
        timeout=300,
    )
    return tmp / "one", tmp / "two", two.stdout


@pytest.mark.slow  # two training runs under torchrun (gloo)
def test_both_processes_train_and_report_once(runs):
    _, two, stdout = runs
    assert "process 0 of 2 (node 0, gloo on cpu): 1 batch per epoch" in stdout
    assert "process 1 of 2 (node 0, gloo on cpu): 1 batch per epoch" in stdout
    # the data summary and the results come from the first process only
    assert stdout.count("data: 3 classes") == 1
    assert stdout.count("work dir:") == 1
    # the value model.pt was chosen by, then the last epoch's metrics
    assert stdout.count("\nbest val/") == 1 and stdout.count("\nlast epoch: val/") == 1
    assert (two / "model.pt").is_file() and (two / "config.yaml").is_file()


@pytest.mark.slow  # two training runs under torchrun (gloo)
def test_two_processes_equal_one_on_the_combined_batch(runs):
    one, two, _ = runs
    single = torch.load(one / "model.pt", weights_only=True)["state_dict"]
    ddp = torch.load(two / "model.pt", weights_only=True)["state_dict"]
    assert single.keys() == ddp.keys()
    for key in single:
        # gradients averaged over the two processes: the same steps up to float rounding
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    # the logged loss is the mean over both processes' images, as in the single run, and it fell: the steps were real
    assert len(losses(one)) == 3
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)
    assert losses(two)[-1] < 0.5 * losses(two)[0]


def test_sync_batchnorm_is_refused_on_the_cpu(colour_set, tmp_path, optik):
    run = optik(
        "train",
        "resnet18_small",
        "--work-dir",
        tmp_path / "run",
        "--set",
        f"data.root={colour_set}",
        "--set",
        "train.accelerator=cpu",
        "--set",
        "train.sync_batchnorm=true",
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "train.sync_batchnorm needs GPUs" in run.stderr and not (tmp_path / "run" / "model.pt").exists()
