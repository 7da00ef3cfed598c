"""Model building: timm names, plug-in factories, and the errors users meet."""

import textwrap

import pytest
import torch

from optik.config import load_config
from optik.errors import ConfigError, ModelError
from optik.models.classify import build_classifier


def model_cfg(*overrides):
    return load_config(None, list(overrides)).model


def test_timm_name_gets_num_classes_and_vit_gets_image_size():
    model = build_classifier(model_cfg("model.name=resnet18"), 7, 32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    vit = build_classifier(model_cfg("model.name=vit_tiny_patch16_224"), 3, 64)
    assert vit(torch.zeros(1, 3, 64, 64)).shape == (1, 3)


def test_unknown_timm_name_suggests():
    with pytest.raises(ConfigError, match="unknown timm architecture 'resnet_18'"):
        build_classifier(model_cfg("model.name=resnet_18"), 3, 32)


def test_pretrained_offline_names_model_weights(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelError, match="model.weights"):
        build_classifier(model_cfg("model.name=resnet18", "model.pretrained=true"), 3, 32)


def write_plugin(tmp_path, body):
    path = tmp_path / "my_model.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_plugin_with_and_without_num_classes(tmp_path):
    path = write_plugin(
        tmp_path,
        """
        import torch.nn as nn
        import timm

        def build(num_classes=1000):
            return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

        def fixed():
            return timm.create_model("resnet18", num_classes=1000)

        def not_a_model():
            return 42
    """,
    )
    model = build_classifier(model_cfg(f"model.name={path}:build"), 5, 16)
    assert model(torch.zeros(1, 3, 16, 16)).shape == (1, 5)
    head_replaced = build_classifier(model_cfg(f"model.name={path}:fixed"), 4, 32)
    assert head_replaced.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ModelError, match="returned int"):
        build_classifier(model_cfg(f"model.name={path}:not_a_model"), 4, 32)
    with pytest.raises(ConfigError, match="no callable 'nope'.*build"):
        build_classifier(model_cfg(f"model.name={path}:nope"), 4, 32)
    with pytest.raises(ConfigError, match="model file not found"):
        build_classifier(model_cfg(f"model.name={tmp_path}/absent.py:build"), 4, 32)


def test_an_unknown_size_of_a_family_suggests_its_main_sizes():
    from optik.models.classify import check_architecture

    with pytest.raises(ConfigError) as info:
        check_architecture("resnet999")
    similar = str(info.value).split("similar: ")[1].split(" (")[0].split(", ")
    assert {"resnet18", "resnet50"} <= set(similar)
    assert "path/to/file.py:factory" in str(info.value)
    with pytest.raises(ConfigError, match="similar: .*vit_small_patch16_224"):
        check_architecture("vit_smal_patch16_224")
    with pytest.raises(ConfigError, match="model file not found"):
        check_architecture("no/such/file.py:build")
