"""`Detector`: a detection model run over images, batch by batch.

A sibling of `Classifier`: both are `Predictor`s (`predict`, `predict_stream`, `warmup`, `batch_size`)
streaming through the same loop (`predictor.stream`), so the CLI and both services drive classifiers
and detectors with the same code.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image
from torch import nn

from optik.data.decode import open_image
from optik.errors import ConfigError
from optik.inference.detect_runtime import DetectBackend
from optik.inference.predictor import Batched, ImageSource, Loaded
from optik.inference.runtime import Runtime
from optik.models.detect import drop_background
from optik.results import Detection, ImageFailure, Result

log = logging.getLogger(__name__)


class Detector(Batched):
    """Finds objects with a trained detector.

    Args:
        model: a torchvision detector (index 0 = background) in eval mode.
        classes: class names; a detector label k is class k - 1.
        preprocess: the package's `{"task": "detect", "image_size", "mean", "std", "exif_orientation"}` (the
            model resizes and normalises itself; `exif_orientation`, default true, is how images are decoded:
            upright, so boxes are in the upright picture's coordinates, or as stored).
        device, precision, batch_size, decode_workers: as `Classifier`.
        runtime: `model` already is an engine's (an exported detector), run as it is.
        mode: "eager", or "fused"/"compiled"/"auto" (fused, checked; see `DetectBackend`).
        min_score: drop objects scoring below this before they reach any output.
    """

    task = "detect"

    def __init__(
        self,
        model: nn.Module,
        classes: list[str],
        preprocess: dict,
        device: str = "auto",
        precision: str = "32",
        batch_size: int = 8,
        mode: str = "auto",
        expected_images: int | None = None,
        decode_workers: int = 2,
        min_score: float | None = None,
        runtime: Runtime | None = None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.classes, self.preprocess, self.batch_size = classes, preprocess, batch_size
        self.backend = DetectBackend(
            model,
            device=device,
            precision=precision,
            mode="eager" if mode == "eager" else "fused",
            runtime=runtime,
        )
        self.decode_workers = max(1, decode_workers)
        self.min_score = min_score

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def warmup(self) -> None:
        """One pass over a noise image, so the first request does not pay for set-up (or the fused check)."""
        size = int(self.preprocess.get("image_size", 256))
        noise = torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.backend([noise])

    def decode(self, source: ImageSource, name: str | None = None) -> torch.Tensor:
        """Decode (through `open_image`) to a uint8 (3, H, W) tensor (a view: no torch op runs in the decoding
        threads); the model resizes it itself."""
        if isinstance(source, Image.Image):
            image = source.convert("RGB")
        else:  # as training decoded (see data.detection.load_sample); packages without the key: upright, as classifiers
            image = open_image(source, name=name, exif_orientation=self.preprocess.get("exif_orientation", True))
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)

    def predict_tensors(self, images: list[torch.Tensor]) -> list[dict]:
        """Raw torchvision outputs (boxes, labels 1-based, scores, masks) for uint8 images, run by size (`run_by_size`)."""
        return run_by_size(self.backend, images)

    def _run_batch(self, loaded: list[Loaded]) -> list[Result]:
        good = [tensor for _, tensor in loaded if isinstance(tensor, torch.Tensor)]
        outputs = iter(self.predict_tensors(good) if good else [])
        results: list[Result] = []
        for label, tensor in loaded:
            if isinstance(tensor, torch.Tensor):
                results.append(self._detection(label, tensor, next(outputs)))
            else:
                results.append(ImageFailure(label, tensor))
        return results

    def _detection(self, source: str, image: torch.Tensor, output: dict) -> Detection:
        return as_detection(output, source, self.classes, image).above(self.min_score)


def run_by_size(model, images: list[torch.Tensor]) -> list[dict]:
    """`model(images)` with the images of one size run together, each size apart.

    torchvision pads a batch to its largest image, which would make an object near an image's edge
    depend on the other images of the batch. Grouped, an image gets the same objects alone or in
    any batch, and validation in training (which calls this too) scores what `optik test` scores.
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(index)
    outputs: list[dict | None] = [None] * len(images)
    for indices in groups.values():
        for index, output in zip(indices, model([images[i] for i in indices])):
            outputs[index] = output
    return outputs


def as_detection(output: dict, source: str, classes: list[str], image: torch.Tensor) -> Detection:
    """A torchvision output (1-based labels) for a (3, H, W) image as a `Detection`, boxes clipped to the image."""
    output = drop_background(output)
    masks = output.get("masks")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    boxes = output["boxes"].float().cpu().numpy().astype(np.float32)
    np.clip(boxes, 0, [width, height, width, height], out=boxes)  # rescaling back can overshoot by a rounding error
    return Detection(
        source,
        classes,
        width,
        height,
        boxes=boxes,
        labels=(output["labels"].cpu().numpy() - 1).astype(np.int64),
        scores=output["scores"].float().cpu().numpy().astype(np.float32),
        masks=None if masks is None else masks[:, 0].float().cpu().numpy(),
    )
