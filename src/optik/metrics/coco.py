"""COCO metrics from faster-coco-eval (the pycocotools algorithm, faster): result entries from
detector outputs, mAP with per-class AP, and precision-recall curves for plots.

The ground truth is a data set's own COCO form (`DetectionSet.to_coco()`, category id = class
index + 1, which is also the detector's label since torchvision keeps index 0 for the background),
so the numbers equal what pycocotools / faster-coco-eval report when run directly on the same
predictions. No torch or Lightning here: `optik test` and validation both call it.
"""

from __future__ import annotations

import numpy as np

# faster-coco-eval's stats order for bbox and segm
COCO_STATS = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)


def coco_entries(
    image_id: int, boxes: np.ndarray, scores: np.ndarray, category_ids: np.ndarray, masks: np.ndarray | None = None
) -> list[dict]:
    """COCO result entries of one image: bbox as xywh, and an RLE segmentation per binary (N, H, W) mask."""
    rles = None
    if masks is not None and len(boxes):
        from faster_coco_eval.core import mask as mask_util

        rles = mask_util.encode(np.asfortranarray(masks.astype(np.uint8).transpose(1, 2, 0)))
    entries = []
    for i, (box, score, category) in enumerate(zip(boxes, scores, category_ids)):
        x0, y0, x1, y1 = (float(v) for v in box)
        entry = {
            "image_id": int(image_id),
            "category_id": int(category),
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(score),
        }
        if rles is not None:
            counts = rles[i]["counts"]
            entry["segmentation"] = {
                "size": [int(v) for v in rles[i]["size"]],
                "counts": counts.decode() if isinstance(counts, bytes) else counts,
            }
        entries.append(entry)
    return entries


def detection_records(image_id: int, detection, mask_threshold: float = 0.5) -> list[dict]:
    """A `Detection` (0-based labels) as COCO result entries (category id = label + 1)."""
    masks = None if detection.masks is None else detection.masks >= mask_threshold
    return coco_entries(image_id, detection.boxes, detection.scores, detection.labels + 1, masks)


def coco_metrics(ground_truth: dict, results: list[dict], iou_type: str = "bbox") -> dict:
    """COCO mAP (and the other 11 summary numbers) plus per-class AP, for `bbox` or `segm`; the AP of a
    class without objects in the data is None (undefined, as COCO's -1), not 0.

    An empty result list scores 0 everywhere (faster-coco-eval refuses to load one).
    """
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    if not results:
        present = {a["category_id"] for a in ground_truth["annotations"]}
        per_class = {name: 0.0 if cat_id in present else None for cat_id, name in names.items()}
        return {**{key: 0.0 for key in COCO_STATS}, "per_class": per_class}
    evaluator = accumulated(ground_truth, results, iou_type)
    evaluator.summarize()
    metrics = {key: max(0.0, float(value)) for key, value in zip(COCO_STATS, evaluator.stats)}
    precision = evaluator.eval["precision"]  # [iou thresholds, recall points, classes, areas, max dets]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[names[cat_id]] = float(values.mean()) if values.size else None
    metrics["per_class"] = per_class
    return metrics


def precision_curves(ground_truth: dict, results: list[dict], iou_type: str = "bbox") -> dict:
    """Precision at COCO's 101 recall points, per class: at IoU 0.5 and averaged over IoU 0.5:0.95 (all areas, 100 detections).

    `{"recall": [101 values], "per_class": {name: {"iou50": [...], "iou50_95": [...]}}}`; the mean of a
    curve is that class's AP. Classes without ground truth are left out; no results give zero precision.
    """
    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    if not results:  # faster-coco-eval refuses an empty result list
        zeros = [0.0] * 101
        present = sorted({a["category_id"] for a in ground_truth["annotations"]})
        return {
            "recall": np.linspace(0, 1, 101).tolist(),
            "per_class": {names[c]: {"iou50": zeros, "iou50_95": zeros} for c in present},
        }
    evaluator = accumulated(ground_truth, results, iou_type)
    # [iou thresholds, recall points, classes]; -1: no ground truth
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    at_50 = int(np.argmin(np.abs(np.asarray(evaluator.params.iouThrs) - 0.5)))
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        if (values >= 0).all():
            per_class[names[cat_id]] = {"iou50": values[at_50].tolist(), "iou50_95": values.mean(axis=0).tolist()}
    return {"recall": [float(r) for r in evaluator.params.recThrs], "per_class": per_class}


def accumulated(ground_truth: dict, results: list[dict], iou_type: str):
    """faster-coco-eval's COCOeval over `results` (not empty), evaluated and accumulated."""
    from faster_coco_eval import COCO, COCOeval_faster

    gt = COCO(ground_truth)
    evaluator = COCOeval_faster(gt, gt.loadRes(results), iou_type, print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator
