"""Image transforms per task: random crops and flips for training, resize + center crop for eval.

The eval preprocessing is a small `Preprocess` record that travels inside the model package, so
prediction reproduces exactly what validation saw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

INTERPOLATIONS = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class Preprocess:
    """Eval preprocessing: decode (upright by EXIF unless `exif_orientation` is false), resize the short
    side to `resize_size`, center-crop `image_size`, normalise; `tta` names the flipped views whose
    softmax is averaged with the original's (see `optik.inference.backends.TEST_TIME_FLIPS`). Packages
    from before `exif_orientation` or `tta` were recorded get their defaults."""

    image_size: int
    resize_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    exif_orientation: bool = True
    tta: str = "none"

    @classmethod
    def from_data_config(cls, data) -> Preprocess:
        return cls(
            image_size=data.image_size,
            resize_size=int(math.floor(data.image_size / data.crop_pct)),
            interpolation=data.interpolation,
            mean=tuple(data.mean),
            std=tuple(data.std),
            exif_orientation=data.exif_orientation,
        )

    @classmethod
    def from_dict(cls, values: dict) -> Preprocess:
        return cls(**{**values, "mean": tuple(values["mean"]), "std": tuple(values["std"])})

    def with_tta(self, tta: str | None) -> Preprocess:
        """This preprocessing with the test-time augmentation `tta` (None: the recorded one)."""
        return self if tta is None else replace(self, tta=tta)

    def to_dict(self) -> dict:
        values = asdict(self)
        return {**values, "mean": list(self.mean), "std": list(self.std)}


class NormalizedTensor:
    """An image -> float tensor (3, H, W) scaled to [0, 1] and normalised by `mean` and `std`: torchvision's
    ToImage + ToDtype(scale) + Normalize, with the same arithmetic (so the same numbers), in one buffer
    for an RGB PIL image (the common case: half the time); other inputs go through torchvision's steps."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.steps = v2.Compose(
            [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
        )

    def __call__(self, image):
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            return self.steps(image)
        return self.batch([np.asarray(image)])[0]

    def batch(self, pixels: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 RGB pictures (H, W, 3) of one size -> the normalised float batch (N, 3, H, W), the same numbers
        as one at a time (the arithmetic is per element)."""
        array = np.stack(pixels)
        return (
            torch.from_numpy(array)
            .permute(0, 3, 1, 2)
            .contiguous()
            .to(torch.float32)
            .mul_(1.0 / 255)
            .sub_(self.mean)
            .div_(self.std)
        )


def to_normalized_tensor(mean, std) -> NormalizedTensor:
    return NormalizedTensor(mean, std)


class ResizeCenterCrop:
    """torchvision's Resize(`resize_size`, short side) + CenterCrop(`image_size`) on a PIL image, computed
    only where the crop is: PIL's horizontal pass over the crop's columns, then its vertical pass over
    the crop's rows (the order a whole resize takes, so the 8-bit rounding between passes is the same),
    each centred on the same source positions as the whole resize, at about half the cost. The pixels
    equal the two steps' to within two grey levels: PIL takes the box in float32, which can move a
    sampling position by a hair, and rounds its fixed-point weights (at 256 -> 224, 4:3 and 3:4
    photos: a rare pixel, by one level; other sizes: up to about a tenth of them). Tensors, modes other
    than RGB and L, nearest (cheap already; a pick that float rounding could move to the neighbour)
    and crops larger than the resized image (which torchvision pads) take torchvision's two steps."""

    def __init__(self, resize_size: int, image_size: int, interpolation: str):
        self.resize_size, self.image_size = resize_size, image_size
        self.resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}.get(interpolation)
        self.steps = v2.Compose(
            [
                v2.Resize(resize_size, interpolation=INTERPOLATIONS[interpolation], antialias=True),
                v2.CenterCrop(image_size),
            ]
        )

    def __call__(self, image):
        if not isinstance(image, Image.Image) or self.resample is None or image.mode not in ("RGB", "L"):
            return self.steps(image)
        width, height = image.size
        resized_long = int(self.resize_size * max(width, height) / min(width, height))  # torchvision's size rule
        new_w, new_h = (self.resize_size, resized_long) if width <= height else (resized_long, self.resize_size)
        crop = self.image_size
        if new_w < crop or new_h < crop:
            return self.steps(image)
        left, top = int(round((new_w - crop) / 2.0)), int(round((new_h - crop) / 2.0))  # torchvision's centre
        sx, sy = width / new_w, height / new_h
        columns = image.resize((crop, height), self.resample, box=(left * sx, 0, (left + crop) * sx, height))
        return columns.resize((crop, crop), self.resample, box=(0, top * sy, crop, (top + crop) * sy))


def eval_transform(pre: Preprocess) -> v2.Compose:
    """PIL RGB image -> normalised float tensor (3, H, W)."""
    return v2.Compose(
        [ResizeCenterCrop(pre.resize_size, pre.image_size, pre.interpolation), to_normalized_tensor(pre.mean, pre.std)]
    )


def train_transform(data) -> v2.Compose:
    """Training augmentation from a DataConfig: random resized crop, flips, optional RandAugment/jitter."""
    aug = data.augment
    interpolation = INTERPOLATIONS[data.interpolation]
    steps: list = [
        v2.RandomResizedCrop(
            data.image_size, scale=aug.scale, ratio=aug.ratio, interpolation=interpolation, antialias=True
        )
    ]
    if aug.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.vflip > 0:
        steps.append(v2.RandomVerticalFlip(aug.vflip))
    if aug.color_jitter > 0:
        steps.append(v2.ColorJitter(aug.color_jitter, aug.color_jitter, aug.color_jitter))
    if aug.randaugment:
        steps.append(_rand_augment(aug.randaugment, data.mean))
    steps.append(to_normalized_tensor(data.mean, data.std))
    return v2.Compose(steps)


def _rand_augment(spec: str, mean):
    from timm.data.auto_augment import rand_augment_transform

    from optik.errors import ConfigError

    fill = tuple(round(255 * m) for m in mean)
    try:
        return rand_augment_transform(spec, {"img_mean": fill})
    except Exception as exc:  # timm raises assorted errors for a malformed spec
        raise ConfigError(
            f"data.augment.randaugment: invalid spec {spec!r} ({exc}); example: rand-m9-mstd0.5"
        ) from None
