"""The model package read from a training checkpoint: the part of the module it names (a pretraining
run's backbone), and the same for checkpoints written before modules named it."""

from __future__ import annotations

import pytest
import torch

from optik.config.load import config_to_dict, load_config
from optik.data.transforms import Preprocess
from optik.models.package import load_package
from optik.models.ssl import build_backbone, build_ssl
from optik.tasks.training.pretrain import PretrainModule


@pytest.mark.parametrize("method", ["simclr", "dino"])
def test_a_pretraining_checkpoint_is_its_backbone_with_or_without_the_named_prefix(method, tmp_path):
    cfg = load_config(
        "ssl_resnet18_small",
        ["data.root=.", "data.image_size=32", f"ssl.method={method}", "ssl.hidden_dim=32", "ssl.out_dim=64"],
    )
    module = PretrainModule(
        build_ssl(cfg, build_backbone(cfg.model, 32)),
        config_to_dict(cfg),
        Preprocess.from_data_config(cfg.data).to_dict(),
    )
    expected = module.model.export_backbone().state_dict()
    checkpoint = {
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "pytorch-lightning_version": "2.5.0",
    }
    legacy = {
        **checkpoint,
        "hyper_parameters": {k: v for k, v in checkpoint["hyper_parameters"].items() if k != "package_prefix"},
    }
    for name, content in (("new.ckpt", checkpoint), ("old.ckpt", legacy)):
        torch.save(content, tmp_path / name)
        package = load_package(tmp_path / name)
        assert package.task == "pretrain" and package.classes == []
        assert package.state_dict.keys() == expected.keys()
        assert all(torch.equal(package.state_dict[key], value) for key, value in expected.items())
