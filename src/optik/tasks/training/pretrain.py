"""Self-supervised pretraining as a LightningModule: the method's loss over multi-view batches, its
momentum schedule per step, and LARS (lightly's) with no weight decay or adaptation on biases and norms."""

from __future__ import annotations

import torch

from optik.config.schema import PretrainTrainConfig
from optik.models.ssl import SSLMethod
from optik.tasks.training.base import TrainingModule


class PretrainModule(TrainingModule):
    """Trains an `SSLMethod` on batches of views (a list of (N, 3, H, W) tensors, one per view).

    Args:
        method: the method around its backbone (`optik.models.ssl.build_ssl`).
        config: the resolved run config (plain dict), kept in checkpoints.
        preprocess: eval preprocessing of the backbone (`Preprocess.to_dict()`), kept in checkpoints.
    """

    def __init__(self, method: SSLMethod, config: dict, preprocess: dict):
        super().__init__()
        # the package of a pretraining run is its backbone (`backbone.pt`), with keys as timm names them
        self.save_hyperparameters(
            {"config": config, "classes": [], "preprocess": preprocess, "package_prefix": method.backbone_prefix}
        )
        self.model = method
        self.train_cfg = PretrainTrainConfig.model_validate(config["train"])
        self.setup_ema()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.eval_model().export_backbone()(images)

    def progress(self) -> float:
        return min(1.0, self.global_step / max(1, self.trainer.estimated_stepping_batches))

    def on_train_batch_start(self, batch, batch_idx):
        self.model.step_momentum(self.progress())

    def training_step(self, batch, batch_idx):
        views, _ = batch
        loss = self.model.loss(views, self.current_epoch, self.progress())
        self.log(
            "train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(views[0]), sync_dist=True
        )
        return loss

    def on_after_backward(self):
        self.model.after_backward(self.current_epoch)

    def build_optimizer(self):
        if self.train_cfg.optimizer != "lars":
            return None
        from lightly.utils.lars import LARS
        from timm.optim import param_groups_weight_decay

        cfg = self.train_cfg
        # biases and norms: no decay, no LARS scaling
        groups = param_groups_weight_decay(self.model, weight_decay=cfg.weight_decay)
        return LARS(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
