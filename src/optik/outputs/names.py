"""How a folder of outputs names each image's output, so that no two images share one (predict --out-dir, serve poll)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def output_stems(names: Iterable[str], taken: Iterable[str] = ()) -> list[str]:
    """The output stem (name without the format's suffix) of each file name, in order.

    A file's stem (`a.jpg` -> `a`), or its whole name when an earlier file, or `taken`, has that
    stem already (`a.jpg`, `a.png` -> `a`, `a.png`), so `a.json` and `a.png.json` never collide.
    A whole name that is taken too (only for names given twice, or `a.png.gif` before `a.jpg`,
    `a.png`) gets a count: `a.png.2`.
    """
    used, stems = set(taken), []
    for name in names:
        stem = Path(name).stem
        if stem in used:
            stem, count = name, 2
            while stem in used:
                stem, count = f"{name}.{count}", count + 1
        used.add(stem)
        stems.append(stem)
    return stems
