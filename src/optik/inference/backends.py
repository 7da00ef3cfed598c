"""Inference backends: where and how the network runs (device, precision, exact speed-ups).

Speed-ups keep fp32 results (measured on this project's CPU, resnet50 at 224, batch 32):
- `fused`: conv+batch-norm folded, channels_last memory format; no set-up cost (~1.7x eager).
- `compiled`: torch.compile (inductor) with weight freezing on channels_last, batches padded to a
  fixed size so it compiles once (~2.2x eager, ~10-25 s compile per process).
- `onnx`: the model exported to ONNX in memory and run by onnxruntime on the CPU, fp32
  (~2.8x eager, ~3 s export). What `auto` picks on a CPU in fp32 for services and jobs of
  `ONNX_MIN_IMAGES` or more.
Every optimised form is checked against the eager model on the first real batch (same top-1,
logits within tolerance) and replaced by the next simpler form when it differs or fails.

Test-time augmentation happens here too, the one place every form (an onnxruntime session
included) runs a batch: the flipped views are stacked into the batch, run in one forward pass, and
their softmax averaged (see `TorchBackend`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings

import torch
from torch import nn

from optik.errors import ConfigError, ModelError
from optik.inference.onnx import OnnxModel, export_onnx

PRECISIONS = ("32", "bf16", "16")
MODES = ("eager", "fused", "compiled", "onnx")

# The flipped views of each test-time augmentation (the original is always the first view), as the
# image dimensions each flip reverses: 3 is width (left-right), 2 is height (upside down).
TEST_TIME_FLIPS: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": (),
    "hflip": ((3,),),
    "vflip": ((2,),),
    "hflip,vflip": ((3,), (2,)),
}

# Images of the first batch on which an optimised form is checked against eager.
CHECK_IMAGES = 8

# Below this many images the compile time (10-25 s) costs more than it saves.
COMPILE_MIN_IMAGES = 1000
# Below this many images the ONNX export (~3 s for a resnet50) costs more than it saves.
ONNX_MIN_IMAGES = 100


def mode_for(
    images: int | None, device: torch.device | None = None, precision: str = "32", allow_onnx: bool = True
) -> str:
    """The fastest exact mode for a job of `images` images (None: unknown, no set-up cost wanted;
    services pass COMPILE_MIN_IMAGES) on `device` (None: CPU) in `precision`; `allow_onnx` False
    keeps to PyTorch (`--backend torch`)."""
    if images is None:
        return "fused"
    on_cpu = device is None or device.type == "cpu"
    if allow_onnx and on_cpu and precision == "32" and images >= ONNX_MIN_IMAGES and onnxruntime_available():
        return "onnx"
    return "compiled" if images >= COMPILE_MIN_IMAGES else "fused"


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


def layout_of(mode: str) -> torch.memory_format:
    """The memory format a mode's model takes its batches in."""
    return torch.channels_last if mode in ("fused", "compiled") else torch.contiguous_format


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


