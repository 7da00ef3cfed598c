"""The PyTorch side of inference: devices, the exact speed-ups (conv+batch-norm folding, a frozen
compile over fixed-size batches), autocast for bf16/fp16, and test-time augmentation's views.

Measured on this project's CPU (resnet50 at 224, batch 32): `fused` ~1.7x eager with no set-up;
`compiled` ~2.2x eager after ~10-25 s of compiling. Which of them (or onnxruntime, or OpenVINO)
runs a model is decided in `optik.inference.runtime`, the only place that picks an engine.

Test-time augmentation's flipped views are stacked into the batch, run in one forward pass, and
their softmax averaged (`stack_views`, `average_views`), in every engine alike.
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch
from torch import nn

from optik.errors import ConfigError

# The flipped views of each test-time augmentation (the original is always the first view), as the
# image dimensions each flip reverses: 3 is width (left-right), 2 is height (upside down).
TEST_TIME_FLIPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": (),
    "hflip": ((3,),),
    "vflip": ((2,),),
    "hflip,vflip": ((3,), (2,)),
}


def onnxruntime_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


log = logging.getLogger(__name__)


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


def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """A copy of `model` (eval) with each Conv2d folded into the BatchNorm2d registered right after it.

    Folding assumes the batch norm consumes the conv's output, which holds for the usual
    conv-bn-act blocks; callers verify the result numerically.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = parent._modules[first], parent._modules[second]
            if (
                type(conv) is nn.Conv2d
                and isinstance(norm, nn.BatchNorm2d)
                and conv.out_channels == norm.num_features
                and norm.track_running_stats
            ):
                parent._modules[first] = fuse_conv_bn_eval(conv, norm)
                parent._modules[second] = _after_norm(norm)
    return model


def _after_norm(norm: nn.BatchNorm2d) -> nn.Module:
    """What remains of a folded norm layer: timm's BatchNormAct2d also applies dropout and activation."""
    rest = [m for m in (getattr(norm, "drop", None), getattr(norm, "act", None)) if isinstance(m, nn.Module)]
    return nn.Sequential(*rest) if rest else nn.Identity()


class PaddedBatches(nn.Module):
    """Pads every batch to a fixed size so a compiled graph is built once."""

    def __init__(self, model: nn.Module, batch_size: int):
        super().__init__()
        self.model, self.batch_size = model, batch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = images.shape[0]
        if n == self.batch_size:
            return self.model(images)
        outputs = []
        for start in range(0, n, self.batch_size):
            chunk = images[start : start + self.batch_size]
            short = self.batch_size - chunk.shape[0]
            if short:
                chunk = torch.cat([chunk, chunk.new_zeros(short, *chunk.shape[1:])]).contiguous(
                    memory_format=torch.channels_last
                )
            outputs.append(self.model(chunk)[: self.batch_size - short])
        return torch.cat(outputs)


def compile_frozen(model: nn.Module, batch_size: int) -> nn.Module:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # fold weights and batch norms into the graph (inference only)
    return PaddedBatches(torch.compile(model, dynamic=False), batch_size)


def flips_of(tta: str) -> tuple[tuple[int, ...], ...]:
    """The flips of a test-time augmentation by name, or a ConfigError listing the names."""
    if tta not in TEST_TIME_FLIPS:
        raise ConfigError(f"test-time augmentation must be one of {', '.join(TEST_TIME_FLIPS)}, got {tta!r}")
    return TEST_TIME_FLIPS[tta]


def stack_views(images: torch.Tensor, flips: tuple[tuple[int, ...], ...]) -> torch.Tensor:
    """(N, 3, H, W) -> (V*N, 3, H, W): the batch, then the batch flipped by each of `flips`."""
    return torch.cat([images, *(images.flip(dims) for dims in flips)]) if flips else images


def average_views(outputs: torch.Tensor, views: int) -> torch.Tensor:
    """(V*N, C) logits of `stack_views` -> (N, C) log of the softmax averaged over the views.

    A log-probability is a logit whose softmax is the averaged probability itself, so callers
    that take the softmax of what a backend returns get the average unchanged.
    """
    if views == 1:
        return outputs
    probs = outputs.float().softmax(dim=-1).view(views, -1, outputs.shape[-1]).mean(dim=0)
    return probs.log()


def autocast_for(device: torch.device, precision: str):
    """The autocast context of a precision: none for fp32."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
