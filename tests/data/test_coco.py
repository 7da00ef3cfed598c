"""COCO JSON: categories with any ids, polygons and RLE, crowd regions, the layouts found under a root, and broken files."""

import json

import numpy as np
import pytest
from faster_coco_eval.core import mask as mask_api
from PIL import Image

from optik.data.coco import find_splits, read_coco
from optik.data.detection import ClassNames, DetectionDataset
from optik.errors import DataError
from optik.tools.shapes import write_shapes_set


def blank_images(folder, names, size=(40, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", size, (90, 120, 150)).save(folder / name)


def write_coco(folder, annotations, categories=None, images=None, size=(40, 30)):
    """A.png and b.png (40x30) and a JSON holding the given annotations."""
    images = images or [
        {"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]},
        {"id": 2, "file_name": "b.png", "width": size[0], "height": size[1]},
    ]
    blank_images(folder, [i["file_name"] for i in images], size)
    categories = categories or [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    path = folder / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def ann(ann_id, image_id, category_id, bbox, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "iscrowd": 0, **extra}


def test_shapes_set_reads_with_its_boxes_labels_and_polygons(tmp_path):
    write_shapes_set(tmp_path, "coco", train=3, val=0, size=64)
    path = tmp_path / "train" / "annotations.json"
    doc = json.loads(path.read_text())
    data = read_coco(path)
    assert data.classes == ["circle", "square", "triangle"] and len(data) == 3 and data.report == []
    first = [a for a in doc["annotations"] if a["image_id"] == 1]
    x, y, w, h = first[0]["bbox"]
    np.testing.assert_allclose(data.records[0].boxes[0], [x, y, x + w, y + h])
    assert data.records[0].labels.tolist() == [a["category_id"] - 1 for a in first]
    assert data.records[0].segmentations[0] == first[0]["segmentation"]


def test_to_coco_gives_back_the_source_annotations(tmp_path):
    write_shapes_set(tmp_path, "coco", train=3, val=0, size=64)
    path = tmp_path / "train" / "annotations.json"
    doc = json.loads(path.read_text())
    out = read_coco(path).to_coco(relative_to=path.parent)
    assert out["images"] == doc["images"]
    assert [{k: c[k] for k in ("id", "name")} for c in out["categories"]] == [
        {k: c[k] for k in ("id", "name")} for c in doc["categories"]
    ]
    for got, want in zip(out["annotations"], doc["annotations"]):
        assert {k: got[k] for k in ("image_id", "category_id", "bbox", "area", "iscrowd", "segmentation")} == {
            k: want[k] for k in ("image_id", "category_id", "bbox", "area", "iscrowd", "segmentation")
        }


def test_category_ids_are_any_ints_in_sorted_id_order(tmp_path):
    cats = [{"id": 17, "name": "zebra"}, {"id": 3, "name": "yak"}, {"id": 90, "name": "ant"}]
    path = write_coco(
        tmp_path, [ann(1, 1, 90, [1, 1, 5, 5]), ann(2, 1, 3, [10, 10, 5, 5]), ann(3, 2, 17, [2, 2, 8, 8])], cats
    )
    data = read_coco(path)
    assert data.classes == ["yak", "zebra", "ant"]
    assert data.records[0].labels.tolist() == [2, 0] and data.records[1].labels.tolist() == [1]
    named = read_coco(path, ClassNames(["ant", "yak", "zebra"], "data.classes"))
    assert named.records[0].labels.tolist() == [0, 1]
    with pytest.raises(DataError, match="do not match.*not named: \\['zebra'\\]"):
        read_coco(path, ClassNames(["ant", "yak"], "data.classes"))


def test_rle_masks_compressed_and_uncompressed_round_trip(tmp_path):
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:20, 8:30] = 1
    mask[10:14, 12:16] = 0  # a hole a polygon could not hold
    compressed = mask_api.encode(np.asfortranarray(mask))
    compressed = {"size": compressed["size"], "counts": compressed["counts"].decode()}
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    uncompressed = {"size": [30, 40], "counts": runs}  # starts with a run of zeros, as COCO's counts do
    path = write_coco(
        tmp_path,
        [
            ann(1, 1, 1, [8, 5, 22, 15], segmentation=compressed),
            ann(2, 2, 2, [8, 5, 22, 15], segmentation=uncompressed),
        ],
    )
    data = read_coco(path)
    for index in (0, 1):
        _, target = DetectionDataset(data, with_masks=True)[index]
        assert np.array_equal(target["masks"][0].numpy(), mask)
    assert data.records[0].areas[0] == mask.sum()
    assert read_coco(path).to_coco()["annotations"][0]["segmentation"] == compressed


def test_crowd_regions_stay_in_the_ground_truth_but_not_in_targets(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, 1, [1, 1, 10, 10]), ann(2, 1, 2, [15, 5, 20, 20], iscrowd=1, area=321.0)])
    data = read_coco(path)
    _, target = DetectionDataset(data)[0]
    assert target["labels"].tolist() == [0]
    gt = data.to_coco()["annotations"]
    assert [(a["category_id"], a["iscrowd"], a["area"]) for a in gt] == [(1, 0, 100), (2, 1, 321)]


def test_unknown_category_ids_listed_with_the_known_ones(tmp_path):
    path = write_coco(tmp_path, [ann(1, 1, 1, [1, 1, 5, 5]), ann(2, 1, 7, [1, 1, 5, 5]), ann(3, 2, 9, [1, 1, 5, 5])])
    with pytest.raises(DataError, match=r"category ids \[7, 9\].*known: 1 \(cat\), 2 \(dog\)"):
        read_coco(path)


def test_boxes_outside_clipped_and_empty_or_negative_dropped_with_counts(tmp_path):
    path = write_coco(
        tmp_path,
        [
            ann(1, 1, 1, [-5, 2, 10, 10]),
            ann(2, 1, 1, [35, 25, 20, 20]),
            ann(3, 1, 2, [50, 50, 5, 5]),
            ann(4, 2, 1, [5, 5, 0, 10]),
            ann(5, 2, 2, [5, 5, -3, 4]),
            ann(6, 2, 2, [1, 1, 3, 3]),
        ],
    )
    data = read_coco(path)
    np.testing.assert_allclose(data.records[0].boxes, [[0, 2, 5, 12], [35, 25, 40, 30]])
    assert data.records[1].boxes.tolist() == [[1, 1, 4, 4]]
    report = "\n".join(data.report)
    assert "2 box(es) reaching outside their image were clipped" in report
    assert "1 box(es) lying wholly outside their image were dropped" in report
    assert "2 box(es) with zero or negative width or height were dropped" in report
    assert data.to_coco()["annotations"][0]["area"] == 50  # the clipped box's area, not the original's


def test_missing_and_unreadable_images_fail_or_are_skipped(tmp_path):
    images = [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 30} for i in range(1, 15)]
    path = write_coco(tmp_path, [ann(1, 1, 1, [1, 1, 5, 5])], images=images)
    for i in range(3, 15):
        (tmp_path / f"{i}.png").unlink()
    (tmp_path / "2.png").write_bytes(b"not a png")
    with pytest.raises(
        DataError, match=r"13 image\(s\).*missing or unreadable.*file not found.*and 3 more.*data.skip_bad: true"
    ) as err:
        read_coco(path)
    assert "2.png: not an image" in str(err.value)
    data = read_coco(path, skip_bad=True)
    assert [r.image_id for r in data.records] == [1]
    assert "left out 13 missing or unreadable" in data.report[0]


