"""`Predictor`: a classifier run over images in batches, fast and exact by default (`optik.tasks.loading.load_predictor` makes one from a model file)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from optik.data.decode import describe_source, open_image
from optik.data.transforms import Preprocess, eval_transform
from optik.errors import ConfigError, ImageDecodeError
from optik.inference.backends import TorchBackend
from optik.results import Classification, ImageFailure, Result

ImageSource = str | Path | bytes | Image.Image


class Predictor:
    """Classifies images with a trained model.

    Args:
        model: network mapping normalised (N, 3, H, W) images to logits.
        classes: class names, index = output.
        preprocess: eval preprocessing the model was trained with; its `tta` (test-time augmentation)
            makes each probability the softmax averaged over the original and its flips, computed in
            one forward pass over the batch and its flipped copies.
        device: "cpu", "cuda", "cuda:1", or "auto".
        precision: "32" (exact, default), "bf16" or "16" (CUDA).
        batch_size: images per forward pass.
        mode: "fused" (exact, no set-up), "compiled" (exact, fast for long jobs, compiles once),
            "onnx" (onnxruntime on the CPU, fp32), "eager" (plain PyTorch), or "auto" (the fastest
            for a job of `expected_images` images, see `backends.mode_for`; None: fused).
        decode_workers: threads that decode and preprocess the next batch during the forward pass.
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
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.classes = classes
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.transform = eval_transform(preprocess)
        self.backend = TorchBackend(
            model,
            device=device,
            precision=precision,
            mode=mode,
            batch_size=batch_size,
            expected_images=expected_images,
            tta=preprocess.tta,
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
        if isinstance(source, Image.Image):
            image = source.convert("RGB")
        else:
            image = open_image(source, name=name, exif_orientation=self.preprocess.exif_orientation)
        return self.transform(image)

    def predict_tensors(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (N, classes) of a preprocessed batch."""
        return self.backend(images).float().softmax(dim=-1)

    def predict(self, images: Sequence[ImageSource], names: Sequence[str] | None = None) -> list[Result]:
        """Classify images (paths, encoded bytes or PIL images); a bad image gives an ImageFailure."""
        return list(self.predict_stream(images, names))

    def predict_stream(self, images: Iterable[ImageSource], names: Iterable[str] | None = None) -> Iterator[Result]:
        """Like `predict`, streaming: the next batch decodes in threads while this one runs."""
        items = zip(images, names) if names is not None else ((image, None) for image in images)
        with ThreadPoolExecutor(self.decode_workers) as pool:

            def submit_batch() -> list:
                return [pool.submit(self._load_one, item) for item in islice(items, self.batch_size)]

            pending = submit_batch()
            while pending:
                upcoming = submit_batch()
                yield from self._run_batch([future.result() for future in pending])
                pending = upcoming

    def _load_one(self, item: tuple[ImageSource, str | None]) -> tuple[str, torch.Tensor | str]:
        source, name = item
        label = name or describe_source(source)
        try:
            return label, self.load(source, name=label)
        except ImageDecodeError as exc:
            return label, exc.reason

    def _run_batch(self, loaded: list[tuple[str, torch.Tensor | str]]) -> list[Result]:
        good = [tensor for _, tensor in loaded if isinstance(tensor, torch.Tensor)]
        probs = self.predict_tensors(torch.stack(good)).cpu().numpy() if good else np.empty((0, len(self.classes)))
        results, row = [], 0
        for label, tensor in loaded:
            if isinstance(tensor, torch.Tensor):
                results.append(Classification(label, self.classes, probs[row]))
                row += 1
            else:
                results.append(ImageFailure(label, tensor))
        return results
