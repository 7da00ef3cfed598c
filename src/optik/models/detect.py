"""Detectors: torchvision's builders by name, optionally on a timm backbone with a feature pyramid.

Class convention: the data's labels are 0-based class indices; torchvision detectors reserve
index 0 for the background, so a detector is built with `len(classes) + 1` outputs and the task
shifts labels by one on the way in and out; `drop_background` removes label-0 outputs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from optik.errors import ConfigError, ModelError
from optik.models.hub import hub_offline, hub_reachable, why_unavailable

# name -> (builder name in torchvision.models.detection, family): the family decides the keyword names
DETECTORS: dict[str, str] = {
    "fasterrcnn_mobilenet_v3_large_fpn": "rcnn",
    "fasterrcnn_mobilenet_v3_large_320_fpn": "rcnn",
    "fasterrcnn_resnet50_fpn": "rcnn",
    "fasterrcnn_resnet50_fpn_v2": "rcnn",
    "maskrcnn_resnet50_fpn": "rcnn",
    "maskrcnn_resnet50_fpn_v2": "rcnn",
    "retinanet_resnet50_fpn": "dense",
    "retinanet_resnet50_fpn_v2": "dense",
    "fcos_resnet50_fpn": "dense",
    "ssdlite320_mobilenet_v3_large": "ssd",
    "ssd300_vgg16": "ssd",
}

# detector classes a timm backbone can be put under, by the builder name's first word, and their family;
# with model.backbone the head's word alone is the name (`fcos`), as the builder's own backbone is not used
TIMM_HEADS: dict[str, str] = {"fasterrcnn": "rcnn", "maskrcnn": "rcnn", "retinanet": "dense", "fcos": "dense"}


def has_masks(name: str) -> bool:
    """Whether the detector predicts instance masks (and needs them to train)."""
    return name.startswith("maskrcnn")


def detector_kwargs(family: str, model_cfg, data_cfg) -> dict:
    """Keyword arguments of a torchvision detector: input size, normalisation, post-processing."""
    size = data_cfg.image_size
    common = {"image_mean": list(data_cfg.mean), "image_std": list(data_cfg.std)}
    if family == "rcnn":
        return {
            **common,
            "min_size": size,
            "max_size": size,
            "box_score_thresh": model_cfg.score_threshold,
            "box_nms_thresh": model_cfg.nms_threshold,
            "box_detections_per_img": model_cfg.detections_per_image,
        }
    post = {
        "score_thresh": model_cfg.score_threshold,
        "nms_thresh": model_cfg.nms_threshold,
        "detections_per_img": model_cfg.detections_per_image,
    }
    if family == "dense":
        return {**common, **post, "min_size": size, "max_size": size}
    return {**common, **post}  # SSD resizes to its own fixed square


class TimmFPN(nn.Module):
    """A timm model's last feature maps through a feature pyramid: four plus a pooled level (R-CNN), or
    three plus P6/P7 (RetinaNet, FCOS), the five maps torchvision's default anchors are made for."""

    def __init__(self, name: str, pretrained: bool, out_channels: int = 256, extra: str = "pool"):
        super().__init__()
        import timm
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

        try:
            probe = timm.create_model(name, pretrained=False, features_only=True)
        except Exception as exc:  # unknown name, or no feature maps
            raise ConfigError(f"model.backbone: timm cannot give feature maps for {name!r} ({exc})") from None
        levels = len(probe.feature_info.channels())
        used = 4 if extra == "pool" else 3  # five maps in all, as torchvision's anchor generators expect
        indices = tuple(range(max(0, levels - used), levels))
        offline = pretrained and not hub_reachable()
        try:
            with hub_offline(offline):
                self.body = timm.create_model(name, pretrained=pretrained, features_only=True, out_indices=indices)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelError(
                f"could not get the published weights of the backbone {name} ({why_unavailable(exc, offline)}); offline, set "
                "model.pretrained_backbone: false"
            ) from None
        channels = self.body.feature_info.channels()
        blocks = LastLevelMaxPool() if extra == "pool" else LastLevelP6P7(out_channels, out_channels)
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=blocks)
        self.out_channels = out_channels

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))


