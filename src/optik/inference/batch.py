"""Batch prediction over a folder: any model, a sharded parallel loader, top-K rows per image.

Used by `optik batch-predict` (ObjectNet-style jobs of tens of thousands of images): images are
found recursively and keyed by base name; each process of a `torchrun` job takes a disjoint
shard; loader workers decode and resize (uint8, 4x less to pass between processes) while the
model runs, and the batch is normalised in one step, exactly as ToTensor + Normalize would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from optik.config.schema import IMAGENET_MEAN, IMAGENET_STD
from optik.data.decode import image_size, open_image
from optik.data.folder import find_images
from optik.data.transforms import INTERPOLATIONS, Preprocess, ResizeCenterCrop
from optik.errors import ConfigError, DataError, ImageDecodeError, ModelError
from optik.inference.runtime import Runtime, RuntimeBackend, calibration_files

log = logging.getLogger(__name__)

# Resize(224), CenterCrop(224), ImageNet mean/std: what plug-in models get unless --transform says otherwise.
PLUGIN_PREPROCESS = Preprocess(
    image_size=224, resize_size=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD
)


def find_flat_images(root: str | Path) -> list[Path]:
    """Images below `root`, recursively, in sorted order; folders are ignored, so base names must be unique."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    files = find_images(root)
    if not files:
        raise DataError(f"no images found below {root}")
    seen: dict[str, Path] = {}
    for path in files:
        if path.name in seen:
            raise DataError(
                f"two images share the base name {path.name!r} ({seen[path.name]} and {path}); the output is keyed by base name, so rename one"
            )
        seen[path.name] = path
    return sorted(files, key=lambda p: p.name)


@dataclass
class BatchModel:
    """A network and how its inputs are prepared: a Preprocess, or a user transform (PIL -> tensor);
    `runtime`: the network already is an engine's (an exported file), run as it is."""

    model: nn.Module
    preprocess: Preprocess | None
    transform: Callable | None = None
    classes: list[str] | None = None
    runtime: Runtime | None = None


def plugin_model(model_class: str, checkpoint: str | None) -> BatchModel:
    """A plug-in class or factory (`file.py:Name`, called with no arguments) with `checkpoint` weights."""
    from optik.models.classify import load_factory
    from optik.models.weights import extract_state_dict, read_checkpoint

    if checkpoint is None:
        raise ConfigError("--model-class needs --checkpoint WEIGHTS")
    network = load_factory(model_class)()
    if not isinstance(network, nn.Module):
        raise ModelError(f"{model_class} made a {type(network).__name__}, expected a torch.nn.Module")
    _load_state(network, extract_state_dict(read_checkpoint(checkpoint)), checkpoint)
    return BatchModel(network.eval(), PLUGIN_PREPROCESS)


def timm_model(name: str, checkpoint: str | None) -> BatchModel:
    """A timm architecture with `checkpoint` weights, prepared as timm's data config for it says."""
    import timm
    from timm.data import resolve_data_config

    from optik.models.weights import extract_state_dict, read_checkpoint

    if not timm.is_model(name):
        raise ConfigError(f"MODEL {name!r} is neither a file nor a timm architecture")
    if checkpoint is None:
        raise ConfigError("a timm name needs its weights: --checkpoint FILE (nothing is downloaded)")
    state = extract_state_dict(read_checkpoint(checkpoint))
    head = [
        v for k, v in state.items() if k.endswith(("fc.weight", "head.weight", "classifier.weight", "head.fc.weight"))
    ]
    network = timm.create_model(name, num_classes=head[-1].shape[0] if head else 1000)
    _load_state(network, state, checkpoint)
    cfg = resolve_data_config({}, model=network)
    size = cfg["input_size"][-1]
    preprocess = Preprocess(
        size,
        int(size / cfg["crop_pct"]),
        cfg["interpolation"] if cfg["interpolation"] in INTERPOLATIONS else "bilinear",
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
    )
    return BatchModel(network.eval(), preprocess)


def _load_state(network: nn.Module, state: dict, source: str) -> None:
    """All of the model's weights, from a state_dict saved bare or under a wrapper prefix (`module.` of DataParallel/DDP)."""
    from optik.models.weights import select_prefix

    _, state = select_prefix(state, network.state_dict(), None)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        details = " ".join(line.strip() for line in str(exc).splitlines()[1:])[:400]
        raise ModelError(f"the weights in {source} do not fit the model: {details}") from None


def load_transform(spec: str) -> Callable:
    """`file.py:function`: the function returns a transform (PIL image -> float tensor), or is one."""
    from optik.models.classify import load_factory

    function = load_factory(spec)
    import inspect

    try:
        takes_image = any(p.default is p.empty for p in inspect.signature(function).parameters.values())
    except (TypeError, ValueError):
        takes_image = False
    if takes_image:  # the function is the transform itself
        return function
    transform = function()
    if not callable(transform):
        raise ConfigError(f"{spec} returned {type(transform).__name__}, expected a transform (PIL image -> tensor)")
    return transform


