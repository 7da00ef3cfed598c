"""A pretrained model's own preprocessing fills the data keys a config leaves out; no weights are fetched."""

import pytest
from conftest import run_optik

from optik.config import config_to_dict, load_config, parse_config
from optik.config.schema import IMAGENET_MEAN, IMAGENET_STD
from optik.errors import ConfigError

HALF = (0.5, 0.5, 0.5)

# the values timm 1.0 records for these weights (timm.models.get_pretrained_cfg)
TAGS = {
    "resnet50.a1_in1k": dict(image_size=224, crop_pct=0.95, interpolation="bicubic", mean=IMAGENET_MEAN),
    "vit_base_patch16_224.augreg_in21k": dict(
        image_size=224, crop_pct=0.9, interpolation="bicubic", mean=HALF, std=HALF
    ),
    "efficientnet_b3.ra2_in1k": dict(image_size=288, crop_pct=0.875, interpolation="bicubic", std=IMAGENET_STD),
    "convnext_tiny.fb_in1k": dict(image_size=224, crop_pct=0.875, interpolation="bicubic"),
}


def data_values(cfg, keys):
    return {key: getattr(cfg.data, key) for key in keys}


@pytest.mark.parametrize("tag", TAGS)
def test_a_tagged_name_brings_its_preprocessing(tag, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a download attempt would fail, not pass unnoticed
    cfg = load_config(None, [f"model.name={tag}"])
    assert cfg.model.pretrained is False  # the tag alone decides (config/pretrained.py's rule)
    assert data_values(cfg, TAGS[tag]) == TAGS[tag]


def test_set_keys_win_even_when_they_equal_the_defaults(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("model: {name: resnet50.a1_in1k}\ndata: {crop_pct: 0.875}\n")  # 0.875 is the default
    cfg = load_config(config, ["data.image_size=160", "data.mean=[0.1, 0.2, 0.3]"])
    assert (cfg.data.crop_pct, cfg.data.image_size, cfg.data.mean) == (0.875, 160, (0.1, 0.2, 0.3))
    assert (cfg.data.interpolation, cfg.data.std) == ("bicubic", IMAGENET_STD)  # left out: the model's


def test_pretrained_true_takes_the_default_tag_and_an_untagged_name_without_it_keeps_the_defaults():
    fetched = load_config(None, ["model.name=vit_base_patch16_224", "model.pretrained=true"])
    assert (fetched.data.mean, fetched.data.interpolation) == (
        HALF,
        "bicubic",
    )  # its default tag, augreg2_in21k_ft_in1k
    scratch = load_config(None, ["model.name=vit_base_patch16_224"])
    assert data_values(scratch, ["mean", "interpolation", "crop_pct"]) == {
        "mean": IMAGENET_MEAN,
        "interpolation": "bilinear",
        "crop_pct": 0.875,
    }


def test_pretraining_takes_it_too_and_detectors_and_plugins_keep_theirs(tmp_path):
    ssl = load_config("ssl_resnet18_small", ["model.name=test_vit.r160_in1k"])
    assert (ssl.data.mean, ssl.data.interpolation) == (HALF, "bicubic")
    assert (ssl.data.image_size, ssl.data.crop_pct) == (32, 1.0)  # the preset sets these
    detector = load_config("fcos_resnet18_small", ["model.backbone=resnet18.a1_in1k", "model.pretrained_backbone=true"])
    assert detector.data.mean == IMAGENET_MEAN
    (tmp_path / "net.py").write_text("def build(num_classes):\n    raise AssertionError('not built')\n")
    plugin = load_config(None, [f"model.name={tmp_path / 'net.py'}:build", "model.pretrained=true"])
    assert plugin.data.interpolation == "bilinear"


def test_a_resolved_config_reads_back_the_same():
    """model.pt and config.yaml hold every key: read back, nothing is resolved again."""
    cfg = load_config(None, ["model.name=resnet50.a1_in1k", "data.interpolation=bilinear"])
    again = parse_config(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)


def test_an_unknown_tag_names_the_known_ones():
    with pytest.raises(ConfigError, match=r"timm has no weights 'resnet50.nope'; resnet50 has resnet50.a1_in1k, "):
        load_config(None, ["model.name=resnet50.nope"])


def test_config_show_says_what_came_from_the_model():
    shown = run_optik("config", "show", "resnet18_small", "--set", "model.name=resnet50.a1_in1k")
    assert shown.returncode == 0, shown.stderr
    assert "  interpolation: bicubic  # from resnet50.a1_in1k\n" in shown.stdout
    assert "  mean:  # from resnet50.a1_in1k\n" in shown.stdout
    # the preset's own values stay, with what the model would have
    assert "  crop_pct: 1.0  # resnet50.a1_in1k's own is 0.95 (leave the key out to use it)\n" in shown.stdout
    assert "  batch_size: 64\n" in shown.stdout
