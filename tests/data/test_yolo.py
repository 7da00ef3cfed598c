"""YOLO txt labels: normalised boxes at the image's real size, polygons, class-name files, layouts, and broken labels."""

import numpy as np
import pytest
from PIL import Image

from optik.data.coco import read_coco
from optik.data.detection import ClassNames, DetectionDataset
from optik.data.yolo import find_splits, read_yolo
from optik.errors import DataError
from optik.tools.shapes import write_shapes_set


def write_yolo(folder, labels, size=(80, 40), names="cat\ndog\n"):
    """stem -> label text: a PNG of `size` and a txt per stem, and classes.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, text in labels.items():
        Image.new("RGB", size, (10, 200, 90)).save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(text)
    if names is not None:
        (folder / "classes.txt").write_text(names)
    return folder


def test_reads_the_same_boxes_as_coco(tmp_path):
    write_shapes_set(tmp_path / "coco", "coco", train=3, val=0, size=64)
    write_shapes_set(tmp_path / "yolo", "yolo", train=3, val=0, size=64)
    coco, yolo = read_coco(tmp_path / "coco" / "train" / "annotations.json"), read_yolo(tmp_path / "yolo" / "train")
    assert yolo.classes == coco.classes and yolo.report == []
    for a, b in zip(coco.records, yolo.records):
        assert a.labels.tolist() == b.labels.tolist()
        assert np.abs(a.boxes - b.boxes).max() < 0.02


def test_normalised_boxes_use_the_real_image_size(tmp_path):
    folder = write_yolo(tmp_path, {"a": "1 0.5 0.5 0.25 0.5\n\n0 0.125 0.25 0.25 0.5\n"}, size=(80, 40))
    data = read_yolo(folder)
    assert (data.records[0].width, data.records[0].height) == (80, 40)
    np.testing.assert_allclose(data.records[0].boxes, [[30, 10, 50, 30], [0, 0, 20, 20]])
    assert data.records[0].labels.tolist() == [1, 0]


def test_polygons_give_boxes_and_masks(tmp_path):
    folder = write_yolo(tmp_path, {"a": "0 0.25 0.25 0.75 0.25 0.75 0.75 0.25 0.75\n"}, size=(80, 40))
    data = read_yolo(folder)
    np.testing.assert_allclose(data.records[0].boxes, [[20, 10, 60, 30]])
    assert data.records[0].segmentations[0] == [[20, 10, 60, 10, 60, 30, 20, 30]]
    _, target = DetectionDataset(data, with_masks=True)[0]
    assert abs(int(target["masks"][0].sum()) - 800) <= 0.05 * 800
    assert data.to_coco()["annotations"][0]["segmentation"] == [[20, 10, 60, 10, 60, 30, 20, 30]]


def test_images_and_labels_folders_with_data_yaml_names(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "labels" / split).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / "images" / split / "x.jpg")
        (tmp_path / "labels" / split / "x.txt").write_text("2 0.5 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("names:\n  0: ant\n  1: bee\n  2: cow\n")
    found = find_splits(tmp_path)
    assert found == {"train": tmp_path / "images" / "train", "val": tmp_path / "images" / "val"}
    data = read_yolo(found["train"])
    assert data.classes == ["ant", "bee", "cow"] and data.records[0].labels.tolist() == [2]
    assert read_yolo(tmp_path).records[0].path.endswith("images/train/x.jpg")  # root with images/ and labels/


def test_named_classes_map_by_name_and_indices_only_need_names(tmp_path):
    folder = write_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n"}, names="cat\ndog\n")
    assert read_yolo(folder, ClassNames(["dog", "cat"], "data.classes")).records[0].labels.tolist() == [1]
    (folder / "classes.txt").unlink()
    with pytest.raises(DataError, match="class indices but no class names.*data.classes"):
        read_yolo(folder)
    assert read_yolo(folder, ClassNames(["x", "y"], "data.classes")).classes == ["x", "y"]


def test_class_index_out_of_range(tmp_path):
    folder = write_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n"})
    with pytest.raises(
        DataError, match=r"a.txt:2: class index 2 is out of range: there are 2 classes \(0..1: \['cat', 'dog'\]\)"
    ):
        read_yolo(folder)


def test_malformed_lines_name_file_and_line(tmp_path):
    folder = write_yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n0 0.5 zero 0.2 0.2\n"})
    with pytest.raises(DataError, match=r"a.txt:2: expected numbers"):
        read_yolo(folder)
    (folder / "a.txt").write_text("# comment\n0 0.5 0.5 0.2\n")
    with pytest.raises(DataError, match=r"a.txt:2: expected 5 numbers.*got 4"):
        read_yolo(folder)
    (folder / "data.yaml").write_text("names: [a, b\n")
    (folder / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"data.yaml:\d+: malformed YAML"):
        read_yolo(folder)


def test_bad_boxes_and_images(tmp_path):
    folder = write_yolo(
        tmp_path, {"a": "0 0.95 0.5 0.2 0.2\n1 0.5 0.5 0 0.2\n", "b": "0 0.5 0.5 0.2 0.2\n"}, size=(100, 100)
    )
    data = read_yolo(folder)
    np.testing.assert_allclose(data.records[0].boxes, [[85, 40, 100, 60]])
    assert any("1 box(es) reaching outside" in line for line in data.report) and any(
        "1 box(es) with zero" in line for line in data.report
    )
    (folder / "b.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"b.png: empty file"):
        read_yolo(folder)
    assert len(read_yolo(folder, skip_bad=True)) == 1
    (folder / "c.png").write_bytes((folder / "a.png").read_bytes())
    assert any("1 image(s) without a label file" in line for line in read_yolo(folder, skip_bad=True).report)
    with pytest.raises(DataError, match="YOLO folder not found"):
        read_yolo(tmp_path / "nope")


def test_data_images_holds_the_images_of_label_files_kept_apart(tmp_path):
    """labels/ with classes.txt under the root, the images in another folder (data.images), found by path or stem."""
    labels, pictures = tmp_path / "set" / "labels", tmp_path / "pictures"
    (pictures / "day").mkdir(parents=True)
    write_yolo(labels, {"a": "0 0.5 0.5 0.5 0.5\n", "b": "1 0.5 0.5 0.25 0.25\n"}, size=(40, 40))
    for stem in ("a", "b"):
        (labels / f"{stem}.png").rename(pictures / "day" / f"{stem}.png")
    Image.new("RGB", (40, 40)).save(pictures / "unlabelled.png")
    assert find_splits(tmp_path / "set") == {"train": tmp_path / "set"}
    data = read_yolo(tmp_path / "set", images=pictures)
    assert [r.path for r in data.records] == [str(pictures / "day" / f"{s}.png") for s in ("a", "b")]
    assert data.records[1].labels.tolist() == [1] and data.classes == ["cat", "dog"]
    assert any("1 image(s) without a label file" in line and "not used" in line for line in data.report)
    (labels / "c.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    with pytest.raises(DataError, match=r"c.txt has no image in .*pictures.*set data.images"):
        read_yolo(tmp_path / "set", images=pictures)
