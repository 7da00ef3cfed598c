"""YOLO txt labels (one file per image: `class cx cy w h` normalised, or `class x1 y1 x2 y2 ...`
polygons) read into a DetectionSet, using each image's real size from its header."""

from __future__ import annotations

from pathlib import Path

import yaml

from optik.data.detection_set import (
    CONFIG_HINTS,
    SPLIT_FOLDERS,
    ClassNames,
    DetectionSet,
    Hints,
    RawObject,
    SetBuilder,
    probe_images,
)
from optik.data.folder import find_images
from optik.errors import DataError

LAYOUTS = "root/<split>/ with <stem>.txt beside each image (or <split>/images/ + <split>/labels/), or root/images/<split>/ + root/labels/<split>/"
NAME_FILES = ("classes.txt", "obj.names", "data.yaml", "dataset.yaml")


def read_yolo(
    source: str | Path,
    names: ClassNames | None = None,
    images: str | Path | None = None,
    skip_bad: bool = False,
    hints: Hints = CONFIG_HINTS,
    exif_orientation: bool = True,
) -> DetectionSet:
    """YOLO labels as a DetectionSet.

    `source`: a folder of images with `<stem>.txt` beside them, or an images folder whose labels
    are in the matching `labels` folder (`.../images/x.jpg` -> `.../labels/x.txt`), or a folder
    holding `images/` and `labels/`. With `images` (data.images), the label files under `source`
    (its `labels/` when there is one) pick their images from that folder instead: by relative
    path, else by stem. Class names: the named ones, else `classes.txt`, `obj.names` or a
    `data.yaml` `names` in the source folder, its `labels/`, or up to two folders above. Images without a label
    file have no objects. Image ids are 1..n in path order. Normalised coordinates become pixels of
    the upright picture with `exif_orientation` (as Ultralytics reads them), else of the stored one.
    """
    source = Path(source)
    if images is None:
        pairs = [(image, label_path(image)) for image in yolo_images(source)]
        missing, report = {}, []
    else:
        pairs, missing, report = images_for_labels(source, Path(images), hints)
    file_names, names_file = names_near(source)
    classes = (names or ClassNames()).resolve(file_names, f"the class names of {names_file or source}")
    index_map = [classes.index(n) for n in file_names] if file_names is not None else list(range(len(classes)))
    sizes, left_out = probe_images(
        [str(image) for image, _ in pairs], str(source), skip_bad, None, missing, hints, exif_orientation
    )
    builder, unlabelled = SetBuilder(str(source), exif_orientation), 0
    for image_id, (image, label_file) in enumerate(pairs, start=1):
        if str(image) not in sizes:
            continue
        width, height = sizes[str(image)]
        unlabelled += not label_file.is_file()
        objects = parse_labels(label_file, width, height, index_map, classes) if label_file.is_file() else []
        builder.add(str(image), width, height, image_id, objects)
    if unlabelled:
        report.append(f"{source}: {unlabelled} image(s) without a label file kept as images without objects")
    return builder.build(classes, str(source), report, left_out)


def yolo_images(source: Path) -> list[Path]:
    """The images of a YOLO source, sorted."""
    if not source.is_dir():
        raise DataError(f"YOLO folder not found: {source} (set data.root to a folder laid out as {LAYOUTS})")
    images = find_images(source / "images" if (source / "images").is_dir() else source)
    if not images:
        raise DataError(f"no images in {source}; expected {LAYOUTS}, or set data.images to the image folder")
    return images


def images_for_labels(
    source: Path, images: Path, hints: Hints
) -> tuple[list[tuple[Path, Path]], dict[str, str], list[str]]:
    """(image, label file) for every label file under source, each image found in `images` by relative path, else by stem;
    the label files without an image (image path -> why), and report lines."""
    if not images.is_dir():
        raise DataError(f"data.images folder not found: {images} ({hints.images} to the folder that holds the images)")
    labels_root = source / "labels" if (source / "labels").is_dir() else source
    if not labels_root.is_dir():
        raise DataError(f"YOLO folder not found: {source} (set data.root to a folder laid out as {LAYOUTS})")
    label_files = sorted(
        p for p in labels_root.rglob("*.txt") if p.name not in NAME_FILES and not p.name.startswith(".")
    )
    if not label_files:
        raise DataError(f"no YOLO .txt label files in {labels_root}; expected {LAYOUTS}")
    pictures = find_images(images)
    by_relative = {p.relative_to(images).with_suffix(""): p for p in pictures}
    by_stem: dict[str, list[Path]] = {}
    for picture in pictures:
        by_stem.setdefault(picture.stem, []).append(picture)
    pairs, missing = [], {}
    for label in label_files:
        relative = label.relative_to(labels_root).with_suffix("")
        same_stem = by_stem.get(label.stem, [])
        image = by_relative.get(relative) or (same_stem[0] if len(same_stem) == 1 else None)
        if image is None:
            image = images / relative.with_suffix(".jpg")
            why = f"{len(same_stem)} images named {label.stem}.* there" if same_stem else f"no {label.stem}.* there"
            missing[str(image)] = (
                f"file not found: {label} has no image in {images} ({why}); {hints.images} to the folder that holds the images"
            )
        pairs.append((image, label))
    unused = len(pictures) - len({image for image, _ in pairs})
    report = [f"{images}: {unused} image(s) without a label file in {labels_root} not used"] if unused > 0 else []
    return sorted(pairs), missing, report


