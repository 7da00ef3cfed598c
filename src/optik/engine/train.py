"""`optik train`: build the data, model and Trainer for a config, run it, write the model package."""

from __future__ import annotations

import logging
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from optik.config.load import config_to_dict, dump_config
from optik.config.schema import ClassifyConfig, DetectConfig, PretrainConfig
from optik.data.loaders import build_classify_data, make_loader
from optik.data.transforms import Preprocess
from optik.engine.callbacks import AtomicCheckpointIO, EpochLog, EpochReseed, LastCheckpoint, ProcessReport, RunCSVLogger
from optik.errors import ConfigError, DataError
from optik.files import write_atomic
from optik.models.classify import build_classifier, is_plugin
from optik.models.package import load_package, save_package
from optik.models.weights import load_weights
from optik.tasks.classify import ClassifyModule

# what the data and weights look like is said once, by the first process (under torchrun every process runs this)
say = rank_zero_only(print)


@dataclass
class TrainResult:
    work_dir: Path
    package: Path | None
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


def default_work_dir(cfg: ClassifyConfig) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.model.name.rpartition(":")[0]).stem if is_plugin(cfg.model.name) else cfg.model.name)
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
        raise ConfigError(f"cannot resume from {path}: not a training checkpoint of an optik run (use checkpoints/last.ckpt; for model.pt use model.weights)")
    return int(content.get("epoch", -1)) + 1, list(hparams["classes"])


def check_resume(path: Path, epochs_done: int, classes: list[str], cfg: ClassifyConfig, data_classes: list[str]) -> None:
    if classes != data_classes:
        raise ConfigError(f"cannot resume from {path}: it was trained on classes {classes}, the data now has {data_classes}; "
                          "fix data.root/data.classes, or start a new run with model.weights to fine-tune")
    if epochs_done >= cfg.train.epochs:
        raise ConfigError(f"{path} has already trained {epochs_done} epochs (train.epochs is {cfg.train.epochs}); "
                          f"to train longer, resume with --set train.epochs={epochs_done + 10} (for example)")


def quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in (r".*does not have many workers.*", r".*module\(s\) in eval mode.*", r".*LeafSpec.*", r".*no `val_dataloader`.*", r".*exists and is not empty.*"):
        warnings.filterwarnings("ignore", message=message)
    warnings.filterwarnings("ignore", message=r".*the number of training batches .* is smaller than the logging interval.*")


def build_callbacks(cfg: ClassifyConfig, ckpt_dir: Path) -> list[L.Callback]:
    t = cfg.train
    callbacks: list[L.Callback] = [EpochReseed(t.seed), EpochLog(t.epochs), ProcessReport(), LearningRateMonitor(logging_interval="epoch")]
    if t.validation:
        # before LastCheckpoint: both save at epoch end, and last.ckpt must hold the updated best score
        mode = "min" if t.monitor.endswith("loss") else "max"
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=t.monitor, mode=mode, save_top_k=1,
                                         auto_insert_metric_name=False, enable_version_counter=False))
    callbacks.append(LastCheckpoint(ckpt_dir, every=t.checkpoint_every, keep=t.keep_checkpoints))
    if sys.stderr.isatty():
        callbacks.append(TQDMProgressBar())
    return callbacks


def build_trainer(cfg: ClassifyConfig, work_dir: Path, extra_callbacks=(), resumed_epoch: int = 0) -> L.Trainer:
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
        num_sanity_val_steps=0,
        log_every_n_steps=t.log_every_n_steps,
        logger=[TensorBoardLogger(logs, name="", version="tensorboard"), RunCSVLogger(logs, keep_before_epoch=resumed_epoch)],
        callbacks=[*build_callbacks(cfg, work_dir / "checkpoints"), *extra_callbacks],
        plugins=[AtomicCheckpointIO()],
        enable_progress_bar=sys.stderr.isatty(),
        enable_model_summary=False,
    )


