"""`optik data convert`: voc|yolo -> COCO reads back to the same set; class folders split, listed and rebuilt as optik reads them."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_colour_set, tiny_overrides

from optik.config import load_config
from optik.data.classes import read_labels_file
from optik.data.coco import read_coco
from optik.data.listfile import read_list
from optik.data.loaders import read_splits
from optik.data.voc import read_voc
from optik.data.yolo import read_yolo
from optik.errors import ConfigError, DataError
from optik.tools.convert import convert_to_coco, folder_to_lists, lists_to_folder, split_folder
from optik.tools.shapes import write_shapes_set


def assert_same_set(a, b):
    assert a.classes == b.classes and len(a) == len(b)
    for x, y in zip(a.records, b.records):
        assert (x.path, x.width, x.height, x.image_id) == (y.path, y.width, y.height, y.image_id)
        assert x.labels.tolist() == y.labels.tolist() and x.iscrowd.tolist() == y.iscrowd.tolist()
        np.testing.assert_allclose(x.boxes, y.boxes, atol=1e-5)
        np.testing.assert_allclose(x.areas, y.areas, atol=1e-5)


def test_voc_to_coco_reads_back_equal(tmp_path):
    root = write_shapes_set(tmp_path / "voc", "voc", train=3, val=0, size=64)
    out = tmp_path / "out" / "train.json"
    summary = convert_to_coco("voc", root / "train", out)
    original = read_voc(root / "train")
    assert (
        summary["images"] == 3
        and summary["objects"] == original.num_objects
        and summary["classes"] == ["circle", "square", "triangle"]
    )
    doc = json.loads(out.read_text())
    assert doc["images"][0]["file_name"] == "../voc/train/00000.png"
    assert_same_set(original, read_coco(out))


def test_yolo_to_coco_with_polygons_and_copied_images(tmp_path):
    root = write_shapes_set(tmp_path / "yolo", "yolo", train=2, val=0, size=64)
    with open(root / "train" / "00001.txt", "a") as labels:
        labels.write("1 0.1 0.1 0.4 0.1 0.4 0.3\n")  # a triangle as a polygon
    out = tmp_path / "coco" / "annotations.json"
    convert_to_coco("yolo", root / "train", out, classes=["circle", "square", "triangle"], copy_images=True)
    doc = json.loads(out.read_text())
    assert [i["file_name"] for i in doc["images"]] == ["images/00000.png", "images/00001.png"]
    assert (tmp_path / "coco" / "images" / "00001.png").is_file()
    assert doc["annotations"][-1]["segmentation"] == [[6.4, 6.4, 25.6, 6.4, 25.6, 19.2]]
    back, original = read_coco(out), read_yolo(root / "train")
    assert back.records[1].segmentations[-1] == original.records[1].segmentations[-1]
    for x, y in zip(back.records, original.records):
        x.path = y.path  # the copies, compared with the originals
    assert_same_set(back, original)


def test_a_source_in_splits_converts_one_split_or_says_they_are_merged(tmp_path):
    root = write_shapes_set(tmp_path / "yolo", "yolo", train=3, val=2, size=64)
    names = ["circle", "square", "triangle"]
    merged = convert_to_coco("yolo", root, tmp_path / "all.json", classes=names)
    assert merged["images"] == 5 and "holds the splits train, val; they are merged" in merged["report"][0]
    val = convert_to_coco("yolo", root, tmp_path / "val.json", split="val", classes=names)
    assert val["images"] == 2 and not any("merged" in line for line in val["report"])
    assert_same_set(read_coco(tmp_path / "val.json"), read_yolo(root / "val"))
    with pytest.raises(ConfigError, match=r"no test split in .* \(splits found: train, val\)"):
        convert_to_coco("yolo", root, tmp_path / "test.json", split="test", classes=names)
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):  # an earlier output is not replaced silently
        convert_to_coco("yolo", root, tmp_path / "val.json", split="val", classes=names)
    assert (
        convert_to_coco("yolo", root, tmp_path / "val.json", split="train", overwrite=True, classes=names)["images"]
        == 3
    )


def test_bad_format_and_classes(tmp_path):
    with pytest.raises(ConfigError, match="cannot convert from 'coco'"):
        convert_to_coco("coco", tmp_path, tmp_path / "x.json")
    with pytest.raises(DataError, match=r"VOC source not found: .*missing \(SOURCE is a folder laid out as") as error:
        convert_to_coco("voc", tmp_path / "missing", tmp_path / "x.json")
    assert "data.root" not in str(error.value)  # a command line's SOURCE, not a config key
    root = write_shapes_set(tmp_path / "voc", "voc", train=1, val=0, size=64)
    with pytest.raises(DataError, match="do not match"):
        convert_to_coco("voc", root / "train", tmp_path / "x.json", classes="circle,square")
    assert not (tmp_path / "x.json").exists()


# ----------------------------------------------------------------------------- class folders and list files


def files_below(root):
    """Relative path -> bytes of every file below root (hidden files left out)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def add_class(root, name, count):
    """A class folder with `count` copies of a red image, under new names."""
    (root / name).mkdir()
    for i in range(count):
        shutil.copy(root / "red" / "red_0.png", root / name / f"{name}_{i}.png")


