"""COCO instances JSON (images, annotations, categories) read into a DetectionSet."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from faster_coco_eval.core import mask as mask_api

from optik.data.detection_set import (
    CONFIG_HINTS,
    SPLIT_FOLDERS,
    ClassNames,
    DetectionSet,
    Hints,
    RawObject,
    Segmentation,
    SetBuilder,
    probe_images,
    segmentation_rle,
)
from optik.errors import DataError

LAYOUTS = "root/<split>/annotations.json (or the only .json file there) with its images, root/annotations/instances_<split>*.json with images in root/<split>*, or one .json at the root (a Label Studio export) as the training set"


def read_coco(
    path: str | Path,
    names: ClassNames | None = None,
    images: str | Path | None = None,
    skip_bad: bool = False,
    hints: Hints = CONFIG_HINTS,
    exif_orientation: bool = True,
) -> DetectionSet:
    """A COCO JSON file as a DetectionSet.

    Category ids may be any ints: labels index the categories in sorted-id order (or the named
    classes, matched by name). `file_name`s are resolved against `images`, else the folder the
    JSON names by its layout (see `image_folder`). Crowd annotations stay in as iscrowd objects:
    the evaluator ignores them and training leaves them out. The images' `width` and `height` are
    checked against their headers, upright with `exif_orientation` (as the annotation tools that
    show photos upright make them), else as stored.
    """
    path = Path(path)
    doc = load_json(path)
    categories = read_categories(doc, path)
    classes = (names or ClassNames()).resolve([categories[i] for i in sorted(categories)], f"the categories of {path}")
    label_of = {cid: classes.index(name) for cid, name in categories.items()}
    entries = image_entries(doc, path, image_folder(path, images, hints))
    by_image = group_annotations(doc, path, categories, entries)
    sizes, left_out = probe_images(
        [file for file, _, _ in entries.values()],
        str(path),
        skip_bad,
        {file: (w, h) for file, w, h in entries.values()},
        hints=hints,
        exif_orientation=exif_orientation,
    )
    builder = SetBuilder(str(path), exif_orientation)
    for image_id, (file, width, height) in entries.items():
        if file in sizes:
            objects = [coco_object(ann, label_of, path, width, height) for ann in by_image.get(image_id, [])]
            builder.add(file, width, height, image_id, objects)
    return builder.build(classes, str(path), left_out=left_out)


def load_json(path: Path) -> dict:
    """The parsed file, with the file and line named when it is not valid JSON."""
    if not path.is_file():
        raise DataError(
            f"COCO annotation file not found: {path} (set data.train/val/test to the JSON files, or data.root to a folder laid out as {LAYOUTS})"
        )
    try:
        doc = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}:{exc.lineno}: malformed JSON ({exc.msg} at column {exc.colno}); fix the file"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 JSON file ({exc.reason} at byte {exc.start})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise DataError(f"{path} is not a COCO annotation file: it has no 'images' list")
    for key in ("annotations", "categories"):
        if not isinstance(doc.get(key, []), list):
            raise DataError(f"{path}: '{key}' must be a list")
    return doc


def read_categories(doc: dict, path: Path) -> dict[int, str]:
    """Category id -> name."""
    categories: dict[int, str] = {}
    for cat in doc.get("categories", []):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise DataError(f"{path}: every category needs an int 'id' and a 'name', got {cat!r}")
        if cat["id"] in categories:
            raise DataError(f"{path}: category id {cat['id']} appears twice")
        categories[cat["id"]] = cat["name"].strip()
    if not categories:
        raise DataError(f"{path} has no categories; add the 'categories' list (id and name of each class)")
    names = list(categories.values())
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: category names used by more than one id: {dupes}")
    return categories


def image_folder(path: Path, images: str | Path | None, hints: Hints = CONFIG_HINTS) -> Path:
    """Where `file_name`s are relative to: data.images, else root/<x> (or root/images, as CVAT exports it) for
    root/annotations/instances_<x>.json, else the JSON's folder."""
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise DataError(
                f"data.images folder not found: {folder} ({hints.images} to the folder that holds the images)"
            )
        return folder
    if path.parent.name == "annotations" and path.stem.startswith("instances_"):
        for candidate in (path.parent.parent / path.stem[len("instances_") :], path.parent.parent / "images"):
            if candidate.is_dir():
                return candidate
    return path.parent


def image_file(folder: Path, file_name: str) -> str:
    """The image a `file_name` names in folder.

    Exports write sub-folders into `file_name` (Label Studio `images/x.jpg`, CVAT task folders, an
    absolute or `../` path of the annotator's machine) that data.images may already hold: when
    `folder/file_name` is no file, its trailing parts are tried (`x.jpg` for `images/x.jpg`),
    longest first; none found gives `folder/file_name` (reported missing).
    """
    whole = os.path.normpath(folder / file_name)
    if os.path.isfile(whole):
        return whole
    parts = [part for part in file_name.replace("\\", "/").split("/") if part not in ("", ".", "..")]
    for start in range(1, len(parts)):
        candidate = os.path.normpath(folder.joinpath(*parts[start:]))
        if os.path.isfile(candidate):
            return candidate
    return whole


