"""`make demo`: sklearn's handwritten digits -> train -> test -> predict -> file drop, with the real `optik` commands.

Each step prints the command it runs, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run(*args: str) -> None:
    command = ["optik", *map(str, args)]
    print(f"\n$ {shlex.join(command)}", flush=True)
    subprocess.run([sys.executable, "-m", "optik.cli", *map(str, args)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_run"), help="folder for the data and the run")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    started = time.monotonic()

    from optik.tools.digits import write_digits

    data = args.out / "digits"
    if not (data / "test").is_dir():
        counts = write_digits(data, size=32)
        print(f"wrote sklearn's digits to {data}: {counts}")
    work = args.out / "run"
    run("config", "export", "resnet18_small", args.out / "digits.yaml")
    run(
        "train",
        args.out / "digits.yaml",
        "--work-dir",
        work,
        "--overwrite",  # `make demo` again starts the run over
        "--set",
        f"data.root={data}",
        "--set",
        f"train.epochs={args.epochs}",
        "--set",
        "data.augment.hflip=0",  # a mirrored digit is another symbol
    )
    run("test", work / "model.pt", data, "--split", "test", "--out", work / "test.json", "--plots", work / "plots")
    samples = sorted((data / "test").glob("*/*.png"))[::60]
    run("predict", work / "model.pt", *samples, "--top-k", "3", "--out-dir", work / "predictions")

    drop_in, drop_out = args.out / "drop" / "in", args.out / "drop" / "out"  # the file-drop service, one pass
    drop_in.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        shutil.copy(sample, drop_in / f"{sample.parent.name}_{sample.name}")
    run("serve", "poll", work / "model.pt", "--in", drop_in, "--out", drop_out, "--top-k", "1", "--quiet")
    served = sorted(drop_out.glob("*.json"))
    print(f"file drop: {len(served)} predictions in {drop_out}, e.g. {served[0].name}: {served[0].read_text()}")

    accuracy = json.loads((work / "test.json").read_text())["metrics"]["accuracy_top1"]
    print(f"\ndigits test accuracy: {accuracy:.4f}  ({time.monotonic() - started:.0f}s in all; run folder {work})")


if __name__ == "__main__":
    main()
