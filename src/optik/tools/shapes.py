"""A synthetic detection set: circles, squares and triangles on noisy backgrounds, with exact masks.

Written as COCO (polygons), Pascal VOC (XML per image) or YOLO (txt per image), so that tests,
the demo and benchmarks can train and score a detector without downloading anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle")


@dataclass
class Shape:
    label: str
    polygon: list[tuple[float, float]]

    @property
    def box(self) -> tuple[float, float, float, float]:
        xs, ys = [p[0] for p in self.polygon], [p[1] for p in self.polygon]
        return min(xs), min(ys), max(xs), max(ys)


@dataclass
class ShapeImage:
    file_name: str
    width: int
    height: int
    shapes: list[Shape] = field(default_factory=list)


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    corners = {"circle": 32, "square": 4, "triangle": 3}[kind]
    start = angle if kind != "circle" else 0.0
    return [
        (cx + r * math.cos(start + 2 * math.pi * i / corners), cy + r * math.sin(start + 2 * math.pi * i / corners))
        for i in range(corners)
    ]


def draw_image(rng: np.random.Generator, size: int, max_shapes: int) -> tuple[Image.Image, list[Shape]]:
    """One picture: a noisy background with 1..max_shapes shapes that do not overlap much."""
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.normal(0, 18, size=(size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    shapes: list[Shape] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            r = float(rng.uniform(0.09, 0.2) * size)
            cx, cy = (float(v) for v in rng.uniform(r + 1, size - r - 1, size=2))
            if all(math.hypot(cx - x, cy - y) > 0.8 * (r + q) for x, y, q in placed):
                break
        else:
            continue
        kind = SHAPES[int(rng.integers(len(SHAPES)))]
        polygon = _polygon(kind, cx, cy, r, float(rng.uniform(0, 2 * math.pi)))
        colour = tuple(int(c) for c in (base + rng.integers(90, 166, size=3)) % 256)
        draw.polygon(polygon, fill=colour)
        placed.append((cx, cy, r))
        shapes.append(Shape(kind, polygon))
    return image, shapes


def make_shapes(
    folder: str | Path, count: int, size: int = 128, max_shapes: int = 3, seed: int = 0, prefix: str = ""
) -> list[ShapeImage]:
    """Draw `count` PNG images into `folder`; returns what is on each."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        picture, shapes = draw_image(rng, size, max_shapes)
        name = f"{prefix}{i:05d}.png"
        picture.save(folder / name)
        images.append(ShapeImage(name, size, size, shapes))
    return images


def coco_dict(images: list[ShapeImage]) -> dict:
    """COCO instances JSON: boxes as [x, y, w, h], segmentation as one polygon per object."""
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    ids = {name: i + 1 for i, name in enumerate(SHAPES)}
    out_images, annotations = [], []
    for image_id, record in enumerate(images, start=1):
        out_images.append(
            {"id": image_id, "file_name": record.file_name, "width": record.width, "height": record.height}
        )
        for shape in record.shapes:
            x0, y0, x1, y1 = shape.box
            flat = [round(v, 2) for point in shape.polygon for v in point]
            area = 0.5 * abs(
                sum(x * y2 - x2 * y for (x, y), (x2, y2) in zip(shape.polygon, shape.polygon[1:] + shape.polygon[:1]))
            )
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": ids[shape.label],
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "segmentation": [flat],
                    "area": round(area, 2),
                    "iscrowd": 0,
                }
            )
    return {"images": out_images, "annotations": annotations, "categories": categories}


def write_voc(images: list[ShapeImage], folder: str | Path) -> None:
    """Pascal VOC XML next to each image (`<stem>.xml`)."""
    for record in images:
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = record.file_name
        size = ET.SubElement(root, "size")
        for key, value in (("width", record.width), ("height", record.height), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        for shape in record.shapes:
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = shape.label
            ET.SubElement(obj, "difficult").text = "0"
            box = ET.SubElement(obj, "bndbox")
            x0, y0, x1, y1 = shape.box
            for key, value in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
                ET.SubElement(box, key).text = str(int(round(value)))
        ET.ElementTree(root).write(Path(folder) / f"{Path(record.file_name).stem}.xml")


def write_yolo(images: list[ShapeImage], folder: str | Path) -> None:
    """YOLO txt next to each image: `class cx cy w h` normalised, plus classes.txt."""
    folder = Path(folder)
    for record in images:
        lines = []
        for shape in record.shapes:
            x0, y0, x1, y1 = shape.box
            cx, cy, w, h = (
                (x0 + x1) / 2 / record.width,
                (y0 + y1) / 2 / record.height,
                (x1 - x0) / record.width,
                (y1 - y0) / record.height,
            )
            lines.append(f"{SHAPES.index(shape.label)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        (folder / f"{Path(record.file_name).stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    (folder / "classes.txt").write_text("\n".join(SHAPES) + "\n")


def write_shapes_set(
    root: str | Path,
    fmt: str = "coco",
    train: int = 96,
    val: int = 32,
    test: int = 0,
    size: int = 128,
    max_shapes: int = 3,
    seed: int = 0,
) -> Path:
    """A split shapes set under `root/{train,val,test}/` in one format; returns root.

    coco: images and `annotations.json` in each split folder; voc: images and `<stem>.xml`;
    yolo: images, `<stem>.txt` and `classes.txt`.
    """
    root = Path(root)
    for offset, (split, count) in enumerate((("train", train), ("val", val), ("test", test))):
        if not count:
            continue
        folder = root / split
        images = make_shapes(folder, count, size=size, max_shapes=max_shapes, seed=seed * 1000 + offset)
        if fmt == "coco":
            (folder / "annotations.json").write_text(json.dumps(coco_dict(images)))
        elif fmt == "voc":
            write_voc(images, folder)
        elif fmt == "yolo":
            write_yolo(images, folder)
        else:
            raise ValueError(f"unknown format {fmt!r}; choose coco, voc or yolo")
    return root
