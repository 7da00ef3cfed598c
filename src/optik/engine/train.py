"""`optik train`: for any task, the Trainer, the work dir, resuming, and the model package at the end;
the task (`optik.tasks`) assembles the data, the model and its LightningModule."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from optik.config.load import AnyConfig, dump_config
from optik.engine.callbacks import (
    AtomicCheckpointIO,
    EarlyStop,
    EpochLog,
    EpochReseed,
    LastCheckpoint,
    ProcessReport,
    RunCSVLogger,
    StepLog,
)
from optik.engine.devices import check_devices
from optik.engine.work_dir import claim_work_dir
from optik.errors import ConfigError, DataError, Interrupted
from optik.files import write_atomic
from optik.models.classify import is_plugin
from optik.models.package import load_package, save_package
from optik.signals import handling_stop_signals
from optik.tasks import get_task
from optik.tasks.base import Resume


@dataclass
class TrainResult:
    work_dir: Path
    package: Path | None
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


def default_work_dir(cfg: AnyConfig) -> Path:
    name = re.sub(
        r"[^A-Za-z0-9_.-]+",
        "_",
        Path(cfg.model.name.rpartition(":")[0]).stem if is_plugin(cfg.model.name) else cfg.model.name,
    )
    return Path("work_dirs") / f"{cfg.task}-{name}"


def resolve_resume(resume: str | Path | None, work_dir: Path) -> Path | None:
    """`last` (or True) means the work dir's last.ckpt; anything else is a checkpoint path."""
    if resume is None or resume is False:
        return None
    path = work_dir / "checkpoints" / "last.ckpt" if resume in ("last", True) else Path(resume)
    if not path.is_file():
        raise ConfigError(f"cannot resume: checkpoint not found: {path}")
    return path


def absolute_plugin(model_cfg):
    """Plug-in paths made absolute, so model.pt finds its factory from any working directory."""
    if not is_plugin(model_cfg.name):
        return model_cfg
    file_part, _, factory = model_cfg.name.rpartition(":")
    return model_cfg.model_copy(update={"name": f"{Path(file_part).expanduser().resolve()}:{factory}"})


