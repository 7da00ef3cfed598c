"""`make gpu-check`: every CUDA path of optik, run once through the real `optik` CLI, as one table.

Mixed-precision training (16-mixed, bf16-mixed) of a classifier and a detector, DDP over all visible
GPUs with SyncBatchNorm, SSL pretraining, `optik test` / `predict` / `batch-predict` in fp16 and bf16,
`serve poll` on cuda, the compiled mode against eager, and ONNX (onnxruntime's CUDA provider when it is
installed). Each check is a subprocess with a timeout; a failing check never stops the others. The
table (check | result | figures | seconds) and every command's log go to --out; exit 1 if a check failed.

Without CUDA it says so and exits 0. `--cpu-dry-run` runs the same checks on the CPU, with the
precisions a CPU has, to prove the command lines and the flow (not the GPU).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TAIL_LINES = 15
LINE_CHARS = 300
TIMED_OUT = 124  # what coreutils' `timeout` returns, so a reader knows it at a glance


@dataclass
class CommandRun:
    command: list[str]
    returncode: int
    seconds: float
    output: str

    @property
    def timed_out(self) -> bool:
        return self.returncode == TIMED_OUT


@dataclass
class Check:
    """One command and how to read what it did: `judge(run)` -> (passed, figures); it runs only when the
    command exited 0. `needs`: files earlier checks make (missing: skipped, not run). `skip`: a reason not
    to run it at all (not a failure)."""

    name: str
    command: list[str]
    judge: Callable[[CommandRun], tuple[bool, str]] = lambda run: (True, "")
    needs: list[Path] = field(default_factory=list)
    timeout: float = 180.0
    skip: str = ""


@dataclass
class Outcome:
    name: str
    status: str  # pass, FAIL or skip
    figures: str
    seconds: float
    command: str = ""
    returncode: int | None = None
    tail: list[str] = field(default_factory=list)
    log: str = ""


def shown(command: list[str]) -> str:
    """The command as a user would type it: `optik ...` rather than `python -m optik.cli ...`."""
    if command[1:3] == ["-m", "optik.cli"]:
        command = ["optik", *command[3:]]
    return shlex.join(command)


def run_command(command: list[str], log: Path, timeout: float) -> CommandRun:
    """Run `command`, its output (stdout and stderr together) into `log`; on timeout the whole process
    group goes (DDP and torchrun start children) and the exit code is 124."""
    header = f"$ {shown(command)}\n\n"
    started = time.monotonic()
    with log.open("w") as out:
        out.write(header)
        out.flush()
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = TIMED_OUT
    seconds = time.monotonic() - started
    output = log.read_text(errors="replace")[len(header) :]
    with log.open("a") as out:
        out.write(f"\n[exit code {returncode}{' (timed out)' if returncode == TIMED_OUT else ''}, {seconds:.1f} s]\n")
    return CommandRun(command, returncode, seconds, output)


def run_check(check: Check, logs: Path, seconds_left: float) -> Outcome:
    """Run one check and record it; whatever goes wrong becomes a FAIL with its reason, never an exception."""
    command = shown(check.command)
    if check.skip:
        return Outcome(check.name, "skip", check.skip, 0.0, command)
    missing = [path for path in check.needs if not path.exists()]
    if missing:
        return Outcome(
            check.name, "skip", f"not run: {missing[0].name} missing (an earlier check failed)", 0.0, command
        )
    if seconds_left < 5:
        return Outcome(check.name, "FAIL", "not run: the --budget is spent", 0.0, command)
    log = logs / f"{re.sub(r'[^A-Za-z0-9]+', '-', check.name).strip('-')}.log"
    try:
        run = run_command(check.command, log, min(check.timeout, seconds_left))
    except Exception as exc:  # a command that cannot start is this check's failure, not the script's
        return Outcome(check.name, "FAIL", f"could not start: {type(exc).__name__}: {exc}", 0.0, command, log=str(log))
    # long lines cut, so that the failures of an unattended run fit in the end of its output
    tail = [line[:LINE_CHARS] for line in run.output.rstrip().splitlines()[-TAIL_LINES:]]
    outcome = Outcome(check.name, "FAIL", "", run.seconds, command, run.returncode, tail, str(log))
    if run.timed_out:
        outcome.figures = f"timed out after {run.seconds:.0f} s"
    elif run.returncode != 0:
        outcome.figures = f"exit code {run.returncode}"
    else:
        try:
            passed, outcome.figures = check.judge(run)
            outcome.status = "pass" if passed else "FAIL"
        except Exception as exc:  # a result file missing or unreadable is this check's failure, not the script's
            outcome.figures = f"could not read its results: {type(exc).__name__}: {exc}"
            outcome.tail += traceback.format_exc().splitlines()[-3:]
    return outcome


def run_checks(checks: list[Check], logs: Path, deadline: float = float("inf")) -> list[Outcome]:
    """Every check in order, each reported as it ends; none stops the rest. `deadline`: time.monotonic()
    after which no further check starts."""
    logs.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for check in checks:
        print(f"[{check.name}] $ {shown(check.command)}", flush=True)
        outcome = run_check(check, logs, deadline - time.monotonic())
        print(f"    {outcome.status} ({outcome.seconds:.1f} s) {outcome.figures}", flush=True)
        if outcome.status == "FAIL":
            print("\n".join(f"    | {line}" for line in outcome.tail), flush=True)
        outcomes.append(outcome)
    return outcomes


def format_table(outcomes: list[Outcome]) -> str:
    """A markdown table: check | result | figures | seconds."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| check | result | figures | seconds |", "|---|---|---|---:|"]
    rows += [f"| {cell(o.name)} | {o.status} | {cell(o.figures)} | {o.seconds:.1f} |" for o in outcomes]
    return "\n".join(rows)


