"""Detection speed: optik's Detector and `optik train` vs plain torchvision loops, same model, weights, images and batch size.

Data: the synthetic shapes set (circles, squares, triangles; COCO JSON + PNGs) written to a temp
folder at the model's input size, so neither side pays for a resize the other skips.

- Inference: ours is `Detector.predict_stream` over the PNG files (decoded in threads while the
  previous batch runs, conv + batch norm folded when that is checked exact), loaded from a model
  package. The reference is the loop a torchvision user writes: the same builder, the package's
  weights, `read_image(p).float() / 255` per file and `model(images)` under `inference_mode`. Both
  start warm (one batch run before timing); the outputs are checked to agree.
- Training: ours is `optik.engine.train.train` (Lightning, validation off); the reference is a
  plain PyTorch loop over a `read_image` + COCO-target dataset with the same model, optimizer
  (SGD, nesterov momentum, no decay on biases and norms, as timm builds the config's "sgd"), lr
  schedule, gradient clipping, batch size, loader workers and epochs, saving a checkpoint per
  epoch as optik does. Images/s counts the epochs after the first (worker start-up and
  allocator warm-up), start-to-start, so optik's checkpointing and logging count against it.

The model has random weights (no download) with batch-norm statistics from the benchmark's own
images, so features, scores and boxes depend on the image; its untrained heads keep ~100
detections per image, so post-processing costs what it costs a detector at a low score threshold.

Where optik trains slower, the extra work is around the model, not in it: per step, Lightning's
loop and five logged metrics; per epoch, a checkpoint with hyperparameters written atomically
plus a hard link, CSV and TensorBoard logs; in the loader workers, PIL decoding and the v2
transforms that clamp and sanitise boxes. A py-spy profile of optik's fit loop puts over 95% of its
time in the detector's forward and backward (RoIAlign's backward alone about a fifth).

Ours and the reference alternate round by round so background load hits both alike; each figure
is the best of the rounds. On a shared machine, other work stalls torch's OpenMP threads and a
round can run many times slower, so the load average is printed too. Nothing here gates on timing.

    python benchmarks/detect.py                                 # fasterrcnn_mobilenet_v3_large_fpn at 320 px
    python benchmarks/detect.py --skip-train --images 64 --rounds 3
    python benchmarks/detect.py --model retinanet_resnet50_fpn --backbone resnet18 --image-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, read_image
from train_throughput import (
    EpochClock,  # the same epoch timer as the classification benchmark (benchmarks/ is on sys.path)
)

from optik.config import load_config
from optik.config.load import config_to_dict
from optik.engine.train import train
from optik.inference.detector import Detector
from optik.models.detect import build_detector
from optik.models.package import ModelPackage, save_package
from optik.tasks.loading import load_predictor
from optik.tasks.training.base import lr_schedule
from optik.tools.shapes import SHAPES, write_shapes_set

BOX_TOLERANCE = 1e-3  # fp32: boxes may differ by this share of the image's largest coordinate


def describe_device(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} (cuda)"
    name = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{name}, {torch.get_num_threads()} torch threads (cpu)"


def detect_config(args, root: Path, device: str):
    backbone = [f"model.backbone={args.backbone}"] if args.backbone else []
    return load_config(
        None,
        [
            "task=detect",
            f"data.root={root}",
            f"model.name={args.model}",
            *backbone,
            f"data.image_size={args.image_size}",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.workers}",
            f"train.epochs={args.epochs}",
            "train.validation=false",
            "data.augment.hflip=0",
            "train.keep_checkpoints=1",
            f"train.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}",
            "train.devices=1",
        ],
    )


def calibrate_batch_norm(model: torch.nn.Module, paths: list[Path], batch: int) -> None:
    """Batch-norm statistics of the backbone from the benchmark's images.

    A freshly initialised torchvision detector has running mean 0 and variance 1, which shrinks
    its features to ~1e-7: every box then scores the same, and folding conv + batch norm changes
    nothing to check. With real statistics the scores and boxes depend on the image.
    """
    norms = {m: m.momentum for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the calibration batches
    model.eval().backbone.train()
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            images = [read_image(str(p), ImageReadMode.RGB).float() / 255 for p in paths[i : i + batch]]
            model.backbone(model.transform(images)[0].tensors)
    for norm, momentum in norms.items():
        norm.momentum = momentum
    model.eval()


def model_package(cfg, path: Path, paths: list[Path]) -> Path:
    """A detector for the shapes classes (random weights, calibrated batch norm), saved as `optik train` would save it."""
    torch.manual_seed(0)
    model = build_detector(cfg.model, cfg.data, len(SHAPES))
    calibrate_batch_norm(model, paths, cfg.data.batch_size)
    preprocess = {
        "task": "detect",
        "image_size": cfg.data.image_size,
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
    }
    return save_package(ModelPackage("detect", config_to_dict(cfg), list(SHAPES), preprocess, model.state_dict()), path)


# ---------------------------------------------------------------- inference


def plain_detector(cfg, package: Path, device: str) -> torch.nn.Module:
    """The reference model: the same builder call, the package's weights loaded with plain torch.load."""
    model = build_detector(cfg.model, cfg.data, len(SHAPES))
    model.load_state_dict(torch.load(package, map_location="cpu", weights_only=True)["state_dict"])
    return model.eval().to(device)