def test_split_is_stratified_seeded_and_read_by_the_folder_loader(tmp_path):
    data = make_colour_set(tmp_path / "data", per_class=12)
    add_class(data, "pair", 2)
    add_class(data, "single", 1)
    (data / "red" / "sub").mkdir()
    shutil.copy(data / "red" / "red_0.png", data / "red" / "sub" / "red_0.png")  # same name one folder down: kept apart
    (data / "red" / "notes.txt").write_text("not an image")
    before = files_below(data)

    result = split_folder(data, tmp_path / "out", seed=3)
    assert result.counts == {
        "train": {"blue": 10, "green": 10, "pair": 1, "red": 11, "single": 1},
        "val": {"blue": 1, "green": 1, "pair": 1, "red": 1, "single": 0},
        "test": {"blue": 1, "green": 1, "pair": 0, "red": 1, "single": 0},
    }
    assert any("'pair' has only 2" in n and "none in test" in n for n in result.notes)
    assert any("'single' has only 1" in n and "none in val or test" in n for n in result.notes)
    assert any("notes.txt" in n for n in result.notes)
    assert files_below(data) == before  # the source is only read
    written = files_below(tmp_path / "out")
    # every image once, names kept
    assert sorted(k.split("/", 1)[1] for k in written) == sorted(k for k in before if not k.endswith(".txt"))
    assert all(written[k] == before[k.split("/", 1)[1]] for k in written)

    splits = read_splits(load_config(None, [f"data.root={tmp_path / 'out'}"]).data)
    assert splits.classes == ["blue", "green", "pair", "red", "single"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (33, 4, 3) and not splits.val_held_out

    again = split_folder(data, tmp_path / "again", seed=3)
    split_folder(data, tmp_path / "other", seed=4)
    assert files_below(tmp_path / "again") == written and again.counts == result.counts
    assert set(files_below(tmp_path / "other")) != set(written)


def test_split_without_test_share_and_with_links(tmp_path):
    data = make_colour_set(tmp_path / "data", per_class=5)
    split_folder(data, tmp_path / "out", ratios=(0.6, 0.4, 0.0), link="hardlink")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".optik-convert.json", "train", "val"]
    image = next((tmp_path / "out" / "val" / "red").iterdir())
    assert image.stat().st_ino == (data / "red" / image.name).stat().st_ino
    split_folder(data, tmp_path / "links", link="symlink")
    link = next((tmp_path / "links" / "train" / "blue").iterdir())
    assert (
        link.is_symlink()
        and not Path(os.readlink(link)).is_absolute()
        and link.read_bytes() == (data / "blue" / link.name).read_bytes()
    )


def test_split_refuses_bad_ratios_and_foreign_or_earlier_output(tmp_path):
    data = make_colour_set(tmp_path / "data", per_class=4)
    for ratios in [(0.8, 0.1, 0.2), (0.0, 0.5, 0.5), (1.1, -0.1, 0.0)]:
        with pytest.raises(ConfigError, match="adding up to 1"):
            split_folder(data, tmp_path / "out", ratios=ratios)
    with pytest.raises(DataError, match="source folder not found"):
        split_folder(tmp_path / "nowhere", tmp_path / "out")
    with pytest.raises(DataError, match="inside the source"):
        split_folder(data, data / "split")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        split_folder(data, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "keep.txt").read_text() == "mine"

    split_folder(data, tmp_path / "out", seed=0)
    with pytest.raises(DataError, match="add --overwrite"):
        split_folder(data, tmp_path / "out", seed=1)
    split_folder(data, tmp_path / "out", ratios=(0.5, 0.5, 0.0), seed=1, overwrite=True)
    # nothing left of the first split
    assert len(files_below(tmp_path / "out")) == 12 and not (tmp_path / "out" / "test").exists()
    with pytest.raises(DataError, match="split already"):
        split_folder(tmp_path / "out", tmp_path / "again")


