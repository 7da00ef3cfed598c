"""ROI CSV: the columns of wai.annotations' ROI format, read back with csv.DictReader."""

from __future__ import annotations

import csv
import io
import json

import pytest

from optik.outputs.roi_csv import BOX_COLUMNS, MINRECT_COLUMNS, POLYGON_COLUMNS, RoiCsvFormat

BOX_HEADER = "file,x0,y0,x1,y1,x0n,y0n,x1n,y1n,label,label_str,score".split(",")


def read(text: str) -> tuple[list[str], list[dict]]:
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return reader.fieldnames, rows


def floats(cell: str) -> list[float]:
    return [float(v) for v in cell.split(",")]


def test_box_only_model_has_the_box_columns(boxes_only):
    header, rows = read(RoiCsvFormat().text(boxes_only))
    assert header == BOX_HEADER == list(BOX_COLUMNS)
    dog, bird = rows
    assert dog["file"] == "img_001.jpg"
    assert dog["label"] == "1" and dog["label_str"] == "dog" and float(dog["score"]) == pytest.approx(0.9)
    assert [float(dog[k]) for k in ("x0", "y0", "x1", "y1")] == pytest.approx([4.6, 4.2, 61.9, 41.5])
    assert [float(dog[k]) for k in ("x0n", "y0n", "x1n", "y1n")] == pytest.approx(
        [4.6 / 80, 4.2 / 60, 61.9 / 80, 41.5 / 60]
    )
    assert bird["label"] == "2" and bird["label_str"] == "bird"


def test_masks_add_polygon_columns(detection):
    header, rows = read(RoiCsvFormat().text(detection))
    assert header == BOX_HEADER + ["poly_x", "poly_y", "poly_xn", "poly_yn"]
    dog = rows[0]
    xs, ys = floats(dog["poly_x"]), floats(dog["poly_y"])
    assert (min(xs), max(xs), min(ys), max(ys)) == (30, 59, 20, 39)  # the larger blob
    assert floats(dog["poly_xn"]) == pytest.approx([x / 80 for x in xs])
    assert floats(dog["poly_yn"]) == pytest.approx([y / 60 for y in ys])
    assert all(rows[1][k] == "" for k in POLYGON_COLUMNS)  # the bird's mask is empty


def test_polygon_cells_are_quoted_comma_lists(detection):
    text = RoiCsvFormat().text(detection)
    dog = text.splitlines()[1]
    assert dog.endswith(
        ',dog,0.9,"30.0,30.0,59.0,59.0","20.0,39.0,39.0,20.0","0.375,0.375,0.7375,0.7375","0.333333,0.65,0.65,0.333333"'
    )


def test_minrect_columns_with_output_minrect(detection, boxes_only):
    header, rows = read(RoiCsvFormat(output_minrect=True).text(detection))
    assert header == BOX_HEADER + list(POLYGON_COLUMNS) + list(MINRECT_COLUMNS)
    assert (float(rows[0]["minrect_w"]), float(rows[0]["minrect_h"])) == pytest.approx((29.0, 19.0))
    assert rows[1]["minrect_w"] == rows[1]["minrect_h"] == ""
    assert read(RoiCsvFormat(output_minrect=True).text(boxes_only))[0] == BOX_HEADER  # no polygon, no minrect


def test_a_header_even_without_objects(nothing, nothing_boxes_only):
    assert read(RoiCsvFormat().text(nothing_boxes_only)) == (BOX_HEADER, [])
    assert read(RoiCsvFormat(output_minrect=True).text(nothing)) == (
        BOX_HEADER + list(POLYGON_COLUMNS) + list(MINRECT_COLUMNS),
        [],
    )


def test_mask_options_change_the_rows(detection):
    plain = read(RoiCsvFormat().text(detection))[1][0]
    fitted = read(RoiCsvFormat(fit_bbox_to_polygon=True).text(detection))[1][0]
    assert [float(fitted[k]) for k in ("x0", "y0", "x1", "y1")] == [30, 20, 59, 39]
    assert float(fitted["x1n"]) == pytest.approx(59 / 80) and fitted["x0"] != plain["x0"]
    fallback = read(RoiCsvFormat(bbox_as_fallback=0.5).text(detection))[1][0]
    assert floats(fallback["poly_x"]) == pytest.approx([4.6, 61.9, 61.9, 4.6])
    assert floats(fallback["poly_y"]) == pytest.approx([4.2, 4.2, 41.5, 41.5])
    core = read(RoiCsvFormat(mask_threshold=0.9).text(detection))[1][0]
    assert max(floats(core["poly_x"])) == 9
    sparse = read(RoiCsvFormat(mask_nth=4).text(detection))[1][0]
    assert all(x % 4 == 0 for x in floats(sparse["poly_x"])) and floats(sparse["poly_x"]) != floats(plain["poly_x"])
    assert len(read(RoiCsvFormat(min_score=0.5).text(detection))[1]) == 1


def test_payload_is_typed_rows_for_redis_clients(detection):
    rows = RoiCsvFormat(output_minrect=True).payload(detection)
    json.dumps(rows)
    dog, bird = rows
    assert list(dog) == list(BOX_COLUMNS + POLYGON_COLUMNS + MINRECT_COLUMNS)
    assert dog["label"] == 1 and dog["label_str"] == "dog" and dog["file"] == "img_001.jpg"
    assert isinstance(dog["poly_x"], list) and min(dog["poly_x"]) == 30.0
    assert bird["poly_x"] is None and bird["minrect_w"] is None


def test_write(tmp_path, detection):
    fmt = RoiCsvFormat()
    path = fmt.write(detection, tmp_path / f"img_001{fmt.suffix}")
    assert path.name == "img_001-rois.csv"
    assert read(path.read_text())[1][0]["label_str"] == "dog"


def test_mask_options_on_a_box_only_model_are_said_once_not_silently_ignored(boxes_only, detection, caplog):
    from optik.outputs.polygons import said_once

    said_once.cache_clear()
    fmt = RoiCsvFormat(output_minrect=True, mask_nth=2)
    with caplog.at_level("WARNING", logger="optik"):
        header, _ = read(fmt.text(boxes_only))
        fmt.text(boxes_only)
        read(fmt.text(detection))  # a mask model uses them: nothing to say
    assert header == list(BOX_COLUMNS)
    (warning,) = [r.getMessage() for r in caplog.records]
    assert (
        warning
        == "--output-minrect, --mask-nth apply to the masks of a mask model; this detector gives boxes only, so they change nothing"
    )
