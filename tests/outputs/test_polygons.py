"""Masks to polygons and the old tools' box/polygon rules: each option changes what comes out."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from optik.errors import OptikError
from optik.outputs.polygons import (
    DetectionOptions,
    bbox_as_fallback,
    box_corners,
    fit_bbox_to_polygon,
    mask_polygon,
    min_rect,
    polygon_box,
    uses_box_as_fallback,
)


def blank(height: int = 60, width: int = 80) -> np.ndarray:
    return np.zeros((height, width), np.float32)


def rotated_square(side: float, angle_deg: float, centre: tuple[float, float] = (50.0, 50.0)) -> np.ndarray:
    """The 4 corners of a square of `side`, its sides turned by `angle_deg`, around `centre`."""
    angles = np.deg2rad(angle_deg + 45.0) + np.arange(4) * np.pi / 2
    return np.stack([np.cos(angles), np.sin(angles)], axis=1) * side / np.sqrt(2) + np.asarray(centre)


def test_the_polygon_is_the_largest_of_two_blobs():
    mask = blank()
    mask[5:10, 5:10] = 1.0
    mask[20:40, 30:60] = 1.0
    polygon = mask_polygon(mask)
    assert polygon.shape[1] == 2
    # vertices are the centres of the outermost pixels: cols 30..59, rows 20..39
    np.testing.assert_array_equal(polygon_box(polygon), [30, 20, 59, 39])


def test_a_ring_gives_its_outer_outline_and_no_hole():
    mask = blank()
    mask[10:50, 10:50] = 1.0
    mask[20:40, 20:40] = 0.0
    polygon = mask_polygon(mask)
    np.testing.assert_array_equal(polygon_box(polygon), [10, 10, 49, 49])
    assert cv2.contourArea(polygon.astype(np.float32)) == pytest.approx(39 * 39)


def test_an_empty_mask_has_no_polygon():
    assert mask_polygon(blank()) is None
    faint = blank() + 0.05
    assert mask_polygon(faint, threshold=0.1) is None


def test_a_single_pixel_or_a_line_has_no_polygon():
    dot = blank()
    dot[10, 10] = 1.0
    line = blank()
    line[10, 5:50] = 1.0
    assert mask_polygon(dot) is None
    assert mask_polygon(line) is None


def test_the_threshold_applies_to_the_soft_mask():
    mask = blank()
    mask[10:50, 10:70] = 0.3  # halo
    mask[20:40, 30:50] = 0.9  # core
    np.testing.assert_array_equal(polygon_box(mask_polygon(mask, threshold=0.1)), [10, 10, 69, 49])
    np.testing.assert_array_equal(polygon_box(mask_polygon(mask, threshold=0.5)), [30, 20, 49, 39])
    np.testing.assert_array_equal(polygon_box(mask_polygon(mask, threshold=0.3)), [10, 10, 69, 49])  # >= threshold


def test_every_nth_row_and_column_scaled_back_to_full_resolution():
    mask = blank(200, 200)
    cv2.circle(mask, (101, 97), 61, 1.0, -1)
    full = mask_polygon(mask)
    sparse = mask_polygon(mask, nth=4)
    assert np.all(sparse % 4 == 0)  # traced on the subsampled mask
    assert not np.all(full % 4 == 0)
    assert len(sparse) < len(full)
    np.testing.assert_allclose(polygon_box(sparse), polygon_box(full), atol=4)  # at full scale, not a quarter


def test_minrect_of_a_rotated_square_is_its_side_lengths():
    corners = rotated_square(20.0, 30.0)
    assert sorted(min_rect(corners)) == pytest.approx([20.0, 20.0], abs=1e-3)
    # the same square drawn as a mask: about 40 x 40, while its upright box is 40 * (cos 30 + sin 30) = 54.6 wide
    mask = blank(100, 100)
    cv2.fillPoly(mask, [np.round(rotated_square(40.0, 30.0)).astype(np.int32)], 1.0)
    polygon = mask_polygon(mask)
    assert sorted(min_rect(polygon)) == pytest.approx([40.0, 40.0], abs=1.5)
    x0, y0, x1, y1 = polygon_box(polygon)
    assert x1 - x0 > 52 and y1 - y0 > 52


def test_minrect_of_a_rotated_bar_is_its_length_and_thickness():
    bar = cv2.boxPoints(((50.0, 50.0), (40.0, 8.0), 30.0)).astype(np.float64)
    assert sorted(min_rect(bar)) == pytest.approx([8.0, 40.0], abs=1e-3)
    x0, y0, x1, y1 = polygon_box(bar)
    assert sorted([x1 - x0, y1 - y0]) != pytest.approx([8.0, 40.0], abs=1.0)


def test_minrect_width_is_the_side_nearer_the_horizontal():
    assert min_rect(box_corners([10, 10, 40, 30])) == pytest.approx((30.0, 20.0))
    assert min_rect(box_corners([10, 10, 20, 50])) == pytest.approx((10.0, 40.0))
    assert min_rect(cv2.boxPoints(((50.0, 50.0), (40.0, 8.0), 20.0))) == pytest.approx((40.0, 8.0), abs=1e-3)
    assert min_rect(cv2.boxPoints(((50.0, 50.0), (40.0, 8.0), 70.0))) == pytest.approx((8.0, 40.0), abs=1e-3)


def test_fit_bbox_to_polygon_replaces_the_box():
    box = np.array([0.0, 0.0, 100.0, 100.0])
    polygon = np.array([[10.0, 20.0], [50.0, 25.0], [30.0, 60.0]])
    np.testing.assert_array_equal(fit_bbox_to_polygon(box, polygon), [10, 20, 50, 60])
    np.testing.assert_array_equal(fit_bbox_to_polygon(box, None), box)
    np.testing.assert_array_equal(fit_bbox_to_polygon(box, polygon[:2]), box)  # fewer than 3 points: kept


def test_bbox_as_fallback_on_both_sides_of_the_ratio():
    box = np.array([0.0, 0.0, 100.0, 100.0])
    polygon = np.array([[10.0, 10.0], [60.0, 10.0], [60.0, 60.0], [10.0, 60.0]])  # its box covers 25% of the box
    np.testing.assert_array_equal(bbox_as_fallback(box, polygon, 0.3), box_corners(box))
    assert bbox_as_fallback(box, polygon, 0.2) is polygon
    assert bbox_as_fallback(box, polygon, 0.25) is polygon  # below the ratio only
    assert bbox_as_fallback(box, polygon, -1.0) is polygon  # off


def test_bbox_as_fallback_uses_the_polygons_box_area_not_its_own_area():
    box = np.array([0.0, 0.0, 100.0, 100.0])
    # thin, but spans the box
    diagonal = np.array([[0.0, 0.0], [5.0, 0.0], [100.0, 95.0], [100.0, 100.0], [95.0, 100.0], [0.0, 5.0]])
    assert not uses_box_as_fallback(box, diagonal, 0.9)


def test_bbox_as_fallback_without_a_usable_polygon():
    box = np.array([5.0, 5.0, 20.0, 30.0])
    np.testing.assert_array_equal(bbox_as_fallback(box, None, 0.0), box_corners(box))
    np.testing.assert_array_equal(bbox_as_fallback(box, np.array([[6.0, 6.0], [7.0, 7.0]]), 0.0), box_corners(box))
    assert bbox_as_fallback(box, None, -1.0) is None
    flat = np.array([10.0, 10.0, 10.0, 30.0])  # zero area: nothing to compare with
    polygon = np.array([[10.0, 10.0], [11.0, 10.0], [11.0, 11.0]])
    assert bbox_as_fallback(flat, polygon, 0.5) is polygon


def test_box_corners_in_the_old_tools_order():
    np.testing.assert_array_equal(box_corners([1, 2, 3, 4]), [[1, 2], [3, 2], [3, 4], [1, 4]])


def test_shape_without_a_mask_keeps_the_box():
    shape = DetectionOptions(output_minrect=True, bbox_as_fallback=0.5).shape(np.array([1.0, 2.0, 3.0, 4.0]), None)
    assert shape.polygon is None and shape.minrect is None
    np.testing.assert_array_equal(shape.outline(), box_corners([1, 2, 3, 4]))


def test_shape_with_a_mask(detection):
    box, mask = detection.boxes[0], detection.masks[0]
    plain = DetectionOptions().shape(box, mask)
    np.testing.assert_array_equal(polygon_box(plain.polygon), [30, 20, 59, 39])
    np.testing.assert_allclose(plain.box, box)
    assert plain.minrect is None
    with_rect = DetectionOptions(output_minrect=True).shape(box, mask)
    assert with_rect.minrect == pytest.approx((29.0, 19.0))
    fitted = DetectionOptions(fit_bbox_to_polygon=True).shape(box, mask)
    np.testing.assert_array_equal(fitted.box, [30, 20, 59, 39])
    # only the small blob reaches 0.9
    assert DetectionOptions(mask_threshold=0.9).shape(box, mask).polygon.shape == (
        4,
        2,
    )


def test_shape_with_the_box_as_fallback_takes_the_boxs_size_as_minrect(detection):
    box, mask = detection.boxes[0], detection.masks[0]  # the polygon's box covers ~26% of the detection box
    fallback = DetectionOptions(output_minrect=True, bbox_as_fallback=0.5).shape(box, mask)
    np.testing.assert_allclose(fallback.polygon, box_corners(box))
    assert fallback.minrect == pytest.approx((box[2] - box[0], box[3] - box[1]))
    kept = DetectionOptions(output_minrect=True, bbox_as_fallback=0.1).shape(box, mask)
    np.testing.assert_array_equal(polygon_box(kept.polygon), [30, 20, 59, 39])
    assert kept.minrect == pytest.approx((29.0, 19.0))


def test_objects_filters_by_score_and_keeps_masks_aligned(detection):
    kept, shapes = DetectionOptions(min_score=0.5).objects(detection)
    assert kept.label_names() == ["dog"] and len(shapes) == 1
    everything, shapes = DetectionOptions().objects(detection)
    assert len(everything) == 2 and shapes[1].polygon is None  # the bird's mask is empty


@pytest.mark.parametrize(
    "options",
    [
        dict(fit_bbox_to_polygon=True, bbox_as_fallback=0.0),
        dict(mask_nth=0),
        dict(mask_nth=1.5),
        dict(mask_threshold=1.5),
        dict(mask_threshold=-0.1),
    ],
)
def test_invalid_options_are_user_errors(options):
    with pytest.raises(OptikError):
        DetectionOptions(**options)