def failure_details(outcomes: list[Outcome]) -> str:
    """For each failed check: its command, exit code, log file and last lines."""
    parts = []
    for o in outcomes:
        if o.status == "FAIL":
            lines = "\n".join(f"    {line}" for line in o.tail)
            parts.append(f"### {o.name}\n$ {o.command}\nexit code: {o.returncode}  log: {o.log}\n{lines}")
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------- reading what optik printed


def last_match(pattern: str, text: str) -> re.Match | None:
    matches = list(re.finditer(pattern, text, re.MULTILINE))
    return matches[-1] if matches else None


def training_figures(run: CommandRun, images: int, metric: str | None) -> str:
    """The final value of the val metric optik prints, and images/s of the last epoch (past start-up and warm-up)."""
    parts = []
    if metric:
        value = last_match(rf"^last epoch: .*\b{re.escape(metric)} ([\d.]+)", run.output)
        parts.append(f"{metric} {float(value[1]):.3f}" if value else f"no {metric} printed")
    else:
        loss = last_match(r"train/loss ([\d.]+)", run.output)
        parts.append(f"train/loss {float(loss[1]):.3f}" if loss else "no train/loss printed")
    epoch = last_match(r"^epoch \d+/\d+ .*\(([\d.]+)s\)\s*$", run.output)
    if epoch and float(epoch[1]) > 0:
        parts.append(f"{images / float(epoch[1]):.0f} img/s (last epoch {float(epoch[1]):.1f} s)")
    return ", ".join(parts)


def top1_by_file(path: Path) -> dict[str, str]:
    """file name -> top-1 class name, from a batch-predict `--format csv` file."""
    with path.open(newline="") as f:
        return {row["filename"]: row["label1"] for row in csv.DictReader(f)}


def agreement(a: dict[str, str], b: dict[str, str]) -> float:
    shared = a.keys() & b.keys()
    return sum(a[k] == b[k] for k in shared) / max(len(shared), 1)


# ----------------------------------------------------------------------------- the data and the checks


