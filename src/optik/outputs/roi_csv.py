"""ROI CSV for detections: one `<stem>-rois.csv` per image, the columns of wai.annotations' ROI format.

Columns: `file,x0,y0,x1,y1,x0n,y0n,x1n,y1n,label,label_str,score`, then `poly_x,poly_y,poly_xn,poly_yn`
when the model gives masks, then `minrect_w,minrect_h` with `output_minrect` (and masks). `file` is
the image's base name, `*n` columns are divided by the image width/height, `label` is the 0-based class
index and `label_str` its name. As wai.annotations' ROIWriter (`csv.DictWriter`, `",".join` of each
polygon list), a polygon cell holds its coordinates separated by commas, so the CSV writer quotes it:
`"10.0,19.0,19.0,10.0"`. A cell is empty where a mask gave no polygon. The header is always written,
also for an image without objects.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from optik.files import write_atomic
from optik.outputs.polygons import DetectionOptions, ObjectShape
from optik.results import Detection

BOX_COLUMNS = ("file", "x0", "y0", "x1", "y1", "x0n", "y0n", "x1n", "y1n", "label", "label_str", "score")
POLYGON_COLUMNS = ("poly_x", "poly_y", "poly_xn", "poly_yn")
MINRECT_COLUMNS = ("minrect_w", "minrect_h")


@dataclass(frozen=True)
class RoiCsvFormat(DetectionOptions):
    """How `optik predict` and the services render a detection as ROI CSV (`<stem>-rois.csv`).

    The options are those of `DetectionOptions`. `payload` (what Redis replies carry) is the list of
    rows as JSON objects under the CSV's column names, with numbers as numbers, each polygon column
    as a list of numbers and empty cells as null: a client gets the values without parsing CSV twice.
    """

    suffix = "-rois.csv"

    def columns(self, result: Detection) -> tuple[str, ...]:
        """The header: polygon columns only for a model with masks, minrect columns only with `output_minrect` too."""
        if result.masks is None:
            return BOX_COLUMNS
        return BOX_COLUMNS + POLYGON_COLUMNS + (MINRECT_COLUMNS if self.output_minrect else ())

    def rows(self, result: Detection) -> list[dict]:
        """One dict per object, highest score first, keyed by `columns(result)`."""
        kept, shapes = self.objects(result)
        columns = self.columns(result)
        rows = []
        for label, score, shape in zip(kept.labels, kept.scores, shapes):
            row = _row(result, int(label), float(score), shape)
            rows.append({column: row.get(column) for column in columns})
        return rows

    def payload(self, result: Detection) -> list[dict]:
        """The rows as JSON-ready dicts (see the class docstring)."""
        return self.rows(result)

    def text(self, result: Detection) -> str:
        """The content of the output file: header, then one line per object."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, self.columns(result))
        writer.writeheader()
        for row in self.rows(result):
            writer.writerow({column: _cell(value) for column, value in row.items()})
        return buffer.getvalue()

    def write(self, result: Detection, path: str | Path, staging_dir: str | Path | None = None) -> Path:
        """Write the CSV file atomically."""
        return write_atomic(path, self.text(result), staging_dir)


def _row(result: Detection, label: int, score: float, shape: ObjectShape) -> dict:
    width, height = float(result.width), float(result.height)
    x0, y0, x1, y1 = (float(v) for v in shape.box)
    row = {
        "file": Path(result.source).name,
        "x0": _pixels(x0),
        "y0": _pixels(y0),
        "x1": _pixels(x1),
        "y1": _pixels(y1),
        "x0n": _fraction(x0 / width),
        "y0n": _fraction(y0 / height),
        "x1n": _fraction(x1 / width),
        "y1n": _fraction(y1 / height),
        "label": label,
        "label_str": result.classes[label],
        "score": _fraction(score),
    }
    if shape.polygon is not None:
        xs, ys = shape.polygon[:, 0], shape.polygon[:, 1]
        row.update(
            poly_x=[_pixels(x) for x in xs],
            poly_y=[_pixels(y) for y in ys],
            poly_xn=[_fraction(x / width) for x in xs],
            poly_yn=[_fraction(y / height) for y in ys],
        )
    if shape.minrect is not None:
        row.update(minrect_w=_pixels(shape.minrect[0]), minrect_h=_pixels(shape.minrect[1]))
    return row


# float32 values carry noise beyond their 7th digit (61.900002, 0.8999999761581421): keep what is real.
def _pixels(value: float) -> float:
    return round(float(value), 3)


def _fraction(value: float) -> float:
    return round(float(value), 6)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)
