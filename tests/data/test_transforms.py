"""The eval preprocessing computes what torchvision's Resize + CenterCrop + ToImage/ToDtype/Normalize compute."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from optik.data.transforms import INTERPOLATIONS, NormalizedTensor, ResizeCenterCrop

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A picture with edges and texture (smooth gradients would hide a shifted resampling)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([(x * 7) % 256, (y * 5) % 256, ((x + y) * 3) % 256], -1).astype(float)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))


def torchvision_steps(resize: int, crop: int, interpolation: str):
    return v2.Compose(
        [v2.Resize(resize, interpolation=INTERPOLATIONS[interpolation], antialias=True), v2.CenterCrop(crop)]
    )


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize(
    "size", [(640, 480), (480, 640), (301, 517), (224, 224), (1000, 257), (2016, 1512), (250, 240)]
)
@pytest.mark.parametrize("resize,crop", [(256, 224), (232, 224), (235, 224), (288, 256), (292, 256), (438, 384)])
def test_one_resampling_of_the_crop_equals_resize_then_crop(interpolation, size, resize, crop):
    image = photo(*size)
    ours = np.asarray(ResizeCenterCrop(resize, crop, interpolation)(image), dtype=int)
    theirs = np.asarray(torchvision_steps(resize, crop, interpolation)(image), dtype=int)
    assert ours.shape == theirs.shape == (crop, crop, 3)
    gap = np.abs(ours - theirs)
    assert gap.max() <= 2  # PIL's float32 box and fixed-point weights (see ResizeCenterCrop)
    assert (gap > 0).mean() < 0.15
    assert gap.mean() < 0.2


def test_4_3_photos_at_256_to_224_differ_on_a_rare_pixel():
    for size in ((640, 480), (480, 640), (4032 // 4, 3024 // 4)):
        image = photo(*size)
        gap = np.abs(
            np.asarray(ResizeCenterCrop(256, 224, "bilinear")(image), dtype=int)
            - np.asarray(torchvision_steps(256, 224, "bilinear")(image), dtype=int)
        )
        assert gap.max() <= 1 and (gap > 0).mean() < 0.001


def test_small_images_and_tensors_take_torchvision_steps():
    small = photo(100, 150)
    tiny_crop = ResizeCenterCrop(64, 96, "bilinear")  # a crop larger than the resized short side (64): padded
    assert np.array_equal(np.asarray(tiny_crop(small)), np.asarray(torchvision_steps(64, 96, "bilinear")(small)))
    tensor = torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1)
    assert torch.equal(ResizeCenterCrop(64, 56, "bilinear")(tensor), torchvision_steps(64, 56, "bilinear")(tensor))


def test_normalised_tensor_equals_torchvision():
    steps = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(MEAN), list(STD))])
    ours = NormalizedTensor(MEAN, STD)
    rgb = photo(37, 23)
    for image in (rgb, torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)):  # a PIL image, a uint8 tensor
        expected, got = steps(image), ours(image)
        assert got.shape == expected.shape == (3, 23, 37) and got.dtype == torch.float32
        assert torch.equal(got, expected)  # the same arithmetic, so the same numbers
    assert ours(rgb).is_contiguous()  # batches stack in the default layout
