"""Folder-per-class data: splits, the seeded stratified split, and the errors for broken layouts."""

import pytest
from conftest import make_colour_set

from optik.config import load_config
from optik.data.folder import find_images, folder_splits, stratified_split
from optik.data.loaders import build_classify_data, read_splits
from optik.errors import DataError


def test_split_folders_are_used(tmp_path):
    make_colour_set(tmp_path, per_class=3, splits=("train", "val", "test"))
    splits = folder_splits(tmp_path, None, "", 0.2, 0)
    assert splits.classes == ["blue", "green", "red"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (9, 9, 9)
    assert all("/val/" in path for path, _ in splits.val)


def test_seeded_stratified_split_without_split_folders(colour_set):
    a = folder_splits(colour_set, None, "", 0.25, seed=1)
    b = folder_splits(colour_set, None, "", 0.25, seed=1)
    c = folder_splits(colour_set, None, "", 0.25, seed=2)
    assert a.val == b.val and a.val != c.val
    assert len(a.val) == 9 and len(a.train) == 27 and a.test == a.val
    assert sorted(label for _, label in a.val) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert not set(a.train) & set(a.val)


def test_stratified_split_keeps_singletons_in_train():
    train, held = stratified_split([("a", 0), ("b", 1), ("c", 1)], 0.5, 0)
    assert ("a", 0) in train and len(held) == 1


def test_extensions_case_insensitive_and_non_images_ignored(tmp_path):
    make_colour_set(tmp_path, per_class=2, ext=".PNG")
    (tmp_path / "red" / "photo.JpEg").write_bytes((tmp_path / "red" / "red_0.PNG").read_bytes())
    (tmp_path / "red" / "notes.txt").write_text("x")
    (tmp_path / "red" / ".hidden.png").write_bytes(b"")
    assert len(find_images(tmp_path / "red")) == 3


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        folder_splits(tmp_path / "nope", None, "", 0.2, 0)
    make_colour_set(tmp_path, per_class=2)
    (tmp_path / "purple").mkdir()
    with pytest.raises(DataError, match="without images.*purple"):
        folder_splits(tmp_path, None, "", 0.2, 0)


def test_named_classes_keep_their_order_and_must_match(colour_set):
    splits = folder_splits(colour_set, ["red", "green", "blue"], "data.classes", 0.2, 0)
    assert splits.classes == ["red", "green", "blue"]
    assert all(label == 0 for path, label in splits.train if "/red/" in path)
    with pytest.raises(DataError, match="do not match"):
        folder_splits(colour_set, ["red", "green"], "data.classes", 0.2, 0)


def test_corrupt_images_fail_fast_or_are_skipped(colour_set):
    (colour_set / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (colour_set / "green" / "empty.png").write_bytes(b"")
    cfg = load_config(None, [f"data.root={colour_set}"])
    with pytest.raises(DataError) as info:
        build_classify_data(cfg.data)
    assert "2 unreadable" in str(info.value) and "broken.jpg" in str(info.value) and "skip_bad" in str(info.value)
    data = build_classify_data(load_config(None, [f"data.root={colour_set}", "data.skip_bad=true"]).data)
    assert len(data.skipped) == 2 and sum(len(data.datasets[s]) for s in ("train", "val")) == 36


def test_root_not_set_is_explained():
    with pytest.raises(DataError, match="data.root is not set"):
        read_splits(load_config(None).data)
