"""Classification models: any timm architecture by name, or a plug-in `file.py:factory`."""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from optik.errors import ConfigError, ModelError
from optik.models.hub import hub_offline, hub_reachable, why_unavailable


def is_plugin(name: str) -> bool:
    """`path/to/file.py:factory` names a plug-in; anything else is a timm architecture."""
    return ".py:" in name


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable `factory` of `path/to/file.py:factory`, imported from that file."""
    file_part, _, attr = spec.rpartition(":")
    path = Path(file_part).expanduser()
    if not path.is_file():
        raise ConfigError(f"model file not found: {path} (from {spec!r})")
    module_name = f"optik_plugin_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module  # pickling and dataclasses inside the plug-in need this
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ModelError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise ConfigError(f"{path} has no callable {attr!r}; callables there: {', '.join(found) or 'none'}")
    return factory


def build_plugin(spec: str, num_classes: int | None) -> nn.Module:
    """Call the plug-in factory, passing `num_classes` when it accepts it."""
    factory = load_factory(spec)
    try:
        accepts = "num_classes" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts = False
    model = factory(num_classes=num_classes) if accepts and num_classes is not None else factory()
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def build_timm(
    name: str,
    num_classes: int,
    image_size: int,
    pretrained: bool,
    drop_rate: float,
    drop_path_rate: float,
    any_size: bool = False,
) -> nn.Module:
    """A timm model; `any_size`: a transformer also takes inputs of other sizes than `image_size` (its position
    embedding is interpolated), as the small crops of multi-crop pretraining need."""
    import timm

    check_timm_name(name)
    kwargs = dict(pretrained=pretrained, num_classes=num_classes, drop_rate=drop_rate)
    if drop_path_rate:
        kwargs["drop_path_rate"] = drop_path_rate
    # transformers take the input size at build time (some also any size); CNNs have neither argument
    size = {"img_size": image_size, **({"dynamic_img_size": True} if any_size else {})}
    offline = pretrained and not hub_reachable()
    try:
        with hub_offline(offline):
            while True:
                try:
                    return timm.create_model(name, **size, **kwargs)
                except (
                    TypeError
                ) as exc:  # "... got an unexpected keyword argument 'dynamic_img_size'": build without it
                    refused = [key for key in size if f"'{key}'" in str(exc)]
                    if not refused:
                        raise
                    del size[refused[0]]
    except (OSError, RuntimeError, ValueError) as exc:
        if not pretrained:
            raise ModelError(f"building {name} failed: {exc}") from exc
        raise ModelError(
            f"could not get the published weights of {name} ({why_unavailable(exc, offline)}); they are fetched into timm's "
            "cache when online. Offline, set model.pretrained: false and model.weights: a local weights file"
        ) from None


def check_architecture(name: str) -> None:
    """A classifier's `model.name`: a timm architecture, or a plug-in whose file exists (checked before any data is read)."""
    if not is_plugin(name):
        return check_timm_name(name, also="; or give path/to/file.py:factory")
    path = Path(name.rpartition(":")[0]).expanduser()
    if not path.is_file():
        raise ConfigError(f"model.name: model file not found: {path} (from {name!r})")


def check_timm_name(name: str, key: str = "model.name", also: str = "") -> None:
    """An architecture timm knows, else an error naming similar ones."""
    import timm

    if not timm.is_model(name):
        close = similar_architectures(name)
        raise ConfigError(
            f"{key}: unknown timm architecture {name!r}"
            + (f"; similar: {', '.join(close)}" if close else "")
            + f" (`timm.list_models()` names them all{also})"
        )


def similar_architectures(name: str, limit: int = 10) -> list[str]:
    """timm names like `name`: of its family (names that start with the same letters, as resnet), the
    main sizes (resnet18, resnet50, efficientnet_b0) nearest in number first, then close spellings."""
    import timm

    stem_match = re.match(r"[a-z]+", name.lower())
    family = timm.list_models(f"{stem_match.group(0)}*") if stem_match else []
    if not family:
        return difflib.get_close_matches(name, timm.list_models(), n=limit, cutoff=0.6)
    stem = stem_match.group(0)
    wanted = _size_of(name[len(stem) :])
    main = [m for m in family if re.fullmatch(r"_?[a-z]?\d+", m[len(stem) :])]
    if wanted is not None:
        main.sort(key=lambda m: abs(math.log1p(_size_of(m[len(stem) :])) - math.log1p(wanted)))
    nearest = sorted(main[: limit - 2], key=lambda m: _size_of(m[len(stem) :]))
    close = difflib.get_close_matches(name, family, n=limit, cutoff=0.6)
    return list(dict.fromkeys([*close[:2], *nearest, *close]))[:limit]


def _size_of(rest: str) -> int | None:
    digits = re.search(r"\d+", rest)
    return int(digits.group(0)) if digits else None


def build_classifier(model_cfg, num_classes: int, image_size: int) -> nn.Module:
    """The classifier a config names, with `num_classes` outputs (weights not loaded here)."""
    if is_plugin(model_cfg.name):
        model = build_plugin(model_cfg.name, num_classes)
        check_outputs(model, num_classes, image_size, model_cfg.name)
        return model
    return build_timm(
        model_cfg.name, num_classes, image_size, model_cfg.pretrained, model_cfg.drop_rate, model_cfg.drop_path_rate
    )


def check_outputs(model: nn.Module, num_classes: int, image_size: int, name: str) -> None:
    """A plug-in must give one logit per class; replace a timm-style head when it does not."""
    was_training = model.training
    model.eval()
    probe = torch.randn(1, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception as exc:
        raise ModelError(
            f"{name} fails on a (1, 3, {image_size}, {image_size}) image batch: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        model.train(was_training)
    width = out.shape[-1] if isinstance(out, torch.Tensor) else None
    if width == num_classes:
        return
    if hasattr(model, "reset_classifier"):
        model.reset_classifier(num_classes)
        return
    raise ModelError(
        f"{name} outputs {tuple(out.shape) if width else type(out).__name__} but the data has {num_classes} classes; make the factory accept num_classes"
    )
