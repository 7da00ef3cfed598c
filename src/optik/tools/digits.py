"""Write scikit-learn's handwritten digits (real 8x8 scans, shipped with sklearn) as a folder-per-class set.

Used by `make demo`, the tests that check a model really learns, and the benchmarks.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from PIL import Image


def write_digits(
    root: str | Path,
    size: int = 32,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    limit: int | None = None,
    seed: int = 0,
) -> dict[str, int]:
    """Write `root/{train,val,test}/<digit>/<n>.png` (grey, upscaled to `size`); returns images per split.

    The split is stratified and seeded; `limit` caps the images per class (for quick tests).
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(root)
    rng = random.Random(seed)
    counts = {"train": 0, "val": 0, "test": 0}
    for label in range(10):
        indices = [int(i) for i in np.flatnonzero(digits.target == label)]
        rng.shuffle(indices)
        indices = indices[:limit] if limit else indices
        n_train = round(len(indices) * fractions[0])
        n_val = round(len(indices) * fractions[1])
        parts = {
            "train": indices[:n_train],
            "val": indices[n_train : n_train + n_val],
            "test": indices[n_train + n_val :],
        }
        for split, chosen in parts.items():
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = (digits.images[i] * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR).save(folder / f"{i:04d}.png")
            counts[split] += len(chosen)
    return counts