@dataclass
class Setup:
    """Where the checks run and what they run with (the CUDA values, or the CPU's in a dry run)."""

    root: Path
    device: str  # cuda or cpu
    gpus: int
    amp16: str  # training precision for "16-mixed" (32 on a CPU)
    amp16_infer: str  # inference --precision for "16"
    epochs: int
    workers: int
    digits: dict[str, int] = field(default_factory=dict)  # images per split
    labels: dict[str, str] = field(default_factory=dict)  # digits test file name -> class
    shapes_train: int = 0

    @property
    def dry(self) -> bool:
        return self.device == "cpu"


def make_data(setup: Setup, quick: bool) -> None:
    from optik.tools.digits import write_digits
    from optik.tools.shapes import write_shapes_set

    limit = 8 if setup.dry else (30 if quick else None)
    setup.digits = write_digits(setup.root / "digits", size=32, limit=limit)
    # sklearn's digits are named by their index in the whole set, so a name is unique across classes
    setup.labels = {p.name: p.parent.name for p in (setup.root / "digits" / "test").glob("*/*.png")}
    counts = (8, 4, 4) if setup.dry else ((32, 16, 16) if quick else (96, 32, 32))
    setup.shapes_train = counts[0]
    write_shapes_set(setup.root / "shapes", "coco", *counts, size=128)
    drop = setup.root / "drop" / "in"
    drop.mkdir(parents=True)
    for image in (setup.root / "digits" / "test").glob("*/*.png"):
        shutil.copy(image, drop / image.name)


def optik(*args) -> list[str]:
    return [sys.executable, "-m", "optik.cli", *map(str, args)]


def sets(**values) -> list[str]:
    """`--set key=value` pairs; `train__precision` means `train.precision`."""
    return [part for key, value in values.items() for part in ("--set", f"{key.replace('__', '.')}={value}")]


def train_check(setup: Setup, name: str, preset: str, work: str, metric: str | None, **values) -> Check:
    s = setup
    data = {"resnet18_small": s.root / "digits", "fcos_resnet18_small": s.root / "shapes"}
    data = data.get(preset, s.root / "digits" / "train")
    images = s.shapes_train if preset.startswith("fcos") else s.digits["train"]
    defaults = {
        "data__root": data,
        "train__epochs": s.epochs,
        "train__accelerator": s.device,
        "data__num_workers": s.workers,
    }
    extra = list(values.pop("cli", []))
    command = optik("train", preset, "--work-dir", s.root / work, *extra, *sets(**{**defaults, **values}))
    product = s.root / work / ("backbone.pt" if preset.startswith("ssl") else "model.pt")

    def judge(run: CommandRun) -> tuple[bool, str]:
        figures = training_figures(run, images, metric)
        return product.is_file(), figures if product.is_file() else f"no {product.name} written; {figures}"

    return Check(name, command, judge, timeout=300)


def test_check(setup: Setup, name: str, model: Path, precision: str, detector: bool = False) -> Check:
    out = setup.root / f"test-{name.split()[-1]}-{'det' if detector else 'cls'}.json"
    data = [] if detector else [setup.root / "digits"]
    command = optik("test", model, *data, "--split", "test", "--out", out, "--device", setup.device)
    command += ["--precision", precision]

    def judge(run: CommandRun) -> tuple[bool, str]:
        metrics = json.loads(out.read_text())["metrics"]
        if detector:
            return True, f"bbox mAP@0.5 {metrics['bbox']['map_50']:.3f}, mAP {metrics['bbox']['map']:.3f}"
        return True, f"top-1 {metrics['accuracy_top1']:.3f} on {metrics['images']} images"

    return Check(name, command, judge, needs=[model], timeout=120)


def predict_check(setup: Setup, name: str, model: Path, precision: str) -> Check:
    out = setup.root / f"predict-{precision}"
    images = setup.root / "digits" / "test"
    command = optik("predict", model, images, "--out-dir", out, "--device", setup.device, "--precision", precision)

    def judge(run: CommandRun) -> tuple[bool, str]:
        written = len(list(out.glob("*.json")))
        return written == len(setup.labels), f"{written}/{len(setup.labels)} predictions written"

    return Check(name, command, judge, needs=[model], timeout=120)


