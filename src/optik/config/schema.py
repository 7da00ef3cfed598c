"""The configuration schema: one pydantic model per task, values only, unknown keys rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Test-time augmentation of a classifier: the views averaged besides the original image. Each name
# adds one view: "hflip,vflip" is three (original, mirrored left-right, flipped upside down).
TestTimeAugment = Literal["none", "hflip", "vflip", "hflip,vflip"]
TTA_CHOICES: tuple[str, ...] = get_args(TestTimeAugment)

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "nadamw", "rmsprop", "lamb", "lars", "lion", "adan")


NUMBER_TYPES = (int, float, int | None, float | None)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, value, info):
        """true/false for a number is refused, not read as 1/0: `vflip: true` would flip every image, always."""
        field = cls.model_fields.get(info.field_name) if info.field_name else None
        if isinstance(value, bool) and field is not None and field.annotation in NUMBER_TYPES:
            probability = (field.description or "").startswith("probability")
            raise ValueError(
                f"a number is wanted, not {str(value).lower()}"
                + ("; this is a probability from 0 to 1, e.g. 0.5 (0 turns it off)" if probability else "")
            )
        return value


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
    format: Literal["folder", "list", "cifar10", "cifar100", "mnist", "fashion_mnist"] = Field(
        "folder",
        description="folder: a sub-folder per class; list: files of 'path label' lines; cifar10, cifar100, mnist, fashion_mnist: the standard files under root",
    )
    root: Path | None = Field(None, description="dataset folder")
    train_list: Path | None = Field(None, description="list format: 'path label' lines for training")
    val_list: Path | None = Field(
        None, description="list format: 'path label' lines for validation (default: held out of train_list)"
    )
    test_list: Path | None = Field(
        None, description="list format: 'path label' lines for testing (default: the val split)"
    )
    classes: list[str] | str | None = Field(None, description="class names, or a labels file")
    val_split: float = Field(0.2, gt=0, lt=1, description="share held out for val when there is no val folder")
    split_seed: int = Field(0, description="seed of the held-out val split")
    verify: Literal["full", "header"] = Field(
        "full", description="decode every image before training, or only read headers"
    )
    skip_bad: bool = Field(False, description="leave unreadable images out (and report them) instead of failing")
    exif_orientation: bool = Field(
        True, description="turn photos upright as their EXIF orientation says (recorded in model.pt for prediction)"
    )
    download: bool = Field(False, description="fetch cifar/mnist files when online")
    image_size: int = Field(224, ge=8, le=4096, description="training crop and eval center-crop size, in pixels")
    crop_pct: float = Field(0.875, gt=0, le=1, description="eval: resize to image_size / crop_pct, then center crop")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field(
        "bilinear", description="interpolation of the resize"
    )
    mean: tuple[float, float, float] = Field(
        IMAGENET_MEAN, description="per-channel (RGB) mean subtracted from images scaled to [0, 1]"
    )
    std: tuple[float, float, float] = Field(
        IMAGENET_STD, description="per-channel (RGB) standard deviation images are divided by"
    )
    tta: TestTimeAugment = Field(
        "none",
        description="test-time augmentation recorded in model.pt for test/predict/services (softmax averaged over "
        "the original and each flip named; --tta overrides); validation during training does not use it",
    )
    batch_size: int = Field(32, ge=1, description="images per batch, per device")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes that decode images")
    sampler: Literal["random", "balanced"] = Field(
        "random",
        description="balanced: draw training images with replacement so every class is seen equally often (epoch length: the train set's size)",
    )
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    # data key -> where its value came from, or how the pretrained model's differs (config/pretrained.py)
    _notes: dict[str, str] = PrivateAttr(default_factory=dict)


class ModelConfig(Section):
    name: str = Field("resnet18", description="timm architecture name, or path/to/file.py:factory")
    pretrained: bool = Field(False, description="fetch the architecture's published weights (online, timm cache)")
    weights: Path | None = Field(None, description="initialise from a local weights file")
    weights_prefix: str | None = Field(None, description="take only keys with this prefix and strip it")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier")
    drop_path_rate: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="stochastic depth: rate at which residual blocks are skipped (timm models that have it)",
    )


DEVICES_EXPECTED = (
    "expected a positive whole number of devices, a list of device ids such as [0, 1], or 'auto' (or -1) for all"
)


def parse_devices(value):
    """`train.devices` in the forms Lightning takes, written as a user would (`--devices 2`, `0,1`, `-1`).

    -1, Lightning's "every device", becomes 'auto', which also means every GPU (and one process on the CPU,
    where Lightning refuses -1). Zero, negative, fractional or other values are refused here, before any data is read.
    """
    if isinstance(value, str):
        text = value.strip().lower().strip("[]")
        if text in ("auto", "-1"):
            return "auto"
        parts = [part.strip() for part in text.split(",")]
        if not all(part.isdigit() for part in parts if part) or not any(parts):
            raise ValueError(f"{DEVICES_EXPECTED}; got {value!r}")
        value = [int(part) for part in parts if part] if "," in text else int(text)
    if isinstance(value, bool) or not isinstance(value, (int, list, tuple)):
        raise ValueError(f"{DEVICES_EXPECTED}; got {value!r}")
    if isinstance(value, int):
        if value == -1:
            return "auto"
        if value < 1:
            why = (
                "0 devices would train on nothing"
                if value == 0
                else "of negative numbers only -1 (every device) has a meaning"
            )
            raise ValueError(f"{DEVICES_EXPECTED}; got {value} ({why})")
        return value
    ids = list(value)
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids) or len(set(ids)) < len(ids):
        raise ValueError(f"a list of device ids holds distinct whole numbers from 0, such as [0, 1]; got {ids}")
    return ids


class EarlyStoppingConfig(Section):
    """Stop when `train.monitor` has not improved by `min_delta` for `patience` validations."""

    patience: int = Field(ge=1, description="validations without improvement before training stops")
    min_delta: float = Field(0.0, ge=0, description="smallest change of the monitor that counts as an improvement")


class BaseTrainConfig(Section):
    """What every task's training shares: schedule, optimizer, precision, devices, checkpoints."""

    epochs: int = Field(10, ge=1, description="training epochs")
    max_steps: int = Field(-1, ge=-1, description="stop after this many optimizer steps (-1: no limit)")
    optimizer: str = Field("adamw", description="sgd, momentum, adam, adamw, nadamw, rmsprop, lamb, lars, lion or adan")
    lr: float = Field(1e-3, gt=0, description="peak learning rate, reached at the end of the warm-up")
    weight_decay: float = Field(0.05, ge=0, description="weight decay of the optimizer")
    momentum: float = Field(
        0.9, ge=0, lt=1, description="momentum of the optimizers that have one (sgd, momentum, rmsprop, lars)"
    )
    scheduler: Literal["cosine", "step", "constant"] = Field(
        "cosine",
        description="learning-rate schedule after the warm-up: cosine down to min_lr, step (times gamma at each of step_milestones), constant",
    )
    warmup_epochs: float = Field(0.0, ge=0, description="epochs of linear warm-up to lr (fractions allowed)")
    min_lr: float = Field(0.0, ge=0, description="cosine scheduler: the learning rate at the end")
    step_milestones: list[int] = Field(default_factory=list, description="step scheduler: epochs where lr *= gamma")
    gamma: float = Field(0.1, gt=0, description="step scheduler: factor at each milestone")
    ema: bool = Field(False, description="keep an exponential moving average of the weights; validate and export it")
    ema_decay: float = Field(0.9998, gt=0, lt=1, description="decay of the weights' moving average (train.ema)")
    accumulate_grad_batches: int = Field(1, ge=1, description="batches whose gradients add up to one optimizer step")
    grad_clip: float | None = Field(None, gt=0, description="clip the gradient norm to this (null: off)")
    precision: Literal["32", "64", "bf16-mixed", "16-mixed", "bf16-true"] = Field(
        "32", description="Lightning's training precision: 32, bf16-mixed (CPUs and recent GPUs), 16-mixed (CUDA)"
    )
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field(
        "auto", description="device kind, passed to Lightning (auto: a GPU when there is one)"
    )
    devices: int | str | list[int] = Field(
        "auto",
        description="how many devices (GPUs, or CPU processes), a list of GPU ids, or 'auto' (also -1): all of them",
    )
    num_nodes: int = Field(1, ge=1, description="machines in a DDP run, each running one process per device")
    strategy: str = Field("auto", description="Lightning's training strategy, e.g. ddp (auto: Lightning picks)")
    sync_batchnorm: bool = Field(
        False,
        description="under DDP on GPUs, batch norm statistics over every process's images (torch's SyncBatchNorm)",
    )
    seed: int = Field(0, description="seed of the weights' initialisation, the data order and augmentation")
    deterministic: bool = Field(False, description="use deterministic algorithms only (reproducible, slower)")
    validation: bool = Field(True, description="validate during training (false: model.pt comes from the last epoch)")
    validate_every: int = Field(1, ge=1, description="validate every N epochs")
    checkpoint_every: int = Field(1, ge=1, description="save epoch-N.ckpt every N epochs")
    keep_checkpoints: int = Field(3, ge=-1, description="how many epoch-N.ckpt to keep (-1: all)")
    log_every_n_steps: int = Field(
        10, ge=1, description="log metrics, and without a progress bar print a progress line, every N steps"
    )
    early_stopping: EarlyStoppingConfig | None = Field(
        None, description="stop when train.monitor stops improving, e.g. {patience: 5, min_delta: 0.001} (null: off)"
    )

    @model_validator(mode="after")
    def _early_stopping_needs_validation(self):
        if self.early_stopping is not None and not self.validation:
            raise ValueError(
                "train.early_stopping watches a validation metric, but train.validation is off; "
                "turn validation on or remove train.early_stopping"
            )
        return self

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, value):
        return str(value) if isinstance(value, int) else value

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, value):
        return parse_devices(value)

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value.lower() not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {value!r}; choose one of {', '.join(OPTIMIZERS)}")
        return value.lower()


