"""Any model file as what runs it, by the task it holds: a model package or checkpoint, or an `optik
export`ed ONNX file. `load_predictor` serves predict, test and the services; `load_batch_model`
serves batch-predict; `build_model` gives the bare network (flops, benchmarks)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from torch import nn

from optik.errors import ConfigError
from optik.models.package import ModelPackage, load_package
from optik.tasks import get_task

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime")


def build_model(package: ModelPackage) -> nn.Module:
    """The network of a package, weights loaded, in eval mode."""
    return get_task(package.task).network(package)


def load_predictor(
    path,
    device: str = "auto",
    precision: str = "32",
    batch_size: int | None = None,
    mode: str = "auto",
    expected_images: int | None = None,
    backend: str = "auto",
    tta: str | None = None,
):
    """A `Predictor` or a `Detector`, as the model's task says (batch size default: 32 / 8).

    `path` is a model package or checkpoint, or an `optik export`ed .onnx file. `backend`:
    "torch" (PyTorch, with `mode`'s speed-ups), "onnxruntime" (a package is exported in memory and
    checked first; CPU, fp32), or "auto" (onnxruntime for an .onnx file, torch otherwise).
    `tta`: a classifier's test-time augmentation (None: the one the model records).
    """
    from optik.inference.backends import mode_for, pick_device
    from optik.inference.onnx import uses_onnxruntime

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    is_onnx = str(path).endswith(".onnx")
    uses_onnxruntime(path, is_onnx, backend, device, precision, mode)
    if is_onnx:
        return onnx_predictor(path, device=device, batch_size=batch_size, tta=tta)
    package = with_tta(load_package(path), tta, str(path))
    task = get_task(package.task)
    task.check_predicts(str(path))
    if backend == "onnxruntime":
        exported = task.export_onnx(package)
        if exported.unchecked:
            log.warning(
                "the in-memory ONNX export was checked on synthetic pictures in which the detector found no object; "
                "`optik export MODEL --check-images DIR` checks it on your own pictures"
            )
        return onnx_predictor(exported.data, device=device, batch_size=batch_size)
    if backend == "torch" and mode == "auto":  # PyTorch only: not the onnx mode that auto picks on a CPU
        mode = mode_for(expected_images, pick_device(device), precision, allow_onnx=False)
    return task.predictor(
        package,
        str(path),
        device=device,
        precision=precision,
        batch_size=batch_size,
        mode=mode,
        expected_images=expected_images,
    )


def with_tta(package: ModelPackage, tta: str | None, source: str) -> ModelPackage:
    """The package with `tta` as its test-time augmentation (None: as recorded); refused for a task without one."""
    return replace(package, preprocess=get_task(package.task).with_tta(package.preprocess, tta, source))


def onnx_predictor(
    model: str | Path | bytes, device: str = "auto", batch_size: int | None = None, tta: str | None = None
):
    """The predictor running an exported model (a path or its bytes) with onnxruntime (CPU, fp32);
    `tta` overrides the test-time augmentation its metadata records."""
    from optik.inference.onnx import check_runtime_options, read_metadata

    check_runtime_options(device, "32", "auto")
    meta = read_metadata(model)
    source = "the exported model" if isinstance(model, bytes) else str(model)
    meta["preprocess"] = get_task(meta["task"]).with_tta(meta["preprocess"], tta, source)
    predictor = get_task(meta["task"]).onnx_predictor(
        model if isinstance(model, bytes) else str(model), meta, batch_size=batch_size
    )
    # what logs and reports name (the torch-side mode is plain: the session does the work)
    predictor.backend.mode = "onnxruntime"
    return predictor


def load_batch_model(model: str | None, model_class: str | None = None, checkpoint: str | None = None):
    """MODEL as `optik batch-predict` takes it: a model package / optik checkpoint or an exported .onnx;
    a plug-in class or factory (`file.py:Name`) with `checkpoint` weights; or a timm name with `checkpoint` weights."""
    from optik.inference.batch import plugin_model, timm_model

    if model_class is not None:
        if model is not None:
            raise ConfigError(f"give MODEL ({model}) or --model-class, not both")
        return plugin_model(model_class, checkpoint)
    if model is None:
        raise ConfigError(
            "give MODEL (model.pt, an optik checkpoint or a timm name), or --model-class file.py:Name --checkpoint W"
        )
    if not Path(model).is_file():
        return timm_model(model, checkpoint)
    if checkpoint is not None:
        raise ConfigError(f"{model} carries its own weights; --checkpoint is for --model-class or a timm name")
    if model.endswith(".onnx"):
        from optik.inference.onnx import read_metadata

        meta = read_metadata(model)
        return get_task(meta["task"]).onnx_batch_model(model, meta)
    package = load_package(model)
    return get_task(package.task).batch_model(package, model)