def inspect_checkpoint(path: Path) -> tuple[int, list[str]]:
    """Epochs completed and class names of an optik training checkpoint (tensors not loaded)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        content = None
    hparams = content.get("hyper_parameters", {}) if isinstance(content, dict) else {}
    if "pytorch-lightning_version" not in (content or {}) or "classes" not in hparams:
        raise ConfigError(
            f"cannot resume from {path}: not a training checkpoint of an optik run (use checkpoints/last.ckpt; for model.pt use model.weights)"
        )
    return int(content.get("epoch", -1)) + 1, list(hparams["classes"])


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (
        r".*does not have many workers.*",
        r".*module\(s\) in eval mode.*",
        r".*LeafSpec.*",
        r".*no `val_dataloader`.*",
        r".*exists and is not empty.*",
    ):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings(
        "ignore", message=r".*the number of training batches .* is smaller than the logging interval.*"
    )
    # train.max_steps can end a run before its first validation; finish() then says model.pt is the last step's
    warnings.filterwarnings("ignore", message=r".*could not find the monitored key in the returned metrics.*")


def build_callbacks(cfg: AnyConfig, ckpt_dir: Path) -> list[L.Callback]:
    t = cfg.train
    callbacks: list[L.Callback] = [
        EpochReseed(t.seed),
        EpochLog(t.epochs),
        ProcessReport(),
        LearningRateMonitor(logging_interval="epoch"),
    ]
    if t.validation:
        # before LastCheckpoint: both save at epoch end, and last.ckpt must hold the updated best score
        mode = "min" if t.monitor.endswith("loss") else "max"
        callbacks.append(
            ModelCheckpoint(
                dirpath=ckpt_dir,
                filename="best",
                monitor=t.monitor,
                mode=mode,
                save_top_k=1,
                auto_insert_metric_name=False,
                enable_version_counter=False,
            )
        )
    if t.early_stopping is not None:
        stop = t.early_stopping
        callbacks.append(EarlyStop(t.monitor, stop.patience, stop.min_delta, t.validate_every))
    callbacks.append(LastCheckpoint(ckpt_dir, every=t.checkpoint_every, keep=t.keep_checkpoints))
    if sys.stderr.isatty():
        callbacks.append(TQDMProgressBar())
    else:
        callbacks.append(StepLog(t.epochs, every=t.log_every_n_steps))
    return callbacks


def build_trainer(cfg: AnyConfig, work_dir: Path, extra_callbacks=(), resumed_epoch: int = 0) -> L.Trainer:
    t = cfg.train
    logs = work_dir / "logs"
    return L.Trainer(
        default_root_dir=work_dir,
        max_epochs=t.epochs,
        max_steps=t.max_steps,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        sync_batchnorm=t.sync_batchnorm,
        precision=t.precision,
        deterministic=t.deterministic,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.grad_clip,
        check_val_every_n_epoch=t.validate_every,
        limit_val_batches=None if t.validation else 0,
        # our train samplers draw the same (seed, epoch) order in every process; Lightning's wrapper then
        # gives each process its own positions of that draw (disjoint shares), and val its shard
        use_distributed_sampler=True,
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        logger=[
            TensorBoardLogger(logs, name="", version="tensorboard"),
            RunCSVLogger(logs, keep_before_epoch=resumed_epoch),
        ],
        callbacks=[*build_callbacks(cfg, work_dir / "checkpoints"), *extra_callbacks],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
    )


def train(
    cfg: AnyConfig,
    work_dir: str | Path | None = None,
    resume: str | Path | None = None,
    callbacks=(),
    overwrite: bool = False,
) -> TrainResult:
    """Train a classifier, detector or self-supervised backbone as `cfg` says; returns where the model package and best checkpoint are.

    Args:
        work_dir: overrides `cfg.work_dir` (default `work_dirs/<task>-<model>`).
        resume: `"last"` or a checkpoint path: continue with the full training state.
        overwrite: a work dir that holds another run is refused unless this is set; then that run's
            files are removed first (`optik.engine.work_dir`).
        callbacks: extra Lightning callbacks (hook points for user extensions).
    """
    quiet_lightning()
    check_devices(cfg.train)  # these and the model's name before the data scan, which can take minutes
    get_task(cfg.task).check_config(cfg)
    check_data_root(cfg.data)
    if cfg.train.sync_batchnorm and (cfg.train.accelerator == "cpu" or not torch.cuda.is_available()):
        raise ConfigError(
            "train.sync_batchnorm needs GPUs: torch's SyncBatchNorm does not run on the CPU. Leave it false there "
            "(each process then normalises over its own images)"
        )
    work_dir = Path(work_dir or cfg.work_dir or default_work_dir(cfg))
    cfg = cfg.model_copy(update={"work_dir": work_dir, "model": absolute_plugin(cfg.model)})
    ckpt = resolve_resume(resume, work_dir)
    if ckpt is not None and overwrite:
        raise ConfigError("--resume continues the work dir's run and --overwrite removes it: give one of them")
    # under DDP every process refuses alike, and only the first one removes an earlier run
    if ckpt is None and (rank_zero_only.rank == 0 or not overwrite):
        claim_work_dir(work_dir, overwrite, cfg.model.weights)
    resumed = Resume(ckpt, *inspect_checkpoint(ckpt)) if ckpt else Resume()
    L.seed_everything(cfg.train.seed, verbose=False)

    run = get_task(cfg.task).prepare(cfg, resumed)
    trainer = build_trainer(cfg, work_dir, callbacks, resumed_epoch=resumed.epochs_done)
    if trainer.global_rank == 0:
        write_atomic(work_dir / "config.yaml", dump_config(cfg))
    with stop_signals() as received:
        try:
            trainer.fit(run.module, run.train_loader, run.val_loader, ckpt_path=ckpt)
        # Lightning ends a Ctrl-C with sys.exit(1), and a DataLoader worker killed by the same signal
        # surfaces as a RuntimeError: after a stop signal both mean "interrupted", never a crash
        except (SystemExit, RuntimeError, KeyboardInterrupt):
            if not received:
                raise
            where = f"interrupted at epoch {trainer.current_epoch + 1} (step {trainer.global_step})"
            if (work_dir / "checkpoints" / "last.ckpt").is_file():
                best = work_dir / "checkpoints" / "best.ckpt"
                so_far = f"; {best}, the best so far, serves as MODEL (test, predict, export)" if best.is_file() else ""
                raise Interrupted(
                    received[0], f"{where}{so_far}; resume with: optik train --resume --work-dir {work_dir}"
                ) from None
            raise Interrupted(received[0], f"{where}, before the first epoch's checkpoint: nothing to resume") from None
    return finish(trainer, cfg, work_dir)


def check_data_root(data) -> None:
    """A data.root that is not there is said before the work dir is claimed and anything is read (unless
    it is to be downloaded, or the splits are named by data.train)."""
    root = getattr(data, "root", None)
    if root is None or Path(root).exists() or getattr(data, "download", False) or getattr(data, "train", None):
        return
    raise DataError(
        f"data folder not found: {root} (data.root is not an image folder; set it to the dataset folder, "
        "e.g. --set data.root=DIR)"
    )


@contextmanager
def stop_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM stop training at once, both as KeyboardInterrupt (which Lightning handles
    by shutting down cleanly); the list yielded holds the signal received.

    Lightning's own SIGTERM handling would only stop at the epoch's end and exit 0, as if training
    had finished."""
    received: list[int] = []

    def handler(signum, frame):
        if not received:
            received.append(signum)
        raise KeyboardInterrupt

    with handling_stop_signals(handler):
        yield received


def finish(trainer: L.Trainer, cfg: AnyConfig, work_dir: Path) -> TrainResult:
    """Write model.pt from the best checkpoint (the last one without validation)."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.global_rank != 0:
        return TrainResult(work_dir, None, None, metrics)
    best = next((cb for cb in trainer.checkpoint_callbacks if cb.monitor == cfg.train.monitor), None)
    chosen, why = chosen_checkpoint(trainer, cfg, best, work_dir)
    task = get_task(cfg.task)
    package_path = save_package(load_package(chosen), work_dir / task.package_file)
    if best is not None and best.best_model_score is not None:
        metrics[f"best {cfg.train.monitor}"] = float(best.best_model_score)
    print(f"{task.package_label}: {package_path} (from {chosen.name}: {why})")
    return TrainResult(work_dir, package_path, chosen, metrics)


def chosen_checkpoint(trainer: L.Trainer, cfg: AnyConfig, best, work_dir: Path) -> tuple[Path, str]:
    """The checkpoint the package is made from, and why, in words for the log."""
    if best is not None and best.best_model_path:
        return Path(best.best_model_path), f"the best {cfg.train.monitor}, {float(best.best_model_score):.4f}"
    last = work_dir / "checkpoints" / "last.ckpt"
    if best is None:
        return last, f"the end of training, step {trainer.global_step}; train.validation is off"
    if trainer.global_step == cfg.train.max_steps:
        return last, f"step {trainer.global_step}: train.max_steps ended training before any validation"
    return last, f"the end of training, step {trainer.global_step}: no validation ran"
