"""The run summary of a classifier: what a user must know about the data before the epochs go by."""

from types import SimpleNamespace

from optik.data.loaders import ImageDataset
from optik.tasks.classify import log_data_summary


def summary(datasets: dict, classes: list[str], capsys) -> str:
    log_data_summary(SimpleNamespace(datasets=datasets, classes=classes, skipped=[]))
    return capsys.readouterr().out


def test_a_class_the_val_split_lacks_is_warned_about(capsys):
    classes = ["left", "plain", "top"]
    train = ImageDataset([("a.png", 0), ("b.png", 1), ("c.png", 2)], transform=None)
    val = ImageDataset([("d.png", 0), ("e.png", 2)], transform=None)
    said = summary({"train": train, "val": val}, classes, capsys)
    assert "data: 3 classes; train 3, val 2 images" in said
    assert "warning: val has no images of plain: val/mean_class_acc averages the other 2 classes" in said
    full = ImageDataset([("d.png", 0), ("e.png", 1), ("f.png", 2)], transform=None)
    assert "warning" not in summary({"train": train, "val": full}, classes, capsys)
