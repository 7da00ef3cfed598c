"""The accelerator and devices a config asks for, checked against this machine before any data is read."""

import pytest
import torch

from optik.config import load_config
from optik.engine.devices import check_devices
from optik.errors import ConfigError

GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0


def train_cfg(*overrides):
    return load_config(None, list(overrides)).train


def test_what_every_machine_has_passes():
    for overrides in ([], ["train.devices=-1"], ["train.accelerator=cpu", "train.devices=2"]):
        check_devices(train_cfg(*overrides))


@pytest.mark.skipif(GPUS > 0, reason="a machine without a CUDA GPU")
def test_without_a_gpu_cuda_and_gpu_ids_are_refused():
    with pytest.raises(ConfigError, match="train.accelerator: cuda asked for, but torch sees no CUDA GPU"):
        check_devices(train_cfg("train.accelerator=cuda"))
    with pytest.raises(ConfigError, match=r"train.devices: a list of device ids \(\[0\]\) picks GPUs"):
        check_devices(train_cfg("train.devices=[0]"))


@pytest.mark.skipif(GPUS == 0, reason="needs a CUDA GPU")
def test_more_gpus_than_the_machine_has_are_refused():
    check_devices(train_cfg("train.accelerator=cuda", f"train.devices={GPUS}"))
    with pytest.raises(ConfigError, match=f"{GPUS + 1} GPUs asked for, this machine has {GPUS}"):
        check_devices(train_cfg("train.accelerator=cuda", f"train.devices={GPUS + 1}"))
    with pytest.raises(ConfigError, match=f"no GPU with id {GPUS}"):
        check_devices(train_cfg(f"train.devices=[{GPUS}]"))
