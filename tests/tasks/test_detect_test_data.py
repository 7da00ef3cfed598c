"""Which labelled images `optik test DETECTOR DATA` scores, and what it says when DATA is in another format."""

import json
from dataclasses import replace

import pytest
from PIL import Image

from optik.errors import DataError
from optik.models.package import load_package
from optik.tasks.detect import detect_test_set


def test_a_voc_model_on_a_folder_holding_one_coco_file_is_told_to_give_the_file(shapes_detector, tmp_path):
    package = load_package(shapes_detector)
    voc = replace(package, config={**package.config, "data": {**package.config["data"], "format": "voc"}})
    export = tmp_path / "export"  # Label Studio's COCO export: result.json beside images/
    (export / "images").mkdir(parents=True)
    Image.new("RGB", (64, 48)).save(export / "images" / "a.png")
    doc = {
        "images": [{"id": 1, "file_name": "images/a.png", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "area": 400, "iscrowd": 0}],
        "categories": [{"id": 1, "name": package.classes[0]}],
    }
    (export / "result.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"holds one COCO file: give it as DATA \(optik test MODEL .*result.json\)"):
        detect_test_set(voc, export, "test")
    found, _ = detect_test_set(voc, export / "result.json", "test")  # as told: it is scored
    assert len(found) == 1
