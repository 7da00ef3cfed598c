"""Classification JSON: `{"class": score, ...}` in class order, or the top K in score order."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from optik.files import write_atomic


def classification_json(result, top_k: int | None = None) -> str:
    """The JSON text of one image's prediction (scores are softmax probabilities)."""
    return json.dumps(result.to_dict(top_k))


@dataclass(frozen=True)
class ClassificationFormat:
    """How `optik predict` and the services render a classification: `<stem>.json` with `{class: score}`."""

    top_k: int | None = None
    suffix = ".json"

    def payload(self, result) -> dict:
        """The prediction as a JSON-ready dict (what Redis replies carry)."""
        return result.to_dict(self.top_k)

    def text(self, result) -> str:
        """The content of the output file."""
        return json.dumps(self.payload(result))


def write_classification(result, path: str | Path, top_k: int | None = None, staging_dir: str | Path | None = None) -> Path:
    return write_atomic(path, classification_json(result, top_k), staging_dir)


def error_record(source: str, reason: str) -> dict:
    """What an `.error.json` holds: why an image was not predicted."""
    return {"file": source, "error": reason, "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_error(source: str, reason: str, path: str | Path, staging_dir: str | Path | None = None) -> Path:
    return write_atomic(path, json.dumps(error_record(source, reason)), staging_dir)
