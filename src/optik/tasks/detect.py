"""Object detection as a LightningModule (torchvision detectors), and COCO mAP for validation and tests.

COCO metrics come from faster-coco-eval (the pycocotools algorithm, faster): the ground truth is
the data's own COCO form (`DetectionSet.to_coco()`, category id = class index + 1, which is also
the detector's label since torchvision keeps index 0 for the background).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch import nn

from optik.config.schema import DetectTrainConfig
from optik.models.detect import drop_background, has_masks
from optik.tasks.common import TrainingModule

# faster-coco-eval's stats order for bbox and segm
COCO_STATS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")


def as_inputs(images) -> list[torch.Tensor]:
    """uint8 (3, H, W) images (tv_tensors or plain) as the float [0, 1] tensors detectors take."""
    return [image.as_subclass(torch.Tensor).float().div_(255) if image.dtype == torch.uint8 else image.as_subclass(torch.Tensor) for image in images]


def as_targets(targets: list[dict], with_masks: bool) -> list[dict]:
    """Data targets (0-based labels) as torchvision's training targets (1-based labels, plain tensors)."""
    out = []
    for target in targets:
        item = {"boxes": target["boxes"].as_subclass(torch.Tensor).float(), "labels": target["labels"] + 1}
        if with_masks:
            item["masks"] = target["masks"].as_subclass(torch.Tensor)
        out.append(item)
    return out


def coco_entries(image_id: int, boxes: np.ndarray, scores: np.ndarray, category_ids: np.ndarray, masks: np.ndarray | None = None) -> list[dict]:
    """COCO result entries of one image: bbox as xywh, and an RLE segmentation per binary (N, H, W) mask."""
    rles = None
    if masks is not None and len(boxes):
        from faster_coco_eval.core import mask as mask_util

        rles = mask_util.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    entries = []
    for i, (box, score, category) in enumerate(zip(boxes, scores, category_ids)):
        x0, y0, x1, y1 = (float(v) for v in box)
        entry = {"image_id": int(image_id), "category_id": int(category), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)}
        if rles is not None:
            counts = rles[i]["counts"]
            entry["segmentation"] = {"size": [int(v) for v in rles[i]["size"]], "counts": counts.decode() if isinstance(counts, bytes) else counts}
        entries.append(entry)
    return entries


def coco_records(image_id: int, output: dict, mask_threshold: float = 0.5) -> list[dict]:
    """A torchvision detector output (labels = category ids) as COCO result entries."""
    masks = (output["masks"][:, 0] >= mask_threshold).cpu().numpy() if "masks" in output else None
    return coco_entries(image_id, output["boxes"].detach().float().cpu().numpy(), output["scores"].detach().float().cpu().numpy(), output["labels"].cpu().numpy(), masks)


def detection_records(image_id: int, detection, mask_threshold: float = 0.5) -> list[dict]:
    """A `Detection` (0-based labels) as COCO result entries (category id = label + 1)."""
    masks = None if detection.masks is None else detection.masks >= mask_threshold
    return coco_entries(image_id, detection.boxes, detection.scores, detection.labels + 1, masks)


def coco_metrics(ground_truth: dict, results: list[dict], iou_type: str = "bbox") -> dict:
    """COCO mAP (and the other 11 summary numbers) plus per-class AP, for `bbox` or `segm`.

    An empty result list scores 0 everywhere (faster-coco-eval refuses to load one).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    if not results:
        return {**{key: 0.0 for key in COCO_STATS}, "per_class": {name: 0.0 for name in names.values()}}
    gt = COCO(ground_truth)
    evaluator = COCOeval_faster(gt, gt.loadRes(results), iou_type, print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    metrics = {key: max(0.0, float(value)) for key, value in zip(COCO_STATS, evaluator.stats)}
    precision = evaluator.eval["precision"]  # [iou thresholds, recall points, classes, areas, max dets]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[names[cat_id]] = float(values.mean()) if values.size else 0.0
    metrics["per_class"] = per_class
    return metrics


def gather_results(module: L.LightningModule, records: list[dict]) -> list[dict]:
    """Every rank's COCO results (validation runs sharded under DDP)."""
    if module.trainer is None or module.trainer.world_size == 1:
        return records
    import torch.distributed as dist

    everything: list = [None] * dist.get_world_size()
    dist.all_gather_object(everything, records)
    return [record for part in everything for record in part]


class DetectModule(TrainingModule):
    """Trains a torchvision detector on (images, targets) batches; validates with COCO mAP.

    Args:
        model: a torchvision detector with `len(classes) + 1` outputs.
        config: the resolved run config (plain dict), kept in checkpoints.
        classes: class names, index = label.
        preprocess: eval preprocessing (`{"task": "detect", "image_size", "mean", "std"}`).
        val_ground_truth: the validation split as a COCO dict (not stored in checkpoints).
    """

    def __init__(self, model: nn.Module, config: dict, classes: list[str], preprocess: dict, val_ground_truth: dict | None = None):
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
        outputs = self.eval_model()(as_inputs(images))
        for target, output in zip(targets, outputs):
            records = coco_records(int(target["image_id"]), drop_background(output))
            self._results["bbox"].extend({k: v for k, v in r.items() if k != "segmentation"} for r in records)
            if self.with_masks:
                self._results["segm"].extend(records)

    def on_validation_epoch_end(self):
        results, self._results = self._results, {"bbox": [], "segm": []}
        if self.val_ground_truth is None or self.trainer.sanity_checking:
            return
        for iou_type in ("bbox", "segm") if self.with_masks else ("bbox",):
            gathered = gather_results(self, results[iou_type])
            metrics = coco_metrics(self.val_ground_truth, gathered, iou_type) if self.trainer.is_global_zero else {key: 0.0 for key in COCO_STATS}
            prefix = "val/" if iou_type == "bbox" else "val/segm_"
            for key in ("map", "map_50", "map_75"):
                value = torch.tensor(metrics[key], device=self.device)
                self.log(f"{prefix}{key}", value, prog_bar=key == "map_50" and iou_type == "bbox", sync_dist=True, reduce_fx="max")