class TrainConfig(BaseTrainConfig):
    """Classification training: adds label smoothing, mixup/cutmix and the accuracy monitors."""

    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the classification loss")
    mixup: float = Field(0.0, ge=0, description="mixup alpha (0: off)")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha (0: off)")
    monitor: Literal["val/acc1", "val/acc5", "val/mean_class_acc", "val/loss"] = Field(
        "val/acc1", description="selects best.ckpt; val/acc5 is logged only with more than 5 classes"
    )
    class_weights: Literal["none", "balanced"] | list[float] = Field(
        "none",
        description="weights of the classes in the training loss: balanced = n_images / (n_classes * class count), or one weight per class",
    )

    @field_validator("class_weights")
    @classmethod
    def _positive_weights(cls, value):
        if isinstance(value, list) and (not value or any(w < 0 for w in value) or not any(w > 0 for w in value)):
            raise ValueError(f"class weights must be zero or more, at least one above zero; got {value}")
        return value


class ClassifyConfig(Section):
    task: Literal["classify"] = Field(
        "classify", description="the task this config is for (classify, detect or pretrain)"
    )
    work_dir: Path | None = Field(None, description="where checkpoints, logs and model.pt go")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _consistent(self) -> ClassifyConfig:
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
    scale: tuple[float, float] = Field(
        (1.0, 1.0), description="random rescale range before the model's own resize (1, 1: off)"
    )
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
    train: Path | None = Field(
        None, description="train split: COCO JSON file, or VOC/YOLO folder (default: found under root)"
    )
    val: Path | None = Field(
        None, description="val split, as train (default: found under root, else held out of train)"
    )
    test: Path | None = Field(None, description="test split, as train")
    images: Path | None = Field(
        None,
        description="folder the images are in: coco file_names are relative to it (default: next to the JSON); voc looks there first, yolo takes the images of its label files from there",
    )
    classes: list[str] | str | None = Field(
        None, description="class names, or a labels file (default: COCO categories / VOC names / YOLO data.yaml)"
    )
    val_split: float = Field(0.2, gt=0, lt=1, description="share held out for val when there is no val split")
    split_seed: int = Field(0, description="seed of the held-out val split")
    skip_bad: bool = Field(
        False, description="leave images that are missing or unreadable out (and report them) instead of failing"
    )
    exif_orientation: bool = Field(
        True,
        description="turn photos upright as their EXIF orientation says; boxes and image sizes are in the upright picture (false: the stored pixels); recorded in model.pt",
    )
    image_size: int = Field(
        512, ge=32, le=4096, description="the longer image side the detector sees (the model resizes)"
    )
    mean: tuple[float, float, float] = Field(
        IMAGENET_MEAN, description="per-channel (RGB) mean subtracted from images scaled to [0, 1]"
    )
    std: tuple[float, float, float] = Field(
        IMAGENET_STD, description="per-channel (RGB) standard deviation images are divided by"
    )
    batch_size: int = Field(4, ge=1, description="images per batch, per device")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes that decode images")
    augment: DetectAugmentConfig = Field(default_factory=DetectAugmentConfig)


