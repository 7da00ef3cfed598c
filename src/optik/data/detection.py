"""The one in-memory form of an object-detection set (COCO, VOC and YOLO all read into it), and the
torch Dataset, transforms and loaders that feed it to torchvision detectors."""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Union

import numpy as np
import torch
import torchvision.transforms.v2 as T
from faster_coco_eval.core import mask as mask_api
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from optik.data.classes import configured_classes, match_classes
from optik.data.decode import check_header, open_image
from optik.data.loaders import make_loader, seeded_index
from optik.errors import DataError, ImageDecodeError

# COCO polygons [[x1, y1, x2, y2, ...], ...] in pixels, an RLE dict {"size": [h, w], "counts": ...}, or none.
Segmentation = Union[list, dict, None]

MAX_LISTED = 10  # bad files named in one message
SPLITS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


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
    """The images of one split with their objects, the class names, and what reading them found."""

    classes: list[str]
    records: list[ImageRecord]
    origin: str = ""
    report: list[str] = field(default_factory=list)  # human-readable lines: clipped boxes, skipped images, ...

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
            images.append({"id": record.image_id, "file_name": Path(name).as_posix(), "width": record.width, "height": record.height})
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
        train = DetectionSet(self.classes, [r for i, r in enumerate(self.records) if i not in held], self.origin, list(self.report))
        val = DetectionSet(self.classes, [r for i, r in enumerate(self.records) if i in held], origin, [f"val: {len(held)} image(s) held out: {origin}"])
        return train, val


def coco_annotation(record: ImageRecord, k: int, ann_id: int) -> dict:
    """Object k of a record as a COCO annotation."""
    x0, y0, x1, y1 = (float(v) for v in record.boxes[k])
    ann = {"id": ann_id, "image_id": record.image_id, "category_id": int(record.labels[k]) + 1, "bbox": [_num(x0), _num(y0), _num(x1 - x0), _num(y1 - y0)],
           "area": _num(float(record.areas[k])), "iscrowd": int(record.iscrowd[k])}
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
                raise DataError(f"{where} gives class indices but no class names: list them in data.classes (or a labels file, or OPTIK_CLASSES)")
            return self.named
        if self.named is None:
            return found
        if self.subset:
            unknown = sorted(set(found) - set(self.named))
            if unknown:
                raise DataError(f"{where} has classes that {self.origin} does not: {unknown}; the classes are {self.named}")
            return self.named
        return match_classes(self.named, self.origin, found, where)


def probe_images(paths: list[str], where: str, skip_bad: bool, expected: dict[str, tuple[int, int]] | None = None) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """(width, height) of each readable image from its header, and report lines.

    Missing or unreadable images, and images of another size than their annotations say, fail
    with a list of them, or with `skip_bad` are left out and reported.
    """
    unique = list(dict.fromkeys(paths))
    with ThreadPoolExecutor(min(16, (os.cpu_count() or 1) * 2)) as pool:
        results = dict(zip(unique, pool.map(_header_size, unique)))
    sizes, bad = {}, {}
    for path, result in results.items():
        want = (expected or {}).get(path)
        if isinstance(result, str):
            bad[path] = result
        elif want and tuple(want) != result:
            bad[path] = f"the file is {result[0]}x{result[1]} but its annotations say {want[0]}x{want[1]}"
        else:
            sizes[path] = result
    if not bad:
        return sizes, []
    listed = "; ".join(f"{path}: {reason}" for path, reason in list(bad.items())[:MAX_LISTED])
    more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
    if not skip_bad:
        raise DataError(f"{len(bad)} image(s) of {where} missing or unreadable: {listed}{more}. Fix or remove them, or set data.skip_bad: true to leave them out")
    return sizes, [f"{where}: left out {len(bad)} missing or unreadable image(s) (data.skip_bad): {listed}{more}"]


def _header_size(path: str) -> tuple[int, int] | str:
    """An image's (width, height), or why it cannot be read."""
    try:
        check_header(path)
        with Image.open(path) as image:
            return image.size
    except ImageDecodeError as exc:
        return exc.reason
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return exc.strerror or str(exc)


