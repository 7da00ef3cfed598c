"""Self-supervised transfer: a backbone pretrained by `optik train` (task: pretrain) vs the same backbone
at random init, measured by `optik probe` (kNN and linear probe of frozen features), in one run.

Data: scikit-learn's handwritten digits (real scans, 8x8), upscaled to --size pixels and written as
train/val/test class folders. Pretraining sees the train images only, with their labels hidden (the
folder is read as unlabelled images); the probes fit on train and score on test.

    python benchmarks/ssl_transfer.py
    python benchmarks/ssl_transfer.py --method byol --epochs 40
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from optik.config import parse_config  # noqa: E402
from optik.config.load import apply_overrides  # noqa: E402
from optik.config.schema import SSL_METHODS  # noqa: E402
from optik.data.transforms import Preprocess  # noqa: E402
from optik.engine.probe import probe  # noqa: E402
from optik.engine.train import train  # noqa: E402
from optik.tools.digits import write_digits  # noqa: E402


def pretrain_config(root: Path, method: str, size: int, epochs: int, batch_size: int, backbone: str) -> dict:
    return {
        "task": "pretrain",
        "data": {
            "root": str(root / "train"),
            "image_size": size,
            "crop_pct": 1.0,
            "batch_size": batch_size,
            "num_workers": 2,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.5, 0.5, 0.5],
        },
        "model": {"name": backbone},
        # digits: no flips (a flipped 2 is not a 2), no blur or gray (already gray and tiny)
        "ssl": {
            "method": method,
            "hidden_dim": 512,
            "views": {"min_scale": 0.4, "hflip": 0.0, "blur": 0.0, "grayscale": 0.0},
        },
        "train": {"epochs": epochs, "lr": 0.6, "warmup_epochs": 1, "checkpoint_every": epochs, "keep_checkpoints": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", choices=SSL_METHODS, default="simclr")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=32, help="digits are upscaled from 8x8 to this size")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config override, e.g. ssl.out_dim=256",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="optik-ssl-bench-"))
    try:
        counts = write_digits(work / "digits", size=args.size)
        cfg = parse_config(
            apply_overrides(
                pretrain_config(work / "digits", args.method, args.size, args.epochs, args.batch_size, args.backbone),
                args.overrides,
            )
        )
        start = time.perf_counter()
        result = train(cfg, work_dir=work / "run", overwrite=True)
        minutes = (time.perf_counter() - start) / 60
        pretrained = probe(result.package, work / "digits")
        import timm

        random_init = timm.create_model(args.backbone, pretrained=False, num_classes=0)
        baseline = probe(
            f"{args.backbone} (random init)",
            work / "digits",
            network=random_init,
            preprocess=Preprocess.from_data_config(cfg.data),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nsklearn digits upscaled to {args.size}px: {counts['train']} train (labels hidden while pretraining), {counts['test']} test; "
        f"{args.backbone}, {args.method}, {args.epochs} epochs of batch {args.batch_size}: pretraining took {minutes:.1f} min"
    )
    print(f"{'backbone':28s} {'linear probe':>12s} {'kNN (k=20)':>11s} {'linear mean/class':>18s}")
    for name, report in (("random init", baseline), (f"pretrained ({args.method})", pretrained)):
        print(
            f"{name:28s} {report.linear.accuracy:12.4f} {report.knn.accuracy:11.4f} {report.linear.mean_class_accuracy:18.4f}"
        )
    gain = pretrained.linear.accuracy - baseline.linear.accuracy
    print(
        f"linear probe: +{100 * gain:.1f} points over random init; kNN: +{100 * (pretrained.knn.accuracy - baseline.knn.accuracy):.1f} points"
    )


if __name__ == "__main__":
    main()
