"""What `optik test` returns for any task (`EvalResult`, and `DetectionResult` with its curves),
and how it is written: .json, .yaml or .pkl, chosen by the file name."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from optik.errors import ConfigError
from optik.files import tidy_numbers, write_atomic


@dataclass
class EvalResult:
    metrics: dict
    classes: list[str]
    items: list[dict] = field(default_factory=list)  # per image: file, label, pred, score, probs
    failures: list[dict] = field(default_factory=list)
    task: str = "classify"  # the task that evaluated (`optik.tasks`): it also draws the plots


@dataclass
class DetectionResult(EvalResult):
    """A detector's `EvalResult`, with its precision-recall curves per IoU type (`precision_curves`), for plots."""

    curves: dict = field(default_factory=dict)
    task: str = "detect"


RESULT_SUFFIXES = (".json", ".yaml", ".yml", ".pkl")


def check_results_path(path: str | Path) -> None:
    if Path(path).suffix.lower() not in RESULT_SUFFIXES:
        raise ConfigError(f"--out {path}: use a .json, .yaml or .pkl file name")


def write_results(result: EvalResult, path: str | Path, include_items: bool = False) -> Path:
    """Metrics (and per-image predictions) as .json, .yaml/.yml or .pkl, chosen by the suffix."""
    path = Path(path)
    payload = {"metrics": result.metrics, "classes": result.classes, "unreadable": result.failures}
    if include_items:
        payload["predictions"] = result.items
    payload = tidy_numbers(payload)  # 0.75, not 0.7499999999999999
    suffix = path.suffix.lower()
    if suffix == ".json":
        data: bytes | str = json.dumps(payload, indent=2)
    elif suffix in (".yaml", ".yml"):
        data = yaml.safe_dump(payload, sort_keys=False)
    elif suffix == ".pkl":
        data = pickle.dumps(payload)
    else:
        raise ConfigError(f"--out {path}: use a .json, .yaml or .pkl file name")
    return write_atomic(path, data)
