"""Convert Pascal VOC or YOLO annotations to one COCO instances JSON (`optik data convert`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from optik.data.classes import configured_classes
from optik.data.detection import ClassNames, DetectionSet, with_paths
from optik.data.voc import read_voc
from optik.data.yolo import read_yolo
from optik.errors import ConfigError
from optik.files import write_atomic

FORMATS = ("voc", "yolo")


def convert_to_coco(fmt: str, source: str | Path, out_json: str | Path, classes: list[str] | str | None = None, copy_images: bool = False,
                    skip_bad: bool = False) -> dict:
    """Read a VOC or YOLO source and write it as one COCO JSON; returns a summary.

    Args:
        fmt: "voc" or "yolo".
        source: what `read_voc` / `read_yolo` take (a folder, or a VOC devkit list file).
        out_json: the JSON to write (atomically); `file_name`s are relative to its folder.
        classes: class names (list, labels file or comma list); default: OPTIK_CLASSES, else the data's.
        copy_images: copy the images into `<out_json folder>/images/` (keeping their sub-folders).
        skip_bad: leave missing or unreadable images out instead of failing.

    Returns:
        {"images": count, "objects": count, "classes": names, "report": lines, "json": path}.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"cannot convert from {fmt!r}: choose one of {', '.join(FORMATS)}")
    named, origin = configured_classes(classes)
    reader = read_voc if fmt == "voc" else read_yolo
    data = reader(Path(source), ClassNames(named, origin or "classes"), skip_bad=skip_bad)
    out_json = Path(out_json)
    if copy_images:
        data = copy_images_into(data, out_json.parent / "images")
    write_atomic(out_json, json.dumps(data.to_coco(relative_to=out_json.parent)))
    return {"images": len(data), "objects": data.num_objects, "classes": data.classes, "report": data.report, "json": str(out_json)}


def copy_images_into(data: DetectionSet, folder: Path) -> DetectionSet:
    """Copy every image under `folder` (paths below their common folder kept); the set with the new paths."""
    paths = [record.path for record in data.records]
    if not paths:
        return data
    base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    targets = [folder / os.path.relpath(os.path.abspath(p), base) for p in paths]
    for path, target in zip(paths, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return with_paths(data, [str(t) for t in targets])
