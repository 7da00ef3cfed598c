"""Lightning plumbing for a run: atomic checkpoint files, per-epoch reseeding, plain log lines."""

from __future__ import annotations

import csv
import io
import os
import random
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO

from optik.files import tidy_number, write_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temp file and renamed, so a kill mid-save never corrupts last.ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        write_atomic(path, lambda fh: torch.save(checkpoint, fh), durable=False)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class LastCheckpoint(ModelCheckpoint):
    """`last.ckpt` after every epoch (what --resume continues from), plus `epoch-N.ckpt` every
    `every` epochs (N counted from 1), the newest `keep` of them kept (-1: all).

    An epoch file is a hard link to that epoch's last.ckpt: no second write. last.ckpt is replaced
    by rename, so the linked epoch file keeps its content.
    """

    def __init__(self, dirpath: Path, every: int, keep: int):
        super().__init__(
            dirpath=dirpath,
            filename="last",
            save_top_k=1,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )
        self.every, self.keep = every, keep

    def on_train_epoch_end(self, trainer, pl_module):
        super().on_train_epoch_end(trainer, pl_module)
        epoch = trainer.current_epoch + 1
        if trainer.global_rank != 0 or epoch % self.every or self.keep == 0:
            return
        folder = Path(self.dirpath)
        target = folder / f"epoch-{epoch}.ckpt"
        target.unlink(missing_ok=True)
        try:
            os.link(folder / "last.ckpt", target)
        except OSError:  # filesystems without hard links
            shutil.copyfile(folder / "last.ckpt", target)
        if self.keep > 0:
            numbered = {
                int(p.stem.split("-")[1]): p for p in folder.glob("epoch-*.ckpt") if p.stem.split("-")[1].isdigit()
            }
            saved = [numbered[n] for n in sorted(numbered) if n <= epoch]  # files of a longer earlier run stay
            for old in saved[: -self.keep]:
                old.unlink(missing_ok=True)


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


