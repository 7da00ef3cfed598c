"""Image classification: a timm network (or a plug-in) over class folders or list files, trained with
cross-entropy, evaluated with top-k and per-class metrics, predicted as class scores."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from torch import nn

from optik.config import parse_config
from optik.data.balance import class_counts, loss_weights
from optik.data.classes import match_classes
from optik.data.folder import Sample, class_folders, has_split_folders, samples_from
from optik.data.listfile import read_list
from optik.data.loaders import BalancedSampler, ImageDataset, build_classify_data, make_loader, read_splits
from optik.data.transforms import Preprocess
from optik.errors import ConfigError, DataError, ModelError
from optik.metrics.evaluation import EvalResult
from optik.models.classify import build_classifier, check_architecture
from optik.models.package import ModelPackage, load_network
from optik.tasks.base import DEFAULT_RUN, Resume, RunOptions, Task, TrainingRun, onnx_metadata, say, untrained


class ClassifyTask(Task):
    name = "classify"

    def check_config(self, cfg) -> None:
        check_architecture(cfg.model.name)

    def prepare(self, cfg, resume: Resume) -> TrainingRun:
        """The classifier's module and loaders."""
        from optik.config.load import config_to_dict
        from optik.models.weights import load_weights
        from optik.tasks.training.classify import ClassifyModule

        data = build_classify_data(cfg.data, seed=cfg.train.seed)
        if len(data.classes) < 2:
            raise DataError(f"a classifier needs at least 2 classes, found {len(data.classes)}: {data.classes}")
        resume.check(cfg, data.classes)
        if cfg.train.validation:
            check_monitor(cfg.train.monitor, len(data.classes))
        log_data_summary(data)
        train_set = data.datasets["train"]
        counts = class_counts(train_set.labels, len(data.classes))
        weights = loss_weights(cfg.train.class_weights, counts)
        say(balance_summary(data.classes, counts, cfg.train.class_weights, weights, cfg.data.sampler))
        model = build_classifier(cfg.model, len(data.classes), cfg.data.image_size)
        if cfg.model.weights is not None and resume.path is None:
            for line in load_weights(model, cfg.model.weights, cfg.model.weights_prefix).lines():
                say(line)
        preprocess = Preprocess.from_data_config(cfg.data).with_tta(cfg.data.tta).to_dict()
        module = ClassifyModule(model, config_to_dict(cfg), data.classes, preprocess, class_weights=weights)
        workers = cfg.data.num_workers
        balanced = cfg.data.sampler == "balanced"
        # a last batch of one image breaks batch norm, and mixup needs full batches: drop the remainder
        train_loader = make_loader(
            train_set,
            cfg.data.batch_size,
            workers,
            shuffle_seed=cfg.train.seed,
            drop_last=len(train_set) > cfg.data.batch_size,
            start_epoch=resume.epochs_done,
            sampler=BalancedSampler(train_set.labels, cfg.train.seed, resume.epochs_done) if balanced else None,
        )
        val_loader = make_loader(data.datasets["val"], cfg.data.batch_size, workers) if cfg.train.validation else None
        return TrainingRun(module, train_loader, val_loader)

    def network(self, package: ModelPackage) -> nn.Module:
        config = parse_config(package.config)
        return load_network(
            build_classifier(untrained(config.model), len(package.classes), package.preprocess["image_size"]), package
        )

    def network_from_config(self, cfg, num_classes: int | None = None) -> nn.Module:
        classes = cfg.data.classes if isinstance(cfg.data.classes, list) else None
        n = num_classes or (len(classes) if classes else 1000)
        return build_classifier(untrained(cfg.model), n, cfg.data.image_size).eval()

    def with_tta(self, preprocess, tta, source):
        from optik.config.schema import TTA_CHOICES

        if tta is None:
            return preprocess
        if tta not in TTA_CHOICES:
            raise ConfigError(f"--tta must be one of {', '.join(TTA_CHOICES)}, got {tta!r}")
        return {**preprocess, "tta": tta}

    def predictor(self, package, source, run=DEFAULT_RUN):
        from optik.inference.predictor import Classifier

        return Classifier(
            self.network(package),
            package.classes,
            Preprocess.from_dict(package.preprocess),
            device=run.device,
            precision=run.precision,
            batch_size=run.batch_size or 32,
            mode=run.mode,
            expected_images=run.expected_images,
            backend=run.backend,
            calibration=run.calibration,
        )

    def exported_predictor(self, model, meta, batch_size=None, precision="32"):
        from optik.inference.predictor import Classifier
        from optik.inference.runtime import exported_network

        network, runtime = exported_network(model, meta, precision)
        return Classifier(
            network,
            meta["classes"],
            Preprocess.from_dict(meta["preprocess"]),
            batch_size=batch_size or 32,
            runtime=runtime,
        )

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
    ) -> EvalResult:
        if images is not None:
            raise ConfigError("--images is for detection sets; a classifier's DATA is class folders or a list file")
        # skip_bad changes nothing here: unreadable images are always reported, never scored
        return evaluate_classifier(package, data, split, run, predictor=predictor)

    def plot_evaluation(self, result, folder):
        """confusion_matrix.png."""
        from optik.metrics.plots import plot_confusion

        return [plot_confusion(result, folder)]

    def output_format(self, fmt=None, top_k=None, min_score=None, **detection_options):
        from optik.outputs.classification import ClassificationFormat

        if fmt not in (None, "json"):
            raise ConfigError(f"--format {fmt} is for detectors; this model is a classifier (its output is JSON)")
        return ClassificationFormat(top_k, min_score)

    def export_onnx(self, package, check_images=None, dynamic_batch=True):
        from optik.inference.onnx import classifier_export, export_errors

        if check_images is not None:
            raise ConfigError(
                "--check-images is for detectors; a classifier's export is checked on 16 generated inputs, logit by logit"
            )
        model = self.network(package)
        with export_errors():
            return classifier_export(model, package.preprocess, onnx_metadata(package), dynamic_batch)

    def export_openvino(self, package, calibration=None):
        from optik.inference.onnx import export_errors
        from optik.inference.openvino import classifier_ir
        from optik.inference.predictor import Classifier

        model = self.network(package)
        batches = None
        if calibration is not None:  # preprocessed as predictions are, by the predictor itself
            preprocess = Preprocess.from_dict(package.preprocess)
            batches = Classifier(model, package.classes, preprocess, device="cpu", mode="eager").calibration_batches(
                calibration
            )
        with export_errors():
            return classifier_ir(model, package.preprocess, onnx_metadata(package), batches)

    def feature_network(self, package, source):
        network = self.network(package)
        if not hasattr(network, "reset_classifier"):
            raise ModelError(
                f"{source}: a plug-in classifier has no known feature layer; probe its backbone.pt or a timm model"
            )
        network.reset_classifier(0)
        return network

    def labelled_data(self, cfg, source):
        return cfg.data

    def batch_model(self, package, source):
        from optik.inference.batch import BatchModel

        return BatchModel(self.network(package), Preprocess.from_dict(package.preprocess), classes=package.classes)

    def exported_batch_model(self, model, meta, precision="32"):
        from optik.inference.batch import BatchModel
        from optik.inference.runtime import exported_network

        network, runtime = exported_network(model, meta, precision)
        return BatchModel(network, Preprocess.from_dict(meta["preprocess"]), classes=meta["classes"], runtime=runtime)


