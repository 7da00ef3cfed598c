"""Batch prediction: `optik batch-predict` vs the ObjectNet example pipeline, same model, images and batch size.

The reference is what participants start from: a Dataset with PIL loading and torchvision
Resize(224) / CenterCrop(224) / ToTensor / Normalize, a DataLoader with workers, the fp32 NCHW
eager model, softmax and top-5. optik runs the same model as a plug-in (`--model-class
file.py:build --checkpoint W`, so the same preprocessing) on the same photo-sized JPEGs (640x480),
in one run, for each model: an EfficientNet-style network (efficientnet_lite0: depthwise
convolutions, where torch's bf16 is slow) and resnet50, both randomly initialised (no download)
with batch-norm statistics from real photos. optik runs as `--optimize auto` picks (measured on the
first batch) in fp32, bf16 and int8 (quantized on other photos, `--calibration DIR`). Prints
images/s of each (steady state after the first batch, and over the whole run including set-up),
the ratio to the reference, and top-1 agreement with the reference (eager fp32).

    python benchmarks/batch_predict.py
    python benchmarks/batch_predict.py --images 200 --batch-size 32 --models resnet50
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from photos import photo_jpegs  # noqa: E402
from predict_throughput import photo_batch  # noqa: E402

HERE = Path(__file__).resolve().parent
PLUGINS = {"efficientnet_lite0": HERE / "efficientnet_plugin.py", "resnet50": HERE / "resnet50_plugin.py"}


class ReferenceImages(Dataset):
    def __init__(self, files):
        self.files = files
        self.transform = transforms.Compose(
            [
                transforms.Resize(224),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
            ]
        )

    def __len__(self):
        return len(self.files)

    def __getitem__(self, index):
        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("RGB")), self.files[index].name


def reference(model, files, batch_size: int, workers: int) -> tuple[float, float, dict[str, int]]:
    """(steady images/s, whole-run images/s, top-1 per file) of the plain pipeline."""
    loader = DataLoader(ReferenceImages(files), batch_size=batch_size, num_workers=workers)
    top1, start, first = {}, time.perf_counter(), None
    with torch.no_grad():
        for images, names in loader:
            probs = model(images).softmax(dim=-1)
            _, ids = probs.topk(5, dim=-1)
            top1.update(zip(names, ids[:, 0].tolist()))
            first = first or (len(names), time.perf_counter() - start)
    total = time.perf_counter() - start
    return (len(files) - first[0]) / (total - first[1]), len(files) / total, top1


def calibrated(name: str, images: torch.Tensor) -> torch.nn.Module:
    """The plug-in's network (random init) with batch-norm statistics from real photos, so folding is realistic."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, PLUGINS[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.build().train()
    with torch.no_grad():
        for i in range(0, min(len(images), 128), 32):
            model(images[i : i + 32])
    return model.eval()


def ours(
    name: str, folder: Path, weights: Path, out: Path, batch_size: int, precision: str, optimize: str, calibration
) -> tuple[float, float, dict[str, int], str]:
    """(steady images/s, whole-run images/s, top-1 per file, the runtime auto chose)."""
    from optik.tools.objectnet import BatchJob, batch_predict

    job = BatchJob(
        folder,
        out,
        model_class=f"{PLUGINS[name]}:build",
        checkpoint=str(weights),
        batch_size=batch_size,
        device="cpu",
        precision=precision,
        optimize=optimize,
        calibration=calibration if precision == "int8" else None,
    )
    chosen = []
    handler = _Chosen(chosen)
    logging.getLogger("optik.inference.runtime").addHandler(handler)
    logging.getLogger("optik.inference.runtime").setLevel(logging.INFO)
    try:
        report = batch_predict(job, progress=False)
    finally:
        logging.getLogger("optik.inference.runtime").removeHandler(handler)
    with open(out, newline="") as fh:
        top1 = {row[0]: int(row[1]) for row in csv.reader(fh)}
    return report.steady_rate(), report.predicted / report.seconds, top1, chosen[-1] if chosen else "?"


class _Chosen(logging.Handler):
    """Keeps what the runtime layer says it runs ("inference runs openvino bf16 on cpu")."""

    def __init__(self, into: list):
        super().__init__()
        self.into = into

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("inference runs "):
            self.into.append(message.removeprefix("inference runs "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--calibration-images", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=list(PLUGINS), choices=list(PLUGINS))
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count(),
        help="the reference's loader workers (its default: every CPU); optik uses its own default",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optik-batch-bench-"))
    folder, calibration = work / "images", work / "calibration"
    folder.mkdir()
    calibration.mkdir()
    for i, data in enumerate(photo_jpegs(args.images)):
        (folder / f"{i:05d}.jpg").write_bytes(data)
    for i, data in enumerate(photo_jpegs(args.calibration_images, seed=1)):  # other crops than the job's
        (calibration / f"{i:05d}.jpg").write_bytes(data)
    files = sorted(folder.glob("*.jpg"))
    print(
        f"{args.images} JPEGs 640x480, batch {args.batch_size}, reference loader workers {args.workers}, "
        f"int8 calibrated on {args.calibration_images} other photos, torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    configs = {
        "reference (PIL, DataLoader, eager fp32 NCHW)": None,
        "optik default fp32 (auto)": ("32", "auto"),
        "optik --precision bf16 (auto)": ("bf16", "auto"),
        "optik --precision int8 --calibration (auto)": ("int8", "auto"),
    }
    for name in args.models:
        model = calibrated(name, photo_batch(128, 224))
        torch.save(model.state_dict(), work / f"{name}.pth")
        print(f"\n{name} (random init, batch-norm statistics from photos), as a plug-in")
        best: dict[str, tuple] = {}
        # rounds alternate the pipelines, so background load hits all alike; the best round counts
        for _ in range(args.rounds):
            for label, config in configs.items():
                if config is None:
                    result = (*reference(model, files, args.batch_size, args.workers), "torch eager 32")
                else:
                    result = ours(
                        name, folder, work / f"{name}.pth", work / "out.csv", args.batch_size, *config, calibration
                    )
                if label not in best or result[0] > best[label][0]:
                    best[label] = result
        ref_rate, _, ref_top1, _ = best[next(iter(configs))]
        for label, (rate, total, top1, runtime) in best.items():
            same = sum(top1[n] == ref_top1[n] for n in ref_top1)
            print(
                f"  {label:44s} {rate:6.1f} images/s steady, {total:6.1f} over the run  {rate / ref_rate:5.2f}x  "
                f"top-1 same as reference {same}/{len(ref_top1)} ({100 * same / len(ref_top1):.1f}%)  [{runtime}]"
            )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