def train(cfg: ClassifyConfig, work_dir: str | Path | None = None, resume: str | Path | None = None, callbacks=()) -> TrainResult:
    """Train a classifier or detector as `cfg` says; returns where the model package and best checkpoint are.

    Args:
        work_dir: overrides `cfg.work_dir` (default `work_dirs/<task>-<model>`).
        resume: `"last"` or a checkpoint path: continue with the full training state.
        callbacks: extra Lightning callbacks (hook points for user extensions).
    """
    quiet_lightning()
    if cfg.train.sync_batchnorm and (cfg.train.accelerator == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("train.sync_batchnorm needs GPUs: torch's SyncBatchNorm does not run on the CPU. Leave it false there "
                          "(each process then normalises over its own images)")
    work_dir = Path(work_dir or cfg.work_dir or default_work_dir(cfg))
    cfg = cfg.model_copy(update={"work_dir": work_dir, "model": absolute_plugin(cfg.model)})
    ckpt = resolve_resume(resume, work_dir)
    epochs_done, ckpt_classes = inspect_checkpoint(ckpt) if ckpt else (0, [])
    L.seed_everything(cfg.train.seed, verbose=False)

    prepare = {"classify": prepare_classify, "detect": prepare_detect, "pretrain": prepare_pretrain}[cfg.task]
    module, train_loader, val_loader = prepare(cfg, ckpt, epochs_done, ckpt_classes)
    trainer = build_trainer(cfg, work_dir, callbacks, resumed_epoch=epochs_done)
    if trainer.global_rank == 0:
        write_atomic(work_dir / "config.yaml", dump_config(cfg))
    trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt)
    return finish(trainer, cfg, work_dir)


def prepare_classify(cfg: ClassifyConfig, ckpt: Path | None, epochs_done: int, ckpt_classes: list[str]):
    """The classifier's module and loaders."""
    data = build_classify_data(cfg.data, seed=cfg.train.seed)
    if len(data.classes) < 2:
        raise DataError(f"a classifier needs at least 2 classes, found {len(data.classes)}: {data.classes}")
    if ckpt is not None:
        check_resume(ckpt, epochs_done, ckpt_classes, cfg, data.classes)
    log_data_summary(data)
    model = build_classifier(cfg.model, len(data.classes), cfg.data.image_size)
    if cfg.model.weights is not None and ckpt is None:
        for line in load_weights(model, cfg.model.weights, cfg.model.weights_prefix).lines():
            say(line)
    preprocess = Preprocess.from_data_config(cfg.data).to_dict()
    module = ClassifyModule(model, config_to_dict(cfg), data.classes, preprocess)
    workers = cfg.data.num_workers
    # a last batch of one image breaks batch norm, and mixup needs full batches: drop the remainder
    train_set = data.datasets["train"]
    train_loader = make_loader(train_set, cfg.data.batch_size, workers, shuffle_seed=cfg.train.seed,
                               drop_last=len(train_set) > cfg.data.batch_size, start_epoch=epochs_done)
    val_loader = make_loader(data.datasets["val"], cfg.data.batch_size, workers) if cfg.train.validation else None
    return module, train_loader, val_loader


def prepare_detect(cfg: DetectConfig, ckpt: Path | None, epochs_done: int, ckpt_classes: list[str]):
    """The detector's module and loaders; the val split's COCO form is the validation ground truth."""
    from optik.data.detection import build_detect_data, detect_datasets, make_detect_loader
    from optik.models.detect import build_detector, has_masks, load_detector_weights
    from optik.tasks.detect import DetectModule

    with_masks = has_masks(cfg.model.name)
    classes, sets = build_detect_data(cfg.data, with_masks=with_masks)
    if ckpt is not None:
        check_resume(ckpt, epochs_done, ckpt_classes, cfg, classes)
    counts = ", ".join(f"{name} {len(part)} images ({part.num_objects} objects)" for name, part in sets.items())
    say(f"data: {len(classes)} classes {classes}; {counts}")
    for part in sets.values():
        for line in part.report:
            say(f"  {line}")
    model = build_detector(cfg.model, cfg.data, len(classes))
    if cfg.model.weights is not None and ckpt is None:
        for line in load_detector_weights(model, cfg.model.weights, cfg.model.weights_prefix).lines():
            say(line)
    preprocess = {"task": "detect", "image_size": cfg.data.image_size, "mean": list(cfg.data.mean), "std": list(cfg.data.std)}
    truth = sets["val"].to_coco() if cfg.train.validation else None
    module = DetectModule(model, config_to_dict(cfg), classes, preprocess, val_ground_truth=truth)
    datasets = detect_datasets(sets, cfg.data.augment, with_masks, seed=cfg.train.seed)
    size, workers = cfg.data.batch_size, cfg.data.num_workers
    train_loader = make_detect_loader(datasets["train"], size, workers, shuffle_seed=cfg.train.seed,
                                      drop_last=len(datasets["train"]) > size, start_epoch=epochs_done)
    val_loader = make_detect_loader(datasets["val"], size, workers) if cfg.train.validation else None
    return module, train_loader, val_loader


