"""Classification metrics of `optik test`: top-1/top-5, per-class precision/recall/F1/accuracy, their
macro means and the confusion matrix (torchmetrics for the counts, numpy for the ratios); and the
top-k accuracies both training and `optik test` report (`top_k_accuracies`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

WIDE_K = 5  # the top-k reported beside top-1


@dataclass(frozen=True)
class TopK:
    """One top-k accuracy, and its names: as training logs it and as `optik test` reports it."""

    k: int

    @property
    def logged(self) -> str:
        return f"val/acc{self.k}"

    @property
    def reported(self) -> str:
        return f"accuracy_top{self.k}"


def top_k_accuracies(num_classes: int) -> list[TopK]:
    """Top-1, and top-5 when there are more than 5 classes: a top-k over k or fewer classes is always 1.0."""
    return [TopK(1)] + ([TopK(WIDE_K)] if num_classes > WIDE_K else [])


def classification_metrics(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> dict:
    """Top-1 (and top-5: `top_k_accuracies`), per-class precision/recall/F1/accuracy/support, macro means, confusion matrix."""
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
    top_k = {
        accuracy.reported: float(multiclass_accuracy(scores, target, n, top_k=accuracy.k, average="micro"))
        for accuracy in top_k_accuracies(n)
    }
    return {
        **top_k,
        "mean_class_accuracy": float(recall[support > 0].mean()),
        "precision_macro": float(precision[present].mean()),
        "recall_macro": float(recall[present].mean()),
        "f1_macro": float(f1[present].mean()),
        # undefined is None, not 0: recall (and f1, accuracy) of a class the data lacks, precision of one never predicted
        "per_class": {
            name: {
                "precision": float(precision[i]) if predicted[i] else None,
                "recall": float(recall[i]) if support[i] else None,
                "f1": float(f1[i]) if support[i] else None,
                "accuracy": float(recall[i]) if support[i] else None,
                "support": int(support[i]),
            }
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion.tolist(),
    }
