"""Inference backends: where and how the network runs (device, precision, exact speed-ups)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from optik.errors import ConfigError

PRECISIONS = ("32", "bf16", "16")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu")
    return chosen


class TorchBackend:
    """Runs a PyTorch model on a device, in fp32 by default, with layout and graph speed-ups."""

    def __init__(self, model: nn.Module, image_size: int, device: str = "auto", precision: str = "32", optimize: bool = True):
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device = pick_device(device)
        if precision == "16" and self.device.type != "cuda":
            raise ConfigError("precision 16 needs a CUDA device; on a CPU use bf16")
        self.precision = precision
        self.optimized = optimize
        self.memory_format = torch.channels_last if optimize else torch.contiguous_format
        self.model = model.eval().to(self.device, memory_format=self.memory_format)

    def autocast(self):
        if self.precision == "32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        with self.autocast():
            return self.model(images)
