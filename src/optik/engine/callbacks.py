"""Lightning plumbing for a run: atomic checkpoint files, per-epoch reseeding, plain log lines."""

from __future__ import annotations

import random
import sys
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from optik.files import write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file and renamed, so a kill mid-save never corrupts last.ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        write_atomic(path, lambda fh: torch.save(checkpoint, fh))

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class EpochReseed(L.Callback):
    """Seed every RNG from (seed, epoch, rank) at each epoch start.

    Augmentation, dropout, mixup and DataLoader worker seeds then depend only on the epoch, so a
    run resumed from an epoch checkpoint continues exactly as an uninterrupted run would.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer, pl_module):
        seed = (self.seed * 1_000_003 + trainer.current_epoch * 7919 + trainer.global_rank) % 2**31
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)


class EpochLog(L.Callback):
    """One plain line per epoch with the logged metrics (readable in files and CI logs)."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.started = time.monotonic()

    def on_train_epoch_start(self, trainer, pl_module):
        self.started = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        shown = {k: v for k, v in trainer.callback_metrics.items() if k.endswith(("_epoch", "acc1", "acc5", "mean_class_acc", "val/loss"))}
        metrics = "  ".join(f"{k.removesuffix('_epoch')} {float(v):.4f}" for k, v in sorted(shown.items()))
        print(f"epoch {trainer.current_epoch + 1}/{self.epochs}  {metrics}  ({time.monotonic() - self.started:.1f}s)", file=sys.stdout, flush=True)
