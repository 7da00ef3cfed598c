"""What a task is: the one object that knows how a run of its kind is assembled, what its model package
holds, and how that package predicts, is evaluated, is probed and is exported.

`Task` says what every task answers; a task that cannot do something (a pretrained backbone has no
classes to predict) refuses with a message that says what to do instead. The engine, the tools and
the CLI ask the task of a config or a package (`optik.tasks.get_task`) and never its name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optik.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from torch import nn
    from torch.utils.data import DataLoader

    from optik.config.load import AnyConfig
    from optik.metrics.evaluation import EvalResult
    from optik.models.package import ModelPackage


def say(message: str) -> None:
    """Print once per run: under torchrun every process assembles the run, the first one reports."""
    from lightning.pytorch.utilities import rank_zero_only

    rank_zero_only(print)(message)


@dataclass(frozen=True)
class RunOptions:
    """How a model package runs (`optik.inference.runtime` decides the rest): the device, the precision,
    the batch size (None: the task's default), the PyTorch form or engine (`mode`, `backend`), the images
    int8 is calibrated on, and how many images are expected (what `auto` weighs set-up against)."""

    device: str = "auto"
    precision: str = "32"
    batch_size: int | None = None
    mode: str = "auto"
    backend: str = "auto"
    calibration: str | Path | None = None
    expected_images: int | None = None


DEFAULT_RUN = RunOptions()  # frozen: one default for every signature


@dataclass
class Resume:
    """The checkpoint a run continues from (none: a new run), its epochs done and its classes."""

    path: Path | None = None
    epochs_done: int = 0
    classes: list[str] = field(default_factory=list)

    def check(self, cfg: AnyConfig, data_classes: list[str]) -> None:
        """The data must have the checkpoint's classes, and epochs must be left to train."""
        if self.path is None:
            return
        if self.classes != data_classes:
            raise ConfigError(
                f"cannot resume from {self.path}: it was trained on classes {self.classes}, the data now has {data_classes}; "
                "fix data.root/data.classes, or start a new run with model.weights to fine-tune"
            )
        if self.epochs_done >= cfg.train.epochs:
            raise ConfigError(
                f"{self.path} has already trained {self.epochs_done} epochs (train.epochs is {cfg.train.epochs}); "
                f"to train longer, resume with --set train.epochs={self.epochs_done + 10} (for example)"
            )


@dataclass
class TrainingRun:
    """What `optik train` fits: the task's LightningModule and its loaders (no validation: None)."""

    module: Any
    train_loader: DataLoader
    val_loader: DataLoader | None


class Task:
    """The base of the three tasks; each answers for its own kind of run and model package."""

    name: str
    package_file = "model.pt"  # what a run writes next to its checkpoints
    package_label = "model package"

    def check_config(self, cfg: AnyConfig) -> None:
        """What of a config can be checked before any data is read (the model's name), so that a
        mistake there does not wait for the data scan."""
        raise NotImplementedError

    def prepare(self, cfg: AnyConfig, resume: Resume) -> TrainingRun:
        """Data, model and LightningModule of a training run (the engine builds the Trainer)."""
        raise NotImplementedError

    def network(self, package: ModelPackage) -> nn.Module:
        """The package's network, weights loaded, in eval mode."""
        raise NotImplementedError

    def network_from_config(self, cfg: AnyConfig, num_classes: int | None = None) -> nn.Module:
        """The untrained network a config describes (for `optik flops`), in eval mode."""
        raise NotImplementedError

    def check_predicts(self, source: str) -> None:
        """Refuses, before any work, a model that has nothing to predict."""

    def with_tta(self, preprocess: dict, tta: str | None, source: str) -> dict:
        """The package's preprocessing with the test-time augmentation `tta` (`--tta`; None: as
        recorded). Only classifiers average their class probabilities over flipped views."""
        if tta in (None, "none"):
            return preprocess
        raise ConfigError(
            f"--tta {tta}: test-time augmentation averages a classifier's class probabilities over flipped views, "
            f"and {source} is a {self.name} model; drop --tta"
        )

    def predictor(self, package: ModelPackage, source: str, run: RunOptions = DEFAULT_RUN):
        """The `Classifier` (or `Detector`) that runs the package as `run` says."""
        raise ModelError(f"{source} is a {self.name} model; it does not predict images")

    def exported_predictor(self, model: str | bytes, meta: dict, batch_size: int | None = None, precision: str = "32"):
        """The predictor over an exported model (ONNX: onnxruntime; an .xml: OpenVINO; on the CPU)."""
        raise ModelError(f"{self.name} models are not exported")

    def evaluate(
        self,
        package: ModelPackage,
        source: str,
        data: str | Path | None,
        split: str,
        run: RunOptions = DEFAULT_RUN,
        with_curves: bool = False,
        images: str | Path | None = None,
        skip_bad: bool = False,
        predictor=None,
    ) -> EvalResult:
        """Predict every image of a labelled split and score the predictions (`optik test`).

        `images`: where a detection set's images are (--images); `skip_bad`: leave images that are
        missing or unreadable out, reported, instead of stopping (--skip-bad); `predictor`: what runs
        the model (an exported file's), else one is made from the package as `run` says.
        """
        raise ModelError(f"{source} is a {self.name} model; optik test evaluates classifiers and detectors")

    def plot_evaluation(self, result: EvalResult, folder: Path) -> list[Path]:
        """The PNGs of an evaluation of this task's model (`optik test --plots`, `optik plot`), written to `folder`."""
        raise ModelError(f"{self.name} models are not evaluated, so they have no evaluation plots")

    def output_format(
        self, fmt: str | None = None, top_k: int | None = None, min_score: float | None = None, **detection_options
    ):
        """How `optik predict` and the services write this task's results, refusing options that do not apply."""
        raise ConfigError(f"{self.name} models have no prediction output")

    def export_onnx(self, package: ModelPackage, check_images: Path | None = None, dynamic_batch: bool = True):
        """The package as checked ONNX bytes with its metadata (`optik export`, `--backend onnxruntime`)."""
        raise ConfigError(f"ONNX export covers classifiers and detectors; this is a {self.name} model")

    def export_openvino(self, package: ModelPackage, calibration: Path | None = None):
        """The package as a checked OpenVINO graph with its metadata (`optik export --format openvino`;
        int8 when `calibration` images are given)."""
        raise ConfigError(f"OpenVINO export covers classifiers; this is a {self.name} model (detectors: --format onnx)")

    def feature_network(self, package: ModelPackage, source: str) -> nn.Module:
        """The network without its head: pooled features for `optik probe`."""
        raise ConfigError(
            "optik probe measures classification features; give a backbone.pt, a classifier's model.pt or a timm name"
        )

    def labelled_data(self, cfg: AnyConfig, source: str):
        """The labelled set a config names, for `optik probe` (its data section)."""
        raise ConfigError(
            f"{source} is a {self.name} config; give a classify config (its data section names the labelled set) or a folder"
        )

    def batch_model(self, package: ModelPackage, source: str):
        """The `BatchModel` of `optik batch-predict` (one row of class scores per image)."""
        raise ConfigError(
            f"{source} is a {self.name} model; batch-predict writes one row of classes per image, for classifiers"
        )

    def exported_batch_model(self, model: str, meta: dict, precision: str = "32"):
        """`batch_model` for an exported ONNX or OpenVINO file."""
        raise ConfigError(
            f"{model} is a {self.name} model; batch-predict writes one row of classes per image, for classifiers"
        )


def untrained(model_cfg):
    """A model config that builds the architecture only: its weights come from the package."""
    return model_cfg.model_copy(update={"pretrained": False, "weights": None})


def onnx_metadata(package: ModelPackage) -> dict:
    """What an exported ONNX or OpenVINO model carries, so that it is a MODEL for every command: its
    task, classes, preprocessing and the run's config (`optik test` finds the run's data by it)."""
    return {
        "task": package.task,
        "classes": package.classes,
        "preprocess": package.preprocess,
        "model": package.config["model"]["name"],
        "config": package.config,
    }