def test_image_of_another_size_than_annotated_is_an_error(tmp_path):
    path = write_coco(tmp_path, [], images=[{"id": 1, "file_name": "a.png", "width": 50, "height": 30}])
    with pytest.raises(DataError, match="the file is 40x30 but its annotations say 50x30"):
        read_coco(path)


def test_missing_and_malformed_json(tmp_path):
    with pytest.raises(DataError, match="COCO annotation file not found: .*nope.json"):
        read_coco(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DataError, match=r"bad.json:2: malformed JSON"):
        read_coco(bad)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(DataError, match="not a COCO annotation file"):
        read_coco(tmp_path / "list.json")
    path = write_coco(tmp_path / "x", [ann(1, 1, 1, [1, 2, 3])])
    with pytest.raises(DataError, match=r"annotation 1: bbox must be \[x, y, width, height\]"):
        read_coco(path)


def test_images_folder_and_instances_layout(tmp_path):
    blank_images(tmp_path / "pics", ["a.png"])
    doc = {
        "images": [{"id": 5, "file_name": "a.png", "width": 40, "height": 30}],
        "annotations": [ann(1, 5, 1, [1, 1, 4, 4])],
        "categories": [{"id": 1, "name": "cat"}],
    }
    (tmp_path / "annotations").mkdir()
    for split in ("train2017", "val2017"):
        blank_images(tmp_path / split, ["a.png"])
        (tmp_path / "annotations" / f"instances_{split}.json").write_text(json.dumps(doc))
    found = find_splits(tmp_path)
    assert sorted(found) == ["train", "val"] and found["train"].name == "instances_train2017.json"
    assert read_coco(found["val"]).records[0].path == str(tmp_path / "val2017" / "a.png")
    assert read_coco(found["train"], images=tmp_path / "pics").records[0].path == str(tmp_path / "pics" / "a.png")
    (tmp_path / "annotations" / "instances_train2014.json").write_text("{}")
    with pytest.raises(DataError, match="several train annotation files"):
        find_splits(tmp_path)


