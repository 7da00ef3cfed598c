"""Pictures of an evaluation, as PNG: the confusion matrix of a classifier, AP per class and precision-recall
curves of a detector (each task says which are its own: `Task.plot_evaluation`), and the figure helpers
the run curves of `optik plot` share. matplotlib only, no torch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from optik.files import write_atomic

if TYPE_CHECKING:
    from optik.metrics.evaluation import DetectionResult, EvalResult


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Write the figure as PNG atomically and free it; what lies outside the axes (a legend) is kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=100, bbox_inches="tight"))
    pyplot().close(fig)
    return path


def add_legend(ax, fontsize: float = 8) -> None:
    """A legend to the right of the axes, where it cannot hide a curve; none for a single curve
    (the title or axis label names it)."""
    labelled = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    if len(labelled) > 1:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def relative_luminance(rgb) -> float:
    """WCAG relative luminance of an sRGB colour (components in [0, 1])."""
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast_ratio(first, second) -> float:
    """WCAG contrast ratio of two colours, 1 (same) to 21 (black on white)."""
    a, b = sorted((relative_luminance(first), relative_luminance(second)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def text_colour(background) -> str:
    """Black or white, whichever stands out more from `background` (at least 4.5:1 on any colour)."""
    return "black" if contrast_ratio(background, (0, 0, 0)) >= contrast_ratio(background, (1, 1, 1)) else "white"


def confusion_figure(matrix: np.ndarray, classes: list[str], top1: float):
    """The confusion matrix (rows = true class, columns = predicted), each count written in the colour
    that contrasts with its cell (up to 30 classes), under a title that fits any class count."""
    plt = pyplot()
    n = len(classes)
    size = max(4.5, min(24, 2 + 0.45 * n))  # small matrices still get room for the title and labels
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90 if n > 8 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix\ntop-1 accuracy {top1:.4f}")
    if n <= 30:
        for (i, j), value in np.ndenumerate(matrix):
            colour = text_colour(image.cmap(image.norm(value)))
            ax.text(j, i, str(value), ha="center", va="center", color=colour, fontsize=12 if n <= 8 else 8)
    fig.tight_layout()
    return fig


def plot_confusion(result: EvalResult, folder: Path) -> Path:
    """confusion_matrix.png of a classifier's evaluation."""
    matrix = np.array(result.metrics["confusion_matrix"])
    fig = confusion_figure(matrix, result.classes, result.metrics["accuracy_top1"])
    return save_figure(fig, Path(folder) / "confusion_matrix.png")


def suffixed(name: str, iou_type: str) -> str:
    """`per_class_ap` for boxes, `per_class_ap_segm` for masks."""
    return name if iou_type == "bbox" else f"{name}_{iou_type}"


def class_ap_figure(result: DetectionResult, iou_type: str):
    """AP@[.5:.95] and AP@.5 of every class with objects in the data, side by side."""
    plt = pyplot()
    curves = result.curves[iou_type]["per_class"]
    classes = [name for name in result.classes if name in curves]  # a class with no objects in the data has no AP
    ap = [result.metrics[iou_type]["per_class"].get(name, 0.0) for name in classes]
    ap50 = [float(np.mean(curves[name]["iou50"])) for name in classes]
    positions = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(min(24, 3 + 0.5 * len(classes)), 4.5))
    ax.bar(positions - 0.2, ap, width=0.4, label="AP@[.5:.95]")
    ax.bar(positions + 0.2, ap50, width=0.4, label="AP@.5")
    ax.set_xticks(positions, classes, rotation=90 if len(classes) > 8 else 0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AP")
    ax.set_title(f"{iou_type} AP per class (mAP {result.metrics[iou_type]['map']:.4f})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return fig


def pr_curve_figure(result: DetectionResult, iou_type: str):
    """Precision over recall at IoU 0.5: one line per class with objects in the data, and their mean."""
    plt = pyplot()
    curves = result.curves[iou_type]
    recall, per_class = curves["recall"], curves["per_class"]
    fig, ax = plt.subplots(figsize=(7, 6))
    for name, curve in per_class.items():
        ax.plot(recall, curve["iou50"], linewidth=1, label=f"{name} (AP@.5 {np.mean(curve['iou50']):.3f})")
    if per_class:
        mean = np.mean([curve["iou50"] for curve in per_class.values()], axis=0)
        ax.plot(recall, mean, color="black", linewidth=2.5, linestyle="--", label=f"mean (mAP@.5 {mean.mean():.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{iou_type} precision-recall at IoU 0.5")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    add_legend(ax, fontsize=5 if len(per_class) > 20 else 8)
    return fig


def plot_detection(result: DetectionResult, folder: Path) -> list[Path]:
    """per_class_ap[_segm].png and pr_curve[_segm].png for each IoU type of a detector's evaluation (with curves)."""
    folder = Path(folder)
    paths = []
    for iou_type in result.curves:
        paths.append(
            save_figure(class_ap_figure(result, iou_type), folder / f"{suffixed('per_class_ap', iou_type)}.png")
        )
        paths.append(save_figure(pr_curve_figure(result, iou_type), folder / f"{suffixed('pr_curve', iou_type)}.png"))
    return paths
