"""`optik test`: run a model package (or an exported .onnx / .xml) over a labelled split and report its
task's metrics (classification, or COCO mAP for detectors), and draw its task's evaluation plots."""

from __future__ import annotations

from pathlib import Path

from optik.errors import ConfigError
from optik.metrics.evaluation import EvalResult
from optik.models.package import load_package
from optik.tasks import get_task
from optik.tasks.base import RunOptions


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
    tta: str | None = None,
    calibration: str | Path | None = None,
) -> EvalResult:
    """Predict every image of the split and compute the metrics of the model's task (`with_curves`:
    a detector's precision-recall curves too, for plots). `data`: as the task reads it (default:
    the run's own split); `images`, `skip_bad`: see `Task.evaluate`; `tta`: a classifier's
    test-time augmentation (None: the one the package records); `calibration`: images to quantize
    on (precision int8)."""
    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split must be train, val or test, got {split!r}")
    from optik.inference.runtime import engine_of_file
    from optik.tasks.loading import exported_package, load_predictor, with_tta

    predictor = None
    if engine_of_file(model) is None:
        package = with_tta(load_package(model), tta, str(model))
    else:  # an exported file runs as it is, on its engine; its metadata stands in for the package
        if calibration is not None:
            raise ConfigError(
                f"{model} is exported already; --calibration quantizes a model.pt (or export with --int8 --calibration DIR)"
            )
        package = exported_package(model, tta)
        predictor = load_predictor(model, device=device, precision=precision, batch_size=batch_size, mode=mode, tta=tta)
    run = RunOptions(device, precision, batch_size, mode, calibration=calibration)
    return get_task(package.task).evaluate(
        package, str(model), data, split, run, with_curves, images=images, skip_bad=skip_bad, predictor=predictor
    )


def plot_evaluation(result: EvalResult, folder: str | Path) -> list[Path]:
    """The evaluation's plots as PNGs in `folder`, as its task draws them: the confusion matrix of a
    classifier; per-class AP bars and precision-recall curves of a detector (evaluated `with_curves`)."""
    return get_task(result.task).plot_evaluation(result, Path(folder))
