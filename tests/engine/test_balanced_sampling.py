"""data.sampler: balanced under torchrun: two CPU processes (gloo) each train on their own half of one
class-balanced draw, and together they see each class equally often."""

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from conftest import COLOURS, colour_image, run_torchrun

from optik.config.load import load_config
from optik.data.loaders import BalancedSampler, build_classify_data

NET = """
import torch.nn as nn


def tiny(num_classes: int):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))
"""

# every process writes the (label, image fingerprint) of each sample it trained on
RECORD = """
import hashlib, json, sys
from pathlib import Path

import lightning as L

from optik.config.load import load_config
from optik.engine.train import train


class Record(L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        images, labels = batch
        self.seen += [[int(label), hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()] for image, label in zip(images, labels)]

    def on_train_end(self, trainer, pl_module):
        Path(sys.argv[2], f"rank{trainer.global_rank}.json").write_text(json.dumps(self.seen))


train(load_config("resnet18_small", sys.argv[3:]), work_dir=sys.argv[1], callbacks=[Record()])
"""


def fingerprint(image) -> str:
    return hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest()


@pytest.mark.slow  # torchrun with two processes
def test_two_processes_share_one_balanced_draw(tmp_path):
    rng = np.random.default_rng(0)
    for name, count in (("red", 1000), ("blue", 125)):  # 8 : 1
        folder = tmp_path / "data" / name
        folder.mkdir(parents=True)
        for i in range(count):
            colour_image(COLOURS[name], 8, rng).save(folder / f"{i}.png")
    (tmp_path / "net.py").write_text(NET)
    (tmp_path / "record.py").write_text(RECORD)
    overrides = [
        f"data.root={tmp_path / 'data'}",
        f"model.name={tmp_path / 'net.py'}:tiny",
        "data.image_size=8",
        "data.batch_size=50",
        "data.num_workers=0",
        "data.sampler=balanced",
        # no random crop or flip: an image's fingerprint names the file it came from
        "data.augment.scale=[1, 1]",
        "data.augment.ratio=[1, 1]",
        "data.augment.hflip=0",
        "train.epochs=1",
        "train.validation=false",
        "train.accelerator=cpu",
        "train.devices=2",
        "train.strategy=ddp",
    ]
    run_torchrun(2, tmp_path / "record.py", tmp_path / "run", tmp_path, *overrides, timeout=300)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    cfg = load_config("resnet18_small", overrides)
    train_set = build_classify_data(cfg.data, seed=cfg.train.seed).datasets["train"]
    assert len(train_set) == 900  # 800 red, 100 blue: val_split holds out a fifth
    prints = [fingerprint(train_set[i][0]) for i in range(len(train_set))]
    draw = [index for index, _ in BalancedSampler(train_set.labels, cfg.train.seed)]  # epoch 0, as one process draws it
    # each process trained on half of that one draw, and the halves together are the whole draw: disjoint shares
    assert len(ranks[0]) == len(ranks[1]) == len(draw) // 2
    assert Counter(p for rank in ranks for _, p in rank) == Counter(prints[i] for i in draw)
    shares = Counter(label for rank in ranks for label, _ in rank)
    assert all(abs(count - 450) <= 45 for count in shares.values()), shares
