"""The one in-memory form of an object-detection set, which the COCO, VOC and YOLO readers fill.

Torch-free (numpy and COCO masks only): the readers and `optik data convert` use it without loading torch.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from faster_coco_eval.core import mask as mask_api

from optik.data.classes import match_classes
from optik.data.decode import image_size
from optik.data.images import header_sizes, left_out_note, refuse_or_skip
from optik.errors import DataError

# COCO polygons [[x1, y1, x2, y2, ...], ...] in pixels, an RLE dict {"size": [h, w], "counts": ...}, or none.
Segmentation = list | dict | None

SPLITS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


@dataclass(frozen=True)
class Hints:
    """How the user sets the options that an error about images points to: config keys when training,
    command-line flags for `optik test` and `optik data convert`."""

    skip_bad: str = "set data.skip_bad: true"
    images: str = "set data.images"


CONFIG_HINTS = Hints()
FLAG_HINTS = Hints("pass --skip-bad", "pass --images DIR")


@dataclass
class RawObject:
    """One object as a reader found it, before it is checked against its image."""

    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    label: int
    segmentation: Segmentation = None
    iscrowd: bool = False
    area: float | None = None  # the annotation's own `area`, kept when the box is not clipped


@dataclass
class ImageRecord:
    """One image and its objects.

    `boxes` (N, 4) float64 xyxy pixels (float64 so `to_coco` gives back the source's numbers),
    `labels` (N,) int64 indices into the class names, `segmentations` one per object,
    `iscrowd` (N,) bool: COCO crowd regions and VOC difficult objects, which are no training
    targets and which the evaluator ignores, `areas` (N,) float64: the COCO `area` of each object.
    """

    path: str
    width: int
    height: int
    image_id: int
    boxes: np.ndarray
    labels: np.ndarray
    segmentations: list[Segmentation]
    iscrowd: np.ndarray
    areas: np.ndarray


@dataclass
class DetectionSet:
    """The images of one split with their objects, the class names, and what reading them found.

    `exif_orientation` is the frame the sizes and boxes are in, and so how its images are decoded:
    the upright pictures (EXIF orientation applied), or the stored pixels (false).
    """

    classes: list[str]
    records: list[ImageRecord]
    origin: str = ""
    report: list[str] = field(default_factory=list)  # human-readable lines: clipped boxes, skipped images, ...
    left_out: dict[str, str] = field(default_factory=dict)  # image -> why: the bad images skip_bad left out
    exif_orientation: bool = True

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_objects(self) -> int:
        """Objects in all images, crowd and difficult ones included."""
        return sum(len(r.labels) for r in self.records)

    @property
    def has_masks(self) -> bool:
        """Whether any object has a polygon or RLE mask."""
        return any(s is not None for r in self.records for s in r.segmentations)

    def to_coco(self, relative_to: str | Path | None = None) -> dict:
        """The set as a COCO instances dict: the ground truth the evaluator scores against.

        Category ids are 1..K in class order (label + 1), image ids are the records' ids, boxes
        are [x, y, w, h]; crowd and difficult objects have iscrowd 1. `file_name` is relative to
        `relative_to` when given, else the image path.
        """
        images, annotations = [], []
        for record in self.records:
            name = os.path.relpath(record.path, relative_to) if relative_to is not None else record.path
            images.append(
                {
                    "id": record.image_id,
                    "file_name": Path(name).as_posix(),
                    "width": record.width,
                    "height": record.height,
                }
            )
            for k in range(len(record.labels)):
                annotations.append(coco_annotation(record, k, len(annotations) + 1))
        categories = [{"id": i + 1, "name": name, "supercategory": ""} for i, name in enumerate(self.classes)]
        return {"images": images, "annotations": annotations, "categories": categories}

    def split(self, fraction: float, seed: int) -> tuple[DetectionSet, DetectionSet]:
        """(train, val): a seeded share of the images held out as val; the same seed gives the same split."""
        order = list(range(len(self.records)))
        random.Random(seed).shuffle(order)
        count = len(order)
        held = set(order[: min(count - 1, max(1, round(count * fraction)))] if count > 1 else [])
        origin = f"{fraction:.0%} of {self.origin} (seed {seed})"
        train = DetectionSet(
            self.classes,
            [r for i, r in enumerate(self.records) if i not in held],
            self.origin,
            list(self.report),
            dict(self.left_out),
            self.exif_orientation,
        )
        val = DetectionSet(
            self.classes,
            [r for i, r in enumerate(self.records) if i in held],
            origin,
            [f"val: no val split found, so {len(held)} image(s) held out (data.val_split {fraction}): {origin}"],
            exif_orientation=self.exif_orientation,
        )
        return train, val


def coco_annotation(record: ImageRecord, k: int, ann_id: int) -> dict:
    """Object k of a record as a COCO annotation."""
    x0, y0, x1, y1 = (float(v) for v in record.boxes[k])
    ann = {
        "id": ann_id,
        "image_id": record.image_id,
        "category_id": int(record.labels[k]) + 1,
        "bbox": [_num(x0), _num(y0), _num(x1 - x0), _num(y1 - y0)],
        "area": _num(float(record.areas[k])),
        "iscrowd": int(record.iscrowd[k]),
    }
    if record.segmentations[k] is not None:
        ann["segmentation"] = record.segmentations[k]
    return ann


def _num(value: float) -> float | int:
    """A coordinate without float noise (x0 + w - x0), as an int when whole."""
    value = round(value, 6)
    return int(value) if value.is_integer() else value


@dataclass
class ClassNames:
    """Which class names a split uses: named by the user, fixed by the train split, or found in the data."""

    named: list[str] | None = None
    origin: str = ""  # where `named` came from: data.classes, an env var, or "the train split"
    subset: bool = False  # the data may use only some of the named classes (val/test against train)

    def resolve(self, found: list[str] | None, where: str) -> list[str]:
        """The class names to use for data whose own names are `found` (None: the data holds indices only)."""
        if found is None:
            if self.named is None:
                raise DataError(
                    f"{where} gives class indices but no class names: list them in data.classes (or a labels file, or OPTIK_CLASSES)"
                )
            return self.named
        if self.named is None:
            return found
        if self.subset:
            unknown = sorted(set(found) - set(self.named))
            if unknown:
                raise DataError(
                    f"{where} has classes that {self.origin} does not: {unknown}; the classes are {self.named}"
                )
            return self.named
        return match_classes(self.named, self.origin, found, where)


def probe_images(
    paths: list[str],
    where: str,
    skip_bad: bool,
    expected: dict[str, tuple[int, int]] | None = None,
    missing: dict[str, str] | None = None,
    hints: Hints = CONFIG_HINTS,
    exif_orientation: bool = True,
) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """(width, height) of each readable image from its header, and the bad images left out (path -> why).

    Missing or unreadable images, images of another size than their annotations say, and the
    `missing` ones a reader could not place (path -> why) fail with a list of them, or with
    `skip_bad` are left out. With `exif_orientation` the sizes are the upright pictures' (see
    `image_size`): an image whose annotations give its stored size where the upright one differs
    (EXIF orientations 5-8 swap width and height) was annotated on the stored pixels, and fails
    apart, pointing to data.exif_orientation: false.
    """
    missing = missing or {}
    unique = [path for path in dict.fromkeys(paths) if path not in missing]
    sizes, unreadable = header_sizes(unique, exif_orientation=exif_orientation)
    bad, stored_frame = dict(missing), {}
    for path in unique:
        want = (expected or {}).get(path)
        if path in unreadable:
            bad[path] = unreadable[path]
        elif want and tuple(want) != sizes[path]:
            width, height = sizes.pop(path)
            if exif_orientation and tuple(want) == image_size(path, exif_orientation=False):
                stored_frame[path] = f"stored {want[0]}x{want[1]} as its annotations say, upright {width}x{height}"
            else:
                bad[path] = f"the file is {width}x{height} but its annotations say {want[0]}x{want[1]}"
    left_out = refuse_or_skip(bad, skip_bad, f"image(s) of {where} missing or unreadable", hints.skip_bad)
    return sizes, left_out | refuse_or_skip(
        stored_frame,
        skip_bad,
        f"image(s) of {where} annotated on their stored pixels, not upright as their EXIF orientation turns them",
        hints.skip_bad,
        fix="To read the set as it was annotated, set data.exif_orientation: false",
    )


class SetBuilder:
    """Collects image records: boxes clipped to their image, empty and degenerate ones dropped and counted."""

    def __init__(self, where: str, exif_orientation: bool = True):
        self.where = where
        self.exif_orientation = exif_orientation  # the frame of the sizes and boxes added (see DetectionSet)
        self.records: list[ImageRecord] = []
        self.clipped: list[str] = []  # one path per clipped box
        self.emptied: list[str] = []
        self.degenerate: list[str] = []

    def add(self, path: str, width: int, height: int, image_id: int, objects: list[RawObject]) -> None:
        """One image with its objects as read."""
        kept = [(box, obj) for obj in objects if (box := self._checked(obj.box, width, height, path)) is not None]
        boxes = np.array([box for box, _ in kept], dtype=np.float64).reshape(-1, 4)
        areas = [
            obj.area
            if obj.area is not None and tuple(box) == tuple(obj.box)
            else object_area(box, obj.segmentation, height, width)
            for box, obj in kept
        ]
        self.records.append(
            ImageRecord(
                path=path,
                width=width,
                height=height,
                image_id=image_id,
                boxes=boxes,
                labels=np.array([obj.label for _, obj in kept], dtype=np.int64),
                segmentations=[obj.segmentation for _, obj in kept],
                iscrowd=np.array([obj.iscrowd for _, obj in kept], dtype=bool),
                areas=np.array(areas, dtype=np.float64),
            )
        )

    def _checked(self, box: tuple[float, ...], width: int, height: int, path: str) -> tuple[float, ...] | None:
        x0, y0, x1, y1 = box
        if not all(math.isfinite(v) for v in box) or x1 <= x0 or y1 <= y0:
            self.degenerate.append(path)
            return None
        clipped = (
            min(max(x0, 0.0), width),
            min(max(y0, 0.0), height),
            min(max(x1, 0.0), width),
            min(max(y1, 0.0), height),
        )
        if clipped == tuple(box):
            return clipped
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            self.emptied.append(path)
            return None
        self.clipped.append(path)
        return clipped

    def build(
        self, classes: list[str], origin: str, report: list[str] | None = None, left_out: dict[str, str] | None = None
    ) -> DetectionSet:
        """The DetectionSet, its report holding `report`, the images left out and the box counts."""
        lines = list(report or [])
        if left_out:
            lines.append(f"{self.where}: {left_out_note(left_out, 'missing or unreadable image(s)')}")
        for paths, what in (
            (self.clipped, "reaching outside their image were clipped to it"),
            (self.emptied, "lying wholly outside their image were dropped"),
            (self.degenerate, "with zero or negative width or height were dropped"),
        ):
            if paths:
                examples = ", ".join(list(dict.fromkeys(paths))[:3])
                lines.append(
                    f"{self.where}: {len(paths)} box(es) {what} (in {len(set(paths))} image(s), e.g. {examples})"
                )
        return DetectionSet(classes, self.records, origin, lines, dict(left_out or {}), self.exif_orientation)


def object_area(box: tuple[float, ...], segmentation: Segmentation, height: int, width: int) -> float:
    """COCO's `area` of an object: its mask's pixel count, else its box's area."""
    rle = segmentation_rle(segmentation, height, width)
    if rle is not None:
        return float(mask_api.area(rle))
    return float((box[2] - box[0]) * (box[3] - box[1]))


def segmentation_rle(segmentation: Segmentation, height: int, width: int) -> dict | None:
    """A segmentation (polygons, RLE with a counts list or string) as one compressed RLE."""
    if segmentation is None:
        return None
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6 and len(p) % 2 == 0]  # 4 numbers would read as a box
        return mask_api.merge(mask_api.frPyObjects(polygons, height, width)) if polygons else None
    if isinstance(segmentation["counts"], list):
        return mask_api.frPyObjects(segmentation, height, width)
    return {"size": segmentation["size"], "counts": segmentation["counts"]}


def with_paths(data: DetectionSet, paths: list[str]) -> DetectionSet:
    """The same set with its images at new paths (one per record, in order)."""
    return replace(data, records=[replace(r, path=p) for r, p in zip(data.records, paths)])
