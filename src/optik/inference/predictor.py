"""What every predictor is (`Predictor`: the interface the CLI, the services and the batch jobs drive),
the streaming loop classifiers and detectors share (`stream`), and `Classifier`, a classifier run over
images in batches, fast and exact by default (`optik.tasks.loading.load_predictor` makes either from
a model file)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import nn

from optik.data.decode import describe_source, open_image
from optik.data.transforms import NormalizedTensor, Preprocess, ResizeCenterCrop
from optik.errors import ConfigError, ImageDecodeError
from optik.inference.runtime import RuntimeBackend, calibration_files
from optik.results import Classification, ImageFailure, Result

ImageSource = str | Path | bytes | Image.Image
Loaded = tuple[str, Any]  # an image's name, and what `decode` made of it or (a str) the reason it could not be read


class Predictor(Protocol):
    """A trained model run over images in batches: a `Classifier` or a `Detector`."""

    task: str
    classes: list[str]
    batch_size: int
    backend: Any  # what runs the network; its `mode` names the form (fused, onnx, openvino, ...)

    def warmup(self) -> None: ...

    def predict(self, images: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[Result]: ...

    def predict_stream(self, images: Iterable[ImageSource], names: Iterable[str] | None = None) -> Iterator[Result]: ...


def stream(
    items: Iterable[tuple[ImageSource, str | None]],
    load_one: Callable[[tuple[ImageSource, str | None]], Loaded],
    run_batch: Callable[[list[Loaded]], list[Result]],
    batch_size: int,
    workers: int,
) -> Iterator[Result]:
    """Results of `run_batch` over batches of `load_one`'d items, in order: the next batch decodes in
    `workers` threads while this one runs (in the caller's thread, so a signal stops it between ops)."""
    items = iter(items)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="optik-decode") as pool:

        def submit_batch() -> list:
            return [pool.submit(load_one, item) for item in islice(items, batch_size)]

        pending = submit_batch()
        try:
            while pending:
                upcoming = submit_batch()
                yield from run_batch([future.result() for future in pending])
                pending = upcoming
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # a closed stream decodes nothing more


def named(images: Iterable[ImageSource], names: Iterable[str] | None) -> Iterable[tuple[ImageSource, str | None]]:
    return zip(images, names) if names is not None else ((image, None) for image in images)


