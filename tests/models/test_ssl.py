"""Every self-supervised method trains through `optik train` (task: pretrain): finite losses that go down."""

import math
import shutil

import lightning as L
import pytest
import torch

from optik.config.load import load_config
from optik.config.schema import SSL_METHODS
from optik.engine.train import train
from optik.models.package import load_package
from optik.models.ssl import METHODS, view_transform


class StepLosses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def pretrain_overrides(root, method, epochs=12):
    """The preset's recipe (LARS, lr 0.6, warm-up), small heads, 16 px views: 4 steps an epoch."""
    return [
        f"data.root={root}",
        "data.image_size=16",
        "data.batch_size=16",
        "data.num_workers=0",
        f"ssl.method={method}",
        "ssl.hidden_dim=64",
        "ssl.out_dim=32",
        "ssl.memory_bank_size=16",
        "ssl.prototypes=16",
        "ssl.views.local_views=2",
        "ssl.views.local_size=8",
        "ssl.views.hflip=0",
        f"train.epochs={epochs}",
        "train.log_every_n_steps=1",
        "train.keep_checkpoints=1",
    ]


# MoCo v2's key encoder is a slow moving average: its keys stay alike (chance level, ln(bank + 1))
# for the first few dozen steps, so its loss falls over a longer run. Windows of 16 steps smooth the
# noise of a 17-way contrast. The others fall clearly within 8 epochs (32 steps; windows of 8).
EPOCHS = {"moco_v2": 40}


def test_every_method_is_registered():
    assert set(METHODS) == set(SSL_METHODS)


@pytest.fixture(scope="module")
def digit_images(digits_root, tmp_path_factory):
    """64 of the real digit scans, as one folder of unlabelled images."""
    folder = tmp_path_factory.mktemp("unlabelled")
    for i, path in enumerate(sorted((digits_root / "train").rglob("*.png"))[::15][:64]):
        shutil.copy(path, folder / f"{i}.png")
    return folder


@pytest.mark.slow  # eight methods trained until the loss falls
@pytest.mark.parametrize("method", SSL_METHODS)
def test_method_trains_and_its_loss_goes_down(method, digit_images, tmp_path):
    epochs = EPOCHS.get(method, 8)
    cfg = load_config("ssl_resnet18_small", pretrain_overrides(digit_images, method, epochs))
    recorder = StepLosses()
    result = train(cfg, work_dir=tmp_path / "run", callbacks=[recorder])
    losses = recorder.losses
    assert len(losses) == 4 * epochs and all(math.isfinite(v) for v in losses)
    package = load_package(result.package)
    assert result.package.name == "backbone.pt" and package.task == "pretrain"
    assert package.state_dict and all(not k.startswith(("backbone.", "head.")) for k in package.state_dict)
    # from step 1: MoCo v2's first step compares against a memory bank of random vectors, an easy start
    window = 16 if epochs > 12 else 8
    first, last = sum(losses[1 : 1 + window]) / window, sum(losses[-window:]) / window
    assert last < first, f"{method}: loss went from {first:.4f} to {last:.4f}: {[round(v, 3) for v in losses]}"


@pytest.mark.parametrize("method", ["swav", "dino"])
def test_multi_crop_methods_get_global_and_local_views(method):
    cfg = load_config(
        "ssl_resnet18_small",
        [
            "data.root=.",
            "data.image_size=32",
            f"ssl.method={method}",
            "ssl.views.local_views=3",
            "ssl.views.local_size=12",
        ],
    )
    from PIL import Image

    views = view_transform(cfg)(Image.new("RGB", (48, 40), (120, 30, 200)))
    assert [tuple(v.shape[-2:]) for v in views] == [(32, 32)] * 2 + [(12, 12)] * 3
    assert all(v.dtype == torch.float32 for v in views)


def test_barlow_twins_loss_is_lightlys_in_one_process():
    """optik computes Barlow Twins itself (whole-batch statistics under DDP); in one process it is lightly's loss."""
    from lightly.loss import BarlowTwinsLoss

    cfg = load_config(
        "ssl_resnet18_small", ["data.root=.", "ssl.method=barlow_twins", "ssl.hidden_dim=32", "ssl.out_dim=16"]
    )
    backbone = torch.nn.Identity()
    backbone.num_features = 16
    method = METHODS["barlow_twins"](backbone, cfg.ssl, 16, None)
    method.head = torch.nn.Identity()
    z0, z1 = torch.randn(12, 16), torch.randn(12, 16)
    expected = BarlowTwinsLoss(lambda_param=cfg.ssl.lambda_param)(z0, z1)
    torch.testing.assert_close(method.loss([z0, z1], 0, 0.0), expected)


