"""Stopping `optik train` with Ctrl-C or SIGTERM: one line saying how to resume, exit 128 + signal, no traceback."""

import os
import signal
import subprocess
import sys

import pytest
from conftest import make_colour_set, run_optik, tiny_overrides


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "group"), [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGTERM, False)])
def test_a_stopped_run_says_how_to_resume_and_resumes(tmp_path, signum, group):
    data = make_colour_set(tmp_path / "data", per_class=8)
    work_dir = tmp_path / "run"
    sets = [*tiny_overrides(data, epochs=50), "data.num_workers=1"]
    command = [sys.executable, "-m", "optik.cli", "train", "resnet18_small", "--work-dir", str(work_dir)]
    process = subprocess.Popen(
        command + [arg for value in sets for arg in ("--set", value)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a job; Ctrl-C signals the whole group
    )
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("epoch 2/"):  # epoch 1's checkpoint is written: there is something to resume
            break
    if group:
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)
    lines += process.stdout.readlines()
    output = "".join(lines)
    assert process.wait(timeout=120) == 128 + signum, output
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("interrupted at epoch ")
    assert last.endswith(f"; resume with: optik train --resume --work-dir {work_dir}")
    assert not (work_dir / "model.pt").exists() and f"{work_dir / 'checkpoints' / 'best.ckpt'}, the best so far" in last

    resumed = run_optik("train", "--resume", "--work-dir", work_dir, "--set", "train.epochs=2")
    assert resumed.returncode == 0, resumed.stderr
    assert (work_dir / "model.pt").is_file()
