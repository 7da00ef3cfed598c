"""Rows of batch prediction: ObjectNet challenge CSV, CSV with a header, or JSON lines.

`objectnet`: no header, `filename,p1,c1,...,pK,cK` (prediction id and confidence interleaved,
highest first). `csv`: the same columns under a header, plus `label1..labelK` when the classes have
names. `jsonl`: `{"filename", "ids", "scores"[, "labels"]}` per line.

Rows go to a part file per process as batches finish (flushed and synced), so a killed run keeps
what it wrote; `merge_rows` writes the final file, sorted by file name, atomically.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from optik.files import tidy_number, write_atomic

FORMATS = ("objectnet", "csv", "jsonl")


@dataclass
class Row:
    filename: str
    ids: list[int]
    scores: list[float]
    labels: list[str] | None = None


def header(fmt: str, k: int, labels: bool) -> str | None:
    if fmt != "csv":
        return None
    columns = (
        ["filename"]
        + [f"{kind}{i}" for i in range(1, k + 1) for kind in ("p", "c")]
        + ([f"label{i}" for i in range(1, k + 1)] if labels else [])
    )
    return ",".join(columns) + "\n"


def format_row(row: Row, fmt: str) -> str:
    if fmt == "jsonl":
        record = {"filename": row.filename, "ids": row.ids, "scores": [tidy_number(float(s)) for s in row.scores]}
        if row.labels is not None:
            record["labels"] = row.labels
        return json.dumps(record) + "\n"
    cells = [row.filename] + [value for pair in zip(row.ids, (f"{s:.6g}" for s in row.scores)) for value in pair]
    if fmt == "csv":
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(cells + (row.labels or []))
        return buffer.getvalue()
    return ",".join(map(str, cells)) + "\n"


def row_filename(line: str, fmt: str) -> str | None:
    """The file name of a complete row (None for a header or a line cut short by a killed run)."""
    if not line.endswith("\n") or not line.strip():
        return None
    if fmt == "jsonl":
        try:
            return json.loads(line)["filename"]
        except (ValueError, KeyError, TypeError):
            return None
    first = next(csv.reader([line]))[0]
    return None if fmt == "csv" and first == "filename" else first


class PartWriter:
    """Appends rows to this process's part file; each batch is flushed and synced before the next."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        path.parent.mkdir(parents=True, exist_ok=True)
        _trim_partial_line(path)
        self.fh = open(path, "a", encoding="utf-8")

    def write(self, rows: Iterable[Row]) -> None:
        self.fh.write("".join(format_row(row, self.fmt) for row in rows))
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def _trim_partial_line(path: Path) -> None:
    """Cut a row that a killed run left half-written, so the next row starts on a line of its own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if not data.endswith(b"\n"):
            fh.truncate(data.rfind(b"\n") + 1)


def part_files(out: Path) -> list[Path]:
    """The part files of `out`, one per process rank (`OUT.part-<rank>`)."""
    return sorted(p for p in out.parent.glob(f"{out.name}.part-*") if p.name.rsplit("-", 1)[-1].isdigit())


def done_rows(paths: Iterable[Path], fmt: str) -> dict[str, str]:
    """File name -> its complete row line, from finished outputs and part files (first one wins)."""
    rows: dict[str, str] = {}
    for path in paths:
        if not path.is_file():
            continue
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                name = row_filename(line, fmt)
                if name is not None:
                    rows.setdefault(name, line)
    return rows


def pairs_in(line: str, labels: bool) -> int:
    """How many (id, confidence) pairs a csv or objectnet row holds (csv rows with labels: a label per pair)."""
    (cells,) = csv.reader([line])
    return (len(cells) - 1) // (3 if labels else 2)


def merge_rows(out: Path, fmt: str, k: int, labels: bool) -> int:
    """Write `out` from itself and every part file, one row per file name, sorted; remove the parts."""
    parts = part_files(out)
    rows = done_rows([out, *parts], fmt)
    # a model with fewer classes than k writes one pair per class: the header says what the rows hold
    if rows and fmt == "csv":
        k = pairs_in(next(iter(rows.values())), labels)
    head = header(fmt, k, labels) or ""
    write_atomic(out, head + "".join(rows[name] for name in sorted(rows)))
    for part in parts:
        part.unlink()
    return len(rows)
