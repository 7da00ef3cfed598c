"""A run killed with SIGKILL mid-epoch and continued with --resume ends where an uninterrupted run ends."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_optik, tiny_overrides


def command(root, work, deterministic):
    args = [sys.executable, "-m", "optik.cli", "train", "resnet18_small", "--work-dir", str(work)]
    for item in [
        *tiny_overrides(root, epochs=4, size=16),
        "data.batch_size=32",
        "data.num_workers=1",
        "data.augment.hflip=0",
        f"train.deterministic={str(deterministic).lower()}",
    ]:
        args += ["--set", item]
    return args


def val_rows(work):
    rows = [r for r in csv.DictReader(open(work / "logs" / "metrics.csv")) if r.get("val/acc1")]
    return {int(r["epoch"]): (float(r["val/acc1"]), float(r["val/loss"])) for r in rows}, len(rows)


def kill_mid_epoch(args, work):
    """Start training, wait until epoch 2 is saved, then SIGKILL halfway through epoch 3."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = work / "checkpoints"
    seen = {}
    while proc.poll() is None and len(seen) < 2:
        for n in (1, 2):
            if n not in seen and (checkpoints / f"epoch-{n}.ckpt").exists():
                seen[n] = time.monotonic()
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed"
    time.sleep((seen[2] - seen[1]) / 2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (checkpoints / "epoch-3.ckpt").exists() and not (work / "model.pt").exists()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits with a smaller train split (540 images: 17 batches of 32 an epoch) and the usual val split (270 images)."""
    from conftest import shared_once

    from optik.tools.digits import write_digits

    def make(root):
        write_digits(root, size=16, fractions=(0.3, 0.15, 0.55))
        return root

    return shared_once(tmp_path_factory, "resume_digits", make)


@pytest.mark.slow
@pytest.mark.parametrize("deterministic", [True, False])
def test_sigkill_then_resume_matches_uninterrupted(digits, tmp_path, deterministic):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(command(digits, whole, deterministic), check=True, capture_output=True)
    kill_mid_epoch(command(digits, broken, deterministic), broken)

    resumed = run_optik("train", "--resume", "--work-dir", broken)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    expected, _ = val_rows(whole)
    got, count = val_rows(broken)
    assert sorted(got) == [0, 1, 2, 3] and count == 4  # every epoch once: history kept, redone epoch not doubled
    final_expected, final_got = expected[3], got[3]
    if deterministic:
        assert final_got == final_expected
        a = torch.load(whole / "model.pt", weights_only=True)["state_dict"]
        b = torch.load(broken / "model.pt", weights_only=True)["state_dict"]
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert abs(final_got[0] - final_expected[0]) <= 0.01
