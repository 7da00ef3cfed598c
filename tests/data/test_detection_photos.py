"""Detection sets of photos stored turned with an EXIF orientation: read in the upright frame (as CVAT, Label
Studio and Roboflow annotate them), refused when annotated on the stored pixels, and read as stored when asked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from optik.config.schema import DetectDataConfig
from optik.data.detection import DetectionDataset, build_detect_data
from optik.errors import DataError

WIDTH, HEIGHT = 60, 40  # the upright picture: wider than high, so a picture left turned has another size
BOX = (10, 5, 30, 20)  # x0, y0, x1, y1 of the red object in the upright picture
RED, GREY = (220, 30, 30), (128, 128, 128)


def upright_picture() -> Image.Image:
    picture = Image.new("RGB", (WIDTH, HEIGHT), GREY)
    ImageDraw.Draw(picture).rectangle((BOX[0], BOX[1], BOX[2] - 1, BOX[3] - 1), fill=RED)
    return picture


def stored_box() -> tuple[int, int, int, int]:
    """BOX on the stored pixels: rotated 90 degrees counter-clockwise (what orientation 6 turns back)."""
    x0, y0, x1, y1 = BOX
    return y0, WIDTH - x1, y1, WIDTH - x0


def turned_photos(folder: Path, count: int = 2) -> list[str]:
    """`count` JPEGs stored turned (HEIGHT wide, WIDTH high) with EXIF orientation 6, as a phone held upright saves them."""
    folder.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x0112] = 6
    names = [f"photo{i}.jpg" for i in range(count)]
    for name in names:
        upright_picture().transpose(Image.Transpose.ROTATE_90).save(folder / name, quality=95, exif=exif)
    return names


def coco_set(root: Path, upright: bool) -> Path:
    """A COCO split of the turned photos, annotated upright (the size and box of the upright picture) or on the stored pixels."""
    names = turned_photos(root)
    (width, height), (x0, y0, x1, y1) = ((WIDTH, HEIGHT), BOX) if upright else ((HEIGHT, WIDTH), stored_box())
    doc = {
        "images": [{"id": i, "file_name": name, "width": width, "height": height} for i, name in enumerate(names, 1)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
            for i in range(1, len(names) + 1)
        ],
        "categories": [{"id": 1, "name": "red"}],
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    return root / "annotations.json"


def read(json_file: Path, **options) -> DetectionDataset:
    cfg = DetectDataConfig(format="coco", train=json_file, val=json_file, **options)
    return DetectionDataset(build_detect_data(cfg)[1]["train"])


def mean_colour(image, box) -> np.ndarray:
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    return image[:, y0:y1, x0:x1].float().mean(dim=(1, 2)).numpy()


def test_turned_photos_annotated_upright_read_upright_with_the_object_in_its_box(tmp_path):
    data = read(coco_set(tmp_path / "upright", upright=True))
    record = data.data.records[0]
    assert (record.width, record.height) == (WIDTH, HEIGHT)
    image, target = data[0]
    assert tuple(image.shape) == (3, HEIGHT, WIDTH)
    (box,) = target["boxes"]
    assert box.tolist() == list(BOX)
    assert np.abs(mean_colour(image, box) - RED).max() < 12  # the red object, JPEG noise aside
    assert np.abs(mean_colour(image, (0, 25, 60, 40)) - GREY).max() < 12  # below it: background


def test_photos_annotated_on_their_stored_pixels_are_refused_unless_read_as_stored(tmp_path):
    stored = coco_set(tmp_path / "stored", upright=False)
    with pytest.raises(DataError) as refused:
        read(stored)
    message = str(refused.value)
    assert "2 image(s)" in message and "annotated on their stored pixels" in message
    assert "photo0.jpg: stored 40x60 as its annotations say, upright 60x40" in message and "photo1.jpg" in message
    assert "set data.exif_orientation: false" in message

    data = read(stored, exif_orientation=False)
    image, target = data[0]
    assert tuple(image.shape) == (3, WIDTH, HEIGHT)  # the stored pixels, not turned
    (box,) = target["boxes"]
    assert box.tolist() == list(stored_box())
    assert np.abs(mean_colour(image, box) - RED).max() < 12

    # the one bad-image policy: skip_bad leaves them out (here all of them, which leaves nothing to train on)
    with pytest.raises(DataError, match="skip_bad left out all 2 image"):
        read(stored, skip_bad=True)


def test_voc_size_is_checked_upright_and_yolo_boxes_are_upright(tmp_path):
    voc = tmp_path / "voc"
    for name in turned_photos(voc, count=1):
        (voc / name).with_suffix(".xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{HEIGHT}</width><height>{WIDTH}</height></size>"
            "<object><name>red</name><bndbox><xmin>5</xmin><ymin>30</ymin><xmax>20</xmax><ymax>50</ymax></bndbox>"
            "</object></annotation>"
        )
    with pytest.raises(
        DataError, match="1 image\\(s\\) of .* annotated on their stored pixels.*set data.exif_orientation: false"
    ):
        build_detect_data(DetectDataConfig(format="voc", train=voc, val=voc))

    yolo = tmp_path / "yolo"
    for name in turned_photos(yolo, count=1):
        x0, y0, x1, y1 = BOX
        centre = ((x0 + x1) / 2 / WIDTH, (y0 + y1) / 2 / HEIGHT, (x1 - x0) / WIDTH, (y1 - y0) / HEIGHT)
        (yolo / name).with_suffix(".txt").write_text("0 " + " ".join(f"{v:.6f}" for v in centre) + "\n")
    cfg = DetectDataConfig(format="yolo", train=yolo, val=yolo, classes=["red"])
    image, target = DetectionDataset(build_detect_data(cfg)[1]["train"])[0]
    (box,) = target["boxes"]
    assert tuple(image.shape) == (3, HEIGHT, WIDTH)
    assert np.abs(box.numpy() - BOX).max() < 1e-3
    assert np.abs(mean_colour(image, box) - RED).max() < 12
