"""Folder-per-class datasets: find images, read class folders, make a seeded stratified split."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from optik.data.decode import is_image_file
from optik.errors import DataError

SPLIT_NAMES = ("train", "val", "test")

Sample = tuple[str, int]  # (image path, class index)


@dataclass
class Splits:
    """Samples per split and the class names their labels index."""

    classes: list[str]
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # split -> where its samples came from
    val_held_out: bool = False  # val is a share of train (no val split of its own)

    def get(self, name: str) -> list[Sample]:
        return getattr(self, name)


def find_images(root: str | Path) -> list[Path]:
    """Every image file below root, recursively, in sorted order (hidden files skipped)."""
    root = Path(root)
    if root.is_file():
        return [root] if is_image_file(root) else []
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p) and not _hidden(p, root))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def class_folders(root: str | Path) -> dict[str, list[Path]]:
    """Class name -> its images, for a folder with one sub-folder per class."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} has no class sub-folders; expected one folder of images per class")
    images = {folder.name: find_images(folder) for folder in folders}
    empty = [name for name, files in images.items() if not files]
    if empty:
        raise DataError(f"class folder(s) without images in {root}: {', '.join(empty)}; add images or remove them")
    return images


def has_split_folders(root: str | Path) -> bool:
    return any((Path(root) / name).is_dir() for name in SPLIT_NAMES)


def samples_from(images: dict[str, list[Path]], classes: list[str]) -> list[Sample]:
    index = {name: i for i, name in enumerate(classes)}
    return [(str(path), index[name]) for name, files in images.items() for path in files]


def stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out `fraction` of each class (at least one image of any class with two or more)."""
    rng = random.Random(seed)
    by_class: dict[int, list[Sample]] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    keep, held = [], []
    for label in sorted(by_class):
        group = sorted(by_class[label])
        rng.shuffle(group)
        n_held = min(len(group) - 1, max(1, round(len(group) * fraction))) if len(group) > 1 else 0
        held += group[:n_held]
        keep += group[n_held:]
    return sorted(keep), sorted(held)


def folder_splits(root: str | Path, named: list[str] | None, origin: str, val_split: float, seed: int) -> Splits:
    """Train/val/test samples from `root/{train,val,test}/<class>/` or from `root/<class>/`.

    Without a val folder, val is a seeded stratified share of train; without a test folder,
    test is the val split.
    """
    from optik.data.classes import match_classes

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root} (set data.root to a folder of class sub-folders)")
    if not has_split_folders(root):
        per_split = {"train": class_folders(root)}
    else:
        per_split = {name: class_folders(root / name) for name in SPLIT_NAMES if (root / name).is_dir()}
        if "train" not in per_split:
            raise DataError(f"{root} has {'/'.join(per_split)} folders but no train/ folder")
    found = sorted(per_split["train"])
    classes = match_classes(
        named,
        origin,
        found,
        f"the class folders of {root / 'train' if len(per_split) > 1 or has_split_folders(root) else root}",
    )
    for name, images in per_split.items():
        unknown = sorted(set(images) - set(classes))
        if unknown:
            raise DataError(f"{root / name} has class folders not in train/: {unknown}; the classes are {classes}")
    splits = Splits(classes=classes)
    splits.train = samples_from(per_split["train"], classes)
    splits.origin["train"] = str(root / "train") if "val" in per_split or len(per_split) > 1 else str(root)
    for name in ("val", "test"):
        if name in per_split:
            setattr(splits, name, samples_from(per_split[name], classes))
            splits.origin[name] = str(root / name)
    return complete_splits(splits, val_split, seed)


def complete_splits(splits: Splits, val_split: float, seed: int) -> Splits:
    """Without a val split, hold out a seeded stratified share of train; without a test split, use val."""
    if "val" not in splits.origin:
        splits.train, splits.val = stratified_split(splits.train, val_split, seed)
        splits.val_held_out = True
        splits.origin["val"] = f"{val_split:.0%} of {splits.origin['train']} (seed {seed})"
    if "test" not in splits.origin:
        splits.test, splits.origin["test"] = splits.val, splits.origin["val"]
    return splits
