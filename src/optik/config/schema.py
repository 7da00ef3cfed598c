"""The configuration schema: one pydantic model per task, values only, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "nadamw", "rmsprop", "lamb", "lars", "lion", "adan")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(Section):
    """Training-time augmentation (eval preprocessing is resize + center crop)."""

    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0, le=1, description="probability of a vertical flip")
    scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="RandomResizedCrop aspect range")
    randaugment: str | None = Field(None, description="timm RandAugment spec, e.g. rand-m9-mstd0.5")
    color_jitter: float = Field(0.0, ge=0, description="brightness/contrast/saturation jitter strength")

    @field_validator("scale", "ratio")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"expected 0 < low <= high, got {list(value)}")
        return value


class DataConfig(Section):
    format: Literal["folder", "list", "cifar10", "cifar100", "mnist", "fashion_mnist"] = "folder"
    root: Path | None = Field(None, description="dataset folder")
    train_list: Path | None = Field(None, description="list format: 'path label' lines for training")
    val_list: Path | None = None
    test_list: Path | None = None
    classes: list[str] | str | None = Field(None, description="class names, or a labels file")
    val_split: float = Field(0.2, gt=0, lt=1, description="share held out for val when there is no val folder")
    split_seed: int = 0
    verify: Literal["full", "header"] = Field("full", description="decode every image before training, or only read headers")
    skip_bad: bool = Field(False, description="leave unreadable images out (and report them) instead of failing")
    download: bool = Field(False, description="fetch cifar/mnist files when online")
    image_size: int = Field(224, ge=8, le=4096)
    crop_pct: float = Field(0.875, gt=0, le=1, description="eval: resize to image_size / crop_pct, then center crop")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(2, ge=0)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class ModelConfig(Section):
    name: str = Field("resnet18", description="timm architecture name, or path/to/file.py:factory")
    pretrained: bool = Field(False, description="fetch the architecture's published weights (online, timm cache)")
    weights: Path | None = Field(None, description="initialise from a local weights file")
    weights_prefix: str | None = Field(None, description="take only keys with this prefix and strip it")
    drop_rate: float = Field(0.0, ge=0, lt=1)
    drop_path_rate: float = Field(0.0, ge=0, lt=1)


class BaseTrainConfig(Section):
    """What every task's training shares: schedule, optimizer, precision, devices, checkpoints."""

    epochs: int = Field(10, ge=1)
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimizer steps (-1: no limit)")
    optimizer: str = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)
    min_lr: float = Field(0.0, ge=0)
    step_milestones: list[int] = Field(default_factory=list, description="step scheduler: epochs where lr *= gamma")
    gamma: float = Field(0.1, gt=0)
    ema: bool = Field(False, description="keep an exponential moving average of the weights; validate and export it")
    ema_decay: float = Field(0.9998, gt=0, lt=1)
    accumulate_grad_batches: int = Field(1, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    precision: Literal["32", "64", "bf16-mixed", "16-mixed", "bf16-true"] = "32"
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Union[int, str, list[int]] = "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    seed: int = 0
    deterministic: bool = False
    validation: bool = Field(True, description="validate during training (false: model.pt comes from the last epoch)")
    validate_every: int = Field(1, ge=1, description="validate every N epochs")
    checkpoint_every: int = Field(1, ge=1, description="save epoch-N.ckpt every N epochs")
    keep_checkpoints: int = Field(3, ge=-1, description="how many epoch-N.ckpt to keep (-1: all)")
    log_every_n_steps: int = Field(10, ge=1)

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value):
        return str(value) if isinstance(value, int) else value

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {value!r}; choose one of {', '.join(OPTIMIZERS)}")
        return value.lower()


class TrainConfig(BaseTrainConfig):
    """Classification training: adds label smoothing, mixup/cutmix and the accuracy monitors."""

    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup: float = Field(0.0, ge=0, description="mixup alpha (0: off)")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha (0: off)")
    monitor: Literal["val/acc1", "val/acc5", "val/mean_class_acc", "val/loss"] = "val/acc1"