class DetectModelConfig(Section):
    name: str = Field("fasterrcnn_mobilenet_v3_large_fpn", description="torchvision detector builder name")
    backbone: str | None = Field(
        None, description="a timm architecture as the backbone (with an FPN) instead of the builder's own"
    )
    pretrained: bool = Field(False, description="fetch torchvision's COCO weights for the detector (online)")
    pretrained_backbone: bool = Field(False, description="fetch ImageNet weights for the backbone (online)")
    weights: Path | None = Field(
        None, description="initialise from a local weights file (full detector or backbone only)"
    )
    weights_prefix: str | None = Field(None, description="take only keys with this prefix and strip it")
    trainable_backbone_layers: int | None = Field(
        None, ge=0, le=6, description="backbone stages trained (None: the builder's default)"
    )
    score_threshold: float = Field(0.05, ge=0, le=1, description="detections scoring below this are dropped")
    nms_threshold: float = Field(0.5, gt=0, le=1, description="IoU above which overlapping boxes of a class are merged")
    detections_per_image: int = Field(100, ge=1, description="most objects kept per image")


class DetectTrainConfig(BaseTrainConfig):
    """Detection training: SGD with warmup by default, as torchvision's reference recipes."""

    optimizer: str = Field("sgd", description="sgd, momentum, adam, adamw, nadamw, rmsprop, lamb, lars, lion or adan")
    lr: float = Field(0.01, gt=0, description="peak learning rate, reached at the end of the warm-up")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay of the optimizer")
    warmup_epochs: float = Field(1.0, ge=0, description="epochs of linear warm-up to lr (fractions allowed)")
    grad_clip: float | None = Field(10.0, gt=0, description="clip the gradient norm to this (null: off)")
    monitor: Literal["val/map", "val/map_50", "val/map_75"] = Field("val/map", description="selects best.ckpt")


