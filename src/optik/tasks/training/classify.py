"""Image classification as a LightningModule: cross-entropy (with smoothing / mixup), EMA, top-k metrics
(the k that `optik test` reports too: `top_k_accuracies`)."""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from optik.config.schema import TrainConfig
from optik.metrics.classification import top_k_accuracies
from optik.tasks.training.base import TrainingModule


class ClassifyModule(TrainingModule):
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
        self.setup_ema()
        # keyed by the logged name's last part (val/acc1 -> acc1): a ModuleDict key may not hold "/"
        self.val_metrics = nn.ModuleDict(
            {
                **{
                    accuracy.logged.removeprefix("val/"): MulticlassAccuracy(n, top_k=accuracy.k, average="micro")
                    for accuracy in top_k_accuracies(n)
                },
                "mean_class_acc": MulticlassAccuracy(n, top_k=1, average="macro"),
            }
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.eval_model()(images)

    def training_step(self, batch, batch_idx):
        images, labels = batch
        targets = labels
        if self.mixup is not None:
            images, targets = self.mixup(images, labels)
        loss = self.train_loss(self.model(images), targets)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        logits = self.eval_model()(images)
        self.log(
            "val/loss", self.eval_loss(logits.float(), labels), on_epoch=True, sync_dist=True, batch_size=len(labels)
        )
        for name, metric in self.val_metrics.items():
            metric(logits, labels)
            self.log(f"val/{name}", metric, on_epoch=True, prog_bar=name == "acc1", batch_size=len(labels))

    def predict_step(self, batch, batch_idx):
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.eval_model()(images).float().softmax(dim=-1)


def build_mixup(cfg: TrainConfig, num_classes: int):
    """timm's Mixup/CutMix (with label smoothing folded into the soft targets), or None."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=num_classes
    )
