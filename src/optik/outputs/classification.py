"""Classification JSON: `{"class": score, ...}` in class order, or the top K in score order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from optik.files import tidy_floats, write_atomic


@dataclass(frozen=True)
class ClassificationFormat:
    """How `optik predict` and the services render a classification: `<stem>.json` with `{class: score}`.

    Args:
        top_k: only the K most likely classes, highest first (clamped to the class count).
        min_score: only classes scoring at least this (softmax probability).
    """

    top_k: int | None = None
    min_score: float | None = None
    suffix = ".json"

    def payload(self, result) -> dict[str, float]:
        """The prediction as a JSON-ready dict (what Redis replies carry)."""
        scores = result.to_dict(self.top_k)
        if self.min_score is not None:
            scores = {name: score for name, score in scores.items() if score >= self.min_score}
        return dict(zip(scores, tidy_floats(list(scores.values()))))  # 0.4789487, not 0.4789486825466156

    def text(self, result) -> str:
        """The content of the output file."""
        return json.dumps(self.payload(result))

    def write(self, result, path: str | Path, staging_dir: str | Path | None = None) -> Path:
        return write_atomic(path, self.text(result), staging_dir)


def error_record(source: str, reason: str) -> dict:
    """What an `.error.json` holds: why an image was not predicted."""
    return {"file": source, "error": reason, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_error(source: str, reason: str, path: str | Path, staging_dir: str | Path | None = None) -> Path:
    return write_atomic(path, json.dumps(error_record(source, reason)), staging_dir)
