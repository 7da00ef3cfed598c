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


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize(
    "size", [(640, 480), (480, 640), (301, 517), (224, 224), (1000, 257), (2016, 1512), (250, 240)]
)
def test_one_resampling_of_the_crop_equals_resize_then_crop(interpolation, size):
    image = photo(*size)
    ours = np.asarray(ResizeCenterCrop(256, 224, interpolation)(image), dtype=int)
    theirs = np.asarray(torchvision_steps(256, 224, interpolation)(image), dtype=int)
    assert ours.shape == theirs.shape == (224, 224, 3)
    gap = np.abs(ours - theirs)
    assert gap.max() <= (0 if interpolation == "nearest" else 1)  # PIL's fixed-point weights: a rare pixel
    assert (gap > 0).mean() < 0.001


def test_small_images_and_tensors_take_torchvision_steps():
    small = photo(100, 150)  # resized to 256 x 384 first: the crop fits
    tiny_crop = ResizeCenterCrop(64, 96, "bilinear")  # a crop larger than the resized short side: padded
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
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert ours(rgb).is_contiguous()  # batches stack in the default layout
