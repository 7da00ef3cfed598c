"""Pascal VOC XML: XML beside images or the devkit layout, difficult objects, class names, and broken files."""

import json

import numpy as np
import pytest
from PIL import Image

from optik.data.coco import read_coco
from optik.data.detection import ClassNames, DetectionDataset
from optik.data.voc import find_splits, read_voc
from optik.errors import DataError
from optik.tools.shapes import write_shapes_set


def voc_xml(filename, objects, size=(40, 30)):
    parts = [
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
    ]
    for name, box, difficult in objects:
        coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
        parts.append(f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>{coords}</bndbox></object>")
    return "".join(parts) + "</annotation>"


def write_voc(folder, files, size=(40, 30)):
    """stem -> objects [(name, box, difficult)]: a PNG and an XML per stem."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, objects in files.items():
        Image.new("RGB", size, (200, 100, 50)).save(folder / f"{stem}.png")
        (folder / f"{stem}.xml").write_text(voc_xml(f"{stem}.png", objects, size))
    return folder


def test_reads_the_same_boxes_as_coco_within_a_pixel(tmp_path):
    write_shapes_set(tmp_path / "coco", "coco", train=3, val=0, size=64)
    write_shapes_set(tmp_path / "voc", "voc", train=3, val=0, size=64)
    coco, voc = read_coco(tmp_path / "coco" / "train" / "annotations.json"), read_voc(tmp_path / "voc" / "train")
    assert voc.classes == coco.classes and voc.report == []
    for a, b in zip(coco.records, voc.records):
        assert a.labels.tolist() == b.labels.tolist() and (a.width, a.height, a.image_id) == (
            b.width,
            b.height,
            b.image_id,
        )
        assert np.abs(a.boxes - b.boxes).max() <= 0.5  # VOC rounds to whole pixels


def test_difficult_objects_are_ignore_regions(tmp_path):
    folder = write_voc(tmp_path, {"a": [("dog", (1, 2, 11, 12), 0), ("cat", (20, 5, 30, 25), 1)]})
    data = read_voc(folder)
    _, target = DetectionDataset(data)[0]
    assert target["labels"].tolist() == [1]  # cat, dog sorted: dog is 1; the difficult cat is no target
    assert [(a["category_id"], a["iscrowd"], a["bbox"]) for a in data.to_coco()["annotations"]] == [
        (2, 0, [1, 2, 10, 10]),
        (1, 1, [20, 5, 10, 20]),
    ]


def test_devkit_layout_with_image_sets(tmp_path):
    annotations, images, lists = tmp_path / "Annotations", tmp_path / "JPEGImages", tmp_path / "ImageSets" / "Main"
    for folder in (annotations, images, lists):
        folder.mkdir(parents=True)
    for stem in ("000001", "000002", "000003"):
        Image.new("RGB", (40, 30)).save(images / f"{stem}.jpg")
        (annotations / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", [("bird", (1, 1, 9, 9), 0)]))
    (lists / "train.txt").write_text("000001\n000003\n")
    (lists / "val.txt").write_text("000002\n")
    found = find_splits(tmp_path)
    assert found == {"train": lists / "train.txt", "val": lists / "val.txt"}
    train = read_voc(found["train"])
    assert [r.path for r in train.records] == [str(images / "000001.jpg"), str(images / "000003.jpg")]
    assert len(read_voc(tmp_path)) == 3  # the devkit itself: every XML
    (lists / "train.txt").write_text("000001\n000009\n")
    with pytest.raises(DataError, match=r"1 annotation file\(s\) listed in .*train.txt not found.*000009"):
        read_voc(found["train"])


def test_named_classes_keep_their_order_and_must_match(tmp_path):
    folder = write_voc(tmp_path / "train", {"a": [("dog", (1, 1, 9, 9), 0), ("cat", (10, 10, 20, 20), 0)]})
    data = read_voc(folder, ClassNames(["dog", "cat"], "data.classes"))
    assert data.classes == ["dog", "cat"] and data.records[0].labels.tolist() == [0, 1]
    with pytest.raises(DataError, match="do not match"):
        read_voc(folder, ClassNames(["dog", "cat", "cow"], "data.classes"))
    val = write_voc(tmp_path / "val", {"b": [("horse", (1, 1, 9, 9), 0)]})
    with pytest.raises(DataError, match=r"classes that the train split does not: \['horse'\]"):
        read_voc(val, ClassNames(["cat", "dog"], "the train split", subset=True))


def test_images_without_xml_are_background_and_xml_without_image_is_missing(tmp_path):
    folder = write_voc(tmp_path, {"a": [("dog", (1, 1, 9, 9), 0)]})
    Image.new("RGB", (40, 30)).save(folder / "empty.png")
    data = read_voc(folder)
    assert [len(r.labels) for r in data.records] == [1, 0]
    assert "1 image(s) without an .xml file kept as images without objects" in data.report[0]
    (folder / "lost.xml").write_text(voc_xml("lost.jpg", [("dog", (1, 1, 9, 9), 0)]))
    with pytest.raises(DataError, match=r"lost.jpg: file not found.*data.skip_bad"):
        read_voc(folder)
    assert len(read_voc(folder, skip_bad=True)) == 2


def test_out_of_image_and_degenerate_boxes_are_clipped_or_dropped(tmp_path):
    folder = write_voc(
        tmp_path, {"a": [("dog", (-3, 2, 50, 12), 0), ("dog", (10, 10, 10, 20), 0), ("dog", (30, 10, 20, 20), 0)]}
    )
    data = read_voc(folder)
    assert data.records[0].boxes.tolist() == [[0, 2, 40, 12]]
    assert any("1 box(es) reaching outside" in line for line in data.report)
    assert any("2 box(es) with zero or negative" in line for line in data.report)


def test_malformed_xml_and_objects(tmp_path):
    folder = write_voc(tmp_path, {"a": [("dog", (1, 1, 9, 9), 0)]})
    (folder / "a.xml").write_text("<annotation>\n<filename>a.png</filename>\n<object>\n</annotation>")
    with pytest.raises(DataError, match=r"a.xml:4: malformed XML"):
        read_voc(folder)
    (folder / "a.xml").write_text(voc_xml("a.png", [("dog", ("1", "one", "9", "9"), 0)]))
    with pytest.raises(DataError, match=r"a.xml: object 1 \(dog\): <bndbox> needs numeric"):
        read_voc(folder)
    (folder / "a.xml").write_text(voc_xml("a.png", [("", (1, 1, 9, 9), 0)]))
    with pytest.raises(DataError, match="object 1 has no <name>"):
        read_voc(folder)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="VOC folder not found: .*nope"):
        read_voc(tmp_path / "nope")
    with pytest.raises(DataError, match="no VOC .xml annotation files in"):
        read_voc(tmp_path)


def test_to_coco_of_voc_is_valid_ground_truth(tmp_path):
    folder = write_voc(tmp_path, {"a": [("dog", (1, 2, 11, 12), 0)], "b": []})
    doc = read_voc(folder).to_coco(relative_to=folder)
    assert json.loads(json.dumps(doc)) == doc
    assert [i["file_name"] for i in doc["images"]] == ["a.png", "b.png"]
    assert doc["annotations"][0]["area"] == 100


def labelimg_xml(stem, folder="images", path=None, size=(40, 30), filename=None):
    """An XML as LabelImg writes it: the image folder's name in <folder>, the annotator's absolute <path>."""
    filename = filename or f"{stem}.png"
    path = path or f"/home/annotator/Desktop/{folder}/{filename}"
    return voc_xml(filename, [("dog", (1, 1, 9, 9), 0)], size).replace(
        "<annotation>", f"<annotation><folder>{folder}</folder><path>{path}</path>"
    )


def test_labelimg_layout_reads_from_the_folder_each_xml_names(tmp_path):
    """images/ + annotations/ side by side, <path> a file of another machine, no ImageSets: read as it is."""
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (40, 30)).save(tmp_path / "images" / f"{stem}.png")
        (tmp_path / "annotations" / f"{stem}.xml").write_text(labelimg_xml(stem))
    assert find_splits(tmp_path) == {"train": tmp_path}
    data = read_voc(tmp_path)
    assert [r.path for r in data.records] == [str(tmp_path / "images" / f"{s}.png") for s in ("a", "b")]
    assert data.classes == ["dog"] and data.report == []


@pytest.mark.parametrize("place", ["beside", "folder", "path", "JPEGImages", "data.images"])
def test_each_place_an_image_is_looked_for_resolves(tmp_path, place):
    annotations = tmp_path / "set" / "Annotations"
    annotations.mkdir(parents=True)
    image_folder = {
        "beside": annotations,
        "folder": tmp_path / "set" / "photos",
        "path": tmp_path / "elsewhere",
        "JPEGImages": tmp_path / "set" / "JPEGImages",
        "data.images": tmp_path / "given",
    }[place]
    image_folder.mkdir(parents=True, exist_ok=True)
    # the file name differs from the XML's stem, so only the named place can find it
    Image.new("RGB", (40, 30)).save(image_folder / "photo 1.png")
    folder = "photos" if place == "folder" else "VOC2007"
    path = str(image_folder / "photo 1.png") if place == "path" else None
    (annotations / "x.xml").write_text(labelimg_xml("x", folder, path, filename="photo 1.png"))
    data = read_voc(tmp_path / "set", images=tmp_path / "given" if place == "data.images" else None)
    assert [r.path for r in data.records] == [str(image_folder / "photo 1.png")]


def test_a_missing_image_names_its_xml_the_places_looked_and_data_images(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "x.xml").write_text(labelimg_xml("x", "pictures"))
    with pytest.raises(DataError) as error:
        read_voc(tmp_path)
    message = str(error.value)
    assert f"x.png: file not found (named by {tmp_path / 'annotations' / 'x.xml'}); looked in" in message
    for place in ("annotations", "pictures", "JPEGImages", "images", "/home/annotator/Desktop/pictures"):
        assert place in message
    assert "set data.images to the folder that holds the images" in message and "data.skip_bad" in message
    assert len(read_voc(tmp_path, skip_bad=True)) == 0


def test_cvat_and_label_studio_exports(tmp_path):
    """CVAT Pascal VOC 1.1: Annotations/, JPEGImages/, ImageSets/Main/default.txt; Label Studio: Annotations/ + images/."""
    cvat, studio = tmp_path / "cvat", tmp_path / "studio"
    for root, images in ((cvat, "JPEGImages"), (studio, "images")):
        for folder in ("Annotations", images):
            (root / folder).mkdir(parents=True)
        for stem in ("frame_000000", "frame_000001"):
            Image.new("RGB", (40, 30)).save(root / images / f"{stem}.jpg")
            (root / "Annotations" / f"{stem}.xml").write_text(voc_xml(f"{stem}.jpg", [("car", (1, 1, 9, 9), 0)]))
    (cvat / "ImageSets" / "Main").mkdir(parents=True)
    (cvat / "ImageSets" / "Main" / "default.txt").write_text("frame_000000\nframe_000001\n")
    for root, images in ((cvat, "JPEGImages"), (studio, "images")):
        assert find_splits(root) == {"train": root}
        assert [r.path for r in read_voc(root).records] == [str(root / images / f"frame_00000{i}.jpg") for i in (0, 1)]


def test_a_voc_folder_read_as_coco_is_told_to_set_data_format_voc(tmp_path):
    from optik.config import parse_config
    from optik.data.detection import split_sources

    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.png")
    (tmp_path / "annotations" / "a.xml").write_text(labelimg_xml("a"))
    cfg = parse_config({"task": "detect", "model": {"name": "fcos_resnet50_fpn"}, "data": {"root": str(tmp_path)}})
    with pytest.raises(DataError, match=r"no coco train split .* looks like a voc set: set data.format: voc"):
        split_sources(cfg.data)


def test_images_alone_are_not_called_a_yolo_set(tmp_path):
    from optik.config import parse_config
    from optik.data.detection import split_sources

    (tmp_path / "images").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "images" / "a.png")
    cfg = parse_config({"task": "detect", "model": {"name": "fcos_resnet50_fpn"}, "data": {"root": str(tmp_path)}})
    with pytest.raises(DataError, match="no coco train split") as error:
        split_sources(cfg.data)
    assert "yolo" not in str(error.value)  # no label files: no hint to a format it is not
