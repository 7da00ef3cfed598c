"""The runtime layer's part for detectors: a torchvision detector run on a device, fused where that
keeps its detections (checked on the first batch, as `runtime.RuntimeBackend` checks classifiers)."""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch
from torch import nn

from optik.errors import ConfigError
from optik.inference.backends import autocast_for, fuse_conv_bn
from optik.inference.runtime import Runtime, check_precision, pick_device

log = logging.getLogger(__name__)


class DetectBackend:
    """Runs a torchvision detector on a device over lists of uint8 images.

    Modes: "eager" (plain PyTorch) or "fused" (conv + batch norm folded; checked against eager on
    the first batch and dropped when it differs). "compiled" and "auto" mean fused: torchvision's
    detectors have data-dependent shapes that the compiler splits into many graphs. With `runtime`
    (an exported detector's), the model is that engine's and runs as it is.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str = "auto",
        precision: str = "32",
        mode: str = "fused",
        runtime: Runtime | None = None,
    ):
        if runtime is not None:
            self.device, self.runtime = runtime.device, runtime
        else:
            self.device = pick_device(device)
            if precision == "int8":
                raise ConfigError("precision int8 is for classifiers; a detector runs 32, bf16 or 16 (CUDA)")
            check_precision(precision, self.device)
            self.runtime = Runtime("eager", precision, self.device)
        self.eager = model.eval().to(self.device) if runtime is None else model
        self.model = self.eager
        self._checked = mode == "eager" or runtime is not None

    @property
    def mode(self) -> str:
        return self.runtime.mode

    @property
    def precision(self) -> str:
        return self.runtime.precision

    def autocast(self):
        if self.runtime.engine != "torch":
            return contextlib.nullcontext()
        return autocast_for(self.device, self.precision)

    @torch.inference_mode()
    def __call__(self, images: list[torch.Tensor]) -> list[dict]:
        inputs = [image.to(self.device, non_blocking=True).float().div_(255) for image in images]
        if not self._checked:
            self._choose(inputs[:2])
        with self.autocast():
            return self.model(inputs)

    def _choose(self, probe: list[torch.Tensor]) -> None:
        self._checked = True
        try:
            fused = fuse_conv_bn(self.eager)
            with warnings.catch_warnings(), self.autocast():
                warnings.simplefilter("ignore")
                reference, output = self.eager(probe), fused(probe)
                same_features = _same_features(self.eager, fused, probe)
        except Exception as exc:  # noqa: BLE001 - an unusual model still runs eagerly
            log.warning(
                "fused inference unavailable for this detector (%s: %s); running eagerly", type(exc).__name__, exc
            )
            return
        if same_features and all(_same_detections(a, b) for a, b in zip(output, reference)):
            self.model, self.runtime = fused, Runtime("fused", self.precision, self.device)
        else:
            log.warning("fused inference changes this detector's outputs; running eagerly")


def _same_features(eager: nn.Module, fused: nn.Module, probe: list[torch.Tensor]) -> bool:
    """The backbone's feature maps agree (a blank or easy image may give no detections to compare)."""
    if not hasattr(eager, "transform") or not hasattr(eager, "backbone"):
        return True
    batch = eager.transform(probe)[0].tensors
    reference, output = eager.backbone(batch), fused.backbone(batch)
    if isinstance(reference, torch.Tensor):
        reference, output = {"0": reference}, {"0": output}
    for key, ref in reference.items():
        scale = ref.abs().max().clamp(min=1.0)
        if output[key].shape != ref.shape or (output[key] - ref).abs().max() > 1e-3 * scale:
            return False
    return True


def _same_detections(output: dict, reference: dict) -> bool:
    """Same count, and every reference object has one of the same label and box within tolerance.

    Matched regardless of order: objects with tied scores may come out in either order.
    """
    boxes, ref_boxes = output["boxes"].float(), reference["boxes"].float()
    if boxes.shape != ref_boxes.shape:
        return False
    if not len(ref_boxes):
        return True
    tolerance = 1e-3 * ref_boxes.abs().max().clamp(min=1.0)
    distance = torch.cdist(ref_boxes, boxes, p=float("inf"))
    distance[reference["labels"][:, None] != output["labels"][None, :]] = float("inf")
    return bool((distance.min(dim=1).values <= tolerance).all() and (distance.min(dim=0).values <= tolerance).all())
