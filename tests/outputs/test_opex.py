"""OPEX JSON: what OpexFormat writes must load with the reference `opex` library (not fast-opex).

Both packages install the module `opex`, so the reference one lives in its own folder
(`OPTIK_OPEX_REFERENCE`, default `.venv/opex-reference`, made by `make test`) and is run in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from optik.outputs.opex import OpexFormat

REPO = Path(__file__).resolve().parents[2]

# Prints, for each file given, what the reference library parsed; and where the library came from.
LOAD_WITH_REFERENCE = """
import json, sys
import opex
from opex import ObjectPredictions
from wai.json.object import Absent
docs = []
for path in sys.argv[1:]:
    preds = ObjectPredictions.load_json_from_file(path)
    docs.append({"id": preds.id, "timestamp": preds.timestamp, "objects": [
        {"label": o.label, "score": o.score, "bbox": [o.bbox.left, o.bbox.top, o.bbox.right, o.bbox.bottom],
         "points": [list(p) for p in o.polygon.points], "meta": None if o.meta is Absent else dict(o.meta)}
        for o in preds.objects]})
print(json.dumps({"module": opex.__file__, "docs": docs}))
"""


@pytest.fixture(scope="module")
def reference_opex() -> Path:
    folder = Path(os.environ.get("OPTIK_OPEX_REFERENCE", REPO / ".venv" / "opex-reference")).resolve()
    if not (folder / "opex" / "__init__.py").is_file():
        pytest.fail(
            f"the reference opex library is missing from {folder}: run `make test` (it installs it there with "
            f"`pip install --target {folder} opex`), or point OPTIK_OPEX_REFERENCE at such a folder"
        )
    return folder


def load_with_reference(folder: Path, *paths: Path) -> list[dict]:
    """Parse OPEX files with the reference library in a subprocess; check it was that library that ran."""
    env = {**os.environ, "PYTHONPATH": str(folder)}
    run = subprocess.run(
        [sys.executable, "-c", LOAD_WITH_REFERENCE, *map(str, paths)],
        env=env,
        capture_output=True,
        text=True,
        cwd=folder,
    )
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert Path(answer["module"]).resolve().is_relative_to(folder)
    return answer["docs"]


def as_written(path: Path) -> list[dict]:
    """The objects of our own file, in the shape `load_with_reference` returns them."""
    doc = json.loads(path.read_text())
    return [
        {
            "label": o["label"],
            "score": o["score"],
            "bbox": [o["bbox"][k] for k in ("left", "top", "right", "bottom")],
            "points": o["polygon"]["points"],
            "meta": o.get("meta"),
        }
        for o in doc["objects"]
    ]


def test_files_load_with_the_reference_library(tmp_path, reference_opex, detection, boxes_only, nothing):
    written = {
        "masks": OpexFormat().write(detection, tmp_path / "masks.json"),
        "boxes": OpexFormat().write(boxes_only, tmp_path / "boxes.json"),
        "nothing": OpexFormat().write(nothing, tmp_path / "nothing.json"),
        "minrect": OpexFormat(output_minrect=True, min_score=0.5).write(detection, tmp_path / "minrect.json"),
        "fallback": OpexFormat(bbox_as_fallback=0.5, mask_nth=2).write(detection, tmp_path / "fallback.json"),
    }
    parsed = dict(zip(written, load_with_reference(reference_opex, *written.values())))
    for name, path in written.items():
        assert parsed[name]["objects"] == as_written(path), name
        assert parsed[name]["id"] == ("empty.png" if name == "nothing" else "img_001.jpg")
    assert parsed["nothing"]["objects"] == []
    assert [o["label"] for o in parsed["masks"]["objects"]] == ["dog", "bird"]
    assert parsed["minrect"]["objects"][0]["meta"] == {"minrect_w": "29.0", "minrect_h": "19.0"}


def test_objects_hold_label_score_box_and_the_largest_blob(tmp_path, detection):
    doc = json.loads(OpexFormat().write(detection, tmp_path / "img_001.json").read_text())
    dog, bird = doc["objects"]
    assert dog["label"] == "dog" and dog["score"] == pytest.approx(0.9)
    assert dog["bbox"] == {"left": 4, "top": 4, "right": 61, "bottom": 41}  # truncated, as the old tools did
    points = np.array(dog["polygon"]["points"])
    assert points.min(axis=0).tolist() == [30, 20] and points.max(axis=0).tolist() == [59, 39]
    assert bird["polygon"]["points"] == [[10, 12], [30, 12], [30, 22], [10, 22]]  # empty mask: the box's corners
    assert "meta" not in dog


def test_without_masks_the_polygon_is_the_box(boxes_only):
    dog = OpexFormat().payload(boxes_only)["objects"][0]
    assert dog["polygon"]["points"] == [[4, 4], [61, 4], [61, 41], [4, 41]]


def test_id_and_timestamp(detection):
    doc = OpexFormat().payload(detection)
    assert doc["id"] == "img_001.jpg"
    stamp = datetime.fromisoformat(doc["timestamp"])  # str(datetime.now()): local time, as the old tools wrote it
    assert abs((datetime.now() - stamp).total_seconds()) < 60


def test_mask_options_change_the_objects(detection):
    plain = OpexFormat().payload(detection)["objects"][0]
    fitted = OpexFormat(fit_bbox_to_polygon=True).payload(detection)["objects"][0]
    assert fitted["bbox"] == {"left": 30, "top": 20, "right": 59, "bottom": 39} != plain["bbox"]
    fallback = OpexFormat(bbox_as_fallback=0.5).payload(detection)["objects"][0]
    assert fallback["polygon"]["points"] == [[4, 4], [61, 4], [61, 41], [4, 41]] != plain["polygon"]["points"]
    small = OpexFormat(mask_threshold=0.9).payload(detection)["objects"][0]  # only the 5x5 blob reaches 0.9
    assert small["polygon"]["points"] == [[5, 5], [5, 9], [9, 9], [9, 5]]
    assert [o["label"] for o in OpexFormat(min_score=0.5).payload(detection)["objects"]] == ["dog"]


def test_text_is_what_the_payload_says(detection):
    fmt = OpexFormat(output_minrect=True)
    text, payload = fmt.text(detection), fmt.payload(detection)
    assert text.endswith("\n")
    from_text = json.loads(text)
    assert {k: v for k, v in from_text.items() if k != "timestamp"} == {
        k: v for k, v in payload.items() if k != "timestamp"
    }
    assert fmt.suffix == ".json"


def test_write_leaves_no_temp_file(tmp_path, detection):
    staging = tmp_path / "staging"
    OpexFormat().write(detection, tmp_path / "out" / "img_001.json", staging)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["img_001.json"]
    assert list(staging.iterdir()) == []
