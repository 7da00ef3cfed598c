"""Image classification as a LightningModule: cross-entropy (with smoothing / mixup), EMA, top-k metrics."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from optik.config.schema import TrainConfig


class ClassifyModule(L.LightningModule):
    """Trains `model` on (image, label) batches; validates the EMA copy when there is one.

    Args:
        model: a network mapping (N, 3, H, W) images to (N, num_classes) logits.
        config: the resolved run config (plain dict), kept in checkpoints.
        classes: class names, index = label.
        preprocess: eval preprocessing (`Preprocess.to_dict()`), kept in checkpoints.
    """

    def __init__(self, model: nn.Module, config: dict, classes: list[str], preprocess: dict):
        super().__init__()
        self.save_hyperparameters({"config": config, "classes": classes, "preprocess": preprocess})
        self.model = model
        self.train_cfg = TrainConfig.model_validate(config["train"])
        n = len(classes)
        self.mixup = build_mixup(self.train_cfg, n)
        if self.mixup is not None:
            from timm.loss import SoftTargetCrossEntropy

            self.train_loss = SoftTargetCrossEntropy()
        else:
            self.train_loss = nn.CrossEntropyLoss(label_smoothing=self.train_cfg.label_smoothing)
        self.eval_loss = nn.CrossEntropyLoss()
        self.ema = build_ema(model, self.train_cfg.ema_decay) if self.train_cfg.ema else None
        self._ema_step = 0
        self.val_acc1 = MulticlassAccuracy(n, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(n, top_k=min(5, n), average="micro")
        self.val_mean_class_acc = MulticlassAccuracy(n, top_k=1, average="macro")

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.eval_model()(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        loss = self.train_loss(self.model(images), targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # once per optimizer step (not per accumulated micro-batch), so ema_decay keeps its meaning
        if self.ema is not None and self.global_step != self._ema_step:
            self._ema_step = self.global_step
            self.ema.update(self.model, step=self.global_step)

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.eval_model()(images)
        self.log("val/loss", self.eval_loss(logits.float(), labels), on_epoch=True, sync_dist=True, batch_size=len(labels))
        for name, metric in (("acc1", self.val_acc1), ("acc5", self.val_acc5), ("mean_class_acc", self.val_mean_class_acc)):
            metric(logits, labels)
            self.log(f"val/{name}", metric, on_epoch=True, prog_bar=name == "acc1", batch_size=len(labels))

    def predict_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.eval_model()(images).float().softmax(dim=-1)

    def configure_optimizers(self):
        from timm.optim import create_optimizer_v2

        cfg = self.train_cfg
        optimizer = create_optimizer_v2(self.model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        schedule = lr_schedule(cfg, total_steps=total, steps_per_epoch=per_epoch)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_schedule(cfg: TrainConfig, total_steps: int, steps_per_epoch: int):
    """Per-step multiplier of the base lr: linear warmup, then cosine / step / constant."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    floor = cfg.min_lr / cfg.lr
    milestones = [m * steps_per_epoch for m in cfg.step_milestones]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.scheduler == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.scheduler == "step":
            return cfg.gamma ** sum(step >= m for m in milestones)
        return 1.0

    return factor


def build_mixup(cfg: TrainConfig, num_classes: int):
    """timm's Mixup/CutMix (with label smoothing folded into the soft targets), or None."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=num_classes)


def build_ema(model: nn.Module, decay: float) -> nn.Module:
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=decay)
    ema.requires_grad_(False)  # never trained by the optimizer; DDP must not wait for its gradients
    return ema