def check_monitor(monitor: str, num_classes: int) -> None:
    """`train.monitor` must be a value validation logs for this many classes (top-5 needs more than 5)."""
    from optik.metrics.classification import top_k_accuracies

    logged = [accuracy.logged for accuracy in top_k_accuracies(num_classes)] + ["val/mean_class_acc", "val/loss"]
    if monitor not in logged:
        raise ConfigError(
            f"train.monitor is {monitor}, but with {num_classes} classes validation does not log it "
            f"(a top-k over k or fewer classes is always 1.0); choose one of {', '.join(logged)}"
        )


def log_data_summary(data) -> None:
    counts = ", ".join(f"{name} {len(ds)}" for name, ds in data.datasets.items())
    say(
        f"data: {len(data.classes)} classes; {counts} images"
        + (f"; {len(data.skipped)} unreadable image(s) left out" if data.skipped else "")
    )
    for path in data.skipped[:10]:
        say(f"  left out: {path}")
    val = data.datasets.get("val")
    if isinstance(val, ImageDataset) and len(val):
        missing = sorted(set(range(len(data.classes))) - {label for _, label in val.samples})
        if missing:
            names = ", ".join(data.classes[i] for i in missing)
            say(
                f"warning: val has no images of {names}: val/mean_class_acc averages the other "
                f"{len(data.classes) - len(missing)} classes, and nothing checks {names} during training"
            )


