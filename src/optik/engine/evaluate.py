"""`optik test`: run a model package over a labelled split and report classification metrics."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

from optik.config import parse_config
from optik.data.classes import match_classes
from optik.data.folder import Sample, class_folders, has_split_folders, samples_from
from optik.data.listfile import read_list
from optik.data.loaders import read_splits
from optik.errors import ConfigError, DataError, ModelError
from optik.files import write_atomic
from optik.inference.predictor import Predictor
from optik.models.package import load_package


@dataclass
class EvalResult:
    metrics: dict
    classes: list[str]
    items: list[dict] = field(default_factory=list)  # per image: file, label, pred, score, probs
    failures: list[dict] = field(default_factory=list)


def test_samples(package_config: dict, classes: list[str], data: str | Path | None, split: str) -> tuple[list[Sample], str]:
    """Labelled samples to evaluate on, and where they came from.

    `data` may be a folder with `<split>/<class>/` or `<class>/` sub-folders, or a list file;
    without it, the run's own data config and split are used (the same seeded split as training).
    """
    if data is None:
        cfg = parse_config(package_config)
        if cfg.data.format not in ("folder", "list"):
            raise DataError(f"this run trained on {cfg.data.format}; give DATA (a folder of class sub-folders or a list file) to evaluate on")
        data_cfg = cfg.data.model_copy(update={"classes": classes})
        splits = read_splits(data_cfg)
        return splits.get(split), splits.origin[split]
    data = Path(data)
    if data.is_file():  # paths relative to the run's data.root, as in training, else to the list's folder
        root = package_config.get("data", {}).get("root")
        base = Path(root) if root and Path(root).is_dir() else data.parent
        samples, _ = read_list(data, base, classes)
        return samples, str(data)
    if not data.is_dir():
        raise DataError(f"data not found: {data} (give a folder of class sub-folders or a list file)")
    folder = data / split if has_split_folders(data) else data
    if split == "test" and not folder.is_dir() and (data / "val").is_dir():
        folder = data / "val"  # as in training: without a test split, val serves as test
    if not folder.is_dir():
        raise DataError(f"{data} has no {split}/ folder; choose --split among {[p.name for p in data.iterdir() if p.is_dir()]}")
    images = class_folders(folder)
    unknown = sorted(set(images) - set(classes))
    if unknown:
        match_classes(classes, "the model", sorted(images), f"the class folders of {folder}")
    return samples_from(images, classes), str(folder)


def evaluate(model: str | Path, data: str | Path | None = None, split: str = "test", batch_size: int | None = None, device: str = "auto", precision: str = "32", mode: str = "auto",
             with_curves: bool = False) -> EvalResult:
    """Predict every image of the split and compute the metrics (classification, or COCO mAP for
    detectors; `with_curves`: their precision-recall curves too, for plots)."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split must be train, val or test, got {split!r}")
    package = load_package(model)
    if package.task == "pretrain":
        raise ModelError(f"{model} is a pretrained backbone (no classes); fine-tune it with model.weights in a classify config, or measure it with optik probe")
    if package.task == "detect":
        from optik.engine.evaluate_detect import evaluate_detector

        return evaluate_detector(package, data, split, batch_size=batch_size or 8, device=device, precision=precision, mode=mode, with_curves=with_curves)
    batch_size = batch_size or 32
    samples, origin = test_samples(package.config, package.classes, data, split)
    if not samples:
        raise DataError(f"no images to evaluate in {origin}")
    predictor = Predictor.from_package(package, device=device, precision=precision, batch_size=batch_size, mode=mode, expected_images=len(samples))
    labels, probs, items, failures = [], [], [], []
    for (path, label), result in zip(samples, predictor.predict_stream(path for path, _ in samples)):
        if not result.ok:
            failures.append({"file": path, "error": result.reason})
            continue
        labels.append(label)
        probs.append(result.probs)
        items.append({"file": path, "label": predictor.classes[label], "pred": result.label, "score": result.score, "probs": result.probs.tolist()})
    if not labels:
        raise DataError(f"none of the {len(samples)} images in {origin} could be read")
    metrics = classification_metrics(np.stack(probs), np.array(labels), predictor.classes)
    metrics.update({"images": len(labels), "unreadable": len(failures), "data": origin, "split": split})
    return EvalResult(metrics, predictor.classes, items, failures)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Top-1/top-5, per-class precision/recall/F1/accuracy/support, macro means, confusion matrix."""
    n = len(classes)
    scores, target = torch.from_numpy(probs).float(), torch.from_numpy(labels).long()
    confusion = multiclass_confusion_matrix(scores, target, n).numpy()  # rows: true, cols: predicted
    true_pos = np.diag(confusion).astype(float)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = np.divide(true_pos, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros(n), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0)
    present = (support > 0) | (predicted > 0)  # as scikit-learn: labels seen in truth or predictions
    k = min(5, n)
    return {
        "accuracy_top1": float(multiclass_accuracy(scores, target, n, top_k=1, average="micro")),
        f"accuracy_top{k}": float(multiclass_accuracy(scores, target, n, top_k=k, average="micro")),
        "mean_class_accuracy": float(recall[support > 0].mean()),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "accuracy": float(recall[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion.tolist(),
    }


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


def plot_confusion(result: EvalResult, folder: str | Path) -> Path:
    """confusion_matrix.png: counts, rows = true class, columns = predicted, in class order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(result.metrics["confusion_matrix"])
    n = len(result.classes)
    size = min(24, 2 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), result.classes, rotation=90 if n > 8 else 0)
    ax.set_yticks(range(n), result.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix (top-1 {result.metrics['accuracy_top1']:.4f})")
    if n <= 30:
        limit = matrix.max() / 2 if matrix.size else 0
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > limit else "black", fontsize=8)
    fig.tight_layout()
    path = Path(folder) / "confusion_matrix.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)
    return path
