"""Detector builders: every named torchvision detector, timm backbones, local weights into detector or backbone."""

from __future__ import annotations

import pytest
import torch

from optik.config.load import load_config
from optik.errors import ConfigError, ModelError
from optik.models.detect import DETECTORS, build_detector, drop_background, has_masks, load_detector_weights


def detect_config(*overrides: str):
    return load_config(None, ["task=detect", "data.image_size=96", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_named_detector_builds_and_detects(name):
    cfg = detect_config(f"model.name={name}")
    model = build_detector(cfg.model, cfg.data, num_classes=3).eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)][-1]
    assert head is not None
    with torch.no_grad():
        (output,) = model([torch.rand(3, 80, 100)])
    output = drop_background(output)
    assert set(output) >= {"boxes", "labels", "scores"}
    assert ("masks" in output) == has_masks(name)
    assert output["boxes"].shape[1] == 4
    if len(output["labels"]):
        # 0 is the background, never an object
        assert 1 <= int(output["labels"].min()) and int(output["labels"].max()) <= 3


def test_unknown_detector_names_the_closest():
    cfg = detect_config("model.name=fasterrcnn_resnet50_fpn_v3")
    with pytest.raises(ConfigError, match="did you mean 'fasterrcnn_resnet50_fpn_v2'"):
        build_detector(cfg.model, cfg.data, 3)


@pytest.mark.parametrize(
    "name", ["fasterrcnn_resnet50_fpn", "fcos_resnet50_fpn", "retinanet_resnet50_fpn", "maskrcnn_resnet50_fpn"]
)
def test_timm_backbone_under_each_head(name):
    cfg = detect_config(f"model.name={name}", "model.backbone=resnet18")
    model = build_detector(cfg.model, cfg.data, 2).eval()
    assert type(model.backbone).__name__ == "TimmFPN"
    with torch.no_grad():
        (output,) = model([torch.rand(3, 96, 96)])
    assert ("masks" in output) == has_masks(name)


def test_timm_backbone_refused_for_ssd_and_unknown_names():
    cfg = detect_config("model.name=ssdlite320_mobilenet_v3_large", "model.backbone=resnet18")
    with pytest.raises(ConfigError, match="model.backbone works with"):
        build_detector(cfg.model, cfg.data, 2)
    cfg = detect_config("model.name=fcos_resnet50_fpn", "model.backbone=resnet_nonexistent")
    with pytest.raises(ConfigError, match="resnet_nonexistent"):
        build_detector(cfg.model, cfg.data, 2)


def test_classifier_weights_load_into_the_backbone(tmp_path):
    import timm

    classifier = timm.create_model("resnet18", num_classes=10)
    torch.save({"state_dict": {f"module.{k}": v for k, v in classifier.state_dict().items()}}, tmp_path / "cls.pth")
    cfg = detect_config("model.name=fcos_resnet50_fpn", "model.backbone=resnet18")
    model = build_detector(cfg.model, cfg.data, 2)
    report = load_detector_weights(model, tmp_path / "cls.pth", None)
    assert "into the backbone" in report.source
    assert len(report.matched) > 50
    assert torch.equal(model.backbone.body.conv1.weight, classifier.conv1.weight)


def test_whole_detector_weights_round_trip_and_head_mismatch_is_reported(tmp_path):
    cfg = detect_config("model.name=fcos_resnet50_fpn", "model.backbone=resnet18")
    source = build_detector(cfg.model, cfg.data, 3)
    torch.save(source.state_dict(), tmp_path / "det.pth")
    same = build_detector(cfg.model, cfg.data, 3)
    report = load_detector_weights(same, tmp_path / "det.pth", None)
    assert len(report.matched) == report.total and "backbone" not in report.source
    other = build_detector(cfg.model, cfg.data, 5)  # other classes: the class head stays initialised
    report = load_detector_weights(other, tmp_path / "det.pth", None)
    assert report.mismatched and all("cls_logits" in key for key in report.mismatched)


def test_weights_that_fit_nothing_fail_clearly(tmp_path):
    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "junk.pth")
    cfg = detect_config("model.name=fcos_resnet50_fpn", "model.backbone=resnet18")
    with pytest.raises(ModelError, match="matches the model"):
        load_detector_weights(build_detector(cfg.model, cfg.data, 2), tmp_path / "junk.pth", None)


def test_with_a_timm_backbone_the_head_alone_is_the_name():
    cfg = detect_config("model.name=fcos", "model.backbone=resnet18")
    model = build_detector(cfg.model, cfg.data, 2)
    assert type(model).__name__ == "FCOS" and type(model.backbone).__name__ == "TimmFPN"
    with pytest.raises(ConfigError, match="unknown detector 'fcos'.*with model.backbone also"):
        build_detector(detect_config("model.name=fcos").model, cfg.data, 2)