def check_precision(precision: str, device: torch.device) -> str:
    """A precision the device can run, or a ConfigError saying what to use instead."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "16" and device.type != "cuda":
        raise ConfigError("precision 16 needs a CUDA device; on a CPU use bf16")
    return precision


def autocast_for(device: torch.device, precision: str):
    """The autocast context of a precision: none for fp32."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class TorchBackend:
    """Runs a PyTorch model on a device: fp32 exact by default, bf16/fp16 one option away.

    Args:
        mode: "eager" (plain PyTorch), "fused", "compiled" or "onnx" (see the module docstring), or
            "auto": the fastest for a job of `expected_images` images (see `mode_for`).
        fallback: when the requested form fails or changes the outputs, run the next simpler one
            (False: raise ModelError; for a backend the user asked for by name).
        tta: test-time augmentation (a key of `TEST_TIME_FLIPS`): each batch of N runs as one batch
            of N times the views, and the result is the log of the softmax averaged over the views
            (with "none", the model's logits as they are).
    """

    def __init__(
        self,
        model: nn.Module,
        device: str = "auto",
        precision: str = "32",
        mode: str = "fused",
        batch_size: int = 32,
        expected_images: int | None = None,
        fallback: bool = True,
        tta: str = "none",
    ):
        self.flips = flips_of(tta)
        if precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if mode not in MODES and mode != "auto":
            raise ConfigError(f"mode must be one of auto, {', '.join(MODES)}, got {mode!r}")
        self.device = pick_device(device)
        check_precision(precision, self.device)
        if mode == "auto":
            mode = mode_for(expected_images, self.device, precision)
        if mode == "onnx" and (self.device.type != "cpu" or precision != "32"):
            raise ConfigError(
                "the onnx mode runs fp32 on the CPU; use --optimize compiled for other devices and precisions"
            )
        self.precision, self.requested, self.batch_size, self.fallback = precision, mode, batch_size, fallback
        self.eager = model.eval().to(self.device)
        self.mode = "eager"
        self.model: nn.Module = self.eager
        self.layout = torch.contiguous_format
        self._checked = mode == "eager"

    def autocast(self):
        return autocast_for(self.device, self.precision)

    @property
    def views(self) -> int:
        """Images the network sees per input image (test-time augmentation)."""
        return 1 + len(self.flips)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = stack_views(images.to(self.device, non_blocking=True), self.flips)
        if not self._checked:
            return average_views(self._choose(images), self.views)
        with self.autocast():
            outputs = self.model(images.contiguous(memory_format=self.layout))
        return average_views(outputs, self.views)

    def _choose(self, images: torch.Tensor) -> torch.Tensor:
        """Try the optimised forms on a slice of this first batch; keep the first that matches eager."""
        self._checked = True
        probe = images[:CHECK_IMAGES]  # enough to catch a wrong form, without an eager pass over a whole batch
        with self.autocast():
            reference = self.eager(probe)
        candidates = [self.requested, "fused"] if self.requested in ("compiled", "onnx") else ["fused"]
        candidates = candidates if self.fallback else candidates[:1]
        for mode in candidates:
            try:
                model = self._build(mode, probe)
                with warnings.catch_warnings(), self.autocast():
                    warnings.simplefilter("ignore")
                    output = model(probe.contiguous(memory_format=layout_of(mode)))
            except Exception as exc:  # a model the optimiser cannot handle still runs eagerly
                log.warning(
                    "inference mode %s unavailable for this model (%s: %s); falling back",
                    mode,
                    type(exc).__name__,
                    str(exc).splitlines()[0] if str(exc) else "",
                )
                continue
            if _agrees(output, reference, self.precision):
                self.model, self.mode, self.layout = model, mode, layout_of(mode)
                break
            log.warning("inference mode %s changes this model's outputs; falling back", mode)
        if not self.fallback and self.mode != self.requested:
            raise ModelError(
                f"this model cannot run as {self.requested} with outputs equal to PyTorch's (see the warning above); use the torch backend"
            )
        with self.autocast():
            return self.model(images.contiguous(memory_format=self.layout))

    def _build(self, mode: str, probe: torch.Tensor) -> nn.Module:
        if mode == "onnx":
            return OnnxModel(export_onnx(self.eager, probe[:1]))
        if mode == "fused":
            return fuse_conv_bn(self.eager).to(memory_format=torch.channels_last)
        source = copy.deepcopy(self.eager).to(memory_format=torch.channels_last)
        return compile_frozen(source, self.batch_size * self.views)  # the views travel in the same batch


def _agrees(output: torch.Tensor, reference: torch.Tensor, precision: str) -> bool:
    if output.shape != reference.shape:
        return False
    if precision == "32" and not torch.equal(output.argmax(-1), reference.argmax(-1)):
        return False  # reduced precision flips near-ties either way; only fp32 must match exactly
    scale = reference.float().abs().max().clamp(min=1.0)
    tolerance = 1e-3 if precision == "32" else 1e-1
    return bool((output.float() - reference.float()).abs().max() <= tolerance * scale)
