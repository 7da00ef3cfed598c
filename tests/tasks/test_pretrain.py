"""Pretraining runs end to end: unlabelled folders and list files, bad images, backbone.pt into a classifier."""

import re

import pytest
from conftest import make_colour_set, run_optik

from optik.config.load import load_config
from optik.engine.train import train
from optik.errors import ConfigError, DataError

QUICK = [
    "data.image_size=16",
    "data.batch_size=8",
    "data.num_workers=0",
    "ssl.hidden_dim=32",
    "ssl.out_dim=16",
    "train.epochs=1",
    "train.keep_checkpoints=1",
    "train.optimizer=adamw",
    "train.lr=0.001",
]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory, digits_root):
    """backbone.pt of a short SimCLR run on every 8th of the digits' train images (158; labels not used)."""
    import shutil

    from conftest import shared_once

    def make(work):
        images = work / "unlabelled"
        images.mkdir()
        for i, path in enumerate(sorted((digits_root / "train").rglob("*.png"))[::8]):
            shutil.copy(path, images / f"{i}.png")
        cfg = load_config("ssl_resnet18_small", QUICK + [f"data.root={images}", "train.epochs=2"])
        return train(cfg, work_dir=work / "run").package

    return shared_once(tmp_path_factory, "pretrain_backbone", make)


@pytest.mark.slow  # a classify run fine-tuned from the backbone
def test_backbone_fine_tunes_with_every_backbone_key_matched(backbone, digits_root, tmp_path):
    done = run_optik(
        "train",
        "resnet18_small",
        "--work-dir",
        tmp_path / "ft",
        "--set",
        f"data.root={digits_root}",
        "--set",
        f"model.weights={backbone}",
        "--set",
        "train.epochs=1",
        "--set",
        "data.image_size=16",
        "--set",
        "data.num_workers=0",
        "--set",
        "train.keep_checkpoints=1",
    )
    assert done.returncode == 0, done.stderr
    matched = re.search(r"weights \S+backbone\.pt: (\d+)/(\d+) model keys matched", done.stdout)
    assert matched, done.stdout
    missing = re.search(r"missing \(left as initialised\): (\d+): (.*)", done.stdout)
    assert missing and missing.group(2).split(", ") == ["fc.weight", "fc.bias"]  # only the new classifier head
    assert int(matched.group(1)) == int(matched.group(2)) - 2 and "unexpected" not in done.stdout
    assert (tmp_path / "ft" / "model.pt").is_file()


def test_pretraining_checkpoint_loads_with_its_prefix_stripped(backbone, tmp_path):
    import timm

    from optik.models.weights import load_weights

    report = load_weights(timm.create_model("resnet18", num_classes=3), backbone.parent / "checkpoints" / "last.ckpt")
    assert report.prefix == "model.backbone." and report.missing == ["fc.weight", "fc.bias"] and not report.unexpected


def test_list_files_give_the_unlabelled_images(tmp_path):
    data = make_colour_set(tmp_path / "data", per_class=4)
    paths = sorted(p.relative_to(data) for p in data.rglob("*.png"))
    (tmp_path / "labelled.txt").write_text("".join(f"{p} 1\n" for p in paths[:6]))
    (tmp_path / "plain.txt").write_text("# unlabelled\n" + "".join(f"{p}\n" for p in paths[6:]))
    cfg = load_config(
        "ssl_resnet18_small",
        QUICK
        + [
            "data.format=list",
            f"data.root={data}",
            f"data.lists=[{tmp_path / 'labelled.txt'},{tmp_path / 'plain.txt'}]",
        ],
    )
    from optik.data.loaders import build_pretrain_data
    from optik.models.ssl import view_transform

    dataset, skipped = build_pretrain_data(cfg.data, view_transform(cfg))
    assert len(dataset) == 12 and not skipped
    views, _ = dataset[0]
    assert len(views) == 2 and views[0].shape == (3, 16, 16)


def test_bad_images_are_named_or_left_out(tmp_path):
    data = make_colour_set(tmp_path / "data", per_class=4)
    (data / "red" / "empty.png").write_bytes(b"")
    (data / "blue" / "cut.png").write_bytes((data / "blue" / "blue_0.png").read_bytes()[:100])
    cfg = load_config("ssl_resnet18_small", QUICK + [f"data.root={data}"])
    with pytest.raises(DataError, match=r"2 unreadable image\(s\).*data.skip_bad"):
        train(cfg, work_dir=tmp_path / "run")
    result = train(
        cfg.model_copy(update={"data": cfg.data.model_copy(update={"skip_bad": True})}), work_dir=tmp_path / "run"
    )
    assert result.package.is_file()


def test_config_mistakes_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="ssl.method"):
        load_config("ssl_resnet18_small", ["ssl.method=mocov9"])
    with pytest.raises(ConfigError, match="validation must be false"):
        load_config("ssl_resnet18_small", ["train.validation=true"])
    done = run_optik(
        "train", "ssl_resnet18_small", "--work-dir", tmp_path / "r", "--set", f"data.root={tmp_path / 'nowhere'}"
    )
    assert done.returncode == 2 and "data.root is not an image folder" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow  # over 10 s: CI runs it; `make test-fast` leaves it out
def test_probe_reads_backbone_pt_and_the_pretraining_checkpoint_alike(backbone, digits_root):
    from optik.engine.probe import probe

    from_package = probe(backbone, digits_root, workers=0)
    from_checkpoint = probe(backbone.parent / "checkpoints" / "last.ckpt", digits_root, workers=0)
    assert from_package.feature_dim == 512 and from_package.images["test"] > 100
    assert (
        from_package.linear.accuracy == from_checkpoint.linear.accuracy
        and from_package.knn.per_class == from_checkpoint.knn.per_class
    )
    assert from_package.linear.accuracy > 0.3  # ten classes: chance is 0.1


def test_a_backbone_is_not_a_predictor(backbone, digits_root):
    image = next((digits_root / "test").rglob("*.png"))
    for args in (("predict", backbone, image), ("test", backbone, digits_root)):
        done = run_optik(*args)
        assert done.returncode == 2 and "pretrained backbone" in done.stderr and "Traceback" not in done.stderr