class ClassifyConfig(Section):
    task: Literal["classify"] = "classify"
    work_dir: Path | None = Field(None, description="where checkpoints, logs and model.pt go")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _consistent(self) -> "ClassifyConfig":
        if (self.train.mixup > 0 or self.train.cutmix > 0) and self.data.batch_size % 2:
            raise ValueError(f"train.mixup/cutmix need an even data.batch_size, got {self.data.batch_size}")
        if self.data.format == "list" and self.data.train_list is None:
            raise ValueError("data.format 'list' needs data.train_list (a file of 'path label' lines)")
        return self


DETECT_FORMATS = ("coco", "voc", "yolo")


class DetectAugmentConfig(Section):
    """Training-time augmentation for detection; boxes and masks follow every geometric change."""

    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0, le=1, description="probability of a vertical flip")
    scale: tuple[float, float] = Field((1.0, 1.0), description="random rescale range before the model's own resize (1, 1: off)")
    photometric: bool = Field(False, description="random brightness/contrast/saturation/hue changes")

    @field_validator("scale")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError(f"expected 0 < low <= high, got {list(value)}")
        return value


class DetectDataConfig(Section):
    format: Literal["coco", "voc", "yolo"] = Field("coco", description="annotation format")
    root: Path | None = Field(None, description="dataset folder")
    train: Path | None = Field(None, description="train split: COCO JSON file, or VOC/YOLO folder (default: found under root)")
    val: Path | None = Field(None, description="val split, as train (default: found under root, else held out of train)")
    test: Path | None = Field(None, description="test split, as train")
    images: Path | None = Field(None, description="coco: folder the file_name entries are relative to (default: next to the JSON)")
    classes: list[str] | str | None = Field(None, description="class names, or a labels file (default: COCO categories / VOC names / YOLO data.yaml)")
    val_split: float = Field(0.2, gt=0, lt=1, description="share held out for val when there is no val split")
    split_seed: int = 0
    skip_bad: bool = Field(False, description="leave images that are missing or unreadable out (and report them) instead of failing")
    image_size: int = Field(512, ge=32, le=4096, description="the longer image side the detector sees (the model resizes)")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    batch_size: int = Field(4, ge=1)
    num_workers: int = Field(2, ge=0)
    augment: DetectAugmentConfig = Field(default_factory=DetectAugmentConfig)


class DetectModelConfig(Section):
    name: str = Field("fasterrcnn_mobilenet_v3_large_fpn", description="torchvision detector builder name")
    backbone: str | None = Field(None, description="a timm architecture as the backbone (with an FPN) instead of the builder's own")
    pretrained: bool = Field(False, description="fetch torchvision's COCO weights for the detector (online)")
    pretrained_backbone: bool = Field(False, description="fetch ImageNet weights for the backbone (online)")
    weights: Path | None = Field(None, description="initialise from a local weights file (full detector or backbone only)")
    weights_prefix: str | None = Field(None, description="take only keys with this prefix and strip it")
    trainable_backbone_layers: int | None = Field(None, ge=0, le=6, description="backbone stages trained (None: the builder's default)")
    score_threshold: float = Field(0.05, ge=0, le=1, description="detections scoring below this are dropped")
    nms_threshold: float = Field(0.5, gt=0, le=1, description="IoU above which overlapping boxes of a class are merged")
    detections_per_image: int = Field(100, ge=1)


class DetectTrainConfig(BaseTrainConfig):
    """Detection training: SGD with warmup by default, as torchvision's reference recipes."""

    optimizer: str = "sgd"
    lr: float = Field(0.01, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    grad_clip: float | None = Field(10.0, gt=0)
    monitor: Literal["val/map", "val/map_50", "val/map_75"] = "val/map"


class DetectConfig(Section):
    task: Literal["detect"] = "detect"
    work_dir: Path | None = Field(None, description="where checkpoints, logs and model.pt go")
    data: DetectDataConfig = Field(default_factory=DetectDataConfig)
    model: DetectModelConfig = Field(default_factory=DetectModelConfig)
    train: DetectTrainConfig = Field(default_factory=DetectTrainConfig)


TASK_SCHEMAS: dict[str, type[Section]] = {"classify": ClassifyConfig, "detect": DetectConfig}