def batch_check(setup: Setup, name: str, model: Path, out: Path, precision: str, mode: str, reference=None) -> Check:
    """batch-predict into a CSV: top-1 accuracy against the folders, images/s as it reports them, and
    (with `reference`, another check's CSV) the share of top-1 answers equal to the reference's."""
    images = setup.root / "digits" / "test"
    command = optik("batch-predict", images, out, model, "--format", "csv", "--device", setup.device)
    command += ["--precision", precision, "--optimize", mode, "--workers", str(setup.workers)]

    def judge(run: CommandRun) -> tuple[bool, str]:
        top1 = top1_by_file(out)
        accuracy = sum(setup.labels.get(k) == v for k, v in top1.items()) / max(len(top1), 1)
        speed = last_match(r"([\d.]+) images/s", run.output)
        figures = [f"{len(top1)} rows, top-1 {accuracy:.3f}", f"{speed[1]} img/s" if speed else "no img/s printed"]
        passed = len(top1) == len(setup.labels)
        fell_back = last_match(r"inference mode (\w+) .*falling back", run.output)
        if fell_back:
            passed, figures = False, [*figures, f"{fell_back[1]} fell back to a simpler mode"]
        if reference is not None:
            agree = agreement(top1, top1_by_file(reference))
            figures.append(f"top-1 agreement with {reference.stem} {agree:.3f}")
            passed = passed and (agree == 1.0 if precision == "32" else True)  # reduced precision may flip near-ties
        if setup.device == "cuda":
            figures.append("pinned-memory loader")
        return passed, ", ".join(figures)

    return Check(name, command, judge, needs=[model] + ([reference] if reference else []), timeout=240)


def poll_check(setup: Setup, model: Path, precision: str) -> Check:
    drop_in, drop_out = setup.root / "drop" / "in", setup.root / "drop" / "out"
    command = optik("serve", "poll", model, "--in", drop_in, "--out", drop_out, "--device", setup.device)
    command += ["--precision", precision, "--top-k", "1"]

    def judge(run: CommandRun) -> tuple[bool, str]:
        answered, left = len(list(drop_out.glob("*.json"))), len(list(drop_in.glob("*.png")))
        on_device = f"ready on {setup.device}" in run.output
        speed = last_match(r"\(([\d.]+) images/s\)", run.output)
        mode = last_match(rf"ready on {setup.device}\S* \((\w+)", run.output)
        figures = f"{answered}/{len(setup.labels)} answered, {left} left in --in"
        figures += f", {speed[1]} img/s" if speed else ""
        figures += f", {mode[1]} mode" if mode else ""
        figures += "" if on_device else f", never said 'ready on {setup.device}'"
        return answered == len(setup.labels) and left == 0 and on_device, figures

    # on cuda a service compiles its model (the auto mode): the compile is in this check's time
    return Check(f"serve poll {precision} on {setup.device}", command, judge, needs=[model], timeout=240)


ORT_ON_CUDA = """
import sys, numpy as np, onnxruntime as ort
path = sys.argv[1]
cuda = ort.InferenceSession(path, providers=["CUDAExecutionProvider"])
if cuda.get_providers()[0] != "CUDAExecutionProvider":
    sys.exit(f"onnxruntime fell back to {cuda.get_providers()} (the CUDA libraries it needs are missing?)")
cpu = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
spec = cuda.get_inputs()[0]
x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 8 for d in spec.shape]).astype(np.float32)
a, b = (s.run(None, {spec.name: x})[0] for s in (cuda, cpu))
print(f"CUDAExecutionProvider vs CPU: max |diff| {np.abs(a - b).max():.2e}, same top-1 {(a.argmax(-1) == b.argmax(-1)).mean():.3f}")
sys.exit(0 if (a.argmax(-1) == b.argmax(-1)).all() else 1)
"""


