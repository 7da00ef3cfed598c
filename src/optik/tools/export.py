"""`optik export MODEL --format onnx|openvino`: a model package as an ONNX file that onnxruntime
serves, or an OpenVINO IR (.xml + .bin; fp32, or int8 quantized on calibration images).

The file carries what a predictor needs besides the graph: task, class names and eval
preprocessing, as the ONNX model's metadata (the IR's rt_info). The export is checked before the file is kept:
onnxruntime and PyTorch must agree (classifiers: same top-1 and probabilities within 1e-3 on 16
inputs; detectors: same labels, boxes within 1 px and scores within 1e-3 on the check images).
"""

from __future__ import annotations

from pathlib import Path

from optik.files import write_atomic
from optik.inference.onnx import OnnxExport
from optik.models.package import load_package
from optik.tasks import get_task
from optik.tasks.loading import with_tta


def export_model(
    source: str | Path,
    out: str | Path | None = None,
    dynamic_batch: bool = True,
    check_images: str | Path | None = None,
    tta: str | None = None,
) -> tuple[Path, OnnxExport]:
    """Export a classifier or detector package to ONNX next to it (or to `out`), checked against PyTorch.

    Args:
        dynamic_batch: classifiers: any batch size (else the export's batch of 16 only). Detectors
            take one image of any size per run either way.
        check_images: a folder of images the detector check runs on (up to 8); default:
            synthetic pictures. Real images put real objects into the comparison.
        tta: the classifier's test-time augmentation the file records (None: the package's); every
            runner of the file applies it, and `--tta` at prediction time overrides it.
    """
    package = with_tta(load_package(source), tta, str(source))
    result = get_task(package.task).export_onnx(package, check_images=check_images, dynamic_batch=dynamic_batch)
    out = Path(out) if out is not None else Path(source).with_suffix(".onnx")
    write_atomic(out, result.data)
    return out, result


def export_openvino(
    source: str | Path,
    out: str | Path | None = None,
    int8: bool = False,
    calibration: str | Path | None = None,
    tta: str | None = None,
):
    """Export a classifier package to an OpenVINO IR next to it (or to `out`, an .xml): fp32, checked
    against PyTorch, or with `int8` quantized on the `calibration` images (its agreement stated)."""
    from optik.errors import ConfigError
    from optik.inference.openvino import save_ir

    if int8 != (calibration is not None):
        raise ConfigError("--int8 quantizes on calibration images: give both --int8 and --calibration DIR")
    out = Path(out) if out is not None else Path(source).with_suffix(".xml")
    if out.suffix != ".xml":
        raise ConfigError(f"an OpenVINO IR is an .xml file (with its .bin beside it); got --out {out}")
    package = with_tta(load_package(source), tta, str(source))
    result = get_task(package.task).export_openvino(package, calibration=calibration)
    return save_ir(result.graph, out), result
