"""Object detection: torchvision detectors over COCO, VOC or YOLO data, validated and tested with COCO
mAP (boxes, and masks for mask models), predicted as OPEX JSON or ROI CSV."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from optik.config import parse_config
from optik.errors import ConfigError, DataError
from optik.metrics.coco import coco_metrics, detection_records, precision_curves
from optik.metrics.evaluation import DetectionResult
from optik.models.classify import check_timm_name
from optik.models.detect import build_detector, detector_family, has_masks
from optik.models.package import ModelPackage, load_network
from optik.tasks.base import DEFAULT_RUN, Resume, RunOptions, Task, TrainingRun, onnx_metadata, say, untrained


class DetectTask(Task):
    name = "detect"

    def check_config(self, cfg) -> None:
        detector_family(cfg.model)
        if cfg.model.backbone:
            check_timm_name(cfg.model.backbone, key="model.backbone")

    def prepare(self, cfg, resume: Resume) -> TrainingRun:
        """The detector's module and loaders; the val split's COCO form is the validation ground truth."""
        from optik.config.load import config_to_dict
        from optik.data.detection import build_detect_data, detect_datasets, make_detect_loader
        from optik.models.detect import load_detector_weights
        from optik.tasks.training.detect import DetectModule

        with_masks = has_masks(cfg.model.name)
        classes, sets = build_detect_data(cfg.data, with_masks=with_masks)
        resume.check(cfg, classes)
        counts = ", ".join(f"{name} {len(part)} images ({part.num_objects} objects)" for name, part in sets.items())
        say(f"data: {len(classes)} classes {classes}; {counts}")
        for part in sets.values():
            for line in part.report:
                say(f"  {line}")
        model = build_detector(cfg.model, cfg.data, len(classes))
        if cfg.model.weights is not None and resume.path is None:
            for line in load_detector_weights(model, cfg.model.weights, cfg.model.weights_prefix).lines():
                say(line)
        preprocess = {
            "task": "detect",
            "image_size": cfg.data.image_size,
            "mean": list(cfg.data.mean),
            "std": list(cfg.data.std),
            "exif_orientation": cfg.data.exif_orientation,  # the frame of the boxes (see data.detection.load_sample)
        }
        truth = sets["val"].to_coco() if cfg.train.validation else None
        if truth is not None and cfg.train.precision not in ("32", "64"):
            # reduced precision changes a few scores, so the two numbers differ a little for that reason alone
            test_precision = {"bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "16"}[cfg.train.precision]
            say(
                f"val/map is computed at train.precision {cfg.train.precision}; `optik test` runs in fp32 unless "
                f"given --precision {test_precision}, which scores the val images as validation does"
            )
        module = DetectModule(model, config_to_dict(cfg), classes, preprocess, val_ground_truth=truth)
        datasets = detect_datasets(sets, cfg.data.augment, with_masks, seed=cfg.train.seed)
        size, workers = cfg.data.batch_size, cfg.data.num_workers
        train_loader = make_detect_loader(
            datasets["train"],
            size,
            workers,
            shuffle_seed=cfg.train.seed,
            drop_last=len(datasets["train"]) > size,
            start_epoch=resume.epochs_done,
        )
        val_loader = make_detect_loader(datasets["val"], size, workers) if cfg.train.validation else None
        return TrainingRun(module, train_loader, val_loader)

    def network(self, package: ModelPackage) -> nn.Module:
        config = parse_config(package.config)
        model_cfg = untrained_detector(config.model)
        return load_network(build_detector(model_cfg, config.data, len(package.classes)), package)

    def network_from_config(self, cfg, num_classes: int | None = None) -> nn.Module:
        classes = cfg.data.classes if isinstance(cfg.data.classes, list) else None
        n = num_classes or (len(classes) if classes else 91)
        return build_detector(untrained_detector(cfg.model), cfg.data, n).eval()

    def predictor(self, package, source, run=DEFAULT_RUN):
        from optik.inference.detector import Detector

        if (
            run.backend == "openvino"
            or run.mode == "openvino"
            or run.precision == "int8"
            or run.calibration is not None
        ):
            raise ConfigError(
                "OpenVINO and int8 run classifiers; a detector runs with PyTorch (32, bf16, or 16 on CUDA) or, "
                "exported by `optik export --format onnx`, with onnxruntime"
            )
        return Detector(
            self.network(package),
            package.classes,
            package.preprocess,
            device=run.device,
            precision=run.precision,
            batch_size=run.batch_size or 8,
            mode=run.mode,
        )

    def exported_predictor(self, model, meta, batch_size=None, precision="32"):
        from optik.inference.detector import Detector
        from optik.inference.runtime import exported_detector

        network, runtime = exported_detector(model, meta)
        return Detector(network, meta["classes"], meta["preprocess"], batch_size=batch_size or 8, runtime=runtime)

    def evaluate(
        self,
        package,
        source,
        data,
        split,
        run=DEFAULT_RUN,
        with_curves=False,
        images=None,
        skip_bad=False,
        predictor=None,
    ):
        if run.calibration is not None:
            raise ConfigError(
                "--calibration is for int8 classifiers; a detector runs with PyTorch (32, bf16, or 16 on CUDA)"
            )
        return evaluate_detector(
            package, data, split, run, with_curves=with_curves, images=images, skip_bad=skip_bad, predictor=predictor
        )

    def plot_evaluation(self, result, folder):
        """Per-class AP bars and precision-recall curves, for boxes (and masks); the result needs its curves."""
        from optik.metrics.plots import plot_detection

        if not result.curves:
            raise ValueError("evaluate with with_curves=True to plot a detector's evaluation")
        return plot_detection(result, folder)

    def output_format(self, fmt=None, top_k=None, min_score=None, **detection_options):
        from optik.outputs.detection import detection_format

        if top_k is not None:
            raise ConfigError(
                "--top-k applies to classifiers; for a detector use --score to keep the confident objects"
            )
        if fmt == "json":
            raise ConfigError(
                "--format json is for classifiers; a detector writes opex (<stem>.json) or roi (<stem>-rois.csv)"
            )
        return detection_format(fmt or "opex", min_score=min_score, **detection_options)

    def export_onnx(self, package, check_images=None, dynamic_batch=True):
        from optik.inference.onnx import detector_export, export_errors, read_check_images

        upright = package.preprocess.get("exif_orientation", True)
        pictures = read_check_images(Path(check_images), upright) if check_images is not None else None
        model = self.network(package)
        limits = {key: package.config["model"].get(key) for key in ("score_threshold", "detections_per_image")}
        with export_errors():
            return detector_export(model, package.preprocess, onnx_metadata(package), pictures, limits)


def untrained_detector(model_cfg):
    """The architecture only, backbone included: the weights come from the package."""
    return untrained(model_cfg).model_copy(update={"pretrained_backbone": False})


def detect_test_set(
    package: ModelPackage, data: str | Path | None, split: str, images: str | Path | None = None, skip_bad: bool = False
):
    """The labelled images to score, found as training finds them (see `build_detect_data`), and the split
    they are (val where test falls back to it).

    DATA: a COCO JSON; a dataset folder in the run's format, whose splits are found as `optik train`
    finds them (test falls back to val, and val without a val split is the share training held
    out); or a folder without splits, all of whose images are scored. Without DATA, the run's own
    split. `images` (--images) is where the images are (default: the run's data.images for its
    own data). `skip_bad` (--skip-bad), or the run's data.skip_bad, leaves bad images out. Sizes
    and boxes are read in the frame the detector decodes in (its package's exif_orientation).
    """
    from optik.data import coco
    from optik.data.detection import FORMATS, read_split
    from optik.data.detection_set import FLAG_HINTS, ClassNames

    cfg = parse_config(package.config)
    names = ClassNames(package.classes, "the model", subset=True)
    upright = package.preprocess.get("exif_orientation", True)
    data_cfg = cfg.data.model_copy(update={"skip_bad": cfg.data.skip_bad or skip_bad, "exif_orientation": upright})
    if images is not None:
        data_cfg = data_cfg.model_copy(update={"images": Path(images)})
    if data is None:
        if cfg.data.root is None and cfg.data.train is None:
            raise DataError("this model's run config names no data; give DATA (a COCO JSON or a dataset folder)")
        return _split_as_trained(data_cfg, split, names)
    data = Path(data)
    if data.is_file():
        if data.suffix.lower() != ".json":
            raise DataError(f"{data}: give a COCO JSON file or a dataset folder")
        return coco.read_coco(
            data, names, images=images, skip_bad=data_cfg.skip_bad, hints=FLAG_HINTS, exif_orientation=upright
        ), split
    if not data.is_dir():
        raise DataError(f"data not found: {data} (give a COCO JSON file or a dataset folder)")
    local = data_cfg.model_copy(update={"root": data, "train": None, "val": None, "test": None, "images": images})
    sources = FORMATS[cfg.data.format].find_splits(data)
    # DATA is one set, not split: the folder itself, or its one COCO file, is what training would call train
    if not sources or (set(sources) == {"train"} and sources["train"] in (data, *data.glob("*.json"))):
        source = coco.json_in(data) if cfg.data.format == "coco" else data
        try:
            return read_split(local, source, names, FLAG_HINTS), split
        except DataError as exc:
            found = sorted(data.glob("*.json"))
            if cfg.data.format == "coco" or len(found) != 1:
                raise
            # a model trained on VOC or YOLO, scored on a COCO export (any format's names match by class)
            raise DataError(
                f"{exc}; {data} holds one COCO file: give it as DATA (optik test MODEL {found[0]})"
            ) from None
    return _split_as_trained(local, split, names)


def _split_as_trained(data_cfg, split: str, names):
    """The split of a data config as training made it (read alone when it is on disk, else held out of
    train), and its name: val for test when there is no test split."""
    from optik.data.detection import build_detect_data, read_split, split_sources
    from optik.data.detection_set import FLAG_HINTS

    sources = split_sources(data_cfg)
    chosen = "val" if split == "test" and "test" not in sources else split
    if chosen in sources and (chosen != "train" or "val" in sources):
        return read_split(data_cfg, sources[chosen], names, FLAG_HINTS), chosen
    _, sets = build_detect_data(data_cfg, names=names, hints=FLAG_HINTS)
    return sets[chosen], chosen


def evaluate_detector(
    package: ModelPackage,
    data,
    split: str,
    run: RunOptions = DEFAULT_RUN,
    with_curves: bool = False,
    images: str | Path | None = None,
    skip_bad: bool = False,
    predictor=None,
) -> DetectionResult:
    """Detect objects in every image of the split (with `predictor`, else one made from the package as `run`
    says); COCO metrics as `metrics`, and with `with_curves`
    the precision-recall curves as `curves` (a second COCO evaluation: for plots only). Images
    left out by `skip_bad` are reported as unreadable, as those that fail to decode are."""
    from optik.data.detection import no_images_left
    from optik.data.detection_set import FLAG_HINTS

    test_set, used = detect_test_set(package, data, split, images, skip_bad)
    if not len(test_set):
        raise DataError(no_images_left(test_set, FLAG_HINTS, "images to evaluate"))
    detector = predictor
    if detector is None:
        detector = DETECT.predictor(package, test_set.origin, run)
    records = test_set.records
    results, items, failed_ids = [], [], set()
    failures = [{"file": path, "error": reason} for path, reason in test_set.left_out.items()]
    for record, result in zip(records, detector.predict_stream(r.path for r in records)):
        if not result.ok:
            failures.append({"file": record.path, "error": result.reason})
            failed_ids.add(record.image_id)
            continue
        results.extend(detection_records(record.image_id, result))
        items.append(
            {
                "file": record.path,
                "objects": [
                    {"label": name, "score": float(score), "bbox": [float(v) for v in box]}
                    for name, score, box in zip(result.label_names(), result.scores, result.boxes)
                ],
            }
        )
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
    curves = (
        {iou_type: precision_curves(truth, entries, iou_type) for iou_type, entries in scored.items()}
        if with_curves
        else {}
    )
    metrics.update(
        {
            "images": len(items),
            "objects": test_set.num_objects,
            "unreadable": len(failures),
            "data": test_set.origin,
            "split": used,
        }
    )
    return DetectionResult(metrics, package.classes, items, failures, curves=curves, task=DETECT.name)


DETECT = DetectTask()