class Batched:
    """`predict` and `predict_stream` for a predictor that can `decode` one image and `_run_batch` a batch:
    the classifier and the detector stream alike (`stream`), only their decoding and batch differ."""

    batch_size: int
    decode_workers: int

    def predict(self, images: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[Result]:
        """Predict images (paths, encoded bytes or PIL images); a bad image gives an ImageFailure."""
        return list(self.predict_stream(images, names))

    def predict_stream(self, images: Iterable[ImageSource], names: Iterable[str] | None = None) -> Iterator[Result]:
        """Like `predict`, streaming: the next batch decodes in threads while this one runs."""
        return stream(
            named(images, names),
            lambda item: load_one(self, item),
            self._run_batch,
            self.batch_size,
            self.decode_workers,
        )


class Classifier(Batched):
    """Classifies images with a trained model.

    Args:
        model: network mapping normalised (N, 3, H, W) images to logits.
        classes: class names, index = output.
        preprocess: eval preprocessing the model was trained with; its `tta` (test-time augmentation)
            makes each probability the softmax averaged over the original and its flips, computed in
            one forward pass over the batch and its flipped copies.
        device: "cpu", "cuda", "cuda:1", or "auto".
        precision: "32" (exact, default), "bf16", "16" (CUDA) or "int8" (OpenVINO, with `calibration`).
        batch_size: images per forward pass.
        mode: "fused" (exact, no set-up), "compiled" (exact, fast for long jobs, compiles once),
            "onnx" (onnxruntime on the CPU, fp32), "openvino" (CPU: fp32, bf16, int8), "eager"
            (plain PyTorch), or "auto" (the fastest for a job of `expected_images` images, measured;
            see `optik.inference.runtime`; None: fused).
        backend: "auto", "torch" (PyTorch's own forms only), "onnxruntime" or "openvino" (that engine, or an error).
        decode_workers: threads that decode and preprocess the next batch during the forward pass.
        calibration: a folder of images (up to `runtime.CALIBRATION_IMAGES`, preprocessed as predictions are) an
            int8 model is quantized on.
        runtime: `model` already is an engine's network (an exported file), run as it is.
    """

    task = "classify"

    def __init__(
        self,
        model: nn.Module,
        classes: list[str],
        preprocess: Preprocess,
        device: str = "auto",
        precision: str = "32",
        batch_size: int = 32,
        mode: str = "auto",
        expected_images: int | None = None,
        decode_workers: int = 2,
        backend: str = "auto",
        calibration: str | Path | None = None,
        runtime=None,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.classes = classes
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.resize = ResizeCenterCrop(preprocess.resize_size, preprocess.image_size, preprocess.interpolation)
        self.normalize = NormalizedTensor(preprocess.mean, preprocess.std)
        self.backend = RuntimeBackend(
            model,
            device=device,
            precision=precision,
            mode=mode,
            batch_size=batch_size,
            expected_images=expected_images,
            backend=backend,
            tta=preprocess.tta,
            calibration=None if calibration is None else self.calibration_batches(calibration),
            runtime=runtime,
        )
        self.decode_workers = max(1, decode_workers)

    @property
    def device(self) -> torch.device:
        return self.backend.device

    def warmup(self) -> None:
        """Run one batch of noise, so that compiling and checking the fast path happen before real work.

        Services call this before they take their first request.
        """
        generator = torch.Generator().manual_seed(0)
        size = self.preprocess.image_size
        self.predict_tensors(torch.randn(self.batch_size, 3, size, size, generator=generator))

    def load(self, source: ImageSource, name: str | None = None) -> torch.Tensor:
        """Decode (through `open_image`) and preprocess one image to a (3, H, W) tensor."""
        return self.normalize.batch([self.decode(source, name)])[0]

    def decode(self, source: ImageSource, name: str | None = None) -> np.ndarray:
        """Decode, resize and crop one image: uint8 (H, W, 3), what the decoding threads make; the batch is
        normalised in the caller's thread. (A torch op in a decoding thread starts an OpenMP team of its own,
        whose spinning threads take the cores from the model's: at batch 1 that cost a third of the speed.)"""
        if isinstance(source, Image.Image):
            image = source.convert("RGB")
        else:
            image = open_image(source, name=name, exif_orientation=self.preprocess.exif_orientation)
        return np.asarray(self.resize(image))

    def calibration_batches(self, folder: str | Path) -> list[torch.Tensor]:
        """The first `runtime.CALIBRATION_IMAGES` images of `folder` (sorted, recursively), preprocessed, in batches."""
        files = calibration_files(folder)
        tensors = [self.load(path) for path in files]
        return [torch.stack(tensors[i : i + self.batch_size]) for i in range(0, len(tensors), self.batch_size)]

    def predict_tensors(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, classes) of a preprocessed batch."""
        return self.backend(images).float().softmax(dim=-1)

    def _run_batch(self, loaded: list[Loaded]) -> list[Result]:
        good = [pixels for _, pixels in loaded if not isinstance(pixels, str)]
        probs = (
            self.predict_tensors(self.normalize.batch(good)).cpu().numpy() if good else np.empty((0, len(self.classes)))
        )
        results, row = [], 0
        for label, pixels in loaded:
            if isinstance(pixels, str):
                results.append(ImageFailure(label, pixels))
            else:
                results.append(Classification(label, self.classes, probs[row]))
                row += 1
        return results


def load_one(predictor, item: tuple[ImageSource, str | None]) -> Loaded:
    """(name, decoded) of one image through `predictor.decode`, or (name, why it could not be read)."""
    source, name = item
    label = name or describe_source(source)
    try:
        return label, predictor.decode(source, name=label)
    except ImageDecodeError as exc:
        return label, exc.reason
