"""Self-supervised pretraining under DDP: the methods that need the whole batch (negatives, Sinkhorn,
cross-correlation, DINO's centre) see it across processes, and `optik train` pretrains under torchrun."""

import csv
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import run_torchrun

METHODS = ("simclr", "moco_v3", "swav", "barlow_twins", "dino")

# One step of each method on 16 fixed inputs, split over the processes of torchrun (1 or 2). Eval mode:
# batch norm uses its running statistics, so what differs between 1 and 2 processes is only what the
# method itself shares across them.
STEP = """
import sys
import torch, torch.distributed as dist
from optik.config.load import load_config
from optik.models.ssl import build_backbone, build_ssl

out, methods = sys.argv[1], sys.argv[2:]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
share = 16 // world
results = {}
for method in methods:
    torch.manual_seed(0)
    cfg = load_config("ssl_resnet18_small", ["data.root=.", "data.image_size=16", f"ssl.method={method}", "ssl.hidden_dim=64", "ssl.out_dim=32",
                                             "ssl.prototypes=16", "ssl.views.local_views=2", "ssl.views.local_size=8"])
    model = build_ssl(cfg, build_backbone(cfg.model, 16)).eval()
    generator = torch.Generator().manual_seed(1)
    views = [torch.randn(16, 3, s, s, generator=generator) for s in (16, 16, 8, 8)]
    loss = model.loss([v[rank * share:(rank + 1) * share] for v in views], epoch=0, progress=0.0)
    loss.backward()
    # the heads' gradients and the stem's, which the gradient reaches through every layer of the backbone
    grad = torch.cat([p.grad.flatten() for name, p in model.named_parameters()
                      if p.grad is not None and (not name.startswith("backbone.") or name == "backbone.conv1.weight")])
    for value in (loss.detach(), grad):  # what DDP and the logged loss (sync_dist) do: the mean over processes
        dist.all_reduce(value)
        value /= world
    centre = getattr(getattr(model, "criterion", None), "center", None)
    results[method] = {"loss": float(loss), "grad": grad, "centre": centre}
if rank == 0:
    torch.save(results, out)
dist.destroy_process_group()
"""


def steps(script: Path, processes: int, methods=METHODS) -> dict:
    out = script.with_suffix(f".{processes}.pt")
    run_torchrun(processes, script, out, *methods)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """Every method's step in one process and in two."""
    script = tmp_path_factory.mktemp("ssl_ddp") / "step.py"
    script.write_text(STEP)
    return steps(script, 1), steps(script, 2)


ONE_AND_TWO = pytest.mark.xdist_group("ssl_ddp_steps")  # the tests of `one_and_two` on one worker: it is made once


@pytest.mark.slow  # pretraining under torchrun (gloo)
@ONE_AND_TWO
@pytest.mark.parametrize("method", METHODS)
def test_two_processes_see_the_whole_batch(method, one_and_two):
    one, two = (runs[method] for runs in one_and_two)
    # the loss (and DINO's centre) of 2 x 8 inputs is that of one process on all 16
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5, abs=1e-6)
    if method == "dino":
        torch.testing.assert_close(two["centre"], one["centre"], rtol=1e-5, atol=1e-7)
    # and so is the averaged gradient, which DDP applies on every process
    # (many values summed in another order: compared as a whole, relative to the gradient's size)
    error = float((two["grad"].double() - one["grad"].double()).norm() / one["grad"].double().norm())
    assert error < 1e-5, f"{method}: gradients differ by {error:.2e} of their norm"


@pytest.mark.slow  # pretraining under torchrun (gloo)
@ONE_AND_TWO
def test_negatives_come_from_other_processes(one_and_two, tmp_path):
    """The check above can tell: contrasting only a process's own half gives another loss."""
    one, two = (runs["simclr"] for runs in one_and_two)
    half = tmp_path / "half.py"
    half.write_text(
        STEP.replace("share = 16 // world", "share = 8").replace("rank * share:(rank + 1) * share", ":share")
    )
    alone = steps(half, 1, ["simclr"])["simclr"]
    assert abs(alone["loss"] - one["loss"]) > 100 * abs(two["loss"] - one["loss"])


@pytest.mark.slow  # pretraining under torchrun (gloo)
def test_optik_train_pretrains_under_torchrun(digits_root, tmp_path):
    images = tmp_path / "unlabelled"
    images.mkdir()
    for i, path in enumerate(sorted((digits_root / "train").rglob("*.png"))[::20][:32]):
        shutil.copy(path, images / f"{i}.png")
    values = [
        f"data.root={images}",
        "data.image_size=16",
        "data.batch_size=8",
        "data.num_workers=0",
        "ssl.method=simclr",
        "ssl.hidden_dim=64",
        "ssl.out_dim=32",
        "ssl.views.hflip=0",
        "train.epochs=2",
        "train.log_every_n_steps=1",
        "train.accelerator=cpu",
        "train.devices=2",
        "train.strategy=ddp",
    ]
    run = run_torchrun(
        2,
        "-m",
        "optik.cli",
        "train",
        "ssl_resnet18_small",
        "--work-dir",
        str(tmp_path / "run"),
        *[a for v in values for a in ("--set", v)],
    )
    # 32 images over 2 processes in batches of 8: 2 steps an epoch each
    assert "process 0 of 2 (node 0, gloo on cpu): 2 batches per epoch" in run.stdout
    assert "process 1 of 2 (node 0, gloo on cpu): 2 batches per epoch" in run.stdout
    assert run.stdout.count("work dir:") == 1
    package = torch.load(tmp_path / "run" / "backbone.pt", weights_only=True)
    assert package["task"] == "pretrain" and package["state_dict"]
    with open(tmp_path / "run" / "logs" / "metrics.csv", newline="") as f:
        losses = [float(row["train/loss_step"]) for row in csv.DictReader(f) if row.get("train/loss_step")]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
