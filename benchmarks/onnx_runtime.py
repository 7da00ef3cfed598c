"""onnxruntime vs PyTorch on this machine: an `optik export`ed file against the model.pt it came from.

Both run through optik's predictor on the same JPEGs (decode, preprocess, model, results), so the
difference is the runtime. Rows per model: PyTorch eager (the plain way), PyTorch fused (optik's
default for small jobs), and onnxruntime on the exported file. Rounds alternate between the three;
the best round counts. Agreement with eager is printed beside each speed.

    python benchmarks/onnx_runtime.py                    # resnet50 at 224 and FCOS ResNet-18 at 320
    python benchmarks/onnx_runtime.py --images 64 --rounds 2
    python benchmarks/onnx_runtime.py --detector fasterrcnn_mobilenet_320

Whether onnxruntime pays off depends on the model: convolution-heavy classifiers gain most; a
detector's box decoding and NMS run about as fast (FCOS) or slower (Faster R-CNN) than in PyTorch.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from detect import calibrate_batch_norm, describe_device  # noqa: E402
from photos import photo_jpegs  # noqa: E402
from predict_throughput import calibrated_resnet50, photo_batch  # noqa: E402

from optik.config.load import config_to_dict, load_config  # noqa: E402
from optik.data.transforms import Preprocess  # noqa: E402
from optik.inference.onnx import match_detections  # noqa: E402
from optik.models.detect import build_detector  # noqa: E402
from optik.models.package import ModelPackage, save_package  # noqa: E402
from optik.tasks.loading import load_predictor  # noqa: E402
from optik.tools.export import export_model  # noqa: E402
from optik.tools.shapes import SHAPES  # noqa: E402


def classifier_package(path: Path) -> Path:
    """resnet50 (random init, batch norm calibrated on photos) as a model package."""
    model = calibrated_resnet50(photo_batch(128, 224))
    cfg = load_config("resnet50_224", ["data.root=."])
    preprocess = Preprocess.from_data_config(cfg.data).to_dict()
    classes = [f"class{i}" for i in range(1000)]
    return save_package(ModelPackage("classify", config_to_dict(cfg), classes, preprocess, model.state_dict()), path)


def detector_package(preset: str, path: Path, images: list[Path]) -> tuple[str, Path]:
    """A detector preset (random init, batch norm calibrated on the photos) as a model package, and its model name."""
    cfg = load_config(preset, ["data.root=.", "model.pretrained_backbone=false", "data.image_size=320"])
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.data, len(SHAPES))
    calibrate_batch_norm(model, images, 8)
    preprocess = {
        "task": "detect",
        "image_size": cfg.data.image_size,
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
    }
    name = cfg.model.name + (f" + {cfg.model.backbone}" if cfg.model.backbone else "")
    return name, save_package(
        ModelPackage("detect", config_to_dict(cfg), list(SHAPES), preprocess, model.state_dict()), path
    )


def timed(predictor, files: list[Path]) -> tuple[float, list]:
    start = time.perf_counter()
    results = list(predictor.predict_stream(files))
    return len(files) / (time.perf_counter() - start), results


def agreement(results: list, reference: list, task: str) -> str:
    if task == "classify":
        same = sum(int(np.argmax(a.probs) == np.argmax(b.probs)) for a, b in zip(results, reference))
        diff = max(float(np.abs(a.probs - b.probs).max()) for a, b in zip(results, reference))
        return f"top-1 {same}/{len(reference)}, probabilities within {diff:.1e}"
    objects = missing = 0
    for a, b in zip(results, reference):
        pairs, lost = match_detections(as_output(a), as_output(b))
        objects, missing = objects + len(pairs), missing + lost
    return f"{objects} objects matched (1 px, 1e-3), {missing} unmatched"


def as_output(detection) -> dict:
    return {
        "boxes": torch.from_numpy(detection.boxes),
        "labels": torch.from_numpy(detection.labels),
        "scores": torch.from_numpy(detection.scores),
    }


def compare(name: str, package: Path, files: list[Path], rounds: int, batch: int) -> None:
    started = time.perf_counter()
    onnx_file, export = export_model(package)
    export_seconds = time.perf_counter() - started
    predictors = {
        "PyTorch eager (plain)": load_predictor(package, mode="eager", batch_size=batch),
        "PyTorch fused (optik default, small jobs)": load_predictor(package, mode="fused", batch_size=batch),
        "onnxruntime, exported file": load_predictor(onnx_file, batch_size=batch),
    }
    for predictor in predictors.values():
        predictor.predict(files[:batch])  # warm-up: the fused check, first-call allocations
    speeds: dict[str, list[float]] = {key: [] for key in predictors}
    results: dict[str, list] = {}
    for _ in range(rounds):
        for key, predictor in predictors.items():
            speed, results[key] = timed(predictor, files)
            speeds[key].append(speed)
    task = export.task
    base = max(speeds["PyTorch eager (plain)"])
    print(
        f"\n{name}: {len(files)} JPEGs of 640x480, batch {batch}, fp32, best of {rounds} rounds; export + check {export_seconds:.1f}s "
        f"({onnx_file.stat().st_size / 1e6:.0f} MB)"
    )
    print(f"{'runtime':44s} {'images/s':>9s} {'vs eager':>8s}   agreement with eager")
    for key in predictors:
        same = (
            "-" if key.startswith("PyTorch eager") else agreement(results[key], results["PyTorch eager (plain)"], task)
        )
        print(f"{key:44s} {max(speeds[key]):9.2f} {max(speeds[key]) / base:7.2f}x   {same}")
    fused = max(speeds["PyTorch fused (optik default, small jobs)"])
    print(
        f"onnxruntime / PyTorch eager: {max(speeds['onnxruntime, exported file']) / base:.2f}x; onnxruntime / PyTorch fused: "
        f"{max(speeds['onnxruntime, exported file']) / fused:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96, help="classifier images (the detector gets a third)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--detector", default="fcos_resnet18_small", help="detector preset")
    args = parser.parse_args()
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"device: {describe_device('cpu')}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory(prefix="optik-bench-onnx-") as tmp:
        work = Path(tmp)
        files = []
        for i, data in enumerate(photo_jpegs(args.images)):
            files.append(work / f"photo{i:04d}.jpg")
            files[-1].write_bytes(data)
        compare("resnet50 at 224 (classifier)", classifier_package(work / "resnet50.pt"), files, args.rounds, batch=32)
        few = files[: max(8, args.images // 3)]
        name, package = detector_package(args.detector, work / "detector.pt", few)
        compare(f"{name} at 320 (detector)", package, few, args.rounds, batch=8)
    print(
        f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (other work on the machine slows every row)"
    )


if __name__ == "__main__":
    main()
