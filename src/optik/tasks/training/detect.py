"""Object detection as a LightningModule (torchvision detectors), validated with COCO mAP (`optik.metrics.coco`).

Validation predicts and scores as `optik test` does (images run by size, boxes clipped, the same
COCO evaluator), so the best val/map of a run is what `optik test` reports on the same images.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from optik.config.schema import DetectTrainConfig
from optik.inference.detector import as_detection, run_by_size
from optik.metrics.coco import COCO_STATS, coco_metrics, detection_records
from optik.models.detect import has_masks
from optik.tasks.training.base import TrainingModule


def as_inputs(images) -> list[torch.Tensor]:
    """uint8 (3, H, W) images (tv_tensors or plain) as the float [0, 1] tensors detectors take."""
    return [
        image.as_subclass(torch.Tensor).float().div_(255)
        if image.dtype == torch.uint8
        else image.as_subclass(torch.Tensor)
        for image in images
    ]


def as_targets(targets: list[dict], with_masks: bool) -> list[dict]:
    """Data targets (0-based labels) as torchvision's training targets (1-based labels, plain tensors)."""
    out = []
    for target in targets:
        item = {"boxes": target["boxes"].as_subclass(torch.Tensor).float(), "labels": target["labels"] + 1}
        if with_masks:
            item["masks"] = target["masks"].as_subclass(torch.Tensor)
        out.append(item)
    return out


def gather_results(module: L.LightningModule, records: list[dict]) -> list[dict]:
    """Every rank's COCO results (validation runs sharded under DDP), merged by `merge_shards`."""
    if module.trainer is None or module.trainer.world_size == 1:
        return records
    import torch.distributed as dist

    everything: list = [None] * dist.get_world_size()
    dist.all_gather_object(everything, records)
    return merge_shards(everything)


def merge_shards(shards: list[list[dict]]) -> list[dict]:
    """The COCO results of all ranks, each image's from the first rank that has it.

    Lightning's distributed sampler pads the shards to one length with repeated images; scored
    twice, an image's detections would count twice against its ground truth.
    """
    merged, seen = [], set()
    for shard in shards:
        merged.extend(record for record in shard if record["image_id"] not in seen)
        seen |= {record["image_id"] for record in shard}
    return merged


class DetectModule(TrainingModule):
    """Trains a torchvision detector on (images, targets) batches; validates with COCO mAP.

    Args:
        model: a torchvision detector with `len(classes) + 1` outputs.
        config: the resolved run config (plain dict), kept in checkpoints.
        classes: class names, index = label.
        preprocess: eval preprocessing (`{"task": "detect", "image_size", "mean", "std"}`).
        val_ground_truth: the validation split as a COCO dict (not stored in checkpoints).
    """

    def __init__(
        self, model: nn.Module, config: dict, classes: list[str], preprocess: dict, val_ground_truth: dict | None = None
    ):
        super().__init__()
        self.save_hyperparameters({"config": config, "classes": classes, "preprocess": preprocess})
        self.model = model
        self.train_cfg = DetectTrainConfig.model_validate(config["train"])
        self.with_masks = has_masks(config["model"]["name"])
        self.setup_ema()
        self.val_ground_truth = val_ground_truth
        self._results: dict[str, list[dict]] = {"bbox": [], "segm": []}

    def forward(self, images):
        return self.eval_model()(as_inputs(images))

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.model(as_inputs(images), as_targets(targets, self.with_masks))
        loss = sum(losses.values())
        n = len(images)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        for name, value in losses.items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, targets = batch
        outputs = run_by_size(self.eval_model(), as_inputs(images))
        for image, target, output in zip(images, targets, outputs):
            image_id = int(target["image_id"])
            records = detection_records(image_id, as_detection(output, str(image_id), self.hparams["classes"], image))
            self._results["bbox"].extend({k: v for k, v in r.items() if k != "segmentation"} for r in records)
            if self.with_masks:
                self._results["segm"].extend(records)

    def on_validation_epoch_end(self):
        results, self._results = self._results, {"bbox": [], "segm": []}
        if self.val_ground_truth is None or self.trainer.sanity_checking:
            return
        for iou_type in ("bbox", "segm") if self.with_masks else ("bbox",):
            gathered = gather_results(self, results[iou_type])
            metrics = (
                coco_metrics(self.val_ground_truth, gathered, iou_type)
                if self.trainer.is_global_zero
                else {key: 0.0 for key in COCO_STATS}
            )
            prefix = "val/" if iou_type == "bbox" else "val/segm_"
            for key in ("map", "map_50", "map_75"):
                value = torch.tensor(metrics[key], device=self.device)
                self.log(
                    f"{prefix}{key}",
                    value,
                    prog_bar=key == "map_50" and iou_type == "bbox",
                    sync_dist=True,
                    reduce_fx="max",
                )
