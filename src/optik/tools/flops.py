"""`optik flops`: multiply-accumulates and parameters of a model, in total and per module.

Counted by torch's own `FlopCounterMode` on one forward pass (convolutions, matrix products and
attention; element-wise ops are not counted, as in fvcore and the papers' figures). One MAC is
two FLOPs; GMACs is what model zoos quote (resnet50 at 224: 4.1 GMACs, 25.6 M parameters).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from optik.errors import ConfigError, ModelError


@dataclass
class ModuleCost:
    name: str
    params: int
    macs: int


@dataclass
class FlopsReport:
    model: str
    shape: tuple[int, int]
    params: int
    macs: int
    modules: list[ModuleCost]

    def lines(self) -> list[str]:
        width = max([len("module")] + [len(m.name) for m in self.modules])
        out = [
            f"{self.model} at {self.shape[0]}x{self.shape[1]}: {self.macs / 1e9:.3f} GMACs ({2 * self.macs / 1e9:.3f} GFLOPs), "
            f"{self.params / 1e6:.3f} M parameters",
            f"{'module':{width}s}  {'params (M)':>10s}  {'GMACs':>8s}  {'share':>6s}",
        ]
        for m in self.modules:
            share = m.macs / self.macs if self.macs else 0.0
            out.append(f"{m.name:{width}s}  {m.params / 1e6:10.3f}  {m.macs / 1e9:8.3f}  {share:6.1%}")
        return out


def resolve_model(source: str, num_classes: int | None = None) -> tuple[nn.Module, int | None, str]:
    """(network in eval mode, its input size if known, description) of a config file or preset, a
    model package or checkpoint, or a timm architecture name."""
    from optik.config.load import load_config, preset_names
    from optik.tasks import get_task

    path = Path(source)
    if (path.is_file() and path.suffix in (".yaml", ".yml")) or source in preset_names():
        cfg = load_config(source)
        return get_task(cfg.task).network_from_config(cfg, num_classes), cfg.data.image_size, source
    if path.is_file():
        from optik.models.package import load_package
        from optik.tasks.loading import build_model

        package = load_package(path)
        return build_model(package), package.preprocess.get("image_size"), f"{path} ({package.config['model']['name']})"
    import timm

    if not timm.is_model(source):
        raise ConfigError(f"MODEL {source!r} is not a config file, preset, model file or timm architecture name")
    return timm.create_model(source, pretrained=False, num_classes=num_classes or 1000).eval(), None, source


def count_flops(model: nn.Module, shape: tuple[int, int], depth: int = 2, name: str = "model") -> FlopsReport:
    """MACs and parameters of `model` on one (1, 3, H, W) image, with modules down to `depth` levels."""
    from torch.utils.flop_counter import FlopCounterMode
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    image = torch.rand(1, 3, *shape)
    is_detector = isinstance(model, (GeneralizedRCNN, RetinaNet, FCOS, SSD))  # these take a list of images
    counter = FlopCounterMode(display=False, depth=depth)
    try:
        with counter, torch.no_grad():
            model([image[0]]) if is_detector else model(image)
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise ModelError(
            f"{name} cannot run on a {shape[0]}x{shape[1]} image: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; "
            "give a --shape the model takes"
        ) from None
    counts = counter.get_flop_counts()
    root = type(model).__name__
    modules = dict(model.named_modules())
    rows = []
    for key, ops in counts.items():
        if key in ("Global", root):
            continue
        sub = key[len(root) + 1 :] if key.startswith(root + ".") else key
        if sub.count(".") >= depth:  # the counter's own depth limit misses modules called out of nesting order
            continue
        params = sum(p.numel() for p in modules[sub].parameters()) if sub in modules else 0
        rows.append(ModuleCost(sub, params, sum(ops.values()) // 2))
    total = counter.get_total_flops() // 2
    return FlopsReport(name, shape, sum(p.numel() for p in model.parameters()), total, rows)