def test_sub_folder_file_names_resolve_against_data_images(tmp_path):
    """Label Studio writes `images/<name>`, CVAT task sub-folders, some tools the annotator's absolute path."""
    export = tmp_path / "export"
    blank_images(export / "images" / "task 1", ["a.png"])
    blank_images(export / "images", ["b.png", "c.png"])
    images = [
        {"id": 1, "file_name": "task 1/a.png", "width": 40, "height": 30},
        {"id": 2, "file_name": "images/b.png", "width": 40, "height": 30},
        {"id": 3, "file_name": "/home/annotator/data/images/c.png", "width": 40, "height": 30},
    ]
    doc = {"images": images, "annotations": [ann(1, 1, 1, [1, 1, 4, 4])], "categories": [{"id": 1, "name": "cat"}]}
    (export / "annotations").mkdir()
    (export / "annotations" / "instances_default.json").write_text(json.dumps(doc))
    found = find_splits(export)  # CVAT's one subset, named default
    assert found == {"train": export / "annotations" / "instances_default.json"}
    expected = [
        str(export / "images" / "task 1" / "a.png"),
        str(export / "images" / "b.png"),
        str(export / "images" / "c.png"),
    ]
    assert [r.path for r in read_coco(found["train"], images=export / "images").records] == expected
    assert [r.path for r in read_coco(found["train"]).records] == expected  # CVAT's images/ beside annotations/


def test_a_label_studio_export_trains_from_its_root(tmp_path):
    """Label Studio's COCO export: result.json at the root, `file_name`s `images/<name>` beside it."""
    export = tmp_path / "export"
    blank_images(export / "images", ["a.png", "b.png"])
    images = [{"id": i, "file_name": f"images/{n}", "width": 40, "height": 30} for i, n in ((1, "a.png"), (2, "b.png"))]
    doc = {"images": images, "annotations": [ann(1, 1, 1, [1, 1, 4, 4])], "categories": [{"id": 1, "name": "cat"}]}
    (export / "result.json").write_text(json.dumps(doc))
    assert find_splits(export) == {"train": export / "result.json"}
    assert [r.path for r in read_coco(export / "result.json").records] == [
        str(export / "images" / n) for n in ("a.png", "b.png")
    ]
    (export / "notes.json").write_text("{}")  # two candidates: none is guessed
    assert find_splits(export) == {}
