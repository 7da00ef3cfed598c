"""What every task's LightningModule shares: the EMA copy, the optimizer and its per-step schedule."""

from __future__ import annotations

import math

import lightning as L
from torch import nn


class TrainingModule(L.LightningModule):
    """Base of the task modules: `self.model` is trained, `eval_model()` validates and exports
    (the EMA copy when `train.ema` is on), and `train_cfg` drives the optimizer and schedule."""

    model: nn.Module
    ema: nn.Module | None = None

    def setup_ema(self) -> None:
        self.ema = build_ema(self.model, self.train_cfg.ema_decay) if self.train_cfg.ema else None
        self._ema_step = 0

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def on_train_batch_end(self, outputs, batch, batch_idx):
        # once per optimizer step (not per accumulated micro-batch), so ema_decay keeps its meaning
        if self.ema is not None and self.global_step != self._ema_step:
            self._ema_step = self.global_step
            self.ema.update(self.model, step=self.global_step)

    def build_optimizer(self):
        """A task's own optimizer, or None for timm's `train.optimizer`."""
        return None

    def configure_optimizers(self):
        import torch
        from timm.optim import create_optimizer_v2

        cfg = self.train_cfg
        optimizer = self.build_optimizer() or create_optimizer_v2(
            self.model, opt=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, math.ceil(self.trainer.num_training_batches / self.trainer.accumulate_grad_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_schedule(cfg, total_steps=total, steps_per_epoch=per_epoch)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_schedule(cfg, total_steps: int, steps_per_epoch: int):
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


def build_ema(model: nn.Module, decay: float) -> nn.Module:
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=decay)
    ema.requires_grad_(False)  # never trained by the optimizer; DDP must not wait for its gradients
    return ema