class DetectConfig(Section):
    task: Literal["detect"] = Field("detect", description="the task this config is for (classify, detect or pretrain)")
    work_dir: Path | None = Field(None, description="where checkpoints, logs and model.pt go")
    data: DetectDataConfig = Field(default_factory=DetectDataConfig)
    model: DetectModelConfig = Field(default_factory=DetectModelConfig)
    train: DetectTrainConfig = Field(default_factory=DetectTrainConfig)


SSL_METHODS = ("simclr", "moco_v2", "moco_v3", "byol", "simsiam", "swav", "barlow_twins", "dino")


class PretrainDataConfig(Section):
    """Unlabelled images: every image below `root`, or the paths of list files (labels ignored)."""

    format: Literal["folder", "list"] = Field(
        "folder", description="folder: every image below root (sub-folders too); list: the paths of list files"
    )
    root: Path | None = Field(None, description="image folder (list format: the folder paths are relative to)")
    lists: list[Path] = Field(
        default_factory=list, description="list format: files of 'path' or 'path label' lines (labels are ignored)"
    )
    verify: Literal["full", "header"] = Field(
        "full", description="decode every image before training, or only read headers"
    )
    skip_bad: bool = Field(False, description="leave unreadable images out (and report them) instead of failing")
    exif_orientation: bool = Field(
        True, description="turn photos upright as their EXIF orientation says (recorded in backbone.pt)"
    )
    image_size: int = Field(224, ge=8, le=4096, description="size of the global views (and of the probe's input)")
    crop_pct: float = Field(
        0.875, gt=0, le=1, description="backbone.pt's eval preprocessing: resize to image_size / crop_pct, center crop"
    )
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field(
        "bilinear", description="interpolation of the resize"
    )
    mean: tuple[float, float, float] = Field(
        IMAGENET_MEAN, description="per-channel (RGB) mean subtracted from images scaled to [0, 1]"
    )
    std: tuple[float, float, float] = Field(
        IMAGENET_STD, description="per-channel (RGB) standard deviation images are divided by"
    )
    batch_size: int = Field(64, ge=2, description="images per batch, per device")
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes that decode images")
    # data key -> where its value came from, or how the pretrained model's differs (config/pretrained.py)
    _notes: dict[str, str] = PrivateAttr(default_factory=dict)