def plain_predict(model: torch.nn.Module, paths: list[Path], batch: int, device: str) -> tuple[float, list[dict]]:
    """The torchvision user's loop; returns (images/s, outputs)."""
    outputs = []
    start = time.perf_counter()
    for i in range(0, len(paths), batch):
        images = [read_image(str(p), ImageReadMode.RGB).to(device).float() / 255 for p in paths[i : i + batch]]
        with torch.inference_mode():
            outputs.extend(model(images))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(paths) / (time.perf_counter() - start), outputs


def optik_predict(detector: Detector, paths: list[Path]) -> tuple[float, list]:
    start = time.perf_counter()
    results = list(detector.predict_stream(paths))  # results come back as numpy on the CPU: no sync needed
    return len(paths) / (time.perf_counter() - start), results


def agreement(results: list, outputs: list[dict]) -> tuple[int, int, float]:
    """(images with the same detections, of how many, largest box difference as a share of the image's coordinates)."""
    agree, worst = 0, 0.0
    for ours, ref in zip(results, outputs):
        boxes, labels = ref["boxes"].float().cpu(), ref["labels"].cpu()
        if not ours.ok or len(ours) != len(boxes):
            continue
        if len(boxes):
            scale = float(boxes.abs().max().clamp(min=1.0))
            diff = float((torch.from_numpy(ours.boxes) - boxes).abs().max()) / scale
            worst = max(worst, diff)
            if diff > BOX_TOLERANCE or not torch.equal(torch.from_numpy(ours.labels) + 1, labels):
                continue
        agree += 1
    return agree, len(outputs), worst


