"""List files: `relative/path label` lines with index or name labels."""

import pytest
from conftest import make_colour_set

from optik.config import load_config
from optik.data.listfile import read_list
from optik.data.loaders import read_splits
from optik.errors import DataError


def test_index_and_name_labels(colour_set):
    (colour_set / "train.txt").write_text("red/red_0.png 2\ngreen/green_0.png 1\n# comment\n\nblue/blue_0.png 0\n")
    samples, classes = read_list(colour_set / "train.txt", colour_set, ["blue", "green", "red"])
    assert classes == ["blue", "green", "red"] and [s[1] for s in samples] == [2, 1, 0]
    (colour_set / "names.txt").write_text("red/red_0.png red\ngreen/green_1.png green\n")
    samples, classes = read_list(colour_set / "names.txt", colour_set, None)
    assert classes == ["green", "red"] and [s[1] for s in samples] == [1, 0]


def test_errors_name_file_and_line(colour_set):
    (colour_set / "bad.txt").write_text("red/red_0.png 0\nred/red_1.png 7\n")
    with pytest.raises(DataError, match=r"bad.txt:2: label 7 is outside"):
        read_list(colour_set / "bad.txt", colour_set, ["a", "b"])
    (colour_set / "missing.txt").write_text("red/none.png red\n")
    with pytest.raises(DataError, match="not found: .*none.png"):
        read_list(colour_set / "missing.txt", colour_set, None)


def test_list_config_with_val_split(tmp_path):
    make_colour_set(tmp_path, per_class=4)
    lines = [f"{c}/{c}_{i}.png {c}" for c in ("red", "green", "blue") for i in range(4)]
    (tmp_path / "all.txt").write_text("\n".join(lines))
    cfg = load_config(
        None, ["data.format=list", f"data.root={tmp_path}", "data.train_list=all.txt", "data.val_split=0.25"]
    )
    splits = read_splits(cfg.data)
    assert len(splits.train) == 9 and len(splits.val) == 3 and splits.classes == ["blue", "green", "red"]


def test_mixed_index_and_name_labels_are_refused(colour_set):
    (colour_set / "mixed.txt").write_text("red/red_0.png 0\ngreen/green_0.png green\n")
    with pytest.raises(DataError, match="mix class indices and class names"):
        read_list(colour_set / "mixed.txt", colour_set, None)
