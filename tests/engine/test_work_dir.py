"""The work dir: a second run never lands silently on the first; a pretrained model's preprocessing reaches model.pt."""

import csv
import math

import pytest
from conftest import run_optik, tiny_overrides

from optik.config import load_config
from optik.engine.train import train
from optik.engine.work_dir import claim_work_dir
from optik.errors import ConfigError
from optik.models.package import load_package
from optik.tasks.loading import load_predictor
from optik.tools.report import plot_run, write_report


def logged_epochs(work):
    return {int(row["epoch"]) for row in csv.DictReader(open(work / "logs" / "metrics.csv")) if row["epoch"]}


def test_a_tagged_model_trains_and_packages_its_own_preprocessing(colour_set, tmp_path):
    """test_resnet.r160_in1k: mean/std 0.5, crop 0.95. Its weights are not fetched: model.pretrained is false."""
    cfg = load_config(None, [*tiny_overrides(colour_set, epochs=1), "model.name=test_resnet.r160_in1k"])
    result = train(cfg, work_dir=tmp_path / "run")
    package = load_package(result.package)
    expected = {"image_size": 32, "resize_size": math.floor(32 / 0.95), "mean": [0.5] * 3, "std": [0.5] * 3}
    assert {key: package.preprocess[key] for key in expected} == expected  # image_size: set by tiny_overrides
    assert package.config["data"]["crop_pct"] == 0.95
    assert "  crop_pct: 0.95  # from test_resnet.r160_in1k" in (tmp_path / "run" / "config.yaml").read_text()
    predictor = load_predictor(result.package, mode="eager")  # what predict, test and the services run
    assert (predictor.preprocess.resize_size, predictor.preprocess.mean) == (33, (0.5, 0.5, 0.5))


def test_only_what_optik_wrote_is_removed(tmp_path):
    work = tmp_path / "run"
    for name in ("checkpoints/epoch-1.ckpt", "logs/metrics.csv", "logs/tensorboard/events.out", "plots/loss.png"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(b"old")
    for name in ("config.yaml", "model.pt", "report.html", "test.json", "notes.txt"):
        (work / name).write_text("old")
    with pytest.raises(
        ConfigError, match=r"holds another run \(checkpoints/epoch-1.ckpt, model.pt, logs/metrics.csv\)"
    ):
        claim_work_dir(work, overwrite=False)
    claim_work_dir(work, overwrite=True)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "test.json"]  # named by the user, not by optik
    claim_work_dir(work, overwrite=False)  # nothing of a run left: a new one may start


@pytest.mark.slow  # four short epochs
def test_a_second_run_is_refused_and_overwrite_leaves_nothing_of_the_first(colour_set, tmp_path):
    work = tmp_path / "run"
    base = [*tiny_overrides(colour_set, epochs=2), "train.keep_checkpoints=-1"]
    train(load_config(None, base), work_dir=work)
    plot_run(work, with_eval=False)
    write_report(work, with_eval=False)
    (work / "notes.txt").write_text("mine")  # a user's file: no run's
    assert (work / "checkpoints" / "epoch-2.ckpt").is_file() and list((work / "plots").glob("*.png"))

    refused = run_optik("train", work / "config.yaml", "--work-dir", work)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds another run" in refused.stderr and "--resume" in refused.stderr and "--overwrite" in refused.stderr
    with pytest.raises(ConfigError, match="--resume.*--overwrite"):
        train(load_config(None, base), work_dir=work)
    with pytest.raises(ConfigError, match="give one of them"):
        train(load_config(None, [*base, "train.epochs=3"]), work_dir=work, resume="last", overwrite=True)
    with pytest.raises(ConfigError, match="model.weights .* --overwrite would remove"):
        train(load_config(None, [*base, f"model.weights={work / 'model.pt'}"]), work_dir=work, overwrite=True)

    one_epoch = load_config(None, [*base, "train.epochs=1"])
    train(one_epoch, work_dir=work, overwrite=True)
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["best.ckpt", "epoch-1.ckpt", "last.ckpt"]
    assert not (work / "plots").exists() and not (work / "report.html").exists()
    assert len(list((work / "logs").rglob("events.out.tfevents.*"))) == 1 and logged_epochs(work) == {0}
    assert load_package(work / "model.pt").config["train"]["epochs"] == 1
    assert (work / "notes.txt").read_text() == "mine"

    train(load_config(None, base), work_dir=work, resume="last")  # --resume still continues it
    assert (work / "checkpoints" / "epoch-2.ckpt").is_file() and logged_epochs(work) == {0, 1}