def compare_inference(args, cfg, paths: list[Path], work: Path, device: str) -> None:
    package = model_package(cfg, work / "model.pt", paths)
    started = time.perf_counter()
    detector = load_predictor(package, device=device, batch_size=args.batch_size, backend="torch", mode="fused")
    detector.warmup()  # as `optik predict` and the services do: the fused-vs-eager check runs here, on a noise image
    setup = time.perf_counter() - started
    # the same, but the check sees real images (the first batch), to show what the fused mode gives when it is chosen
    checked = load_predictor(package, device=device, batch_size=args.batch_size, backend="torch", mode="fused")
    checked.predict_tensors([checked.load(p) for p in paths[: args.batch_size]])
    reference = plain_detector(cfg, package, device)
    plain_predict(reference, paths[: args.batch_size], args.batch_size, device)

    speeds: dict[str, list[float]] = {"plain": [], "ours": [], "checked": []}
    for _ in range(args.rounds):
        speed, outputs = plain_predict(reference, paths, args.batch_size, device)
        speeds["plain"].append(speed)
        speed, results = optik_predict(detector, paths)
        speeds["ours"].append(speed)
        speed, checked_results = optik_predict(checked, paths)
        speeds["checked"].append(speed)
    counts = [len(o["boxes"]) for o in outputs]

    print(
        f"\ninference: {cfg.model.name}{' + ' + cfg.model.backbone if cfg.model.backbone else ''} at {args.image_size} px, {len(paths)} images, "
        f"batch {args.batch_size}, fp32, best of {args.rounds} rounds; {min(counts)}-{max(counts)} detections per image"
    )
    print(f"{'method':44s} {'images/s':>9s} {'ratio':>6s}   {'per round':20s} {'mode':>6s}  same detections as plain")
    rows = (
        ("plain torchvision loop (reference)", "plain", "eager", None),
        ("optik Detector.predict_stream", "ours", detector.backend.mode, results),
        ("  fused check on a real batch, not noise", "checked", checked.backend.mode, checked_results),
    )
    for label, key, mode, found in rows:
        same = "" if found is None else "{}/{} images, max diff {:.0e}".format(*agreement(found, outputs))
        print(
            f"{label:44s} {max(speeds[key]):9.2f} {max(speeds[key]) / max(speeds['plain']):6.3f}   {', '.join(f'{v:.2f}' for v in speeds[key]):20s} {mode:>6s}  {same}"
        )
    print(
        f"same detections: count, labels and every box within {BOX_TOLERANCE:g} of the image's largest coordinate; optik set-up (load, warm-up, check) {setup:.1f}s"
    )
    print(
        f"inference optik / plain: {max(speeds['ours']) / max(speeds['plain']):.3f}  (>1: optik faster; backend mode {detector.backend.mode})"
    )


# ---------------------------------------------------------------- training


