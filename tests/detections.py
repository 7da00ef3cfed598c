"""Hand-made detections for the output format tests: two objects in an 80x60 image, with or without masks.

A module of its own (not a conftest.py under tests/outputs/): a second `conftest` module would
shadow tests/conftest.py for the tests that import helpers from it.
"""

from __future__ import annotations

import numpy as np

from optik.results import Detection

WIDTH, HEIGHT = 80, 60
CLASSES = ["cat", "dog", "bird"]


def two_blob_mask() -> np.ndarray:
    """A mask with a small blob (rows 5-9, cols 5-9) and a larger one (rows 20-39, cols 30-59)."""
    mask = np.zeros((HEIGHT, WIDTH), np.float32)
    mask[5:10, 5:10] = 1.0
    mask[20:40, 30:60] = 0.8
    return mask


def make_detection(masks: bool = True, source: str = "/data/in/img_001.jpg") -> Detection:
    """Object 0: a dog (score 0.9) whose mask has two blobs; object 1: a bird (0.4) with an empty mask."""
    boxes = np.array([[4.6, 4.2, 61.9, 41.5], [10.0, 12.0, 30.0, 22.0]], np.float32)
    mask_stack = np.stack([two_blob_mask(), np.zeros((HEIGHT, WIDTH), np.float32)]) if masks else None
    return Detection(
        source, CLASSES, WIDTH, HEIGHT, boxes, np.array([1, 2], np.int64), np.array([0.9, 0.4], np.float32), mask_stack
    )


def empty_detection(masks: bool = True) -> Detection:
    """An image in which nothing was found."""
    mask_stack = np.zeros((0, HEIGHT, WIDTH), np.float32) if masks else None
    return Detection(
        "empty.png",
        CLASSES,
        WIDTH,
        HEIGHT,
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.int64),
        np.zeros(0, np.float32),
        mask_stack,
    )