def onnx_checks(setup: Setup, model: Path) -> list[Check]:
    onnx = setup.root / "classifier.onnx"
    export = Check(
        "export ONNX",
        optik("export", model, "--out", onnx),
        lambda run: (onnx.is_file(), (last_match(r"^wrote .*: (.*)$", run.output) or ["", "written"])[1]),
        needs=[model],
    )
    skip = "dry run: the CPU" if setup.dry else ""
    try:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            skip = (
                skip
                or f"not installed (onnxruntime {onnxruntime.__version__}: {onnxruntime.get_available_providers()})"
            )
    except ImportError:
        skip = skip or "not installed (no onnxruntime)"
    script = setup.root / "ort_on_cuda.py"
    script.write_text(ORT_ON_CUDA)
    on_cuda = Check(
        "onnxruntime CUDAExecutionProvider",
        [sys.executable, str(script), str(onnx)],
        lambda run: (True, run.output.strip().splitlines()[-1]),
        needs=[onnx],
        skip=skip,
    )
    return [export, on_cuda]


def training_checks(setup: Setup) -> list[Check]:
    s = setup
    bf16 = "bf16-mixed"
    label16 = "16-mixed" if not s.dry else "16-mixed (32 on the CPU)"
    ddp_note = f"DDP over {s.gpus} GPU(s)" + (" (only 1: devices=1)" if s.gpus == 1 else "")
    sync = "SyncBatchNorm off (CPU)" if s.dry else "SyncBatchNorm"
    ddp = {"train__strategy": "ddp", "train__sync_batchnorm": str(not s.dry).lower(), "train__precision": s.amp16}
    no_flip = {"data__augment__hflip": 0}  # a mirrored digit is another symbol
    return [
        train_check(
            s, f"train classify {label16}", "resnet18_small", "cls16", "val/acc1", train__precision=s.amp16, **no_flip
        ),
        train_check(
            s, f"train classify {bf16}", "resnet18_small", "clsbf16", "val/acc1", train__precision=bf16, **no_flip
        ),
        train_check(
            s, f"train detect fcos {label16}", "fcos_resnet18_small", "det16", "val/map_50", train__precision=s.amp16
        ),
        train_check(
            s,
            f"train {ddp_note}, {sync}",
            "resnet18_small",
            "ddp",
            "val/acc1",
            cli=["--devices", s.gpus],
            **ddp,
            **no_flip,
        ),
        train_check(
            s,
            f"pretrain SSL 1 epoch {bf16}",
            "ssl_resnet18_small",
            "ssl",
            None,
            train__epochs=1,
            train__precision=bf16,
            data__batch_size=32 if s.dry else 64,
        ),
    ]


def trained_classifier(setup: Setup) -> Path:
    """The classifier the inference checks use: the 16-mixed run's, else whichever other run made one."""
    runs = [setup.root / work / "model.pt" for work in ("cls16", "clsbf16", "ddp")]
    return next((path for path in runs if path.is_file()), runs[0])


def inference_checks(setup: Setup, model: Path) -> list[Check]:
    s, root, i16 = setup, setup.root, setup.amp16_infer
    detector = root / "det16" / "model.pt"
    fp32, fp16 = root / "batch-32-eager.csv", root / f"batch-{i16}.csv"
    sharded = root / "batch-sharded.csv"
    return [
        test_check(s, f"test classify --precision {i16}", model, i16),
        test_check(s, "test classify --precision bf16", model, "bf16"),
        test_check(s, f"test detect --precision {i16}", detector, i16, detector=True),
        predict_check(s, f"predict --precision {i16}", model, i16),
        predict_check(s, "predict --precision bf16", model, "bf16"),
        batch_check(s, "batch-predict 32 eager", model, fp32, "32", "eager"),
        batch_check(s, f"batch-predict {i16}", model, fp16, i16, "fused", reference=fp32),
        batch_check(s, "batch-predict bf16", model, root / "batch-bf16.csv", "bf16", "fused", reference=fp32),
        batch_check(
            s,
            "batch-predict --optimize compiled 32",
            model,
            root / "batch-compiled.csv",
            "32",
            "compiled",
            reference=fp32,
        ),
        Check(
            f"batch-predict --devices {s.gpus} (torchrun)",
            optik("batch-predict", root / "digits" / "test", sharded, model, "--format", "csv", "--devices", s.gpus),
            lambda run: (len(top1_by_file(sharded)) == len(s.labels), f"{len(top1_by_file(sharded))} rows"),
            needs=[model],
            skip="" if s.gpus > 1 else "one GPU: nothing to shard",
        ),
        poll_check(s, model, i16),
        *onnx_checks(s, model),
    ]