class CocoBoxes(Dataset):
    """The torchvision tutorial's dataset: `read_image` and a {boxes xyxy, labels} target per COCO image."""

    def __init__(self, folder: Path):
        doc = json.loads((folder / "annotations.json").read_text())
        boxes, labels = defaultdict(list), defaultdict(list)
        for ann in doc["annotations"]:
            x, y, w, h = ann["bbox"]
            boxes[ann["image_id"]].append([x, y, x + w, y + h])
            labels[ann["image_id"]].append(ann["category_id"])  # ids 1..K: torchvision's labels, 0 is the background
        self.items = [
            (
                folder / image["file_name"],
                torch.tensor(boxes[image["id"]], dtype=torch.float32).reshape(-1, 4),
                torch.tensor(labels[image["id"]], dtype=torch.int64),
            )
            for image in doc["images"]
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, boxes, labels = self.items[index]
        return read_image(str(path), ImageReadMode.RGB).float() / 255, {"boxes": boxes, "labels": labels}


def collate(batch):
    return tuple(zip(*batch))


def sgd(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """What timm's create_optimizer_v2 builds for opt="sgd": nesterov momentum, no weight decay on biases and norms."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decay = [p for name, p in params if p.ndim > 1 and not name.endswith(".bias")]
    rest = [p for name, p in params if not (p.ndim > 1 and not name.endswith(".bias"))]
    groups = [{"params": rest, "weight_decay": 0.0}, {"params": decay, "weight_decay": cfg.weight_decay}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def plain_train(cfg, root: Path, out: Path, device: str) -> tuple[float, float]:
    """The loop a PyTorch user writes by hand; returns (images/s over the epochs after the first, last epoch's mean loss)."""
    torch.manual_seed(cfg.train.seed)
    dataset = CocoBoxes(root / "train")
    size = cfg.data.batch_size
    loader = DataLoader(
        dataset,
        batch_size=size,
        shuffle=True,
        num_workers=cfg.data.num_workers,
        collate_fn=collate,
        drop_last=len(dataset) > size,
    )
    model = build_detector(cfg.model, cfg.data, len(SHAPES)).to(device).train()
    optimizer = sgd(model, cfg.train)
    epochs = cfg.train.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_schedule(cfg.train, total_steps=epochs * len(loader), steps_per_epoch=len(loader))
    )
    marks, seen, losses = [], 0, []
    for epoch in range(epochs):
        marks.append(time.perf_counter())
        seen, losses = 0, []
        for images, targets in loader:
            images = [image.to(device) for image in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            loss = sum(model(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            optimizer.step()
            scheduler.step()
            seen += len(images)
            losses.append(loss.item())  # optik logs the loss every step too
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, out / "plain.ckpt"
        )
    marks.append(time.perf_counter())
    return seen * (epochs - 1) / (marks[-1] - marks[1]), sum(losses) / len(losses)


def optik_train(cfg, out: Path) -> tuple[float, float]:
    clock = EpochClock()
    result = train(cfg, work_dir=out, callbacks=[clock], overwrite=True)
    images = len(json.loads((Path(cfg.data.root) / "train" / "annotations.json").read_text())["images"])
    size = cfg.data.batch_size
    seen = images // size * size if images > size else images  # both drop a last partial batch
    return seen * (cfg.train.epochs - 1) / (clock.marks[-1] - clock.marks[1]), result.metrics["train/loss_epoch"]


def compare_training(args, cfg, root: Path, work: Path, device: str) -> None:
    plain, ours, losses = [], [], {}
    for index in range(args.rounds):
        speed, losses["plain"] = plain_train(cfg, root, work, device)
        plain.append(speed)
        speed, losses["optik"] = optik_train(cfg, work / f"optik-{index}")
        ours.append(speed)
    images = len(CocoBoxes(root / "train"))
    print(
        f"\ntraining: {cfg.model.name}{' + ' + cfg.model.backbone if cfg.model.backbone else ''} at {args.image_size} px, {images} images, "
        f"batch {args.batch_size}, {args.epochs} epochs (the last {args.epochs - 1} timed), {args.workers} loader workers, "
        f"{cfg.train.optimizer} lr {cfg.train.lr}, fp32, best of {args.rounds} rounds"
    )
    print(f"{'method':40s} {'images/s':>9s}   per round")
    print(f"{'plain PyTorch loop (reference)':40s} {max(plain):9.2f}   {', '.join(f'{v:.2f}' for v in plain)}")
    print(f"{'optik train (Lightning)':40s} {max(ours):9.2f}   {', '.join(f'{v:.2f}' for v in ours)}")
    print(
        f"same work: last-epoch mean loss plain {losses['plain']:.3f}, optik {losses['optik']:.3f} (same initial weights, data and schedule; "
        "the shuffles differ, so close, not equal)"
    )
    print(f"training optik / plain: {max(ours) / max(plain):.3f}  (>1: optik faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", default="fasterrcnn_mobilenet_v3_large_fpn", help="torchvision detector builder name"
    )
    parser.add_argument(
        "--backbone",
        default=None,
        type=lambda v: None if v.lower() == "none" else v,
        help="timm backbone (with an FPN), or none",
    )
    parser.add_argument(
        "--image-size", type=int, default=320, help="shapes are drawn at this size, and the detector resizes to it"
    )
    parser.add_argument("--images", type=int, default=16, help="images predicted")
    parser.add_argument(
        "--train-images",
        type=int,
        default=12,
        help="training images (an epoch is this many, less a last partial batch)",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (the first is not timed)")
    parser.add_argument("--workers", type=int, default=2, help="training DataLoader workers, both sides")
    parser.add_argument("--rounds", type=int, default=3, help="best of N rounds, alternating reference and ours")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--skip-train", action="store_true", help="inference figure only")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device

    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"device: {describe_device(device)}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory(prefix="optik-bench-detect-") as tmp:
        work = Path(tmp)
        # train for training, test for inference; a val split though validation is off: without one optik would hold 20% of train out
        root = write_shapes_set(
            work / "shapes", "coco", train=args.train_images, val=2, test=args.images, size=args.image_size
        )
        cfg = detect_config(args, root, device)
        compare_inference(args, cfg, sorted((root / "test").glob("*.png")), work, device)
        if not args.skip_train:
            compare_training(args, cfg, root, work, device)
    # other work on the machine stalls torch's OpenMP threads (each waits for the other's time slice): rounds then slow down many-fold
    print(
        f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; this benchmark alone keeps about {torch.get_num_threads()} busy, "
        "well above that other work competed: read the figures with care"
    )


if __name__ == "__main__":
    main()