class EarlyStop(EarlyStopping):
    """Lightning's EarlyStopping (`train.early_stopping`), which also keeps the best value and its epoch
    (any improvement, as best.ckpt is chosen) and says at the end when and why it stopped:
    "stopped at epoch 7: val/acc1 has not improved by 0.001 for 3 epochs (best 0.9100 at epoch 4)".

    Its counter, best values and those of Lightning are in the checkpoint (`state_dict`), so a resumed run
    stops at the epoch an uninterrupted one would have.
    """

    def __init__(self, monitor: str, patience: int, min_delta: float, validate_every: int):
        mode = "min" if monitor.endswith("loss") else "max"
        # not strict: train.max_steps may end an epoch before its validation; the monitor is checked before training
        super().__init__(monitor=monitor, patience=patience, min_delta=min_delta, mode=mode, strict=False)
        self.validate_every = validate_every
        self.best_value: float | None = None
        self.best_epoch = 0

    def _run_early_stopping_check(self, trainer) -> None:
        # the one place Lightning checks the monitor, after each validation
        super()._run_early_stopping_check(trainer)
        current = trainer.callback_metrics.get(self.monitor)
        if current is None:
            return
        value = float(current)
        if self.best_value is None or (value < self.best_value if self.mode == "min" else value > self.best_value):
            self.best_value, self.best_epoch = value, trainer.current_epoch + 1

    def on_train_end(self, trainer, pl_module):
        if trainer.global_rank == 0 and self.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            print(self.stopped_message(), file=sys.stdout, flush=True)

    def stopped_message(self) -> str:
        where = f"stopped at epoch {self.stopped_epoch + 1}"
        if self.stopping_reason != EarlyStoppingReason.PATIENCE_EXHAUSTED:
            return f"{where}: {self.stopping_reason_message}"  # a non-finite monitor
        waited = (
            f"{self.wait_count} epochs"
            if self.validate_every == 1
            else f"{self.wait_count} validations (every {self.validate_every} epochs)"
        )
        by = f" by {abs(self.min_delta):g}" if self.min_delta else ""
        return (
            f"{where}: {self.monitor} has not improved{by} for {waited} "
            f"(best {self.best_value:.4f} at epoch {self.best_epoch})"
        )

    def state_dict(self):
        return {**super().state_dict(), "best_value": self.best_value, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.best_value, self.best_epoch = state_dict.get("best_value"), state_dict.get("best_epoch", 0)


class ProcessReport(L.Callback):
    """Under DDP, one line from every process as training starts: which rank it is and what share it trains on."""

    def on_train_start(self, trainer, pl_module):
        if trainer.world_size < 2:
            return
        backend = getattr(trainer.strategy, "process_group_backend", None) or "-"
        batches = trainer.num_training_batches
        print(
            f"process {trainer.global_rank} of {trainer.world_size} (node {trainer.node_rank}, {backend} on {pl_module.device}): "
            f"{batches} batch{'es' if batches != 1 else ''} per epoch",
            file=sys.stdout,
            flush=True,
        )


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
        shown = {
            k: v
            for k, v in trainer.callback_metrics.items()
            if k.endswith(("_epoch", "acc1", "acc5", "mean_class_acc", "val/loss", "map", "map_50", "map_75"))
        }
        metrics = "  ".join(f"{k.removesuffix('_epoch')} {float(v):.4f}" for k, v in sorted(shown.items()))
        print(
            f"epoch {trainer.current_epoch + 1}/{self.epochs}  {metrics}  ({time.monotonic() - self.started:.1f}s)",
            file=sys.stdout,
            flush=True,
        )


class StepLog(L.Callback):
    """Without a progress bar (output to a file or pipe), a line every `every` steps and at least every
    `seconds`, so a long epoch (detection on a CPU) shows it is moving: "epoch 3/10 step 40/120 loss 0.8123 2.1 it/s"."""

    def __init__(self, epochs: int, every: int, seconds: float = 30.0):
        self.epochs, self.every, self.seconds = epochs, every, seconds
        self.since, self.steps = time.monotonic(), 0

    def on_train_epoch_start(self, trainer, pl_module):
        self.since, self.steps = time.monotonic(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1
        elapsed = time.monotonic() - self.since
        if trainer.global_rank != 0 or ((batch_idx + 1) % self.every and elapsed < self.seconds):
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        total = trainer.num_training_batches
        print(
            f"epoch {trainer.current_epoch + 1}/{self.epochs} step {batch_idx + 1}/{total if total != float('inf') else '?'}"
            + (f" loss {float(loss):.4f}" if isinstance(loss, torch.Tensor) else "")
            + f" {step_rate(self.steps, elapsed)}",
            file=sys.stdout,
            flush=True,
        )
        self.since, self.steps = time.monotonic(), 0


class KeepHistoryWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; a resumed run keeps the rows of the
    epochs it does not redo (`epoch < keep_before_epoch`) and appends after them."""

    keep_before_epoch = 0

    def log_metrics(self, metrics_dict: dict, step: int | None = None) -> None:
        """Values as worth writing (`tidy_number`): a float32 loss as 2.3033519, not 2.303351879119873."""
        values = {
            key: value.item() if isinstance(value, torch.Tensor) else value for key, value in metrics_dict.items()
        }
        super().log_metrics({key: tidy_number(value) for key, value in values.items()}, step)

    def _check_log_dir_exists(self) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as fh:
            reader = csv.DictReader(fh)
            kept = [row for row in reader if row.get("epoch") and int(float(row["epoch"])) < self.keep_before_epoch]
            keys = list(reader.fieldnames or [])
        if kept:
            self.metrics_keys = keys
            write_atomic(self.metrics_file_path, _csv_text(keys, kept))
        else:
            os.remove(self.metrics_file_path)


def _csv_text(keys: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


class RunCSVLogger(CSVLogger):
    """CSVLogger writing `logs/metrics.csv`, keeping earlier epochs when a run is resumed."""

    def __init__(self, save_dir, keep_before_epoch: int = 0):
        super().__init__(save_dir, name="", version="")
        self.keep_before_epoch = keep_before_epoch

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            writer_class = type("Writer", (KeepHistoryWriter,), {"keep_before_epoch": self.keep_before_epoch})
            self._experiment = writer_class(log_dir=self.log_dir)
        return self._experiment


def step_rate(steps: int, seconds: float) -> str:
    """Steps per second, or seconds per step below one a second: `2.1 it/s`, `12.3 s/it` (not `0.1 it/s`)."""
    rate = steps / max(seconds, 1e-9)
    return f"{rate:.1f} it/s" if rate >= 1 else f"{seconds / max(steps, 1):.1f} s/it"
