"""`optik export MODEL --format onnx`: a model package as an ONNX file that onnxruntime serves.

The file carries what a predictor needs besides the graph: task, class names and eval
preprocessing, as the ONNX model's metadata. The export is checked before the file is kept:
onnxruntime and PyTorch must agree (classifiers: same top-1 and probabilities within 1e-3 on 16
inputs; detectors: same labels, boxes within 1 px and scores within 1e-3 on the check images).
"""

from __future__ import annotations

from pathlib import Path

from optik.data.decode import open_image
from optik.data.folder import find_images
from optik.errors import ConfigError, DataError
from optik.files import write_atomic
from optik.inference.onnx import OnnxExport, export_package


def export_model(source: str | Path, out: str | Path | None = None, dynamic_batch: bool = True, check_images: str | Path | None = None,
                 limit: int = 8) -> tuple[Path, OnnxExport]:
    """Export a classifier or detector package to ONNX next to it (or to `out`), checked against PyTorch.

    Args:
        dynamic_batch: classifiers: any batch size (else the export's batch of 16 only). Detectors
            take one image of any size per run either way.
        check_images: a folder of images the detector check runs on (up to `limit`); default:
            synthetic pictures. Real images put real objects into the comparison.
    """
    from optik.models.package import load_package

    package = load_package(source)
    if check_images is not None and package.task != "detect":
        raise ConfigError("--check-images is for detectors; a classifier's export is checked on 16 generated inputs, logit by logit")
    pictures = read_check_images(Path(check_images), limit) if check_images is not None else None
    result = export_package(package, check_images=pictures, dynamic_batch=dynamic_batch)
    out = Path(out) if out is not None else Path(source).with_suffix(".onnx")
    write_atomic(out, result.data)
    return out, result


def read_check_images(folder: Path, limit: int) -> list:
    if not folder.is_dir():
        raise DataError(f"--check-images: no folder {folder}")
    paths = sorted(find_images(folder))[:limit]
    if not paths:
        raise DataError(f"--check-images: no images in {folder}")
    return [open_image(path) for path in paths]
