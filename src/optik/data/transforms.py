"""Image transforms per task: random crops and flips for training, resize + center crop for eval.

The eval preprocessing is a small `Preprocess` record that travels inside the model package, so
prediction reproduces exactly what validation saw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch
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


def to_normalized_tensor(mean, std) -> v2.Compose:
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])


def eval_transform(pre: Preprocess) -> v2.Compose:
    """PIL RGB image -> normalised float tensor (3, H, W)."""
    interpolation = INTERPOLATIONS[pre.interpolation]
    return v2.Compose(
        [
            v2.Resize(pre.resize_size, interpolation=interpolation, antialias=True),
            v2.CenterCrop(pre.image_size),
            to_normalized_tensor(pre.mean, pre.std),
        ]
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
