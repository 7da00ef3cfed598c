"""Photo-sized JPEGs for the benchmarks, cut from scikit-image's sample photographs (real pictures, no download)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo_jpegs(count: int, seed: int = 0) -> list[bytes]:
    """640x480 JPEGs (quality 90) cut from scikit-image's sample photographs, upscaled where needed."""
    from skimage import data

    photos = [
        getattr(data, name)()
        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
    ]
    rng, out = np.random.default_rng(seed), []
    for i in range(count):
        photo = Image.fromarray(photos[i % len(photos)][..., :3])
        scale = max(640 / photo.width, 480 / photo.height) * rng.uniform(1.0, 1.5)
        photo = photo.resize((int(photo.width * scale) + 1, int(photo.height * scale) + 1), Image.BILINEAR)
        x, y = rng.integers(0, photo.width - 640 + 1), rng.integers(0, photo.height - 480 + 1)
        buffer = io.BytesIO()
        photo.crop((x, y, x + 640, y + 480)).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out
