"""The model package (`model.pt`): weights, resolved config, class names and eval preprocessing in one file.

Everything that predicts (CLI, services, batch evaluation) loads models through `load_package`,
which also accepts the Lightning checkpoints a training run writes; the package's task builds its
network (`optik.tasks`).
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
        return {
            "format": FORMAT,
            "version": VERSION,
            "task": self.task,
            "config": self.config,
            "classes": self.classes,
            "preprocess": self.preprocess,
            "state_dict": self.state_dict,
        }


def save_package(package: ModelPackage, path: str | Path) -> Path:
    """Write a package atomically, tensors on the CPU."""
    package.state_dict = {k: v.detach().cpu().contiguous() for k, v in package.state_dict.items()}
    return write_atomic(path, lambda fh: torch.save(package.to_dict(), fh))


def load_package(path: str | Path) -> ModelPackage:
    """Read a model package or a Lightning checkpoint of an optik run (weights_only=True)."""
    content = read_checkpoint(path)
    if content.get("format") == FORMAT:
        if content.get("version", 0) > VERSION:
            raise ModelError(
                f"{path} was written by a newer optik (package version {content['version']}); upgrade optik"
            )
        return ModelPackage(
            content["task"], content["config"], list(content["classes"]), content["preprocess"], content["state_dict"]
        )
    hparams = content.get("hyper_parameters") or {}
    if "state_dict" in content and {"config", "classes", "preprocess"} <= set(hparams):
        # a training module names the part of its model that is the package (pretraining: the backbone)
        prefix = hparams.get("package_prefix", legacy_prefix(hparams["config"]))
        state = inference_weights(content["state_dict"], prefix)
        return ModelPackage(
            hparams["config"]["task"], hparams["config"], list(hparams["classes"]), hparams["preprocess"], state
        )
    raise ModelError(f"{path} {what_it_holds(content)}, not an optik model package: {USE_INSTEAD.format(path=path)}")


USE_INSTEAD = (
    "give the model.pt (or checkpoints/*.ckpt) an `optik train` run writes, which also holds the class names and "
    "preprocessing; to train from these weights, set model.weights: {path} in a config"
)


def what_it_holds(content: dict) -> str:
    """A few words on a weights file that is no optik package: bare weights, or another tool's checkpoint."""
    tensors = sum(isinstance(v, torch.Tensor) for v in content.values())
    if content and tensors == len(content):
        return f"holds bare weights (a state_dict of {tensors} tensor{'s' if tensors != 1 else ''})"
    if "pytorch-lightning_version" in content:
        return "is a Lightning checkpoint of another program"
    inner = next(
        (content[k] for k in ("state_dict", "model", "model_state_dict") if isinstance(content.get(k), dict)), None
    )
    if inner is not None:
        return "holds a model's weights in a wrapper (keys " + ", ".join(list(content)[:5]) + ")"
    return "holds no optik model (keys " + ", ".join(map(str, list(content)[:5])) + ")"


def legacy_prefix(config: dict) -> str:
    """The package prefix of a checkpoint written before training modules named theirs: a pretraining
    run's package is its backbone (DINO's teacher), any other run's the whole model."""
    if "ssl" not in config:
        return ""
    return "teacher_backbone." if config["ssl"].get("method") == "dino" else "backbone."


def inference_weights(state: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """The model's weights from a training module's state: the EMA copy when there is one; of them,
    those under `prefix` (stripped) when one is given."""
    for wrapper in ("ema.module.", "model."):
        picked = {k[len(wrapper) :]: v for k, v in state.items() if k.startswith(wrapper)}
        if picked:
            state = picked
            break
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def load_network(model: nn.Module, package: ModelPackage) -> nn.Module:
    """`model` with the package's weights loaded, in eval mode (the task builds the network)."""
    try:
        model.load_state_dict(package.state_dict)
    except RuntimeError as exc:
        name = package.config.get("model", {}).get("name", "the model")
        raise ModelError(f"the package's weights do not fit {name}: {str(exc).splitlines()[0]}") from None
    return model.eval()