def test_dino_head_has_batch_norm_when_the_backbone_has():
    """lightly's ResNet recipe normalises the head's hidden layers (without, DINO's teacher turns uniform on
    small sets); the paper's ViTs have none. `ssl.head_batch_norm` overrides either."""
    from optik.models.ssl import build_backbone, build_ssl

    def norms(name, *extra):
        cfg = load_config(
            "ssl_resnet18_small",
            [
                "data.root=.",
                "data.image_size=32",
                "ssl.method=dino",
                "ssl.hidden_dim=32",
                "ssl.out_dim=64",
                "ssl.views.local_size=16",
                f"model.name={name}",
                *extra,
            ],
        )
        method = build_ssl(cfg, build_backbone(cfg.model, 32))
        return sum(isinstance(m, torch.nn.BatchNorm1d) for m in method.head.modules())

    assert norms("resnet18") == 2 and norms("vit_tiny_patch16_224") == 0
    assert (
        norms("resnet18", "ssl.head_batch_norm=false") == 0
        and norms("vit_tiny_patch16_224", "ssl.head_batch_norm=true") == 2
    )


@pytest.mark.parametrize("method", ["swav", "dino"])
def test_a_transformer_backbone_takes_the_small_crops(method):
    """Multi-crop with a ViT: the local views are smaller than the size the model was built for."""
    from optik.models.ssl import build_backbone, build_ssl

    cfg = load_config(
        "ssl_resnet18_small",
        [
            "data.root=.",
            "data.image_size=32",
            f"ssl.method={method}",
            "ssl.hidden_dim=32",
            "ssl.out_dim=64",
            "ssl.prototypes=16",
            "model.name=vit_tiny_patch16_224",
            "ssl.views.local_views=2",
            "ssl.views.local_size=16",
        ],
    )
    method = build_ssl(cfg, build_backbone(cfg.model, 32))
    views = [torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32), torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)]
    loss = method.loss(views, epoch=0, progress=0.0)
    loss.backward()
    assert math.isfinite(loss.item()) and method.backbone.patch_embed.proj.weight.grad.abs().sum() > 0


def test_swav_keeps_its_step_count_when_resumed(digit_images, tmp_path):
    """`ssl.freeze_prototypes_steps` counts training steps; a resumed run goes on counting, not from 0."""

    def config(epochs):
        return load_config(
            "ssl_resnet18_small", pretrain_overrides(digit_images, "swav", epochs) + ["ssl.freeze_prototypes_steps=6"]
        )

    train(config(1), work_dir=tmp_path / "run")
    first = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    train(config(3), work_dir=tmp_path / "run", resume="last")
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert int(first["model.steps_done"]) == 4 and int(last["model.steps_done"]) == 12
    # frozen for the first 6 steps (4 before the resume, 2 after), trained in the other 6
    key = next(k for k in first if k.startswith("model.prototypes.") and k.endswith("weight"))
    assert not torch.equal(first[key], last[key])


def test_a_transformer_of_one_size_is_refused_for_multi_crop_before_training():
    from optik.errors import ConfigError
    from optik.models.ssl import build_backbone, build_ssl

    cfg = load_config(
        "ssl_resnet18_small",
        [
            "data.root=.",
            "data.image_size=32",
            "ssl.method=dino",
            "ssl.hidden_dim=32",
            "ssl.out_dim=64",
            "model.name=cait_xxs24_224",
            "ssl.views.local_size=16",
        ],
    )
    with pytest.raises(
        ConfigError, match=r"small crops \(6 of 16 px\) do not go through cait_xxs24_224.*ssl.views.local_views=0"
    ):
        build_ssl(cfg, build_backbone(cfg.model, 32))
    without = cfg.model_copy(
        update={"ssl": cfg.ssl.model_copy(update={"views": cfg.ssl.views.model_copy(update={"local_views": 0})})}
    )
    assert build_ssl(without, build_backbone(cfg.model, 32)).backbone.patch_embed.img_size == (32, 32)