def label_path(image: Path) -> Path:
    """`<stem>.txt` beside the image, else in the `labels` folder matching its `images` folder."""
    beside = image.with_suffix(".txt")
    if beside.is_file() or "images" not in image.parts[:-1]:
        return beside
    parts = list(image.parts)
    last = len(parts) - 2 - parts[-2::-1].index("images")
    parts[last] = "labels"
    return Path(*parts).with_suffix(".txt")


def names_near(source: Path) -> tuple[list[str] | None, Path | None]:
    """Class names from the first names file in source (or its labels/) or the two folders above it, with that file."""
    for folder in (
        source,
        source / "labels",
        source.parent,
        source.parent.parent,
    ):  # LabelImg puts classes.txt in labels/
        for name in NAME_FILES:
            path = folder / name
            if path.is_file():
                names = _yaml_names(path) if path.suffix == ".yaml" else _text_names(path)
                if names is not None:
                    return names, path
    return None, None


def _text_names(path: Path) -> list[str]:
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise DataError(f"{path} holds no class names; write one name per line")
    return names


def _yaml_names(path: Path) -> list[str] | None:
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = exc.problem_mark.line + 1 if getattr(exc, "problem_mark", None) else "?"
        raise DataError(f"{path}:{line}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    names = doc.get("names") if isinstance(doc, dict) else None
    if names is None:
        return None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(
                f"{path}: 'names' keys must be the class indices 0..{len(names) - 1}, got {sorted(names, key=str)}"
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: 'names' must be a list of class names or a mapping index -> name")
    return [str(n).strip() for n in names]


def parse_labels(path: Path, width: int, height: int, index_map: list[int], classes: list[str]) -> list[RawObject]:
    """The objects of one label file, in pixels; a malformed line or class index is an error naming file and line."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    objects = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            objects.append(_parse_line(line, f"{path}:{number}", width, height, index_map, classes))
    return objects


def _parse_line(line: str, where: str, width: int, height: int, index_map: list[int], classes: list[str]) -> RawObject:
    try:
        values = [float(v) for v in line.split()]
    except ValueError:
        raise DataError(
            f"{where}: expected numbers 'class cx cy w h' (or 'class x1 y1 x2 y2 ...'), got {line.strip()!r}"
        ) from None
    if len(values) != 5 and (len(values) < 7 or len(values) % 2 == 0):
        raise DataError(
            f"{where}: expected 5 numbers 'class cx cy w h' or a class and 3 or more 'x y' points, got {len(values)} numbers"
        )
    index = values[0]
    if not index.is_integer() or not 0 <= index < len(index_map):
        raise DataError(
            f"{where}: class index {line.split()[0]} is out of range: there are {len(index_map)} classes (0..{len(index_map) - 1}: {classes}); "
            "fix the label or the class names"
        )
    label = index_map[int(index)]
    if len(values) == 5:
        cx, cy, w, h = values[1:]
        return RawObject(
            ((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height), label
        )
    # no float noise in the COCO written
    polygon = [round(v * (width if i % 2 == 0 else height), 6) for i, v in enumerate(values[1:])]
    xs, ys = polygon[0::2], polygon[1::2]
    return RawObject((min(xs), min(ys), max(xs), max(ys)), label, segmentation=[polygon])


def find_splits(root: Path) -> dict[str, Path]:
    """Split name -> YOLO source under root: root/<split>/, else root/images/<split>/ (or labels/<split>/), else root itself as train."""
    found = {}
    for split, folders in SPLIT_FOLDERS.items():
        for base in (root, root / "images", root / "labels"):  # labels/<split>/ alone: the images are in data.images
            folder = next((base / name for name in folders if (base / name).is_dir()), None)
            if folder is not None:
                found[split] = folder
                break
    if found or not (find_images(root) or next(root.rglob("*.txt"), None)):
        return found
    return {"train": root}
