"""`make gpu-check` (scripts/gpu_check.py): without CUDA it says so and exits 0; its runner records a failing
command's exit code and last lines and goes on to the next; its table is markdown."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_without_cuda_it_says_so_names_the_build_and_exits_0(tmp_path):
    import torch

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU even where the machine has one
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("CUDA is not available")
    assert f"torch {torch.__version__}" in lines[0]
    assert not (tmp_path / "out").exists()


def test_the_runner_records_a_failing_command_and_runs_the_rest(gpu_check, tmp_path, capsys):
    failing = gpu_check.Check("fails", python("import sys\nfor i in range(30): print('line', i)\nsys.exit(3)"))
    passing = gpu_check.Check("passes", python("print('images/s 12.5')"), lambda run: (True, run.output.strip()))
    outcomes = gpu_check.run_checks([failing, passing], tmp_path / "logs")

    first, second = outcomes
    assert (first.status, first.returncode, first.figures) == ("FAIL", 3, "exit code 3")
    assert first.tail == [f"line {i}" for i in range(30 - gpu_check.TAIL_LINES, 30)]
    assert "line 29" in Path(first.log).read_text() and "[exit code 3" in Path(first.log).read_text()
    assert (second.status, second.returncode, second.figures) == ("pass", 0, "images/s 12.5")
    printed = capsys.readouterr().out
    assert "| line 29" in printed  # a failure's last lines are printed as it happens, for an unattended run
    details = gpu_check.failure_details(outcomes)
    assert "### fails" in details and "exit code: 3" in details and "line 29" in details
    assert "passes" not in details


def test_a_check_past_its_timeout_is_killed_and_recorded(gpu_check, tmp_path):
    slow = gpu_check.Check("sleeps", python("import time; print('started', flush=True); time.sleep(60)"), timeout=1)
    started = time.monotonic()
    (outcome,) = gpu_check.run_checks([slow], tmp_path)
    assert time.monotonic() - started < 30
    assert (outcome.status, outcome.returncode) == ("FAIL", gpu_check.TIMED_OUT)
    assert outcome.figures.startswith("timed out") and outcome.tail == ["started"]


def test_skips_missing_inputs_spent_budget_and_unreadable_results(gpu_check, tmp_path):
    def unreadable(run):
        return True, (tmp_path / "results.json").read_text()

    checks = [
        gpu_check.Check("needs a model", python("pass"), needs=[tmp_path / "model.pt"]),
        gpu_check.Check("not installed", python("pass"), skip="not installed"),
        gpu_check.Check("no results", python("pass"), unreadable),
    ]
    missing, skipped, broken = gpu_check.run_checks(checks, tmp_path / "logs")
    assert (missing.status, skipped.status, broken.status) == ("skip", "skip", "FAIL")
    assert "model.pt missing" in missing.figures and skipped.figures == "not installed"
    assert broken.figures.startswith("could not read its results: FileNotFoundError")
    (late,) = gpu_check.run_checks([checks[2]], tmp_path / "logs", deadline=time.monotonic())
    assert (late.status, late.figures) == ("FAIL", "not run: the --budget is spent")


def test_the_table_is_markdown_with_one_row_per_check(gpu_check):
    outcomes = [
        gpu_check.Outcome("train classify 16-mixed", "pass", "val/acc1 0.950, 4100 img/s", 21.04),
        gpu_check.Outcome("batch-predict a|b", "FAIL", "exit code 1\nsee log", 3.0),
    ]
    assert gpu_check.format_table(outcomes).splitlines() == [
        "| check | result | figures | seconds |",
        "|---|---|---|---:|",
        "| train classify 16-mixed | pass | val/acc1 0.950, 4100 img/s | 21.0 |",
        "| batch-predict a\\|b | FAIL | exit code 1 see log | 3.0 |",
    ]


def test_training_figures_read_what_optik_train_prints(gpu_check):
    output = "data: 10 classes\nepoch 1/2  train/loss 2.3  (9.0s)\nepoch 2/2  train/loss 1.1  val/acc1 0.5  (2.0s)\nbest val/acc1: 0.9\nlast epoch: val/acc1 0.8125  val/loss 0.7\n"
    run = gpu_check.CommandRun([], 0, 12.0, output)
    assert gpu_check.training_figures(run, 1000, "val/acc1") == "val/acc1 0.812, 500 img/s (last epoch 2.0 s)"
    assert gpu_check.training_figures(run, 1000, None).startswith("train/loss 1.100")
