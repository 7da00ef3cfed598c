"""OPEX JSON (object predictions exchange format) for detections, written through `fast-opex`.

One file per image, what the old `mmdet_predict --prediction_format opex` wrote: `{"id": file name,
"timestamp": local time as `str(datetime.now())`, "objects": [{"label", "score", "bbox": {left, top,
right, bottom}, "polygon": {"points": [[x, y], ...]}[, "meta"]}]}`. Coordinates are whole pixels,
truncated as the old tools did; the polygon is the box's corners when the model has no mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from opex import BBox, ObjectPrediction, ObjectPredictions, Polygon

from optik.files import tidy_number, write_atomic
from optik.outputs.polygons import DetectionOptions, ObjectShape
from optik.results import Detection


@dataclass(frozen=True)
class OpexFormat(DetectionOptions):
    """How `optik predict` and the services render a detection as OPEX JSON (`<stem>.json`).

    The options are those of `DetectionOptions`. With `output_minrect`, each object with a polygon
    gets `"meta": {"minrect_w": "...", "minrect_h": "..."}` (OPEX meta values are strings; the old
    tools wrote the minimum rectangle to ROI CSV only).
    """

    suffix = ".json"

    def predictions(self, result: Detection) -> ObjectPredictions:
        """The detection as fast-opex objects, stamped with the current local time."""
        kept, shapes = self.objects(result)
        names = kept.label_names()
        objects = [
            _prediction(name, tidy_number(float(score)), shape)
            for name, score, shape in zip(names, kept.scores, shapes)
        ]
        return ObjectPredictions(id=Path(result.source).name, timestamp=str(datetime.now()), objects=objects)

    def payload(self, result: Detection) -> dict:
        """The OPEX document as a JSON-ready dict (what Redis replies carry)."""
        return self.predictions(result).to_dict()

    def text(self, result: Detection) -> str:
        """The content of the output file, as fast-opex's `save_json_to_file` writes it."""
        return self.predictions(result).to_json_string() + "\n"

    def write(self, result: Detection, path: str | Path, staging_dir: str | Path | None = None) -> Path:
        """Write the OPEX file atomically."""
        return write_atomic(path, self.text(result), staging_dir)


def _prediction(label: str, score: float, shape: ObjectShape) -> ObjectPrediction:
    x0, y0, x1, y1 = (int(v) for v in shape.box)
    points = [[int(x), int(y)] for x, y in shape.outline()]
    meta = None
    if shape.minrect is not None:
        meta = {"minrect_w": str(round(shape.minrect[0], 6)), "minrect_h": str(round(shape.minrect[1], 6))}
    return ObjectPrediction(
        score=score,
        label=label,
        bbox=BBox(left=x0, top=y0, right=x1, bottom=y1),
        polygon=Polygon(points=points),
        meta=meta,
    )
