"""voc|yolo -> COCO conversion: the written JSON reads back to the same set."""

import json

import numpy as np
import pytest

from optik.data.coco import read_coco
from optik.data.voc import read_voc
from optik.data.yolo import read_yolo
from optik.errors import ConfigError, DataError
from optik.tools.convert import convert_to_coco
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
    assert summary["images"] == 3 and summary["objects"] == original.num_objects and summary["classes"] == ["circle", "square", "triangle"]
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


def test_bad_format_and_classes(tmp_path):
    with pytest.raises(ConfigError, match="cannot convert from 'coco'"):
        convert_to_coco("coco", tmp_path, tmp_path / "x.json")
    root = write_shapes_set(tmp_path / "voc", "voc", train=1, val=0, size=64)
    with pytest.raises(DataError, match="do not match"):
        convert_to_coco("voc", root / "train", tmp_path / "x.json", classes="circle,square")
    assert not (tmp_path / "x.json").exists()