def balance_summary(
    classes: list[str], counts: list[int], setting: str | list[float], weights: list[float] | None, sampler: str
) -> str:
    """The run summary's line on class balance: "train images per class: cat 120, dog 15; loss weights: balanced
    (cat 0.562, dog 4.5); sampler: random"."""
    per_class = ", ".join(f"{name} {count}" for name, count in zip(classes, counts))
    if weights is None:
        weighting = "none"
    else:
        listed = ", ".join(f"{name} {w:.3g}" for name, w in zip(classes, weights))
        weighting = f"{'balanced' if setting == 'balanced' else 'as listed'} ({listed})"
    drawn = "balanced (each class equally often, with replacement)" if sampler == "balanced" else "random"
    return f"train images per class: {per_class}; loss weights: {weighting}; sampler: {drawn}"


def test_samples(
    package_config: dict, classes: list[str], data: str | Path | None, split: str
) -> tuple[list[Sample], str, str]:
    """Labelled samples to evaluate on, where they came from, and the split used (val when `split` is
    test and there is no test split).

    `data` may be a folder with `<split>/<class>/` or `<class>/` sub-folders, or a list file;
    without it, the run's own data config and split are used (the same seeded split as training).
    """
    if data is None:
        cfg = parse_config(package_config)
        if cfg.data.format not in ("folder", "list"):
            raise DataError(
                f"this run trained on {cfg.data.format}; give DATA (a folder of class sub-folders or a list file) to evaluate on"
            )
        data_cfg = cfg.data.model_copy(update={"classes": classes})
        splits = read_splits(data_cfg)
        used = "val" if split == "test" and splits.test is splits.val else split
        return splits.get(split), splits.origin[split], used
    data = Path(data)
    if data.is_file():
        base, origin = _list_base(package_config.get("data", {}), data)
        samples, _ = read_list(data, base, classes)
        return samples, origin, split
    if not data.is_dir():
        raise DataError(f"data not found: {data} (give a folder of class sub-folders or a list file)")
    used = split
    folder = data / split if has_split_folders(data) else data
    if split == "test" and not folder.is_dir() and (data / "val").is_dir():
        folder, used = data / "val", "val"  # as in training: without a test split, val serves as test
    if not folder.is_dir():
        raise DataError(
            f"{data} has no {split}/ folder; choose --split among {[p.name for p in data.iterdir() if p.is_dir()]}"
        )
    images = class_folders(folder)
    unknown = sorted(set(images) - set(classes))
    if unknown:
        match_classes(classes, "the model", sorted(images), f"the class folders of {folder}")
    return samples_from(images, classes), str(folder), used


def _list_base(data_config: dict, list_file: Path) -> tuple[Path, str]:
    """The folder a list file's paths are relative to, and how to name where the samples came from.

    A list is read relative to its own folder, as `optik data convert folder-to-list` writes it; only
    the run's own training lists are read relative to the run's `data.root`, as training read them.
    """
    root = data_config.get("root")
    if root and Path(root).is_dir():
        own = [data_config.get(key) for key in ("train_list", "val_list", "test_list")]
        for name in filter(None, own):
            given = Path(name) if Path(name).is_file() else Path(root) / name
            if given.is_file() and given.resolve() == list_file.resolve():
                return Path(root), f"{list_file} (paths relative to the run's data.root {root})"
    return list_file.parent, str(list_file)


def evaluate_classifier(
    package: ModelPackage,
    data: str | Path | None,
    split: str,
    run: RunOptions = DEFAULT_RUN,
    predictor=None,
) -> EvalResult:
    """Classify every image of the split (with `predictor`, else one made from the package); top-k,
    per-class and macro metrics, and the confusion matrix."""
    from optik.metrics.classification import classification_metrics  # torchmetrics: only when testing

    samples, origin, used = test_samples(package.config, package.classes, data, split)
    if not samples:
        raise DataError(f"no images to evaluate in {origin}")
    if predictor is None:
        predictor = CLASSIFY.predictor(package, origin, replace(run, expected_images=len(samples)))
    labels, probs, items, failures = [], [], [], []
    for (path, label), result in zip(samples, predictor.predict_stream(path for path, _ in samples)):
        if not result.ok:
            failures.append({"file": path, "error": result.reason})
            continue
        labels.append(label)
        probs.append(result.probs)
        items.append(
            {
                "file": path,
                "label": predictor.classes[label],
                "pred": result.label,
                "score": result.score,
                "probs": result.probs.tolist(),
            }
        )
    if not labels:
        raise DataError(f"none of the {len(samples)} images in {origin} could be read")
    metrics = classification_metrics(np.stack(probs), np.array(labels), predictor.classes)
    metrics.update({"images": len(labels), "unreadable": len(failures), "data": origin, "split": used})
    return EvalResult(metrics, predictor.classes, items, failures, task=CLASSIFY.name)


CLASSIFY = ClassifyTask()
