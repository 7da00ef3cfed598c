"""Instance masks to polygons, and the old `mmdet_predict` rules that tie boxes, polygons and rectangles together.

Polygon vertices are the centres of the outermost mask pixels (OpenCV's contour convention, as the
contours of the old tools): a polygon spans one pixel less than its mask in each direction.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import cv2
import numpy as np

from optik.errors import OptikError
from optik.results import Detection


def mask_polygon(mask: np.ndarray, threshold: float = 0.1, nth: int = 1) -> np.ndarray | None:
    """The outline of the largest region of a soft mask, or None when the mask has no region.

    Args:
        mask: (H, W) soft mask in [0, 1].
        threshold: pixels with `mask >= threshold` belong to the object.
        nth: use every nth row and column only (faster on large masks); the contour is traced on
            the subsampled mask and its coordinates are scaled back to full resolution.

    Returns:
        (K, 2) float `x, y` pixel coordinates of the outer contour with the largest area (holes and
        smaller regions are dropped), or None when nothing reaches the threshold or the largest
        region is a single pixel or a straight line (fewer than 3 vertices).
    """
    binary = np.asarray(mask)[::nth, ::nth] >= threshold
    if not binary.any():
        return None
    contours, _ = cv2.findContours(binary.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    largest = max(contours, key=lambda contour: (cv2.contourArea(contour), len(contour)))
    if len(largest) < 3:
        return None
    return largest.reshape(-1, 2).astype(np.float64) * nth


def min_rect(polygon: np.ndarray) -> tuple[float, float]:
    """Width and height of the rotated rectangle of least area around `polygon` (`cv2.minAreaRect`).

    The width is the side nearer the horizontal, so an upright 30x20 rectangle gives (30, 20). The old
    tools' `polygon_to_minrect` returned the sides in OpenCV's order, which follows its angle convention
    (changed in OpenCV 4.5.1) and gives (20, 30) there.
    """
    corners = cv2.boxPoints(cv2.minAreaRect(np.asarray(polygon, dtype=np.float32).reshape(-1, 1, 2))).astype(np.float64)
    first, second = corners[1] - corners[0], corners[2] - corners[1]
    first_len, second_len = float(np.hypot(*first)), float(np.hypot(*second))
    # |cos| of each side's angle to the x axis, compared without dividing by a length that may be 0
    if abs(first[0]) * second_len >= abs(second[0]) * first_len:
        return first_len, second_len
    return second_len, first_len


def box_corners(box: np.ndarray) -> np.ndarray:
    """The four corners of an `x0, y0, x1, y1` box as a (4, 2) polygon: top-left, top-right, bottom-right, bottom-left."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def polygon_box(polygon: np.ndarray) -> np.ndarray:
    """The axis-aligned bounding box `x0, y0, x1, y1` of a (K, 2) polygon."""
    points = np.asarray(polygon, dtype=np.float64)
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def fit_bbox_to_polygon(box: np.ndarray, polygon: np.ndarray | None) -> np.ndarray:
    """`--fit-bbox-to-polygon`: the box becomes the polygon's bounding box.

    Old tools' rule (waikato-datamining/mmdetection `predict.py`, `--fit_bbox_to_polygon`): only a
    polygon of at least 3 points replaces the box; otherwise the box stays as it is.
    """
    if polygon is None or len(polygon) < 3:
        return np.asarray(box, dtype=np.float64)
    return polygon_box(polygon)


def uses_box_as_fallback(box: np.ndarray, polygon: np.ndarray | None, ratio: float) -> bool:
    """Whether `--bbox-as-fallback ratio` replaces `polygon` by the box's corners.

    Old tools' rule (waikato-datamining/mmdetection `predict.py`/`predict_redis.py`, `--bbox_as_fallback`):
    off when `ratio < 0`; otherwise a polygon with fewer than 3 points falls back to the box, and so
    does a polygon whose *bounding box* area, divided by the detection box's area, is below `ratio`
    (only when the box's area is positive). The areas are those of the two axis-aligned boxes, not of
    the polygon itself. One difference: the old tools left an empty mask without a polygon; here it
    falls back to the box too, so that every object has a polygon when the option is on.
    """
    if ratio < 0:
        return False
    if polygon is None or len(polygon) < 3:
        return True
    x0, y0, x1, y1 = (float(v) for v in box)
    box_area = (x1 - x0) * (y1 - y0)
    px0, py0, px1, py1 = polygon_box(polygon)
    return box_area > 0 and (px1 - px0) * (py1 - py0) / box_area < ratio


