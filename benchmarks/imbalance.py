"""Imbalanced classes: the same model and epochs trained with `train.class_weights: none`, `balanced`, and
`data.sampler: balanced`, scored on a balanced held-out set, in one run.

Data: scikit-learn's handwritten digits (real scans, 8x8), upscaled to --size pixels. A few digits are kept
(--digits); in train and val the last of them (the minority) is cut to 1/--ratio of the others' count, as a
dermoscopy set with one rare lesion type; the test split keeps every class whole, so its per-class accuracy
and their mean say how each setting treats the rare class. Every run picks model.pt by val/mean_class_acc.

    python benchmarks/imbalance.py
    python benchmarks/imbalance.py --digits 1,4,7,9 --ratio 10 --epochs 12 --seeds 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from optik.config import load_config  # noqa: E402
from optik.engine.evaluate import evaluate  # noqa: E402
from optik.engine.train import train  # noqa: E402
from optik.tools.digits import write_digits  # noqa: E402

SETTINGS = {
    "class_weights: none": [],
    "class_weights: balanced": ["train.class_weights=balanced"],
    "sampler: balanced": ["data.sampler=balanced"],
}


def imbalanced_digits(root: Path, digits: list[str], ratio: int, size: int) -> dict[str, dict[str, int]]:
    """`root/{train,val,test}/<digit>/` with the last digit cut to 1/ratio in train and val; images per split and class."""
    everything = root.parent / "all-digits"
    write_digits(everything, size=size, fractions=(0.5, 0.15, 0.35))
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        counts[split] = {}
        for digit in digits:
            files = sorted((everything / split / digit).iterdir())
            if split != "test" and digit == digits[-1]:
                files = files[: max(1, len(files) // ratio)]
            (root / split / digit).mkdir(parents=True)
            for path in files:
                shutil.copyfile(path, root / split / digit / path.name)
            counts[split][digit] = len(files)
    shutil.rmtree(everything)
    return counts


def run(root: Path, work: Path, overrides: list[str], args, seed: int) -> dict[str, float]:
    cfg = load_config(
        "resnet18_small",
        [
            f"data.root={root}",
            f"data.image_size={args.size}",
            "data.augment.hflip=0",  # a flipped 3 is no 3
            f"data.batch_size={args.batch_size}",
            "data.num_workers=0",
            f"train.epochs={args.epochs}",
            f"train.seed={seed}",
            "train.monitor=val/mean_class_acc",
            f"train.checkpoint_every={args.epochs}",
            "train.keep_checkpoints=1",
            *overrides,
        ],
    )
    start = time.perf_counter()
    result = train(cfg, work_dir=work)
    minutes = (time.perf_counter() - start) / 60
    metrics = evaluate(result.package, root, split="test").metrics
    return {
        "mean_class": metrics["mean_class_accuracy"],
        "minority": metrics["per_class"][args.digits[-1]]["accuracy"],
        "top1": metrics["accuracy_top1"],
        "minutes": minutes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--digits", default="3,5,9,8", help="digits to keep; the last one is the minority")
    parser.add_argument("--ratio", type=int, default=8, help="the minority has 1/ratio of each other class's images")
    parser.add_argument("--size", type=int, default=16, help="digits are upscaled from 8x8 to this size")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--seeds", type=int, default=1, help="runs per setting (train.seed 0, 1, ...); the table shows means"
    )
    args = parser.parse_args()
    args.digits = args.digits.split(",")
    work = Path(tempfile.mkdtemp(prefix="optik-imbalance-bench-"))
    try:
        counts = imbalanced_digits(work / "digits", args.digits, args.ratio, args.size)
        results = {
            name: [run(work / "digits", work / f"run{i}-{seed}", overrides, args, seed) for seed in range(args.seeds)]
            for i, (name, overrides) in enumerate(SETTINGS.items())
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    listed = ", ".join(f"{digit}: {counts['train'][digit]}" for digit in args.digits)
    print(
        f"\nsklearn digits {','.join(args.digits)} at {args.size}px, train images {listed} (minority {args.digits[-1]}, 1/{args.ratio}); "
        f"balanced test set of {sum(counts['test'].values())} ({counts['test'][args.digits[-1]]} of the minority); "
        f"resnet18, {args.epochs} epochs, {args.seeds} seed(s)"
    )
    print(f"{'setting':26s} {'mean per-class acc':>18s} {'minority acc':>13s} {'top-1':>7s} {'train min':>10s}")
    for name, runs in results.items():
        mean = {key: statistics.mean(r[key] for r in runs) for key in runs[0]}
        print(
            f"{name:26s} {mean['mean_class']:18.4f} {mean['minority']:13.4f} {mean['top1']:7.4f} {mean['minutes']:10.1f}"
        )
    base = statistics.mean(r["minority"] for r in results["class_weights: none"])
    for name in list(SETTINGS)[1:]:
        gain = statistics.mean(r["minority"] for r in results[name]) - base
        print(f"{name}: {100 * gain:+.1f} points of minority accuracy over class_weights: none")


if __name__ == "__main__":
    main()
