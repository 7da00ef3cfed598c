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
    return [f"data.root={root}", "data.image_size=16", "data.batch_size=16", "data.num_workers=0", f"ssl.method={method}",
            "ssl.hidden_dim=64", "ssl.out_dim=32", "ssl.memory_bank_size=16", "ssl.prototypes=16", "ssl.views.local_views=2",
            "ssl.views.local_size=8", "ssl.views.hflip=0", f"train.epochs={epochs}", "train.log_every_n_steps=1", "train.keep_checkpoints=1"]


# A known open problem (strict: a fix turns it into a failure to remove the mark). At this scale DINO's
# loss first dips (student and teacher agree on the direction random features share), then climbs
# above ln(out_dim) as the centre catches up, and settles at ln(out_dim): the teacher turns uniform.
# It did so with every recipe tried (LARS/SGD/AdamW, lr 1e-4..0.6, momentum 0.9..0.996, out_dim
# 32..2048, no local views, the centre started from the first batch) and over 160 steps. lightly's
# published DINO example (its code, Adam 1e-3, out_dim 2048) on these 64 images ends at ln(2048) too;
# its loss falls only because its teacher head starts from another random init than the student's.
SLOW_START = {"dino": pytest.mark.xfail(reason="dino's loss settles at ln(out_dim) (uniform teacher) at this scale", strict=True)}
# MoCo v2's key encoder is a slow moving average: its keys stay alike (chance level, ln(bank + 1))
# for the first few dozen steps, so its loss falls over a longer run. Windows of 16 steps smooth the
# noise of a 17-way contrast.
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


@pytest.mark.parametrize("method", [pytest.param(m, marks=SLOW_START[m]) if m in SLOW_START else m for m in SSL_METHODS])
def test_method_trains_and_its_loss_goes_down(method, digit_images, tmp_path):
    epochs = EPOCHS.get(method, 12)
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
    cfg = load_config("ssl_resnet18_small", ["data.root=.", "data.image_size=32", f"ssl.method={method}", "ssl.views.local_views=3", "ssl.views.local_size=12"])
    from PIL import Image

    views = view_transform(cfg)(Image.new("RGB", (48, 40), (120, 30, 200)))
    assert [tuple(v.shape[-2:]) for v in views] == [(32, 32)] * 2 + [(12, 12)] * 3
    assert all(v.dtype == torch.float32 for v in views)
