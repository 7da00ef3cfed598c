"""`optik export MODEL --format onnx`: a model package as an ONNX file that onnxruntime serves.

The file carries what a predictor needs besides the graph: task, class names and eval
preprocessing, as the ONNX model's metadata (`optik` key, JSON). The export is checked before the
file is kept: onnxruntime and PyTorch must agree on test images (same top-1, probabilities within
1e-3). Classifiers only for now; detectors run through PyTorch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from optik.errors import ConfigError, ModelError
from optik.files import write_atomic

METADATA_KEY = "optik"
TOLERANCE = 1e-3


@dataclass
class ExportReport:
    path: Path
    images: int
    max_prob_diff: float
    top1_same: int


def export_model(source: str | Path, out: str | Path | None = None, dynamic_batch: bool = True, check_images: int = 16) -> ExportReport:
    """Export a classifier package to ONNX next to it (or to `out`), checked against PyTorch."""
    import onnx

    from optik.inference.backends import OnnxModel, export_onnx
    from optik.models.package import build_model, load_package

    package = load_package(source)
    if package.task != "classify":
        raise ConfigError(f"ONNX export covers classifiers so far; {source} is a {package.task} model")
    out = Path(out) if out is not None else Path(source).with_suffix(".onnx")
    model = build_model(package)
    size = package.preprocess["image_size"]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(check_images, 3, size, size, generator=generator)
    graph = export_onnx(model, images[:1] if dynamic_batch else images, dynamic_batch=dynamic_batch)
    proto = onnx.load_from_string(graph)
    meta = {"task": package.task, "classes": package.classes, "preprocess": package.preprocess, "model": package.config["model"]["name"]}
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    data = proto.SerializeToString()
    with torch.no_grad():
        expected = model(images).softmax(-1).numpy()
    got = OnnxModel(data)(images).softmax(-1).numpy()
    diff, same = float(np.abs(got - expected).max()), int((got.argmax(1) == expected.argmax(1)).sum())
    if diff > TOLERANCE or same != len(images):
        raise ModelError(f"the ONNX export of {source} does not match PyTorch (top-1 {same}/{len(images)}, probabilities differ by {diff:.2e}); it was not written")
    write_atomic(out, data)
    return ExportReport(out, len(images), diff, same)


def read_onnx_metadata(path: str | Path) -> dict:
    """The `optik` metadata of an exported file: task, classes, preprocess."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means: not an ONNX file
        raise ModelError(f"cannot read {path} as an ONNX model: {type(exc).__name__}") from None
    for entry in proto.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    raise ModelError(f"{path} was not exported by optik (no class names or preprocessing in it); export with `optik export model.pt --format onnx`")
