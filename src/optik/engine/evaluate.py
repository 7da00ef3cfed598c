"""`optik test`: run a model package over a labelled split and report its task's metrics
(classification, or COCO mAP for detectors); the confusion matrix as a picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from optik.errors import ConfigError
from optik.files import write_atomic
from optik.metrics.evaluation import EvalResult
from optik.models.package import load_package
from optik.tasks import get_task


def evaluate(
    model: str | Path,
    data: str | Path | None = None,
    split: str = "test",
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "32",
    mode: str = "auto",
    with_curves: bool = False,
    images: str | Path | None = None,
    skip_bad: bool = False,
) -> EvalResult:
    """Predict every image of the split and compute the metrics of the model's task (`with_curves`:
    a detector's precision-recall curves too, for plots). `data`: as the task reads it (default:
    the run's own split); `images`, `skip_bad`: see `Task.evaluate`."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split must be train, val or test, got {split!r}")
    package = load_package(model)
    return get_task(package.task).evaluate(
        package,
        str(model),
        data,
        split,
        batch_size=batch_size,
        device=device,
        precision=precision,
        mode=mode,
        with_curves=with_curves,
        images=images,
        skip_bad=skip_bad,
    )


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
