"""The torch side of object detection: the Dataset, transforms and loaders that feed DetectionSets to
torchvision detectors, and `build_detect_data`, which reads the configured splits in their format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2 as T
from faster_coco_eval.core import mask as mask_api
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from optik.data import coco, voc, yolo
from optik.data.classes import configured_classes
from optik.data.decode import open_image
from optik.data.detection_set import (
    CONFIG_HINTS,
    SPLITS,
    ClassNames,
    DetectionSet,
    Hints,
    ImageRecord,
    segmentation_rle,
)
from optik.data.images import listed_bad
from optik.data.loaders import make_loader, seeded_index
from optik.errors import DataError

FORMATS = {"coco": coco, "voc": voc, "yolo": yolo}  # data.format -> the module that finds its splits
READERS = {"coco": coco.read_coco, "voc": voc.read_voc, "yolo": yolo.read_yolo}  # data.format -> its split reader


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


def load_sample(record: ImageRecord, with_masks: bool, exif_orientation: bool = True) -> tuple[tv_tensors.Image, dict]:
    """The decoded image and its training target (crowd and difficult objects left out).

    `exif_orientation` is the frame the record's size and boxes are in (its set's, see `DetectionSet`):
    the image is decoded upright by its EXIF orientation, as the annotation tools that show photos
    upright annotate it and as mmdetection and Ultralytics read it; false: the stored pixels.
    """
    picture = open_image(record.path, exif_orientation=exif_orientation)
    if picture.size != (record.width, record.height):
        raise DataError(
            f"{record.path} is {picture.size[0]}x{picture.size[1]} but was {record.width}x{record.height} when the data was read; did the file change?"
        )
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
        image, target = load_sample(self.data.records[index], self.with_masks, self.data.exif_orientation)
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


def make_detect_loader(
    dataset: Dataset,
    batch_size: int,
    workers: int,
    shuffle_seed: int | None = None,
    drop_last: bool = False,
    start_epoch: int = 0,
) -> DataLoader:
    """`make_loader` with detection batches (lists: images differ in size)."""
    return make_loader(dataset, batch_size, workers, shuffle_seed, drop_last, start_epoch, collate_fn=collate_detection)


def detect_datasets(
    sets: dict[str, DetectionSet], augment, with_masks: bool, seed: int | None
) -> dict[str, DetectionDataset]:
    """Train with seeded augmentation (`augment`: a DetectAugmentConfig), val/test with the eval transform."""
    return {
        name: DetectionDataset(data, detect_train_transform(augment), with_masks, seed)
        if name == "train"
        else DetectionDataset(data, detect_eval_transform(), with_masks)
        for name, data in sets.items()
    }


def build_detect_data(
    cfg, with_masks: bool = False, names: ClassNames | None = None, hints: Hints = CONFIG_HINTS
) -> tuple[list[str], dict[str, DetectionSet]]:
    """Class names and the DetectionSets of train, val and test (those present) from a DetectDataConfig.

    Splits are the configured data.train/val/test, else found under data.root; without a val
    split, data.val_split of train is held out (seeded by data.split_seed). `names`: the class
    names train must have (default: data.classes, else the data's own).
    """
    sources = split_sources(cfg)
    if names is None:
        names = ClassNames(*configured_classes(cfg.classes))
    train = read_split(cfg, sources["train"], names, hints)
    if not len(train):
        raise DataError(no_images_left(train, hints))
    if with_masks and not train.has_masks:
        raise DataError(
            f"the model predicts masks but {train.origin} has boxes only: choose a box detector (data with polygons or RLE masks is needed for masks)"
        )
    sets = {"train": train}
    for name in ("val", "test"):
        if name in sources:
            sets[name] = read_split(
                cfg, sources[name], ClassNames(train.classes, f"the train split ({train.origin})", subset=True), hints
            )
    if "val" not in sets:
        sets["train"], sets["val"] = train.split(cfg.val_split, cfg.split_seed)
    return train.classes, {name: sets[name] for name in SPLITS if name in sets}


def split_sources(cfg) -> dict[str, Path]:
    """Split name -> annotation source: data.train/val/test (as given, or under data.root), else found under data.root."""
    module = FORMATS[cfg.format]
    root = Path(cfg.root) if cfg.root is not None else None
    given = {name: _under_root(getattr(cfg, name), root) for name in SPLITS if getattr(cfg, name) is not None}
    if root is not None and not root.is_dir() and "train" not in given:
        raise DataError(f"data folder not found: {root} (set data.root to the dataset folder)")
    found = module.find_splits(root) if root is not None and "train" not in given else {}
    sources = {**found, **given}
    if "train" not in sources:
        where = f"under {root}" if root is not None else "(data.root and data.train are not set)"
        raise DataError(
            f"no {cfg.format} train split found {where}; expected {module.LAYOUTS}, or set data.train"
            + (_other_format(root, cfg.format) if root is not None else "")
        )
    return sources


def _other_format(root: Path, given: str) -> str:
    """A hint when the folder is laid out in another annotation format than data.format says."""
    for name, module in FORMATS.items():
        if name == "yolo" and next(root.rglob("*.txt"), None) is None:
            continue  # images alone are not a YOLO set: it needs its label files
        try:
            if name != given and "train" in module.find_splits(root):
                return f". {root} looks like a {name} set: set data.format: {name} (--set data.format={name})"
        except DataError:
            continue
    return ""


def _under_root(path: Path, root: Path | None) -> Path:
    path = Path(path)
    return root / path if root is not None and not path.exists() and (root / path).exists() else path


def no_images_left(data: DetectionSet, hints: Hints = CONFIG_HINTS, what: str = "training images") -> str:
    """Why a split has no images: every one was left out as bad (how many, and the first reasons), or it has none."""
    if not data.left_out:
        return f"no {what}: {data.origin} has none; add images, or point the data config at the folder that has them"
    return (
        f"no {what} left: skip_bad left out all {len(data.left_out)} image(s) of {data.origin} as missing "
        f"or unreadable ({listed_bad(data.left_out)}); fix the images or where they are looked for ({hints.images})"
    )


def read_split(cfg, source: Path, names: ClassNames, hints: Hints = CONFIG_HINTS) -> DetectionSet:
    """One split in the configured format, in the frame data.exif_orientation says; data.images, when relative and
    not found as given, is taken under data.root."""
    images = _under_root(cfg.images, Path(cfg.root) if cfg.root is not None else None) if cfg.images else None
    return READERS[cfg.format](
        source, names, images=images, skip_bad=cfg.skip_bad, hints=hints, exif_orientation=cfg.exif_orientation
    )
