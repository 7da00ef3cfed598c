"""Training speed: `optik train` vs a plain PyTorch loop, same model, data, batch size, precision and loader.

Both read the same folder of PNGs with the same transforms and DataLoader settings, train the same
timm model with AdamW and cross-entropy, and save a checkpoint per epoch; neither validates. The
runs alternate (plain, optik, plain, optik, ...) so background load hits both alike. Throughput is
training images per second over the epochs after the first (warm-up), start-to-start, so
optik's checkpointing and logging count against it.

    python benchmarks/train_throughput.py            # resnet18 at 32 px on sklearn's digits
    python benchmarks/train_throughput.py --precision bf16-mixed --image-size 64
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import lightning as L
import timm
import torch
from torch.utils.data import DataLoader

from optik.config import load_config
from optik.data.folder import class_folders, samples_from
from optik.data.loaders import ImageDataset
from optik.data.transforms import train_transform
from optik.engine.train import train
from optik.tools.digits import write_digits


class EpochClock(L.Callback):
    def __init__(self):
        self.marks: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.marks.append(time.perf_counter())


def plain_loop(cfg, epochs: int, out: Path) -> tuple[float, int]:
    """The loop a PyTorch user writes by hand; returns (images/s after the first epoch, images per epoch)."""
    torch.manual_seed(0)
    images = class_folders(Path(cfg.data.root) / "train")
    classes = sorted(images)
    dataset = ImageDataset(samples_from(images, classes), train_transform(cfg.data))
    loader = DataLoader(
        dataset, batch_size=cfg.data.batch_size, shuffle=True, num_workers=cfg.data.num_workers, drop_last=True
    )
    model = timm.create_model(cfg.model.name, num_classes=len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.train.label_smoothing)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16-mixed")
    marks, seen = [], 0
    model.train()
    for epoch in range(epochs):
        marks.append(time.perf_counter())
        seen = 0
        for x, y in loader:
            with autocast:
                loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}, out / "plain.ckpt"
        )
    marks.append(time.perf_counter())
    return seen * (epochs - 1) / (marks[-1] - marks[1]), seen


def optik_run(cfg, epochs: int, out: Path, index: int) -> tuple[float, int]:
    clock = EpochClock()
    run_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
    train(run_cfg, work_dir=out / f"optik-{index}", callbacks=[clock], overwrite=True)
    images = sum(len(v) for v in class_folders(Path(cfg.data.root) / "train").values())
    seen = images // cfg.data.batch_size * cfg.data.batch_size  # both drop the last partial batch
    return seen * (epochs - 1) / (clock.marks[-1] - clock.marks[1]), seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="32", choices=["32", "bf16-mixed"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("work_dirs/bench_train"))
    args = parser.parse_args()

    data = args.work / "digits"
    if not (data / "train").is_dir():
        write_digits(data, size=args.image_size)
    cfg = load_config(
        "resnet18_small",
        [
            f"data.root={data}",
            f"model.name={args.model}",
            f"data.image_size={args.image_size}",
            f"data.batch_size={args.batch_size}",
            f"data.num_workers={args.workers}",
            f"train.precision={args.precision}",
            "train.validation=false",
            "train.warmup_epochs=0",
            "data.augment.hflip=0",
            "train.keep_checkpoints=1",
        ],
    )
    plain, ours = [], []
    for index in range(args.rounds):
        plain.append(plain_loop(cfg, args.epochs, args.work)[0])
        ours.append(optik_run(cfg, args.epochs, args.work, index)[0])
    ratios = [o / p for o, p in zip(ours, plain)]
    print(
        f"\ntraining {args.model} at {args.image_size} px, batch {args.batch_size}, precision {args.precision}, {args.workers} loader workers, {torch.get_num_threads()} threads"
    )
    print(f"{'':22s} {'images/s (median)':>18s}   per round")
    print(f"{'plain PyTorch loop':22s} {statistics.median(plain):18.1f}   {', '.join(f'{v:.1f}' for v in plain)}")
    print(f"{'optik train':22s} {statistics.median(ours):18.1f}   {', '.join(f'{v:.1f}' for v in ours)}")
    overhead = 1 - statistics.median(ratios)
    print(f"optik / plain: {statistics.median(ratios):.3f}  (overhead {overhead:+.1%})")


if __name__ == "__main__":
    main()
