"""Any model file as what runs it, by the task it holds: a model package or checkpoint, or an `optik
export`ed ONNX or OpenVINO file. `load_predictor` serves predict, test and the services; `load_batch_model`
serves batch-predict; `build_model` gives the bare network (flops, benchmarks)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from torch import nn

from optik.errors import ConfigError
from optik.models.package import ModelPackage, load_package
from optik.tasks import get_task
from optik.tasks.base import RunOptions

log = logging.getLogger(__name__)


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
    calibration: str | Path | None = None,
):
    """A `Classifier` or a `Detector`, as the model's task says (batch size default: 32 / 8).

    `path` is a model package or checkpoint, or an `optik export`ed file (.onnx: onnxruntime; .xml:
    OpenVINO). `backend`: "torch" (PyTorch's own forms), "onnxruntime" / "openvino" (a package is
    exported in memory and checked first; CPU), or "auto" (the file's engine, else as `mode`
    says; see `optik.inference.runtime`). `tta`: a classifier's test-time augmentation (None: the
    one the model records). `calibration`: a folder of images to quantize on (precision int8).
    """
    from optik.inference.runtime import BACKENDS, check_engine, engine_of_file

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    engine = engine_of_file(path)
    if engine is not None:
        if backend not in ("auto", engine):
            raise ConfigError(
                f"{path} is an exported {engine} model: it runs with --backend {engine}; for another backend give the model.pt it was exported from"
            )
        check_engine(engine, device, precision, mode)
        return exported_predictor(path, batch_size=batch_size, tta=tta, precision=precision)
    package = with_tta(load_package(path), tta, str(path))
    task = get_task(package.task)
    task.check_predicts(str(path))
    if backend == "onnxruntime":
        check_engine(backend, device, precision, mode)
        exported = task.export_onnx(package)
        if exported.unchecked:
            log.warning(
                "the in-memory ONNX export was checked on synthetic pictures in which the detector found no object; "
                "`optik export MODEL --check-images DIR` checks it on your own pictures"
            )
        return exported_predictor(exported.data, batch_size=batch_size)
    return task.predictor(
        package, str(path), RunOptions(device, precision, batch_size, mode, backend, calibration, expected_images)
    )


def with_tta(package: ModelPackage, tta: str | None, source: str) -> ModelPackage:
    """The package with `tta` as its test-time augmentation (None: as recorded); refused for a task without one."""
    return replace(package, preprocess=get_task(package.task).with_tta(package.preprocess, tta, source))


def exported_predictor(
    model: str | Path | bytes,
    batch_size: int | None = None,
    tta: str | None = None,
    precision: str = "32",
):
    """The predictor running an exported model (an .onnx path or its bytes: onnxruntime, CPU fp32; an
    .xml: OpenVINO, CPU, in `precision`); `tta` overrides the test-time augmentation it records."""
    meta = read_exported_metadata(model)
    source = "the exported model" if isinstance(model, bytes) else str(model)
    meta["preprocess"] = get_task(meta["task"]).with_tta(meta["preprocess"], tta, source)
    return get_task(meta["task"]).exported_predictor(
        model if isinstance(model, bytes) else str(model), meta, batch_size=batch_size, precision=precision
    )


def exported_package(path: str | Path, tta: str | None = None) -> ModelPackage:
    """An exported file's metadata as a package without weights (task, run config, classes, preprocessing),
    for what needs the run's config (`optik test` finds the run's data by it); `tta` as in `with_tta`."""
    meta = read_exported_metadata(path)
    if "config" not in meta:
        raise ConfigError(
            f"{path} was exported before exports recorded the run's config; give the model.pt it was exported "
            "from, or export it again"
        )
    preprocess = get_task(meta["task"]).with_tta(meta["preprocess"], tta, str(path))
    return ModelPackage(meta["task"], meta["config"], meta["classes"], preprocess, {})


def read_exported_metadata(model: str | Path | bytes) -> dict:
    """Task, classes and preprocessing of an `optik export`ed file."""
    if str(model).endswith(".xml") and not isinstance(model, bytes):
        from optik.inference.openvino import read_ir_metadata

        return read_ir_metadata(model)
    from optik.inference.onnx import read_metadata

    return read_metadata(model)


def load_batch_model(
    model: str | None, model_class: str | None = None, checkpoint: str | None = None, precision: str = "32"
):
    """MODEL as `optik batch-predict` takes it: a model package / optik checkpoint or an exported .onnx / .xml;
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
    if model.endswith((".onnx", ".xml")):
        meta = read_exported_metadata(model)
        return get_task(meta["task"]).exported_batch_model(model, meta, precision)
    package = load_package(model)
    return get_task(package.task).batch_model(package, model)