def build_timm_detector(model_cfg, num_outputs: int, kwargs: dict) -> nn.Module:
    from torchvision.models import detection

    head = model_cfg.name.split("_")[0]
    classes: dict[str, Callable[..., nn.Module]] = {
        "fasterrcnn": detection.FasterRCNN,
        "maskrcnn": detection.MaskRCNN,
        "retinanet": detection.RetinaNet,
        "fcos": detection.FCOS,
    }
    backbone = TimmFPN(
        model_cfg.backbone,
        model_cfg.pretrained_backbone,
        extra="pool" if head in ("fasterrcnn", "maskrcnn") else "p6p7",
    )
    return classes[head](backbone, num_classes=num_outputs, **kwargs)


def detector_family(model_cfg) -> str:
    """The family of the detector `model.name` names (it decides the keyword names), checked before any
    data is read: a torchvision builder, or with `model.backbone` one of the heads a timm backbone takes."""
    name = model_cfg.name
    if model_cfg.backbone and name.split("_")[0] not in TIMM_HEADS and name in DETECTORS:
        raise ConfigError(f"model.backbone works with {', '.join(TIMM_HEADS)} detectors, not {name!r}")
    if model_cfg.backbone and name in TIMM_HEADS:
        return TIMM_HEADS[name]
    if name in DETECTORS:
        return DETECTORS[name]
    import difflib

    choices = [*DETECTORS, *TIMM_HEADS] if model_cfg.backbone else list(DETECTORS)
    close = difflib.get_close_matches(name, choices, n=1)
    raise ConfigError(
        f"model.name: unknown detector {name!r}"
        + (f" (did you mean {close[0]!r}?)" if close else "")
        + f"; choose one of {', '.join(DETECTORS)}"
        + f" (with model.backbone also {', '.join(TIMM_HEADS)})"
    )


def build_detector(model_cfg, data_cfg, num_classes: int) -> nn.Module:
    """The detector a `DetectModelConfig` names, with `num_classes` + 1 (background) outputs.

    `model.pretrained` loads torchvision's COCO weights (online) into every layer whose shape fits;
    the class-specific head layers stay freshly initialised.
    """
    from torchvision.models import detection

    family = detector_family(model_cfg)
    kwargs = detector_kwargs(family, model_cfg, data_cfg)
    if model_cfg.backbone:
        return build_timm_detector(model_cfg, num_classes + 1, kwargs)
    builder = getattr(detection, model_cfg.name)
    if model_cfg.trainable_backbone_layers is not None:
        kwargs["trainable_backbone_layers"] = model_cfg.trainable_backbone_layers
    backbone_weights = "DEFAULT" if model_cfg.pretrained_backbone and not model_cfg.pretrained else None
    model = builder(weights=None, weights_backbone=backbone_weights, num_classes=num_classes + 1, **kwargs)
    if model_cfg.pretrained:
        coco = builder(weights="DEFAULT", **kwargs)
        fits = {
            k: v
            for k, v in coco.state_dict().items()
            if k in model.state_dict() and model.state_dict()[k].shape == v.shape
        }
        model.load_state_dict(fits, strict=False)
    return model


def backbone_module(model: nn.Module) -> nn.Module:
    """The part of a detector that backbone-only weights load into (the classifier trunk)."""
    backbone = getattr(model, "backbone", model)
    return getattr(backbone, "body", getattr(backbone, "features", backbone))


def load_detector_weights(model: nn.Module, path, prefix: str | None):
    """Local weights into a detector: a whole detector's, or a classifier's into the backbone.

    Whichever of the two takes more of the file's tensors is used; the key report says which.
    """
    from optik.models.weights import count_matching, extract_state_dict, load_state, read_checkpoint

    state = extract_state_dict(read_checkpoint(path))
    whole, trunk = model, backbone_module(model)
    target = whole if count_matching(state, whole, prefix) >= count_matching(state, trunk, prefix) else trunk
    report = load_state(target, state, str(path), prefix)
    if target is trunk:
        report.source += " (into the backbone)"
    return report


def drop_background(output: dict) -> dict:
    """A detector output without label-0 entries: sigmoid heads (RetinaNet, FCOS) score index 0 like
    any class, but it is never a training target, so such an entry is no object of any class."""
    keep = output["labels"] > 0
    if bool(keep.all()):
        return output
    return {key: value[keep] for key, value in output.items()}


def check_detector(model: nn.Module, name: str) -> None:
    """One forward pass on a blank image, so a broken build fails before training starts."""
    model.eval()
    try:
        with torch.no_grad():
            model([torch.zeros(3, 64, 64)])
    except Exception as exc:
        raise ModelError(f"{name} fails on a test image: {type(exc).__name__}: {exc}") from None