def test_check_names_unreadable_images_or_leaves_them_out(tmp_path):
    data = make_colour_set(tmp_path / "data", per_class=4)
    (data / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"1 unreadable image.*broken.png.*--skip-bad"):
        split_folder(data, tmp_path / "out", check=True)
    assert not (tmp_path / "out").exists()
    result = split_folder(data, tmp_path / "out", skip_bad=True)
    assert sum(result.counts[s]["red"] for s in result.counts) == 4 and any("broken.png" in n for n in result.notes)
    copied = split_folder(data, tmp_path / "out", overwrite=True)  # without --check: written, and said
    assert sum(copied.counts[s]["red"] for s in copied.counts) == 5
    (note,) = [n for n in copied.notes if "broken.png" in n]
    assert note.startswith("1 file(s) do not read as images and are written as they are") and "--check" in note


def test_list_to_folder_names_unreadable_images_or_leaves_them_out(tmp_path):
    make_colour_set(tmp_path / "a", per_class=2)
    (tmp_path / "a" / "red" / "broken.png").write_bytes(b"")
    (tmp_path / "set.txt").write_text("a/red/red_0.png warm\na/red/broken.png warm\na/blue/blue_0.png cold\n")
    with pytest.raises(
        DataError, match=r"^1 unreadable image\(s\): .*broken.png: empty file.*add --skip-bad to leave them out$"
    ):
        lists_to_folder([tmp_path / "set.txt"], tmp_path / "out", check=True)
    result = lists_to_folder([tmp_path / "set.txt"], tmp_path / "out", skip_bad=True)
    assert result.counts == {"": {"cold": 1, "warm": 1}} and any(
        n.startswith("left out 1 unreadable image(s)") and "broken.png" in n for n in result.notes
    )


def test_lists_of_a_split_folder_read_back_and_round_trip(tmp_path):
    data = make_colour_set(tmp_path / "data", per_class=4, splits=("train", "val"))
    result = folder_to_lists(data, tmp_path / "lists")
    assert result.written == [str(tmp_path / "lists" / name) for name in ("train.txt", "val.txt", "classes.txt")]
    assert (tmp_path / "lists" / "train.txt").read_text().splitlines()[0] == "../data/train/blue/blue_0.png blue"
    assert (tmp_path / "lists" / "classes.txt").read_text() == "blue\ngreen\nred\n"

    folder = read_splits(load_config(None, [f"data.root={data}"]).data)
    lists = tmp_path / "lists"
    listed = read_splits(
        load_config(
            None,
            [
                "data.format=list",
                f"data.train_list={lists / 'train.txt'}",
                f"data.val_list={lists / 'val.txt'}",
                f"data.classes={lists / 'classes.txt'}",
            ],
        ).data
    )
    assert listed.classes == folder.classes == ["blue", "green", "red"]
    for split in ("train", "val"):
        assert sorted((os.path.realpath(p), c) for p, c in listed.get(split)) == sorted(folder.get(split))

    back = lists_to_folder([lists / "train.txt", lists / "val.txt"], tmp_path / "back")
    assert back.counts == {"train": {"blue": 4, "green": 4, "red": 4}, "val": {"blue": 4, "green": 4, "red": 4}}
    assert files_below(tmp_path / "back") == files_below(data)


def test_flat_folder_lists_beside_the_images(tmp_path):
    data = make_colour_set(tmp_path / "data", per_class=10)
    result = folder_to_lists(data)
    assert result.written == [str(data / "all.txt"), str(data / "classes.txt")] and result.counts == {
        "": {"blue": 10, "green": 10, "red": 10}
    }
    assert (data / "all.txt").read_text().splitlines()[0] == "blue/blue_0.png blue"
    with pytest.raises(DataError, match="already has all.txt, classes.txt; add --overwrite"):
        folder_to_lists(data, ratios=(0.8, 0.1, 0.1))
    result = folder_to_lists(data, ratios=(0.8, 0.1, 0.1), overwrite=True)
    assert not (data / "all.txt").exists() and result.counts["val"] == {"blue": 1, "green": 1, "red": 1}
    with_root = load_config(
        None,
        [
            "data.format=list",
            f"data.root={data}",
            "data.train_list=train.txt",
            "data.val_list=val.txt",
            "data.test_list=test.txt",
        ],
    )
    splits = read_splits(with_root.data)  # list files in data.root: relative paths read the same with data.root set
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 3, 3) and splits.classes == [
        "blue",
        "green",
        "red",
    ]


