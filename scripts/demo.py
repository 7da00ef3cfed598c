"""`make demo`: sklearn's handwritten digits -> train -> test -> predict, with the real `optik` commands.

Each step prints the command it runs, so the demo doubles as a tutorial.
"""

from __future__ import annotations

import argparse
import json
import shlex
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
    run("train", args.out / "digits.yaml", "--work-dir", work, "--set", f"data.root={data}", "--set", f"train.epochs={args.epochs}",
        "--set", "data.augment.hflip=0")  # a mirrored digit is another symbol
    run("test", work / "model.pt", data, "--split", "test", "--out", work / "test.json", "--plots", work / "plots")
    samples = sorted((data / "test").glob("*/*.png"))[::60]
    run("predict", work / "model.pt", *samples, "--top-k", "3", "--out-dir", work / "predictions")

    accuracy = json.loads((work / "test.json").read_text())["metrics"]["accuracy_top1"]
    print(f"\ndigits test accuracy: {accuracy:.4f}  ({time.monotonic() - started:.0f}s in all; run folder {work})")


if __name__ == "__main__":
    main()
