"""`make demo-detect`: a synthetic shapes set -> train a detector -> COCO mAP -> OPEX / ROI CSV, with the real `optik` commands.

The shapes (circles, squares, triangles with exact masks) are drawn on the fly, so nothing is
downloaded; the detector trains from scratch on the CPU in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from demo import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_run"), help="folder for the data and the run")
    parser.add_argument(
        "--format", default="coco", choices=["coco", "voc", "yolo"], help="annotation format the set is written in"
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-images", type=int, default=160)
    args = parser.parse_args()
    started = time.monotonic()

    from optik.tools.shapes import write_shapes_set

    data = args.out / f"shapes-{args.format}"
    if not (data / "test").is_dir():
        write_shapes_set(data, args.format, train=args.train_images, val=40, test=40, size=128)
        print(f"wrote a shapes set ({args.format}) to {data}: {args.train_images} train, 40 val, 40 test images")
    work = args.out / f"detect-{args.format}"
    run("config", "export", "fcos_resnet18_small", args.out / "shapes.yaml", "--force")
    run(
        "train",
        args.out / "shapes.yaml",
        "--work-dir",
        work,
        "--overwrite",  # `make demo-detect` again starts the run over
        "--set",
        f"data.root={data}",
        "--set",
        f"data.format={args.format}",
        "--set",
        f"train.epochs={args.epochs}",
    )
    run("test", work / "model.pt", "--split", "test", "--out", work / "test.json")
    samples = sorted((data / "test").glob("*.png"))[:4]
    run("predict", work / "model.pt", *samples, "--score", "0.3", "--out-dir", work / "opex")

    drop_in, drop_out = args.out / "drop-detect" / "in", args.out / "drop-detect" / "out"
    drop_in.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        shutil.copy(sample, drop_in / sample.name)
    run(
        "serve",
        "poll",
        work / "model.pt",
        "--in",
        drop_in,
        "--out",
        drop_out,
        "--format",
        "roi",
        "--score",
        "0.3",
        "--quiet",
    )
    served = sorted(drop_out.glob("*-rois.csv"))
    print(f"file drop: {len(served)} ROI CSV files in {drop_out}, e.g. {served[0].name}:\n{served[0].read_text()}")

    bbox = json.loads((work / "test.json").read_text())["metrics"]["bbox"]
    print(
        f"\nshapes test bbox mAP@0.5: {bbox['map_50']:.4f}  mAP: {bbox['map']:.4f}  ({time.monotonic() - started:.0f}s in all; run folder {work})"
    )


if __name__ == "__main__":
    main()