def prepare_pretrain(cfg: PretrainConfig, ckpt: Path | None, epochs_done: int, ckpt_classes: list[str]):
    """The self-supervised method's module and the loader of multi-view batches (no validation)."""
    from optik.data.loaders import build_pretrain_data
    from optik.models.ssl import build_backbone, build_ssl, view_transform
    from optik.tasks.pretrain import PretrainModule

    if ckpt is not None:
        check_resume(ckpt, epochs_done, ckpt_classes, cfg, [])
    dataset, skipped = build_pretrain_data(cfg.data, view_transform(cfg), seed=cfg.train.seed)
    say(f"data: {len(dataset)} unlabelled images" + (f"; {len(skipped)} unreadable image(s) left out" if skipped else ""))
    if cfg.ssl.method == "moco_v2" and cfg.ssl.memory_bank_size >= len(dataset):
        say(f"note: ssl.memory_bank_size {cfg.ssl.memory_bank_size} >= {len(dataset)} images: the bank will hold older keys of each "
              f"query's own image as negatives; set it to {max(cfg.data.batch_size, len(dataset) // 2)} or less")
    backbone = build_backbone(cfg.model if ckpt is None else cfg.model.model_copy(update={"weights": None, "pretrained": False}), cfg.data.image_size)
    preprocess = Preprocess.from_data_config(cfg.data).to_dict()
    module = PretrainModule(build_ssl(cfg, backbone), config_to_dict(cfg), preprocess)
    # every step sees a full batch: contrastive losses and batch norm in the heads need it
    loader = make_loader(dataset, cfg.data.batch_size, cfg.data.num_workers, shuffle_seed=cfg.train.seed, drop_last=True, start_epoch=epochs_done)
    return module, loader, None


def log_data_summary(data) -> None:
    counts = ", ".join(f"{name} {len(ds)}" for name, ds in data.datasets.items())
    say(f"data: {len(data.classes)} classes; {counts} images" + (f"; {len(data.skipped)} unreadable image(s) left out" if data.skipped else ""))
    for path in data.skipped[:10]:
        say(f"  left out: {path}")


def finish(trainer: L.Trainer, cfg: ClassifyConfig, work_dir: Path) -> TrainResult:
    """Write model.pt from the best checkpoint (the last one without validation)."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    if trainer.global_rank != 0:
        return TrainResult(work_dir, None, None, metrics)
    best = next((cb for cb in trainer.checkpoint_callbacks if cb.monitor == cfg.train.monitor), None)
    chosen = Path(best.best_model_path) if best is not None and best.best_model_path else work_dir / "checkpoints" / "last.ckpt"
    # a pretraining checkpoint's package is its backbone (see load_package)
    package_path = save_package(load_package(chosen), work_dir / ("backbone.pt" if cfg.task == "pretrain" else "model.pt"))
    if best is not None and best.best_model_score is not None:
        metrics[f"best {cfg.train.monitor}"] = float(best.best_model_score)
    print(f"{'backbone' if cfg.task == 'pretrain' else 'model package'}: {package_path} (from {chosen.name})")
    return TrainResult(work_dir, package_path, chosen, metrics)
