"""Training runs end to end: the model learns, the work dir holds what DESIGN §7 promises, options work."""

import csv
import math

import pytest
import torch
from conftest import tiny_overrides

from optik.config import load_config
from optik.engine.train import train
from optik.models.package import load_package


def digits_config(root, *extra):
    return load_config(
        "resnet18_small",
        [*tiny_overrides(root, epochs=3, size=16), "data.batch_size=64", "data.augment.hflip=0", *extra],
    )


@pytest.mark.slow  # over 10 s: CI runs it; `make test-fast` leaves it out
def test_digits_learn_and_work_dir_is_complete(digits_root, tmp_path):
    cfg = digits_config(digits_root, "train.keep_checkpoints=2")
    result = train(cfg, work_dir=tmp_path / "run")
    assert result.metrics["best val/acc1"] > 0.8  # 10 classes: chance is 0.1
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and load_config(run / "config.yaml").data.root == digits_root
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.ckpt", "epoch-2.ckpt", "epoch-3.ckpt", "last.ckpt"]  # keep 2 of the epoch files
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    assert any(row.get("val/acc1") for row in rows) and any(row.get("train/loss_step") for row in rows)
    assert list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    package = load_package(run / "model.pt")
    assert package.classes == [str(i) for i in range(10)] and package.preprocess["image_size"] == 16
    content = torch.load(run / "model.pt", weights_only=True)
    assert content["format"] == "optik-model" and "optimizer_states" not in content


def test_options_train_together(colour_set, tmp_path, capsys):
    """EMA, mixup+cutmix, label smoothing, accumulation, bf16-mixed, step schedule, no validation."""
    cfg = load_config(
        None,
        [
            *tiny_overrides(colour_set, epochs=2),
            "train.ema=true",
            "train.ema_decay=0.9",
            "train.mixup=0.2",
            "train.cutmix=1.0",
            "train.label_smoothing=0.1",
            "train.accumulate_grad_batches=2",
            "train.precision=bf16-mixed",
            "train.scheduler=step",
            "train.step_milestones=[1]",
            "train.validation=false",
            "train.optimizer=sgd",
            "train.lr=0.01",
            "train.grad_clip=1.0",
        ],
    )
    result = train(cfg, work_dir=tmp_path / "run")
    assert math.isfinite(result.metrics["train/loss_epoch"])
    assert result.checkpoint.name == "last.ckpt" and not (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(k.startswith("ema.module.") for k in ckpt["state_dict"])
    package = load_package(tmp_path / "run" / "model.pt")  # the EMA weights are the ones packaged
    ema = {k.removeprefix("ema.module."): v for k, v in ckpt["state_dict"].items() if k.startswith("ema.module.")}
    assert all(torch.equal(package.state_dict[k], v) for k, v in ema.items())


def test_fine_tune_from_weights_reports_keys(colour_set, tmp_path, capsys):
    first = train(load_config(None, tiny_overrides(colour_set, epochs=1)), work_dir=tmp_path / "a")
    capsys.readouterr()
    train(
        load_config(None, [*tiny_overrides(colour_set, epochs=1), f"model.weights={first.package}"]),
        work_dir=tmp_path / "b",
    )
    out = capsys.readouterr().out
    assert "122/122 model keys matched" in out


def test_validate_and_checkpoint_intervals(colour_set, tmp_path):
    cfg = load_config(
        None,
        [
            *tiny_overrides(colour_set, epochs=4),
            "train.validate_every=2",
            "train.checkpoint_every=2",
            "train.keep_checkpoints=-1",
        ],
    )
    train(cfg, work_dir=tmp_path / "run")
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.ckpt", "epoch-2.ckpt", "epoch-4.ckpt", "last.ckpt"]
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "logs" / "metrics.csv")) if r.get("val/acc1")]
    assert sorted({int(r["epoch"]) for r in rows}) == [1, 3]


def test_resume_refuses_other_classes_finished_runs_and_non_checkpoints(colour_set, tmp_path):
    from optik.errors import ConfigError

    cfg = load_config(None, tiny_overrides(colour_set, epochs=1))
    first = train(cfg, work_dir=tmp_path / "run")
    with pytest.raises(ConfigError, match="already trained 1 epochs"):
        train(cfg, work_dir=tmp_path / "run", resume="last")
    reordered = load_config(None, [*tiny_overrides(colour_set, epochs=2), "data.classes=[red, green, blue]"])
    with pytest.raises(ConfigError, match="trained on classes"):
        train(reordered, work_dir=tmp_path / "run", resume="last")
    with pytest.raises(ConfigError, match="not a training checkpoint"):
        train(cfg, work_dir=tmp_path / "other", resume=first.package)


def test_skip_bad_leaving_no_training_images_stops_before_training(tmp_path, optik):
    from conftest import make_colour_set

    root = make_colour_set(tmp_path / "colours", per_class=2, splits=("train", "val"))
    for image in (root / "train").rglob("*.png"):
        image.write_bytes(b"not a png")
    overrides = [f"--set={o}" for o in tiny_overrides(root, epochs=1)] + ["--set=data.skip_bad=true"]
    done = optik("train", "resnet18_small", "--work-dir", tmp_path / "run", *overrides)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "no training images left: data.skip_bad left out all 6 training image(s)" in done.stderr
    assert "not an image" in done.stderr  # why they were left out
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "logs").exists()
