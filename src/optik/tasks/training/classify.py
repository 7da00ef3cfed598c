"""Image classification as a LightningModule: cross-entropy (with smoothing / mixup / class weights), EMA,
top-k metrics (the k that `optik test` reports too: `top_k_accuracies`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        class_weights: one weight per class in the training loss (None: unweighted); val/loss stays unweighted.
    """

    def __init__(
        self,
        model: nn.Module,
        config: dict,
        classes: list[str],
        preprocess: dict,
        class_weights: list[float] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(
            {"config": config, "classes": classes, "preprocess": preprocess, "class_weights": class_weights}
        )
        self.model = model
        self.train_cfg = TrainConfig.model_validate(config["train"])
        n = len(classes)
        self.mixup = build_mixup(self.train_cfg, n)
        # mixup folds label smoothing into its soft targets; without it the loss smooths
        smoothing = 0.0 if self.mixup is not None else self.train_cfg.label_smoothing
        self.train_loss = WeightedCrossEntropy(class_weights, label_smoothing=smoothing)
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


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy over class labels (N,) or soft targets (N, C) from mixup/cutmix, with optional class weights.

    Labels: torch's `cross_entropy(weight=..., label_smoothing=...)`, the weighted mean over the batch.
    Soft targets: each sample's loss -sum_c t_c log p_c is weighted by sum_c t_c w_c (a mix of two images
    counts as much as its classes' weights in that mix), and the batch mean is divided by the sum of
    those weights; one-hot targets give exactly the label case.
    """

    def __init__(self, class_weights: list[float] | None = None, label_smoothing: float = 0.0):
        super().__init__()
        weight = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        # not in the state_dict: the weights come from the config and data, and a resumed run may change them
        self.register_buffer("weight", weight, persistent=False)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(logits.dtype)
        if targets.ndim == 1:
            return F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.label_smoothing)
        per_sample = -(targets * F.log_softmax(logits, dim=-1)).sum(dim=-1)
        if weight is None:
            return per_sample.mean()
        sample_weight = targets.to(weight.dtype) @ weight
        return (per_sample * sample_weight).sum() / sample_weight.sum()


def build_mixup(cfg: TrainConfig, num_classes: int):
    """timm's Mixup/CutMix (with label smoothing folded into the soft targets), or None."""
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing, num_classes=num_classes
    )
