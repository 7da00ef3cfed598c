"""`optik probe`: how good are a backbone's frozen features? Weighted kNN and a linear probe on a
labelled set, with per-class accuracy and its mean (what small, imbalanced medical sets report).

kNN follows the protocol of InstDisc/DINO: cosine similarity of L2-normalised features, the k
nearest training images vote with weight exp(similarity / temperature). The linear probe is an
L2-regularised logistic regression (scikit-learn, L-BFGS) on standardised features.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from optik.data.folder import Sample
from optik.data.images import left_out_note
from optik.data.loaders import ImageDataset, drop_bad, make_loader, read_splits
from optik.data.transforms import Preprocess, eval_transform
from optik.errors import ConfigError, DataError, ModelError
from optik.files import write_atomic

PROBE_SPLITS = ("train", "test")


@dataclass
class ProbeScores:
    accuracy: float
    mean_class_accuracy: float
    per_class: dict[str, float]


@dataclass
class ProbeReport:
    model: str
    data: dict[str, str]  # split -> where its images came from
    images: dict[str, int]
    classes: list[str]
    feature_dim: int
    knn: ProbeScores
    linear: ProbeScores
    settings: dict = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # image -> why: the unreadable ones --skip-bad left out

    def to_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [
            f"model: {self.model} ({self.feature_dim} features)",
            f"data: train {self.images['train']} images ({self.data['train']}), test {self.images['test']} images ({self.data['test']})",
            f"{'':24s} {'kNN':>8s} {'linear':>8s}",
            f"{'accuracy':24s} {self.knn.accuracy:8.4f} {self.linear.accuracy:8.4f}",
            f"{'mean class accuracy':24s} {self.knn.mean_class_accuracy:8.4f} {self.linear.mean_class_accuracy:8.4f}",
        ]
        out += [
            f"  {name[:22]:22s} {self.knn.per_class[name]:8.4f} {self.linear.per_class[name]:8.4f}"
            for name in self.classes
        ]
        if self.settings.get("k", 0) > self.images["train"]:
            out.append(
                f"note: --k {self.settings['k']} is more than the {self.images['train']} train images: all of them vote"
            )
        if self.left_out:
            out.append(left_out_note(self.left_out))
        return out


def feature_extractor(model: str | Path, image_size: int | None = None) -> tuple[nn.Module, Preprocess, str]:
    """(pooled-feature network, its eval preprocessing, description) for a backbone.pt, model.pt or
    training checkpoint, or a timm architecture name (random init: the baseline a backbone must beat)."""
    from optik.models.package import load_package
    from optik.tasks import get_task

    path = Path(model)
    if path.suffix.lower() in (".onnx", ".xml") and path.exists():
        raise ConfigError(
            f"{path} is an exported model: it gives class scores, and optik probe measures a backbone's features; "
            "give the model.pt or backbone.pt it was exported from"
        )
    if path.exists():
        package = load_package(path)
        network = get_task(package.task).feature_network(package, str(model))
        preprocess = Preprocess.from_dict(package.preprocess)
        if image_size is not None:
            preprocess = replace(
                preprocess,
                image_size=image_size,
                resize_size=round(image_size * preprocess.resize_size / preprocess.image_size),
            )
        return network.eval(), preprocess, f"{path} ({package.config['model']['name']})"
    import timm

    if not timm.is_model(str(model)):
        raise ConfigError(f"MODEL {model!r} is neither a file nor a timm architecture name")
    size = image_size or 224
    network = timm.create_model(str(model), pretrained=False, num_classes=0)
    from optik.config.schema import IMAGENET_MEAN, IMAGENET_STD

    return (
        network.eval(),
        Preprocess(size, round(size / 0.875), "bilinear", IMAGENET_MEAN, IMAGENET_STD),
        f"{model} (random init)",
    )


def probe_samples(
    data: str | Path, skip_bad: bool = False
) -> tuple[dict[str, list[Sample]], dict[str, str], list[str], dict[str, str]]:
    """Train and test samples of a labelled set: a folder (`train/`, `val/`, `test/` of class folders,
    or class folders split 80/20) or a classify config (its data section: folders or list files);
    their origins, the class names, and the unreadable images left out.

    Without a test split, val is the test split. Only the images probed are checked (decoded, or with
    a config's `data.verify: header` their headers read); unreadable ones fail the probe, naming them,
    unless `skip_bad` (or the config's data.skip_bad) leaves them out."""
    from optik.config import load_config
    from optik.config.schema import DataConfig

    path = Path(data)
    if path.is_dir():
        data_cfg = DataConfig(root=path)
    elif path.is_file() and path.suffix in (".yaml", ".yml"):
        from optik.tasks import get_task

        cfg = load_config(path)
        data_cfg = get_task(cfg.task).labelled_data(cfg, str(path))
    else:
        raise DataError(f"data not found: {data} (give a folder of class sub-folders, or a classify config)")
    if data_cfg.format not in ("folder", "list"):
        raise DataError(f"optik probe reads folder and list datasets, not {data_cfg.format}")
    splits = read_splits(data_cfg)
    if splits.val_held_out and splits.origin["test"] != splits.origin["val"]:
        splits.train = splits.train + splits.val  # a real test split: the share held out for val goes back to train
    splits.val = []  # in train, the test split, or not probed
    left_out = drop_bad(splits, data_cfg.verify, data_cfg.skip_bad or skip_bad, hint="pass --skip-bad")
    return (
        {"train": splits.train, "test": splits.test},
        {"train": splits.origin["train"], "test": splits.origin["test"]},
        splits.classes,
        left_out,
    )


@torch.inference_mode()
def extract_features(
    network: nn.Module,
    samples: list[Sample],
    preprocess: Preprocess,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    dataset = ImageDataset(samples, eval_transform(preprocess), exif_orientation=preprocess.exif_orientation)
    loader = make_loader(dataset, batch_size, workers)
    network = network.to(device)
    features, labels = [], []
    for images, targets in loader:
        out = network(images.to(device))
        if out.ndim != 2:
            raise ModelError(f"the network gives {tuple(out.shape)} features per batch, not (N, C) pooled features")
        features.append(out.float().cpu())
        labels.append(targets)
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def knn_predict(
    train: np.ndarray,
    train_labels: np.ndarray,
    test: np.ndarray,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> np.ndarray:
    """Weighted kNN on cosine similarity (chunked, so big sets fit in memory)."""
    train_t = nn.functional.normalize(torch.from_numpy(train).float(), dim=1)
    labels = torch.from_numpy(train_labels).long()
    k = min(k, len(train_t))
    predictions = []
    for chunk in torch.from_numpy(test).float().split(1024):
        sims, index = (nn.functional.normalize(chunk, dim=1) @ train_t.T).topk(k, dim=1)
        votes = torch.zeros(len(chunk), num_classes).scatter_add_(1, labels[index], (sims / temperature).exp())
        predictions.append(votes.argmax(1))
    return torch.cat(predictions).numpy()


def linear_predict(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, c: float = 1.0) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classifier = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    classifier.fit(train, train_labels)
    return classifier.predict(test)


def scores(predicted: np.ndarray, truth: np.ndarray, classes: list[str]) -> ProbeScores:
    per_class = {
        name: float((predicted[truth == i] == i).mean()) if (truth == i).any() else float("nan")
        for i, name in enumerate(classes)
    }
    present = [v for v in per_class.values() if v == v]
    return ProbeScores(float((predicted == truth).mean()), float(np.mean(present)), per_class)


def probe(
    model: str | Path,
    data: str | Path,
    k: int = 20,
    temperature: float = 0.07,
    c: float = 1.0,
    image_size: int | None = None,
    batch_size: int = 64,
    workers: int = 2,
    device: str = "auto",
    network: nn.Module | None = None,
    preprocess: Preprocess | None = None,
    skip_bad: bool = False,
) -> ProbeReport:
    """kNN and linear-probe scores of the frozen features of `model` (or of `network` with `preprocess`) on
    `data`; `skip_bad` leaves unreadable images out (see `probe_samples`)."""
    from optik.inference.runtime import pick_device

    if k < 1 or temperature <= 0 or c <= 0:
        raise ConfigError("--k must be at least 1, --temperature and --c above 0")
    if network is None:
        network, preprocess, name = feature_extractor(model, image_size)
    else:
        name = str(model)
    samples, origin, classes, left_out = probe_samples(data, skip_bad)
    for split in PROBE_SPLITS:
        if not samples[split]:
            raise DataError(f"no {split} images in {origin[split]}")
    if len({label for _, label in samples["train"]}) < 2:
        raise DataError(
            f"the train split ({origin['train']}) has images of fewer than 2 classes; a probe needs at least 2"
        )
    chosen = pick_device(device)
    train, train_labels = extract_features(network, samples["train"], preprocess, batch_size, workers, chosen)
    test, test_labels = extract_features(network, samples["test"], preprocess, batch_size, workers, chosen)
    knn = knn_predict(train, train_labels, test, len(classes), k, temperature)
    linear = linear_predict(train, train_labels, test, c)
    return ProbeReport(
        name,
        origin,
        {s: len(samples[s]) for s in PROBE_SPLITS},
        classes,
        int(train.shape[1]),
        scores(knn, test_labels, classes),
        scores(linear, test_labels, classes),
        {"k": k, "temperature": temperature, "c": c, "image_size": preprocess.image_size},
        left_out,
    )


def write_report(report: ProbeReport, path: str | Path) -> Path:
    return write_atomic(path, json.dumps(report.to_dict(), indent=2, allow_nan=True))