def image_entries(doc: dict, path: Path, folder: Path) -> dict[int, tuple[str, int, int]]:
    """Image id -> (file path, width, height), in the JSON's order."""
    entries: dict[int, tuple[str, int, int]] = {}
    for image in doc["images"]:
        if (
            not isinstance(image, dict)
            or not isinstance(image.get("id"), int)
            or not isinstance(image.get("file_name"), str)
        ):
            raise DataError(f"{path}: every image needs an int 'id' and a 'file_name', got {str(image)[:200]}")
        if image["id"] in entries:
            raise DataError(f"{path}: image id {image['id']} appears twice")
        width, height = image.get("width"), image.get("height")
        if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
            raise DataError(
                f"{path}: image {image['id']} ({image['file_name']}) needs positive int 'width' and 'height'"
            )
        entries[image["id"]] = (image_file(folder, image["file_name"]), width, height)
    return entries


def group_annotations(doc: dict, path: Path, categories: dict[int, str], entries: dict) -> dict[int, list[dict]]:
    """Image id -> its annotations; unknown category or image ids are an error listing them."""
    by_image: dict[int, list[dict]] = {}
    unknown_cats, unknown_images = set(), set()
    for ann in doc.get("annotations", []):
        if not isinstance(ann, dict) or "image_id" not in ann or "category_id" not in ann:
            raise DataError(f"{path}: every annotation needs 'image_id' and 'category_id', got {str(ann)[:200]}")
        if ann["category_id"] not in categories:
            unknown_cats.add(ann["category_id"])
        if ann["image_id"] not in entries:
            unknown_images.add(ann["image_id"])
        by_image.setdefault(ann["image_id"], []).append(ann)
    if unknown_cats:
        known = ", ".join(f"{cid} ({name})" for cid, name in sorted(categories.items()))
        raise DataError(
            f"{path}: annotations use category ids {_listed(unknown_cats)} that are not in its categories (known: {known}); "
            "fix their category_id or add the categories"
        )
    if unknown_images:
        raise DataError(
            f"{path}: annotations refer to image ids {_listed(unknown_images)} that are not in its images; fix their image_id or add the images"
        )
    return by_image


def _listed(values: set) -> str:
    ordered = sorted(values, key=str)
    return str(ordered[:10]) + (f" (and {len(ordered) - 10} more)" if len(ordered) > 10 else "")


def coco_object(ann: dict, label_of: dict[int, int], path: Path, width: int, height: int) -> RawObject:
    """One annotation: bbox [x, y, w, h] to xyxy, with its segmentation and crowd flag."""
    where = f"{path}: annotation {ann.get('id', '?')}"
    segmentation = checked_segmentation(ann.get("segmentation"), where, width, height)
    bbox = ann.get("bbox")
    if bbox is None and segmentation is not None:
        bbox = [float(v) for v in mask_api.toBbox(segmentation_rle(segmentation, height, width))]
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        raise DataError(f"{where}: bbox must be [x, y, width, height] numbers, got {bbox!r}")
    x, y, w, h = bbox
    area = ann.get("area")
    area = float(area) if isinstance(area, (int, float)) and math.isfinite(area) and area > 0 else None
    return RawObject(
        (x, y, x + w, y + h), label_of[ann["category_id"]], segmentation, bool(ann.get("iscrowd", 0)), area
    )


def checked_segmentation(seg, where: str, width: int, height: int) -> Segmentation:
    """Polygons or RLE as in the file (None when absent or empty); anything else is an error."""
    if seg is None or seg == [] or seg == {}:
        return None
    if isinstance(seg, list):
        if not all(isinstance(p, list) and all(isinstance(v, (int, float)) for v in p) for p in seg):
            raise DataError(f"{where}: segmentation must be a list of polygons [x1, y1, x2, y2, ...] or an RLE dict")
        return seg if any(len(p) >= 6 for p in seg) else None
    if not (isinstance(seg, dict) and isinstance(seg.get("counts"), (list, str)) and isinstance(seg.get("size"), list)):
        raise DataError(f"{where}: an RLE segmentation needs 'size' [height, width] and 'counts'")
    if list(seg["size"]) != [height, width]:
        raise DataError(f"{where}: RLE size {seg['size']} differs from its image's [height, width] [{height}, {width}]")
    return seg


def find_splits(root: Path) -> dict[str, Path]:
    """Split name -> JSON file found under root (see LAYOUTS)."""
    found = {}
    for split, folders in SPLIT_FOLDERS.items():
        for folder in (root / name for name in folders):
            if folder.is_dir():
                found[split] = json_in(folder)
                break
        else:
            matches = (
                sorted((root / "annotations").glob(f"instances_{split}*.json"))
                if (root / "annotations").is_dir()
                else []
            )
            if len(matches) > 1:
                raise DataError(
                    f"several {split} annotation files in {root / 'annotations'}: {[m.name for m in matches]}; set data.{split} to the one to use"
                )
            if matches:
                found[split] = matches[0]
    if not found and (root / "annotations").is_dir():
        # a CVAT or Label Studio export: one annotations/instances_<subset>.json (e.g. instances_default.json)
        only = sorted((root / "annotations").glob("instances_*.json"))
        if len(only) == 1:
            found["train"] = only[0]
    if not found:  # a single-file export at the root: Label Studio's result.json beside images/
        only = sorted(root.glob("*.json"))
        if len(only) == 1:
            found["train"] = only[0]
    return found


def json_in(folder: Path) -> Path:
    """The annotation JSON of a split folder: annotations.json, or the only .json there."""
    if (folder / "annotations.json").is_file():
        return folder / "annotations.json"
    files = sorted(folder.glob("*.json"))
    if len(files) != 1:
        what = f"several .json files ({[f.name for f in files]})" if files else "no .json annotation file"
        raise DataError(f"{folder} has {what}; name the one to use annotations.json or set data.train/val/test to it")
    return files[0]
