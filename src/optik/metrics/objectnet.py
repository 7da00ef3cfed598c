"""The ObjectNet challenge's scoring of a prediction CSV (`optik objectnet score`), without torch:
a scorer is a light client, and starts in a fraction of a second."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from optik.errors import DataError


@dataclass
class Score:
    top1: float
    top5: float
    scored: int
    total: int


def score_predictions(
    predictions: str | Path, answers: str | Path, range_check: bool = True, num_classes: int = 313
) -> Score:
    """Score an ObjectNet CSV with the challenge's rules; any malformed row rejects the whole file.

    ANSWERS is `{"file name": id}` or `{"file name": [ids]}` (any listed id counts as right). A
    row is `filename,p1,c1,...` with one to five (integer id, numeric confidence) pairs; file names
    must be known and unique; ids must lie in [-1, num_classes) unless `range_check` is off. Top-1
    and top-5 count over all answers, so a missing image counts as wrong.
    """
    truth = _read_answers(Path(answers))
    rows: dict[str, list[int]] = {}
    with open(predictions, newline="", encoding="utf-8") as fh:
        for number, cells in enumerate(csv.reader(fh), start=1):
            where = f"{predictions} line {number}"
            if not cells or not any(c.strip() for c in cells):
                raise DataError(f"{where}: empty line; the file is rejected")
            name, values = cells[0].strip(), cells[1:]
            if (number == 1 and name == "filename") or name.startswith("{"):
                raise DataError(
                    f"{where}: this looks like `--format csv` or `jsonl` output; only `--format objectnet` files (no header) can be scored; the file is rejected"
                )
            if len(values) < 2 or len(values) > 10 or len(values) % 2:
                raise DataError(
                    f"{where}: expected filename and 1 to 5 (prediction, confidence) pairs, got {len(values)} values; the file is rejected"
                )
            if name not in truth:
                raise DataError(f"{where}: file name {name!r} is not in {Path(answers).name}; the file is rejected")
            if name in rows:
                raise DataError(f"{where}: {name!r} appears twice; the file is rejected")
            rows[name] = [_prediction_id(v, where, range_check, num_classes) for v in values[0::2]]
            for confidence in values[1::2]:
                try:
                    float(confidence)
                except ValueError:
                    raise DataError(
                        f"{where}: confidence {confidence!r} is not a number; the file is rejected"
                    ) from None
    if not rows:
        raise DataError(f"{predictions} has no predictions")
    top1 = sum(bool(rows.get(name)) and rows[name][0] in ids for name, ids in truth.items())
    top5 = sum(any(p in ids for p in rows.get(name, [])[:5]) for name, ids in truth.items())
    return Score(top1 / len(truth), top5 / len(truth), len(rows), len(truth))


def _prediction_id(value: str, where: str, range_check: bool, num_classes: int) -> int:
    try:
        ident = int(value.strip())
    except ValueError:
        raise DataError(f"{where}: prediction {value!r} is not an integer id; the file is rejected") from None
    if range_check and not -1 <= ident < num_classes:
        raise DataError(
            f"{where}: prediction id {ident} is outside [-1, {num_classes - 1}]; the file is rejected (--no-range-check to allow it)"
        )
    return ident


def _read_answers(path: Path) -> dict[str, set[int]]:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"answers file not found: {path}") from None
    except ValueError as exc:
        raise DataError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(content, dict) or not content:
        raise DataError(f'{path} should map file names to ObjectNet ids: {{"image.png": 12, ...}}')
    answers = {}
    for name, ids in content.items():
        ids = ids if isinstance(ids, list) else [ids]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise DataError(f"{path}: the answer for {name!r} is not an integer id (or a list of them)")
        answers[name] = set(ids)
    return answers