def bbox_as_fallback(box: np.ndarray, polygon: np.ndarray | None, ratio: float) -> np.ndarray | None:
    """`--bbox-as-fallback ratio`: the box's corners when `uses_box_as_fallback` says so, else `polygon` unchanged."""
    return box_corners(box) if uses_box_as_fallback(box, polygon, ratio) else polygon


@dataclass(frozen=True)
class ObjectShape:
    """Where one detected object is, after the mask options: what both detection formats write.

    Attributes:
        box: (4,) float `x0, y0, x1, y1` pixels.
        polygon: (K, 2) float `x, y` pixels; None for a box-only model or a mask without a region.
        minrect: rotated minimum rectangle `(width, height)` with `output_minrect` and a polygon, else None.
    """

    box: np.ndarray
    polygon: np.ndarray | None
    minrect: tuple[float, float] | None

    def outline(self) -> np.ndarray:
        """The polygon, or the box's corners when there is none."""
        return self.polygon if self.polygon is not None else box_corners(self.box)


@functools.cache
def said_once(message: str) -> None:
    """A warning logged once per process (an option that does nothing here is said once, not per image)."""
    logging.getLogger("optik").warning(message)


@dataclass(frozen=True)
class DetectionOptions:
    """The options every detection output format shares (`optik predict` and the services).

    Args:
        min_score: only objects scoring at least this.
        mask_threshold: soft-mask value from which a pixel belongs to the object (`--mask-threshold`).
        mask_nth: trace contours on every nth row/col only (`--mask-nth`).
        output_minrect: add the rotated minimum rectangle of each polygon (`--output-minrect`).
        fit_bbox_to_polygon: replace each box by its polygon's bounding box (`--fit-bbox-to-polygon`).
        bbox_as_fallback: use the box as polygon when the polygon covers too little of it; off when < 0
            (`--bbox-as-fallback`, see `uses_box_as_fallback`).
    """

    min_score: float | None = None
    mask_threshold: float = 0.1
    mask_nth: int = 1
    output_minrect: bool = False
    fit_bbox_to_polygon: bool = False
    bbox_as_fallback: float = -1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise OptikError(f"--mask-threshold must lie in [0, 1], got {self.mask_threshold}")
        if int(self.mask_nth) != self.mask_nth or self.mask_nth < 1:
            raise OptikError(f"--mask-nth must be a whole number of at least 1, got {self.mask_nth}")
        if self.fit_bbox_to_polygon and self.bbox_as_fallback >= 0:
            raise OptikError("--fit-bbox-to-polygon and --bbox-as-fallback cannot be used together: pick one")

    def shape(self, box: np.ndarray, mask: np.ndarray | None) -> ObjectShape:
        """Box, polygon and minimum rectangle of one object, in the old tools' order.

        Polygon from the mask, minrect from that polygon, then the box fallback (the minrect becomes
        the box's width and height when it applies), then fitting the box to the polygon.
        """
        box = np.asarray(box, dtype=np.float64)
        if mask is None:
            return ObjectShape(box, None, None)
        polygon = mask_polygon(mask, self.mask_threshold, int(self.mask_nth))
        minrect = min_rect(polygon) if self.output_minrect and polygon is not None else None
        if uses_box_as_fallback(box, polygon, self.bbox_as_fallback):
            polygon = box_corners(box)
            minrect = (float(box[2] - box[0]), float(box[3] - box[1])) if self.output_minrect else None
        if self.fit_bbox_to_polygon:
            box = fit_bbox_to_polygon(box, polygon)
        return ObjectShape(box, polygon, minrect)

    def objects(self, result: Detection) -> tuple[Detection, list[ObjectShape]]:
        """The objects scoring at least `min_score`, and the shape of each, in the same order."""
        kept = result.above(self.min_score)
        masks = kept.masks
        ignored = self.mask_options() if masks is None else []
        if ignored:
            said_once(
                f"{', '.join(ignored)} apply to the masks of a mask model; this detector gives boxes only, so they change nothing"
            )
        return kept, [self.shape(kept.boxes[i], None if masks is None else masks[i]) for i in range(len(kept))]

    def mask_options(self) -> list[str]:
        """The options given that only a mask model's outputs use."""
        given = {
            "--output-minrect": self.output_minrect,
            "--fit-bbox-to-polygon": self.fit_bbox_to_polygon,
            "--bbox-as-fallback": self.bbox_as_fallback >= 0,
            "--mask-threshold": self.mask_threshold != DetectionOptions.mask_threshold,
            "--mask-nth": self.mask_nth != DetectionOptions.mask_nth,
        }
        return [option for option, on in given.items() if on]
