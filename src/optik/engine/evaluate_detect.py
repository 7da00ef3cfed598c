"""`optik test` for detectors: COCO mAP (boxes, and masks for mask models) with per-class AP.

The numbers are faster-coco-eval's COCOeval over the split's own COCO form, so they equal what
pycocotools / faster-coco-eval report when run directly on the same predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from optik.config import parse_config
from optik.data.detection import ClassNames, DetectionSet, build_detect_data, read_split
from optik.engine.evaluate import EvalResult
from optik.errors import DataError
from optik.models.detect import has_masks


@dataclass
class DetectionResult(EvalResult):
    """A detector's `EvalResult`, with its precision-recall curves per IoU type (`precision_curves`), for plots."""

    curves: dict = field(default_factory=dict)


def detect_test_set(package, data: str | Path | None, split: str) -> DetectionSet:
    """The labelled images to score: DATA (a COCO JSON, or a dataset folder in the run's format), or the run's own split."""
    from optik.data import coco, voc, yolo

    cfg = parse_config(package.config)
    names = ClassNames(package.classes, "the model", subset=True)
    if data is None:
        if cfg.data.root is None and cfg.data.train is None:
            raise DataError("this model's run config names no data; give DATA (a COCO JSON or a dataset folder)")
        _, sets = build_detect_data(cfg.data.model_copy(update={"classes": package.classes}), with_masks=False)
        chosen = split if split in sets else "val"
        return sets[chosen]
    data = Path(data)
    if data.is_file():
        if data.suffix.lower() != ".json":
            raise DataError(f"{data}: give a COCO JSON file or a dataset folder")
        return coco.read_coco(data, names)
    if not data.is_dir():
        raise DataError(f"data not found: {data} (give a COCO JSON file or a dataset folder)")
    module = {"coco": coco, "voc": voc, "yolo": yolo}[cfg.data.format]
    sources = module.find_splits(data)
    source = sources.get(split) or (sources.get("val") if split == "test" else None)
    if source is None and sources:
        raise DataError(f"{data} has no {split} split (found: {', '.join(sorted(sources))}); choose one with --split")
    if source is None:  # DATA is itself one split's folder
        source = coco.json_in(data) if cfg.data.format == "coco" else data
    return read_split(cfg.data.model_copy(update={"root": data}), source, names)


def evaluate_detector(package, data, split: str, batch_size: int = 8, device: str = "auto", precision: str = "32", mode: str = "auto", with_curves: bool = False):
    """Detect objects in every image of the split; COCO metrics as `metrics`, and with `with_curves`
    the precision-recall curves as `curves` (a second COCO evaluation: for plots only)."""
    from optik.inference.detector import Detector
    from optik.tasks.detect import coco_metrics, detection_records

    test_set = detect_test_set(package, data, split)
    if not len(test_set):
        raise DataError(f"no images to evaluate in {test_set.origin}")
    detector = Detector.from_package(package, device=device, precision=precision, batch_size=batch_size, mode=mode)
    records = test_set.records
    results, items, failures, failed_ids = [], [], [], set()
    for record, result in zip(records, detector.predict_stream(r.path for r in records)):
        if not result.ok:
            failures.append({"file": record.path, "error": result.reason})
            failed_ids.add(record.image_id)
            continue
        results.extend(detection_records(record.image_id, result))
        items.append({"file": record.path, "objects": [{"label": name, "score": float(score), "bbox": [float(v) for v in box]}
                                                       for name, score, box in zip(result.label_names(), result.scores, result.boxes)]})
    if not items:
        raise DataError(f"none of the {len(records)} images in {test_set.origin} could be read")
    truth = test_set.to_coco()
    if failed_ids:  # an unreadable image is reported, not scored as all misses
        truth["images"] = [image for image in truth["images"] if image["id"] not in failed_ids]
        truth["annotations"] = [a for a in truth["annotations"] if a["image_id"] not in failed_ids]
    scored = {"bbox": [{k: v for k, v in r.items() if k != "segmentation"} for r in results]}
    if has_masks(package.config["model"]["name"]):
        scored["segm"] = results
    metrics: dict = {iou_type: coco_metrics(truth, entries, iou_type) for iou_type, entries in scored.items()}
    curves = {iou_type: precision_curves(truth, entries, iou_type) for iou_type, entries in scored.items()} if with_curves else {}
    metrics.update({"images": len(items), "objects": test_set.num_objects, "unreadable": len(failures), "data": test_set.origin, "split": split})
    return DetectionResult(metrics, package.classes, items, failures, curves)


def precision_curves(ground_truth: dict, results: list[dict], iou_type: str = "bbox") -> dict:
    """Precision at COCO's 101 recall points, per class: at IoU 0.5 and averaged over IoU 0.5:0.95 (all areas, 100 detections).

    `{"recall": [101 values], "per_class": {name: {"iou50": [...], "iou50_95": [...]}}}`; the mean of a
    curve is that class's AP. Classes without ground truth are left out; no results give zero precision.
    """
    from faster_coco_eval import COCO, COCOeval_faster

    names = {c["id"]: c["name"] for c in ground_truth["categories"]}
    if not results:  # faster-coco-eval refuses an empty result list
        zeros = [0.0] * 101
        present = sorted({a["category_id"] for a in ground_truth["annotations"]})
        return {"recall": np.linspace(0, 1, 101).tolist(), "per_class": {names[c]: {"iou50": zeros, "iou50_95": zeros} for c in present}}
    gt = COCO(ground_truth)
    evaluator = COCOeval_faster(gt, gt.loadRes(results), iou_type, print_function=lambda *a, **k: None)
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [iou thresholds, recall points, classes]; -1: no ground truth
    at_50 = int(np.argmin(np.abs(np.asarray(evaluator.params.iouThrs) - 0.5)))
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        values = precision[:, :, k]
        if (values >= 0).all():
            per_class[names[cat_id]] = {"iou50": values[at_50].tolist(), "iou50_95": values.mean(axis=0).tolist()}
    return {"recall": [float(r) for r in evaluator.params.recThrs], "per_class": per_class}