class SetBuilder:
    """Collects image records: boxes clipped to their image, empty and degenerate ones dropped and counted."""

    def __init__(self, where: str):
        self.where = where
        self.records: list[ImageRecord] = []
        self.clipped: list[str] = []  # one path per clipped box
        self.emptied: list[str] = []
        self.degenerate: list[str] = []

    def add(self, path: str, width: int, height: int, image_id: int, objects: list[RawObject]) -> None:
        """One image with its objects as read."""
        kept = [(box, obj) for obj in objects if (box := self._checked(obj.box, width, height, path)) is not None]
        boxes = np.array([box for box, _ in kept], dtype=np.float64).reshape(-1, 4)
        areas = [obj.area if obj.area is not None and tuple(box) == tuple(obj.box) else object_area(box, obj.segmentation, height, width) for box, obj in kept]
        self.records.append(ImageRecord(
            path=path, width=width, height=height, image_id=image_id, boxes=boxes,
            labels=np.array([obj.label for _, obj in kept], dtype=np.int64),
            segmentations=[obj.segmentation for _, obj in kept],
            iscrowd=np.array([obj.iscrowd for _, obj in kept], dtype=bool),
            areas=np.array(areas, dtype=np.float64),
        ))

    def _checked(self, box: tuple[float, ...], width: int, height: int, path: str) -> tuple[float, ...] | None:
        x0, y0, x1, y1 = box
        if not all(math.isfinite(v) for v in box) or x1 <= x0 or y1 <= y0:
            self.degenerate.append(path)
            return None
        clipped = (min(max(x0, 0.0), width), min(max(y0, 0.0), height), min(max(x1, 0.0), width), min(max(y1, 0.0), height))
        if clipped == tuple(box):
            return clipped
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            self.emptied.append(path)
            return None
        self.clipped.append(path)
        return clipped

    def build(self, classes: list[str], origin: str, report: list[str] | None = None) -> DetectionSet:
        """The DetectionSet, its report holding `report` and the box counts."""
        lines = list(report or [])
        for paths, what in ((self.clipped, "reaching outside their image were clipped to it"), (self.emptied, "lying wholly outside their image were dropped"),
                            (self.degenerate, "with zero or negative width or height were dropped")):
            if paths:
                examples = ", ".join(list(dict.fromkeys(paths))[:3])
                lines.append(f"{self.where}: {len(paths)} box(es) {what} (in {len(set(paths))} image(s), e.g. {examples})")
        return DetectionSet(classes, self.records, origin, lines)


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


def object_masks(record: ImageRecord, keep: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 masks of the kept objects; an object without a segmentation fills its box."""
    masks = np.zeros((int(keep.sum()), record.height, record.width), dtype=np.uint8)
    for row, k in enumerate(np.flatnonzero(keep)):
        rle = segmentation_rle(record.segmentations[k], record.height, record.width)
        if rle is not None:
            masks[row] = mask_api.decode(rle)
        else:
            x0, y0, x1, y1 = (int(round(v)) for v in record.boxes[k])
            masks[row, y0:y1, x0:x1] = 1
    return masks


def load_sample(record: ImageRecord, with_masks: bool) -> tuple[tv_tensors.Image, dict]:
    """The decoded image and its training target (crowd and difficult objects left out)."""
    picture = open_image(record.path)
    if picture.size != (record.width, record.height):
        raise DataError(f"{record.path} is {picture.size[0]}x{picture.size[1]} but was {record.width}x{record.height} when the data was read; did the file change?")
    image = tv_tensors.Image(torch.from_numpy(np.array(picture)).permute(2, 0, 1).contiguous())
    keep = ~record.iscrowd
    boxes = torch.as_tensor(record.boxes[keep], dtype=torch.float32).reshape(-1, 4)
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(record.height, record.width)),
        "labels": torch.as_tensor(record.labels[keep], dtype=torch.int64),
        "image_id": record.image_id,
    }
    if with_masks:
        target["masks"] = tv_tensors.Mask(torch.from_numpy(object_masks(record, keep)))
    return image, target


class DetectionDataset(Dataset):
    """The images of a DetectionSet with their targets, as torchvision detectors take them.

    An item is (image, target): image a `tv_tensors.Image` uint8 (3, H, W); target {"boxes":
    `BoundingBoxes` XYXY float32 (N, 4) in pixels, "labels": int64 (N,) 0-based, "masks": `Mask`
    uint8 (N, H, W) (with_masks only), "image_id": int}. The transform takes and returns
    (image, target), so boxes and masks follow every flip and rescale. With `seed` set
    (training), augmentation is seeded per sample and epoch (see `loaders.seed_sample`).
    """

    def __init__(self, data: DetectionSet, transform=None, with_masks: bool = False, seed: int | None = None):
        self.data = data
        self.transform = transform
        self.with_masks = with_masks
        self.seed = seed

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key: int | tuple[int, int]):
        index = seeded_index(key, self.seed)
        image, target = load_sample(self.data.records[index], self.with_masks)
        return self.transform(image, target) if self.transform is not None else (image, target)


def detect_train_transform(augment) -> T.Compose:
    """Training augmentation from a `DetectAugmentConfig`; boxes and masks follow the image.

    `scale` (low, high) != (1, 1) zooms the picture in or out on a canvas of the same size (the
    detector resizes every image itself, so a plain resize would change nothing); boxes cut by
    the canvas are clipped, and those left smaller than a pixel are dropped with their masks.
    """
    steps: list[T.Transform] = []
    if augment.photometric:
        steps.append(T.RandomPhotometricDistort(p=0.5))
    if tuple(augment.scale) != (1.0, 1.0):
        steps.append(T.RandomAffine(degrees=0, scale=tuple(augment.scale)))
    if augment.hflip > 0:
        steps.append(T.RandomHorizontalFlip(augment.hflip))
    if augment.vflip > 0:
        steps.append(T.RandomVerticalFlip(augment.vflip))
    return T.Compose([*steps, T.ClampBoundingBoxes(), T.SanitizeBoundingBoxes(min_size=1.0)])


def detect_eval_transform() -> T.Transform:
    """Evaluation preprocessing: nothing geometric, the torchvision detector resizes and normalises itself."""
    return T.Identity()


def collate_detection(batch: list[tuple]) -> tuple[list, list]:
    """A batch as (list of images, list of targets): detectors take images of different sizes."""
    return [item[0] for item in batch], [item[1] for item in batch]


def make_detect_loader(dataset: Dataset, batch_size: int, workers: int, shuffle_seed: int | None = None, drop_last: bool = False, start_epoch: int = 0) -> DataLoader:
    """`make_loader` with detection batches (lists: images differ in size)."""
    return make_loader(dataset, batch_size, workers, shuffle_seed, drop_last, start_epoch, collate_fn=collate_detection)


def detect_datasets(sets: dict[str, DetectionSet], augment, with_masks: bool, seed: int | None) -> dict[str, DetectionDataset]:
    """Train with seeded augmentation (`augment`: a DetectAugmentConfig), val/test with the eval transform."""
    return {name: DetectionDataset(data, detect_train_transform(augment), with_masks, seed) if name == "train" else DetectionDataset(data, detect_eval_transform(), with_masks)
            for name, data in sets.items()}


def build_detect_data(cfg, with_masks: bool = False) -> tuple[list[str], dict[str, DetectionSet]]:
    """Class names and the DetectionSets of train, val and test (those present) from a DetectDataConfig.

    Splits are the configured data.train/val/test, else found under data.root; without a val
    split, data.val_split of train is held out (seeded by data.split_seed).
    """
    sources = split_sources(cfg)
    named, origin = configured_classes(cfg.classes)
    train = read_split(cfg, sources["train"], ClassNames(named, origin))
    if with_masks and not train.has_masks:
        raise DataError(f"the model predicts masks but {train.origin} has boxes only: choose a box detector (data with polygons or RLE masks is needed for masks)")
    sets = {"train": train}
    for name in ("val", "test"):
        if name in sources:
            sets[name] = read_split(cfg, sources[name], ClassNames(train.classes, f"the train split ({train.origin})", subset=True))
    if "val" not in sets:
        sets["train"], sets["val"] = train.split(cfg.val_split, cfg.split_seed)
    return train.classes, {name: sets[name] for name in SPLITS if name in sets}


def split_sources(cfg) -> dict[str, Path]:
    """Split name -> annotation source: data.train/val/test (as given, or under data.root), else found under data.root."""
    from optik.data import coco, voc, yolo

    module = {"coco": coco, "voc": voc, "yolo": yolo}[cfg.format]
    root = Path(cfg.root) if cfg.root is not None else None
    given = {name: _under_root(getattr(cfg, name), root) for name in SPLITS if getattr(cfg, name) is not None}
    if root is not None and not root.is_dir() and "train" not in given:
        raise DataError(f"data folder not found: {root} (set data.root to the dataset folder)")
    found = module.find_splits(root) if root is not None and "train" not in given else {}
    sources = {**found, **given}
    if "train" not in sources:
        where = f"under {root}" if root is not None else "(data.root and data.train are not set)"
        raise DataError(f"no {cfg.format} train split found {where}; expected {module.LAYOUTS}, or set data.train")
    return sources


def _under_root(path: Path, root: Path | None) -> Path:
    path = Path(path)
    return root / path if root is not None and not path.exists() and (root / path).exists() else path


def read_split(cfg, source: Path, names: ClassNames) -> DetectionSet:
    """One split in the configured format."""
    from optik.data.coco import read_coco
    from optik.data.voc import read_voc
    from optik.data.yolo import read_yolo

    if cfg.format == "coco":
        return read_coco(source, names, images=cfg.images, skip_bad=cfg.skip_bad)
    reader = read_voc if cfg.format == "voc" else read_yolo
    return reader(source, names, skip_bad=cfg.skip_bad)


def with_paths(data: DetectionSet, paths: list[str]) -> DetectionSet:
    """The same set with its images at new paths (one per record, in order)."""
    return replace(data, records=[replace(r, path=p) for r, p in zip(data.records, paths)])