def test_number_names_become_index_labels_and_come_back_by_classes_txt(tmp_path):
    colours, data = make_colour_set(tmp_path / "colours", per_class=3), tmp_path / "data"
    for name, colour in (("3", "red"), ("10", "green"), ("7", "blue")):
        shutil.copytree(colours / colour, data / name)
    result = folder_to_lists(data, tmp_path / "lists")
    assert any("class indices" in n for n in result.notes)
    assert (tmp_path / "lists" / "classes.txt").read_text() == "10\n3\n7\n"  # optik's order: sorted folder names
    assert (tmp_path / "lists" / "all.txt").read_text().splitlines()[0] == "../data/10/green_0.png 0"
    samples, classes = read_list(
        tmp_path / "lists" / "all.txt", None, read_labels_file(tmp_path / "lists" / "classes.txt")
    )
    assert all(Path(path).parent.name == classes[label] for path, label in samples)
    # classes.txt beside the list names the indices
    back = lists_to_folder([tmp_path / "lists" / "all.txt"], tmp_path / "back")
    assert back.counts == {"": {"10": 3, "3": 3, "7": 3}} and files_below(tmp_path / "back") == files_below(data)


def test_list_to_folder_keeps_names_apart_and_skips_non_images(tmp_path):
    make_colour_set(tmp_path / "a", per_class=1)
    make_colour_set(tmp_path / "b", per_class=1, seed=1)
    (tmp_path / "a" / "readme.md").write_text("#")
    (tmp_path / "set.txt").write_text(
        "a/red/red_0.png warm\nb/red/red_0.png warm\na/blue/blue_0.png cold\na/readme.md cold\n"
    )
    result = lists_to_folder([tmp_path / "set.txt"], tmp_path / "out")
    assert result.counts == {"": {"cold": 1, "warm": 2}}
    assert sorted(files_below(tmp_path / "out")) == ["cold/blue_0.png", "warm/red_0-2.png", "warm/red_0.png"]
    assert (tmp_path / "out" / "warm" / "red_0-2.png").read_bytes() == (
        tmp_path / "b" / "red" / "red_0.png"
    ).read_bytes()
    assert any("readme.md" in n for n in result.notes) and any("renamed 1" in n for n in result.notes)
    with pytest.raises(DataError, match="one list file, or lists named train.txt"):
        lists_to_folder([tmp_path / "set.txt", tmp_path / "set.txt"], tmp_path / "out2")
    with pytest.raises(DataError, match="holds a source file"):
        lists_to_folder([tmp_path / "set.txt"], tmp_path / "a")


def test_cli_split_then_list_then_train(tmp_path, optik):
    data = make_colour_set(tmp_path / "data", per_class=6)
    done = optik(
        "data",
        "convert",
        "split",
        data,
        tmp_path / "split",
        "--ratios",
        "0.5",
        "0.25",
        "0.25",
        "--seed",
        "7",
        "--link",
        "symlink",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["class  train    val   test", "blue       3      2      1"]
    done = optik("data", "convert", "folder-to-list", tmp_path / "split", tmp_path / "lists")
    assert done.returncode == 0, done.stderr
    assert f"train_list: {tmp_path / 'lists' / 'train.txt'}" in done.stdout
    lists = tmp_path / "lists"
    settings = [s for s in tiny_overrides(data, epochs=1) if not s.startswith("data.root=")] + [
        "data.format=list",
        f"data.train_list={lists / 'train.txt'}",
        f"data.val_list={lists / 'val.txt'}",
        f"data.test_list={lists / 'test.txt'}",
        f"data.classes={lists / 'classes.txt'}",
    ]
    trained = optik(
        "train",
        "resnet18_small",
        "--work-dir",
        tmp_path / "run",
        *[arg for setting in settings for arg in ("--set", setting)],
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "run" / "model.pt").is_file()


def test_cli_errors_are_one_line(tmp_path, optik):
    missing = optik("data", "convert", "split", tmp_path / "nowhere", tmp_path / "out")
    assert missing.returncode == 2 and missing.stderr.strip().splitlines() == [
        f"error: source folder not found: {tmp_path / 'nowhere'}; give a folder with one sub-folder of images per class"
    ]
    data = make_colour_set(tmp_path / "data", per_class=2)
    bad = optik("data", "convert", "split", data, tmp_path / "out", "--ratios", "0.8", "0.2", "0.2")
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("error: --ratios 0.8 0.2 0.2: ")
        and len(bad.stderr.strip().splitlines()) == 1
    )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    taken = optik("data", "convert", "split", data, tmp_path / "full")
    assert taken.returncode == 2 and "is not empty" in taken.stderr
    voc = optik("data", "convert", "voc", tmp_path / "nowhere", tmp_path / "x.txt")
    assert voc.returncode == 2 and "must be a .json file" in voc.stderr
