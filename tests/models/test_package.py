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


def test_files_that_are_no_model_package_say_what_they_are(tmp_path):
    from optik.errors import ModelError

    torch.save({"conv.weight": torch.zeros(2, 3), "conv.bias": torch.zeros(2)}, tmp_path / "bare.pt")
    whole = (tmp_path / "bare.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.pt").write_text("conv.weight 0.1 0.2\n")
    torch.save({"conv.weight": torch.zeros(2, 3)}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = (tmp_path / "legacy.pt").read_bytes()
    (tmp_path / "legacy_cut.pt").write_bytes(legacy[: len(legacy) // 2])
    for name, words in (
        ("bare.pt", "holds bare weights (a state_dict of 2 tensors), not an optik model package"),
        ("cut.pt", "is truncated (its zip archive has lost its end"),
        ("legacy_cut.pt", "is truncated (its data stops early"),
        ("text.pt", "it is a text file, not a PyTorch or optik model file"),
    ):
        with pytest.raises(ModelError) as info:
            load_package(tmp_path / name)
        assert words in str(info.value), str(info.value)
    with pytest.raises(ModelError, match="set model.weights: .*bare.pt in a config"):
        load_package(tmp_path / "bare.pt")
