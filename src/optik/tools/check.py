"""`optik data check DIR`: what is wrong with an image folder before a run finds out.

Every image below DIR is decoded in full (corrupt, truncated, zero-byte and oversized files are
named with the reason the loaders would give), identical files are grouped by their SHA-256,
images are counted per class (and per split, for `train/ val/ test/` layouts), and their sizes
are summarised as a histogram of the shorter side. Other files are listed as not images.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from optik.data.decode import is_image_file
from optik.data.folder import SPLIT_NAMES, find_images, has_split_folders
from optik.data.images import check_images, header_sizes
from optik.errors import DataError

# Upper bounds of the shorter-side bins, in pixels.
SIZE_BINS = (32, 64, 128, 256, 512, 1024, 2048)


@dataclass
class CheckReport:
    root: str
    images: int
    unreadable: dict[str, str] = field(default_factory=dict)  # path -> reason
    duplicates: list[list[str]] = field(default_factory=list)  # groups of identical files
    not_images: list[str] = field(default_factory=list)
    classes: dict[str, dict[str, int]] = field(default_factory=dict)  # split ("" for none) -> class -> images
    sizes: dict[str, int] = field(default_factory=dict)  # shorter-side bin -> images
    smallest: tuple[int, int] | None = None
    largest: tuple[int, int] | None = None

    @property
    def problems(self) -> int:
        return len(self.unreadable) + sum(len(group) - 1 for group in self.duplicates)

    def to_dict(self) -> dict:
        return {**asdict(self), "problems": self.problems}

    def lines(self) -> list[str]:
        out = [
            f"{self.root}: {self.images} images" + (f", {len(self.not_images)} other files" if self.not_images else "")
        ]
        for split, counts in self.classes.items():
            total = sum(counts.values())
            shares = ", ".join(f"{name} {n}" for name, n in counts.items())
            out.append(f"classes{f' ({split})' if split else ''}: {len(counts)}, {total} images: {shares}")
            if counts and max(counts.values()) >= 10 * max(1, min(counts.values())):
                out.append(
                    f"  imbalance: the largest class has {max(counts.values()) // max(1, min(counts.values()))}x the images of the smallest"
                )
        if self.sizes:
            out.append(
                f"sizes (w x h): smallest {self.smallest[0]}x{self.smallest[1]}, largest {self.largest[0]}x{self.largest[1]}; shorter side:"
            )
            out += [f"  {label:>11s}: {n}" for label, n in self.sizes.items() if n]
        out.append(f"unreadable: {len(self.unreadable)}")
        out += [f"  {path}: {reason}" for path, reason in self.unreadable.items()]
        out.append(f"duplicates: {len(self.duplicates)} group(s)")
        out += [f"  {' = '.join(group)}" for group in self.duplicates]
        for path in self.not_images[:20]:
            out.append(f"not an image (skipped by the loaders): {path}")
        out.append("no problems found" if not self.problems else f"{self.problems} problem(s) found")
        return out


def _digest(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def _class_counts(root: Path, images: list[Path]) -> dict[str, dict[str, int]]:
    """Images per class folder, per split when the layout has split folders; empty when flat."""
    counts: dict[str, Counter] = defaultdict(Counter)
    split_layout = has_split_folders(root)
    for path in images:
        parts = path.relative_to(root).parts
        if split_layout and len(parts) >= 3 and parts[0] in SPLIT_NAMES:
            counts[parts[0]][parts[1]] += 1
        elif not split_layout and len(parts) >= 2:
            counts[""][parts[0]] += 1
    return {split: dict(sorted(c.items())) for split, c in sorted(counts.items())}


def check_folder(root: str | Path, workers: int | None = None) -> CheckReport:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder not found: {root}")
    images = find_images(root)
    others = sorted(
        str(p)
        for p in root.rglob("*")
        if p.is_file() and not is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not images:
        raise DataError(f"no images found below {root}" + (f" ({len(others)} other files)" if others else ""))
    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    unreadable = check_images([str(p) for p in images], "full", workers)
    sizes, _ = header_sizes([str(p) for p in images if str(p) not in unreadable], workers)
    with ThreadPoolExecutor(workers) as pool:
        digests = list(pool.map(_digest, images))
    groups: dict[str, list[str]] = defaultdict(list)
    for path, digest in zip(images, digests):
        if str(path) not in unreadable:
            groups[digest].append(str(path))
    duplicates = sorted(group for group in groups.values() if len(group) > 1)
    good = [sizes[str(path)] for path in images if str(path) in sizes]
    bins = {f"< {b}": 0 for b in SIZE_BINS} | {f">= {SIZE_BINS[-1]}": 0}
    for w, h in good:
        short = min(w, h)
        label = next((f"< {b}" for b in SIZE_BINS if short < b), f">= {SIZE_BINS[-1]}")
        bins[label] += 1
    by_area = sorted(good, key=lambda s: s[0] * s[1])
    return CheckReport(
        str(root),
        len(images),
        dict(sorted(unreadable.items())),
        duplicates,
        others,
        _class_counts(root, images),
        bins if good else {},
        by_area[0] if good else None,
        by_area[-1] if good else None,
    )
