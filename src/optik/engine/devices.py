"""The accelerator and devices a run asks for, checked against this machine before any data is read.

Lightning would find out too, but only once the Trainer is built (after the data scan), and in its own
terms; the schema has already checked the form of `train.devices` (`optik.config.schema.parse_devices`).
"""

from __future__ import annotations

import torch

from optik.errors import ConfigError


def check_devices(train_cfg) -> None:
    """`train.accelerator` is present here, and `train.devices` asks for no more GPUs than there are."""
    accelerator, devices = train_cfg.accelerator, train_cfg.devices
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    mps = torch.backends.mps.is_available()
    if accelerator == "cuda" and not gpus or accelerator == "gpu" and not (gpus or mps):
        raise ConfigError(
            f"train.accelerator: {accelerator} asked for, but torch sees no CUDA GPU on this machine "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
            "use train.accelerator=cpu, or auto (the GPU when there is one)"
        )
    if accelerator == "mps" and not mps:
        raise ConfigError("train.accelerator: mps (Apple GPU) is not available here; use train.accelerator=cpu or auto")
    on_cuda = gpus > 0 and accelerator in ("auto", "gpu", "cuda")
    if on_cuda and isinstance(devices, int) and devices > gpus:
        raise ConfigError(
            f"train.devices: {devices} GPUs asked for, this machine has {gpus}; "
            f"use train.devices={gpus} (or auto: all of them)"
        )
    if on_cuda and isinstance(devices, list) and max(devices) >= gpus:
        raise ConfigError(
            f"train.devices: no GPU with id {max(devices)}; this machine has {gpus} (ids 0 to {gpus - 1})"
        )
    if not on_cuda and accelerator != "mps" and isinstance(devices, list):
        raise ConfigError(
            f"train.devices: a list of device ids ({devices}) picks GPUs, and this run is on the CPU; "
            "give a number of processes (e.g. 2) or auto"
        )