class FlatImages(Dataset):
    """(index, picture, error) per file: uint8 (3, H, W) resized and cropped, or the user transform's tensor."""

    def __init__(self, files: list[Path], preprocess: Preprocess | None, transform: Callable | None, border: int = 0):
        self.files, self.preprocess, self.transform, self.border = files, preprocess, transform, border
        if transform is None:
            self.resize = ResizeCenterCrop(preprocess.resize_size, preprocess.image_size, preprocess.interpolation)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        path = self.files[index]
        try:
            upright = self.preprocess.exif_orientation if self.preprocess is not None else True
            image = open_image(path, draft_size=self._draft_size(path), exif_orientation=upright)
        except ImageDecodeError as exc:
            return index, None, exc.reason
        if self.border:
            if min(image.size) <= 2 * self.border:
                return (
                    index,
                    None,
                    f"image of {image.width}x{image.height} is too small for --border-crop {self.border}",
                )
            image = image.crop((self.border, self.border, image.width - self.border, image.height - self.border))
        if self.transform is None:
            return index, torch.from_numpy(np.asarray(self.resize(image), dtype=np.uint8).copy()).permute(2, 0, 1), None
        try:
            return index, self.transform(image), None
        except Exception as exc:  # noqa: BLE001 - a user transform failing on one image is that image's error
            return index, None, f"--transform failed ({type(exc).__name__}: {exc})"

    def _draft_size(self, path: Path) -> tuple[int, int] | None:
        """JPEG decoding at a reduced scale only for images at least 4x the size needed, so the decoded
        picture still has twice the resolution the resize keeps (the result stays the same in practice)."""
        if self.transform is not None or self.border or path.suffix.lower() not in (".jpg", ".jpeg"):
            return None  # a border is given in full-resolution pixels
        need = 2 * self.preprocess.resize_size
        try:
            return (need, need) if min(image_size(path)) >= 2 * need else None
        except ImageDecodeError:  # open_image reports what is wrong with the file
            return None


def collate(items):
    indices = [i for i, picture, _ in items if picture is not None]
    pictures = [picture for _, picture, _ in items if picture is not None]
    failures = [(i, error) for i, picture, error in items if picture is None]
    if len({tuple(p.shape) for p in pictures}) > 1:
        raise ConfigError(
            f"the transform gave pictures of different shapes ({', '.join(sorted({str(tuple(p.shape)) for p in pictures}))}); end it with a fixed-size crop"
        )
    return indices, (torch.stack(pictures) if pictures else None), failures


def normalise(batch: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> what ToTensor + Normalize give, computed once for the whole batch (on its device)."""
    mean = torch.tensor(mean, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=batch.device).view(1, 3, 1, 1)
    return batch.float().div_(255).sub_(mean).div_(std)


def calibration_batches(bundle: BatchModel, folder: str | Path, batch_size: int) -> list[torch.Tensor]:
    """`--calibration DIR`'s images (see `runtime.calibration_files`) prepared as the job prepares its own."""
    dataset = FlatImages(calibration_files(folder), bundle.preprocess, bundle.transform)
    pictures = []
    for index in range(len(dataset)):
        _, picture, error = dataset[index]
        if picture is None:
            raise DataError(f"--calibration: {dataset.files[index]}: {error}")
        pictures.append(picture)
    batches = [torch.stack(pictures[i : i + batch_size]) for i in range(0, len(pictures), batch_size)]
    if bundle.transform is None:
        batches = [normalise(batch, bundle.preprocess.mean, bundle.preprocess.std) for batch in batches]
    return batches


@dataclass
class Prediction:
    index: int
    ids: list[int]
    scores: list[float]


def predict_folder(
    bundle: BatchModel,
    files: list[Path],
    backend: RuntimeBackend,
    batch_size: int,
    workers: int,
    top_k: int,
    softmax: bool,
    border: int = 0,
) -> Iterator[tuple[list[Prediction], list[tuple[int, str]]]]:
    """(predictions, failures) per batch, in order; indices refer to `files`."""
    dataset = FlatImages(files, bundle.preprocess, bundle.transform, border)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=backend.device.type == "cuda",
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    for indices, pictures, failures in loader:
        if pictures is None:
            yield [], failures
            continue
        pictures = pictures.to(backend.device, non_blocking=True)  # pinned uint8 on CUDA: a quarter of the bytes
        if bundle.transform is None:
            pictures = normalise(pictures, bundle.preprocess.mean, bundle.preprocess.std)
        outputs = backend(pictures).float()
        outputs = outputs.softmax(dim=-1) if softmax else outputs
        scores, ids = outputs.topk(min(top_k, outputs.shape[-1]), dim=-1)
        yield (
            [
                Prediction(i, row_ids, row_scores)
                for i, row_ids, row_scores in zip(indices, ids.tolist(), scores.cpu().tolist())
            ],
            failures,
        )
