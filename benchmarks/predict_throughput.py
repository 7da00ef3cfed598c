"""Inference speed: optik's Predictor vs plain eager PyTorch (fp32, NCHW), same model, inputs and batch size.

Prints images/s of each, the ratio, and top-1 agreement, in one run. Timings alternate between
the two in rounds so background load hits both alike; the ratio is the median of per-round ratios.

    python benchmarks/predict_throughput.py                   # resnet50 at 224 + the digits model
    python benchmarks/predict_throughput.py --models resnet50 --images 256
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import timm
import torch

from optik.data.transforms import Preprocess
from optik.inference.predictor import Classifier as Predictor


def photo_batch(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Normalised random crops/flips of scikit-image's sample photographs (real pictures)."""
    from PIL import Image
    from skimage import data

    photos = [
        getattr(data, name)()
        for name in (
            "astronaut",
            "coffee",
            "chelsea",
            "rocket",
            "camera",
            "coins",
            "immunohistochemistry",
            "hubble_deep_field",
        )
    ]
    photos = [np.stack([p] * 3, -1) if p.ndim == 2 else p[..., :3] for p in photos]
    rng = np.random.default_rng(seed)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    out = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        side = int(rng.integers(min(h, w) // 3, min(h, w)))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
        tensor = torch.from_numpy(np.asarray(crop)).permute(2, 0, 1).float() / 255
        tensor = tensor.flip(-1) if rng.random() < 0.5 else tensor
        out.append((tensor - mean) / std)
    return torch.stack(out)


def calibrated_resnet50(images: torch.Tensor) -> torch.nn.Module:
    """resnet50 (random init, no download) with batch-norm statistics from real photos, so folding is realistic."""
    torch.manual_seed(0)
    model = timm.create_model("resnet50", num_classes=1000).train()
    with torch.no_grad():
        for i in range(0, min(len(images), 128), 32):
            model(images[i : i + 32])
    return model.eval()


def digits_model(root: Path) -> tuple[torch.nn.Module, Preprocess, torch.Tensor]:
    """The `make demo` model trained for a few epochs on sklearn's digits, and digits inputs."""
    from optik.config import load_config
    from optik.data.loaders import build_classify_data
    from optik.engine.train import train
    from optik.models.package import load_package
    from optik.tasks.loading import build_model
    from optik.tools.digits import write_digits

    if not (root / "run" / "model.pt").exists():
        write_digits(root / "digits", size=32)
        cfg = load_config("resnet18_small", [f"data.root={root / 'digits'}", "train.epochs=5", "data.augment.hflip=0"])
        train(cfg, work_dir=root / "run", overwrite=True)
    package = load_package(root / "run" / "model.pt")
    data = build_classify_data(load_config("resnet18_small", [f"data.root={root / 'digits'}"]).data)
    test = data.datasets["test"]
    images = torch.stack([test[i][0] for i in range(len(test))])
    return build_model(package), Preprocess.from_dict(package.preprocess), images


def throughput(fn, images: torch.Tensor, batch: int) -> tuple[float, torch.Tensor]:
    outputs = []
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        outputs.append(fn(images[i : i + batch]))
    return len(images) / (time.perf_counter() - start), torch.cat(outputs)


def compare(
    name: str, model: torch.nn.Module, preprocess: Preprocess, images: torch.Tensor, batch: int, rounds: int
) -> None:
    with torch.inference_mode():
        n_classes = model.eval()(images[:2]).shape[-1]
    classes = [str(i) for i in range(n_classes)]

    def eager(x):
        with torch.inference_mode():
            return model(x).softmax(-1)

    variants = {}
    for label, mode, precision in (
        ("optik compiled (auto for 1000+)", "compiled", "32"),
        ("optik fused (auto for <1000)", "fused", "32"),
        ("optik compiled --precision bf16", "compiled", "bf16"),
    ):
        started = time.perf_counter()
        predictor = Predictor(
            model, classes, preprocess, device="cpu", precision=precision, batch_size=batch, mode=mode
        )
        predictor.predict_tensors(images[:batch])  # first call: verification and compile
        variants[label] = (predictor, time.perf_counter() - started)
    eager(images[:batch])

    speeds = {label: [] for label in ["eager fp32 NCHW (reference)", *variants]}
    ratios = {label: [] for label in variants}
    outputs = {}
    for _ in range(rounds):
        ref_speed, outputs["eager"] = throughput(eager, images, batch)
        speeds["eager fp32 NCHW (reference)"].append(ref_speed)
        for label, (predictor, _) in variants.items():
            speed, outputs[label] = throughput(predictor.predict_tensors, images, batch)
            speeds[label].append(speed)
            ratios[label].append(speed / ref_speed)
    top1 = outputs["eager"].argmax(-1)
    print(f"\n{name}: {len(images)} images, batch {batch}, {torch.get_num_threads()} threads, {rounds} rounds")
    print(
        f"{'method':34s} {'images/s':>9s} {'ratio':>6s} {'top-1 = eager':>14s} {'max |dp|':>9s} {'set-up s':>8s} {'mode':>9s}"
    )
    print(
        f"{'eager fp32 NCHW (reference)':34s} {statistics.median(speeds['eager fp32 NCHW (reference)']):9.1f} {1.0:6.2f} {len(top1):>6d}/{len(top1):<7d} {0:9.1e} {'':>8s} {'eager':>9s}"
    )
    for label, (predictor, setup) in variants.items():
        agree = int((outputs[label].argmax(-1) == top1).sum())
        diff = float((outputs[label] - outputs["eager"]).abs().max())
        print(
            f"{label:34s} {statistics.median(speeds[label]):9.1f} {statistics.median(ratios[label]):6.2f} {agree:>6d}/{len(top1):<7d} {diff:9.1e} {setup:8.1f} {predictor.backend.mode:>9s}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "digits"], choices=["resnet50", "digits"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("work_dirs/bench_predict"))
    args = parser.parse_args()
    if "resnet50" in args.models:
        images = photo_batch(args.images, 224)
        compare(
            "resnet50 @224 (ImageNet head, BN calibrated on photos)",
            calibrated_resnet50(images),
            Preprocess(224, 256, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            images,
            args.batch_size,
            args.rounds,
        )
    if "digits" in args.models:
        model, preprocess, images = digits_model(args.work)
        repeats = max(1, args.images * 4 // len(images))
        compare(
            "digits resnet18_small @32 (trained, real test images)",
            model,
            preprocess,
            images.repeat(repeats, 1, 1, 1),
            args.batch_size,
            args.rounds,
        )


if __name__ == "__main__":
    main()