# ----------------------------------------------------------------------------- main


def describe_torch() -> tuple[bool, str, int]:
    """(CUDA usable, a line naming the build and the GPUs, GPUs visible)."""
    import torch

    build = f"torch {torch.__version__}, " + (
        f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    )
    if not torch.cuda.is_available():
        return False, build, 0
    count = torch.cuda.device_count()
    names = ", ".join(torch.cuda.get_device_name(i) for i in range(count))
    bf16 = "bf16 supported" if torch.cuda.is_bf16_supported() else "no bf16"
    return True, f"{build}; {count} GPU(s): {names}; cuDNN {torch.backends.cudnn.version()}; {bf16}", count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check_out"), help="folder for table.md and the logs")
    parser.add_argument("--quick", action="store_true", help="less data and one epoch per run")
    parser.add_argument("--cpu-dry-run", action="store_true", help="the same checks on the CPU (tiny data)")
    parser.add_argument("--budget", type=float, default=540, help="seconds for all checks; later ones are not run")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data and runs (printed)")
    args = parser.parse_args()

    cuda, build, gpus = describe_torch()
    if not cuda and not args.cpu_dry_run:
        print(f"CUDA is not available ({build}): nothing to check; `--cpu-dry-run` runs the same checks on the CPU")
        return 0
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="optik-gpu-check-"))
    on_gpu = cuda and not args.cpu_dry_run
    setup = Setup(
        root,
        device="cuda" if on_gpu else "cpu",
        gpus=gpus if on_gpu else 1,
        amp16="16-mixed" if on_gpu else "32",
        amp16_infer="16" if on_gpu else "32",
        epochs=1 if (args.quick or not on_gpu) else 3,
        workers=min(8, os.cpu_count() or 1) if on_gpu else 0,
    )
    print(f"optik gpu-check on {setup.device}: {build}\ndata and runs in {root}", flush=True)
    deadline, logs = started + args.budget, args.out / "logs"
    try:
        make_data(setup, args.quick)
        outcomes = run_checks(training_checks(setup), logs, deadline)
        model = trained_classifier(setup)
        print(f"inference checks use {model.relative_to(root)}", flush=True)
        outcomes += run_checks(inference_checks(setup, model), logs, deadline)
    finally:
        if not args.keep_data:
            shutil.rmtree(root, ignore_errors=True)
    report = summarise(outcomes, f"optik gpu-check on {setup.device}{' (CPU dry run)' if setup.dry else ''}: {build}")
    report += f"; {time.monotonic() - started:.0f} s in all; inference on {model.parent.name}/model.pt\n"
    details = failure_details(outcomes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(report + (f"\n## Failures\n\n{details}\n" if details else ""))
    (args.out / "outcomes.json").write_text(json.dumps([o.__dict__ for o in outcomes], indent=1))
    # the table last: a reader who sees only the end of the output still gets it whole
    print((f"\n{details}\n" if details else "") + f"\n{report}")
    print(f"table and logs: {args.out}")
    return 1 if any(o.status == "FAIL" for o in outcomes) else 0


def summarise(outcomes: list[Outcome], heading: str) -> str:
    counts = {status: sum(o.status == status for o in outcomes) for status in ("pass", "FAIL", "skip")}
    tally = f"{counts['pass']} passed, {counts['FAIL']} failed, {counts['skip']} skipped"
    return f"{heading}\n\n{format_table(outcomes)}\n\n{tally}"


if __name__ == "__main__":
    sys.exit(main())
