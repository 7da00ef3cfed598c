"""`optik test` for detectors: COCO mAP (boxes, and masks for mask models) with per-class AP.

The numbers are faster-coco-eval's COCOeval over the split's own COCO form, so they equal what
pycocotools / faster-coco-eval report when run directly on the same predictions.
"""

from __future__ import annotations

from pathlib import Path

from optik.config import parse_config
from optik.data.detection import ClassNames, DetectionSet, build_detect_data, read_split
from optik.errors import DataError
from optik.models.detect import has_masks


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


def evaluate_detector(package, data, split: str, batch_size: int = 8, device: str = "auto", precision: str = "32", mode: str = "auto"):
    """Detect objects in every image of the split; COCO metrics as `EvalResult.metrics`."""
    from optik.engine.evaluate import EvalResult
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
    metrics: dict = {"bbox": coco_metrics(truth, [{k: v for k, v in r.items() if k != "segmentation"} for r in results], "bbox")}
    if has_masks(package.config["model"]["name"]):
        metrics["segm"] = coco_metrics(truth, results, "segm")
    metrics.update({"images": len(items), "objects": test_set.num_objects, "unreadable": len(failures), "data": test_set.origin, "split": split})
    return EvalResult(metrics, package.classes, items, failures)