class ViewsConfig(Section):
    """The multi-view augmentation (lightly's transform of the method); unset values keep the method's defaults."""

    min_scale: float | None = Field(None, gt=0, le=1, description="smallest crop area of a global view")
    local_views: int | None = Field(None, ge=0, description="swav/dino: number of small crops (default 6)")
    local_size: int | None = Field(None, ge=8, description="swav/dino: small crop size (default 3/7 of image_size)")
    hflip: float | None = Field(None, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float | None = Field(None, ge=0, le=1, description="probability of a vertical flip")
    rotate: float | None = Field(
        None, ge=0, le=1, description="probability of a random rotation (by rotate_degrees, else by 90 degrees)"
    )
    rotate_degrees: float | None = Field(None, gt=0, le=180, description="rotation range in degrees of views.rotate")
    color_jitter: float | None = Field(None, ge=0, le=1, description="probability of colour jitter")
    jitter_strength: float | None = Field(None, ge=0, description="strength of the colour jitter")
    grayscale: float | None = Field(None, ge=0, le=1, description="probability of turning a view gray")
    blur: float | None = Field(None, ge=0, le=1, description="probability of a Gaussian blur (every view)")


class SSLConfig(Section):
    """The self-supervised method and its heads; dimensions default to the method's paper (scaled for CPUs where noted)."""

    method: Literal[SSL_METHODS] = Field("simclr", description="the self-supervised method")  # type: ignore[valid-type]
    hidden_dim: int = Field(2048, ge=8, description="hidden width of the projection (and prediction) heads")
    out_dim: int | None = Field(
        None,
        ge=8,
        description="projection size (default: 128 simclr/moco_v2/swav, 256 moco_v3/byol, 2048 simsiam/barlow_twins/dino)",
    )
    temperature: float | None = Field(
        None, gt=0, description="contrastive temperature (default: 0.5 simclr, 0.2 moco, 0.1 swav)"
    )
    memory_bank_size: int = Field(4096, ge=0, description="moco_v2: negatives kept from earlier batches")
    momentum: float = Field(
        0.99, ge=0, lt=1, description="moco/byol/dino: start of the momentum schedule, which rises to 1 by a cosine"
    )
    prototypes: int = Field(512, ge=2, description="swav: number of prototypes")
    freeze_prototypes_steps: int = Field(0, ge=0, description="swav: steps before the prototypes train")
    bottleneck_dim: int = Field(
        64,
        ge=8,
        description="dino: width before the last (normalised) layer; narrow keeps the teacher sharp at the start",
    )
    teacher_temp: float = Field(
        0.02,
        gt=0,
        description="dino: teacher temperature after warm-up (paper: 0.04; 0.02 sharpens more, against a uniform teacher on small sets)",
    )
    warmup_teacher_temp_epochs: int = Field(
        0, ge=0, description="dino: epochs the teacher temperature rises from 0.04 (or teacher_temp, if lower)"
    )
    center_momentum: float = Field(
        0.99,
        ge=0,
        lt=1,
        description="dino: moving average of the teacher's centre (paper: 0.9 on ImageNet; 0.99 on small sets, where 0.9 turns the teacher uniform)",
    )
    head_batch_norm: bool | None = Field(
        None,
        description="dino: batch norm in the head's hidden layers (default: on when the backbone has batch norm, as ResNets; off otherwise, as ViTs)",
    )
    freeze_last_layer_epochs: int = Field(1, ge=0, description="dino: epochs the last head layer is frozen")
    lambda_param: float = Field(5e-3, gt=0, description="barlow_twins: weight of the redundancy term")
    views: ViewsConfig = Field(default_factory=ViewsConfig)


class PretrainModelConfig(Section):
    name: str = Field("resnet18", description="timm architecture of the backbone")
    pretrained: bool = Field(False, description="start from the architecture's published weights (online, timm cache)")
    weights: Path | None = Field(None, description="start from a local weights file")
    weights_prefix: str | None = Field(None, description="take only keys with this prefix and strip it")


class PretrainTrainConfig(BaseTrainConfig):
    """Pretraining: LARS-ready, no validation; the run's loss picks nothing, backbone.pt comes from the last epoch."""

    optimizer: str = Field("lars", description="sgd, momentum, adam, adamw, nadamw, rmsprop, lamb, lars, lion or adan")
    lr: float = Field(0.3, gt=0, description="peak learning rate, reached at the end of the warm-up")
    weight_decay: float = Field(1e-6, ge=0, description="weight decay of the optimizer")
    warmup_epochs: float = Field(1.0, ge=0, description="epochs of linear warm-up to lr (fractions allowed)")
    validation: bool = Field(False, description="pretraining has no labelled validation; see `optik probe`")
    monitor: Literal["train/loss"] = Field(
        "train/loss", description="the logged loss; backbone.pt comes from the last epoch whatever its value"
    )


class PretrainConfig(Section):
    task: Literal["pretrain"] = Field(
        "pretrain", description="the task this config is for (classify, detect or pretrain)"
    )
    work_dir: Path | None = Field(None, description="where checkpoints, logs and backbone.pt go")
    data: PretrainDataConfig = Field(default_factory=PretrainDataConfig)
    model: PretrainModelConfig = Field(default_factory=PretrainModelConfig)
    ssl: SSLConfig = Field(default_factory=SSLConfig)
    train: PretrainTrainConfig = Field(default_factory=PretrainTrainConfig)

    @model_validator(mode="after")
    def _consistent(self) -> PretrainConfig:
        if self.data.format == "list" and not self.data.lists:
            raise ValueError("data.format 'list' needs data.lists (files of image paths)")
        if self.train.ema:
            raise ValueError(
                "train.ema is not used in pretraining: moco/byol/dino keep their own momentum copy (ssl.momentum)"
            )
        if self.train.validation:
            raise ValueError(
                "train.validation must be false for pretraining (there are no labels); measure the backbone with `optik probe`"
            )
        return self


TASK_SCHEMAS: dict[str, type[Section]] = {
    "classify": ClassifyConfig,
    "detect": DetectConfig,
    "pretrain": PretrainConfig,
}
