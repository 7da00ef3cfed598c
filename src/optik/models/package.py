"""The model package (`model.pt`): weights, resolved config, class names and eval preprocessing in one file.

Everything that predicts (CLI, services, batch evaluation) loads models through `load_package`,
which also accepts the Lightning checkpoints a training run writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from optik.errors import ModelError
from optik.files import write_atomic
from optik.models.weights import read_checkpoint

FORMAT = "optik-model"
VERSION = 1


@dataclass
class ModelPackage:
    task: str
    config: dict
    classes: list[str]
    preprocess: dict
    state_dict: dict[str, torch.Tensor]

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "task": self.task, "config": self.config, "classes": self.classes, "preprocess": self.preprocess, "state_dict": self.state_dict}


def save_package(package: ModelPackage, path: str | Path) -> Path:
    """Write a package atomically, tensors on the CPU."""
    package.state_dict = {k: v.detach().cpu().contiguous() for k, v in package.state_dict.items()}
    return write_atomic(path, lambda fh: torch.save(package.to_dict(), fh))


def load_package(path: str | Path) -> ModelPackage:
    """Read a model package or a Lightning checkpoint of an optik run (weights_only=True)."""
    content = read_checkpoint(path)
    if content.get("format") == FORMAT:
        if content.get("version", 0) > VERSION:
            raise ModelError(f"{path} was written by a newer optik (package version {content['version']}); upgrade optik")
        return ModelPackage(content["task"], content["config"], list(content["classes"]), content["preprocess"], content["state_dict"])
    hparams = content.get("hyper_parameters") or {}
    if "state_dict" in content and {"config", "classes", "preprocess"} <= set(hparams):
        package = ModelPackage(hparams["config"]["task"], hparams["config"], list(hparams["classes"]), hparams["preprocess"], inference_weights(content["state_dict"]))
        if package.task == "pretrain":  # a pretraining checkpoint holds the whole method; its package is the backbone
            from optik.models.ssl import backbone_package

            return backbone_package(package)
        return package
    raise ModelError(f"{path} is neither an optik model package nor a checkpoint of an optik run; for bare weights use model.weights in a config")


def inference_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's weights from a training module's state: the EMA copy when there is one."""
    for prefix in ("ema.module.", "model."):
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if picked:
            return picked
    return state


def build_model(package: ModelPackage) -> nn.Module:
    """The network of a package, weights loaded, in eval mode."""
    from optik.config import parse_config

    config = parse_config(package.config)
    model_cfg = config.model.model_copy(update={"pretrained": False, "weights": None})
    if package.task == "detect":
        from optik.models.detect import build_detector

        model_cfg = model_cfg.model_copy(update={"pretrained_backbone": False})
        model = build_detector(model_cfg, config.data, len(package.classes))
    elif package.task == "classify":
        from optik.models.classify import build_classifier

        model = build_classifier(model_cfg, len(package.classes), package.preprocess["image_size"])
    elif package.task == "pretrain":
        from optik.models.ssl import build_backbone

        model = build_backbone(model_cfg, package.preprocess["image_size"])
    else:
        raise ModelError(f"task {package.task!r} packages are not supported by this optik version")
    try:
        model.load_state_dict(package.state_dict)
    except RuntimeError as exc:
        raise ModelError(f"the package's weights do not fit {model_cfg.name}: {str(exc).splitlines()[0]}") from None
    return model.eval()
