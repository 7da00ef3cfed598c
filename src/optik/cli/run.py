"""`optik config`, `optik train`, `optik test` and `optik predict`: configs, and running a model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from optik.cli.common import OptikGroup, backend_option, fail, main, make_output, model_options, output_options

# ----------------------------------------------------------------------------- config


@main.group(cls=OptikGroup)
def config():
    """List the shipped presets, export one to a file for editing, show a config fully resolved."""


@config.command("list")
def config_list():
    """Name the shipped presets, each with the first sentence of what it is for."""
    import shutil
    import textwrap

    from optik.config.load import first_sentence, preset_names, preset_summary

    names = preset_names()
    width = max(map(len, names)) + 2
    # wrapped under its column on a terminal; one line per preset into a pipe, for grep
    text_width = max(40, shutil.get_terminal_size().columns - width) if sys.stdout.isatty() else 10_000
    for name in names:
        lines = textwrap.wrap(first_sentence(preset_summary(name)), text_width) or [""]
        click.echo(f"{name:{width}s}{lines[0]}")
        for line in lines[1:]:
            click.echo(" " * width + line)


@config.command("export")
@click.argument("name")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a key (repeatable)")
@click.option("--force", is_flag=True, help="overwrite FILE if it exists")
def config_export(name, file, overrides, force):
    """Write preset NAME, fully resolved, to FILE (or print it) for editing."""
    from optik.config.load import dump_config, load_config, preset_header, preset_text
    from optik.files import write_atomic

    preset_text(name)  # unknown name: a clear error before anything else
    cfg = load_config(name, overrides)
    text = preset_header(name, cfg) + dump_config(cfg)
    if file is None:
        click.echo(text, nl=False)
    elif file.exists() and not force:
        fail(f"{file} exists; pass --force to overwrite it")
    else:
        write_atomic(file, text)
        click.echo(f"wrote {file}")


@config.command("show")
@click.argument("source")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a key (repeatable)")
def config_show(source, overrides):
    """Print the fully resolved config of SOURCE (file or preset) with overrides applied."""
    from optik.config.load import dump_config, load_config

    click.echo(dump_config(load_config(source, overrides)), nl=False)


# ----------------------------------------------------------------------------- train / test / predict


@main.command()
@click.argument("source", required=False, metavar="[CONFIG]")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="run folder (default: config work_dir or work_dirs/<task>-<model>)",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="override a config key, e.g. train.epochs=5 (repeatable)",
)
@click.option(
    "--resume",
    is_flag=False,
    flag_value="last",
    default=None,
    metavar="[CKPT]",
    help="continue the full training state (no value: last.ckpt of the work dir)",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="start over in a work dir that holds another run: remove its checkpoints, logs, plots, report and model package first",
)
@click.option("--no-validate", is_flag=True, help="skip validation (model.pt then comes from the last epoch)")
@click.option("--seed", type=int, help="same as --set train.seed=N")
@click.option("--deterministic", is_flag=True, help="same as --set train.deterministic=true")
@click.option("--devices", help="same as --set train.devices=...")
def train(source, work_dir, overrides, resume, overwrite, no_validate, seed, deterministic, devices):
    """Train a model from CONFIG (file or preset). Without CONFIG, --resume reads the work dir's config.yaml."""
    from optik.config.load import load_config
    from optik.engine.train import train as run_train

    overrides = list(overrides)
    if no_validate:
        overrides.append("train.validation=false")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    if deterministic:
        overrides.append("train.deterministic=true")
    if devices is not None:
        overrides.append(f"train.devices={devices}")
    if source is None and resume is not None and Path(resume).suffix in (".yaml", ".yml"):
        source, resume = resume, "last"  # `--resume my.yaml`: the flag without a value, then the config
    if source is None:
        if work_dir is None or resume is None:
            fail("give a CONFIG (file or preset), or --resume with --work-dir to continue a run")
        source = work_dir / "config.yaml"
    cfg = load_config(source, overrides)
    result = run_train(cfg, work_dir=work_dir, resume=resume, overwrite=overwrite)
    if result.package is None:
        return  # not the first process of a distributed run: that one reports
    for key, value in sorted(result.metrics.items()):
        if key.startswith("best"):  # what model.pt was chosen by (the line above names its checkpoint)
            click.echo(f"{key}: {value:.4f}")
    last = [f"{key} {value:.4f}" for key, value in sorted(result.metrics.items()) if key.startswith("val/")]
    if last:
        click.echo(f"last epoch: {'  '.join(last)}")
    click.echo(f"work dir: {result.work_dir}")


@main.command("test")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write metrics to .json, .yaml or .pkl")
@click.option(
    "--out-items",
    type=click.Choice(["none", "pred"]),
    default="none",
    show_default=True,
    help="pred: add per-image predictions to --out",
)
@click.option(
    "--plots",
    type=click.Path(file_okay=False, path_type=Path),
    help="write the evaluation plots here: confusion_matrix.png (detectors: per_class_ap.png, pr_curve.png)",
)
@click.option(
    "--images",
    type=click.Path(file_okay=False, path_type=Path),
    help="detectors: folder the images are in (as data.images; default: the run's for its own data)",
)
@click.option(
    "--skip-bad",
    is_flag=True,
    help="leave unreadable (detectors: and missing) images out, reported, and exit 0; without it a detector stops "
    "at them before scoring and a classifier scores the rest, then exits 2",
)
@model_options
def test_command(
    model, data, split, out, out_items, plots, images, skip_bad, device, precision, calibration, batch_size, mode, tta
):
    """Evaluate MODEL (model.pt, checkpoint, or an exported .onnx / .xml) on DATA (class folders or list file,
    a COCO JSON or dataset folder for detectors; default: the run's own split)."""
    from optik.engine.evaluate import evaluate, plot_evaluation
    from optik.metrics.evaluation import check_results_path, write_results

    if out_items == "pred" and out is None:
        fail("--out-items pred needs --out FILE to write the predictions to")
    if out is not None:
        check_results_path(out)
    result = evaluate(
        model,
        data,
        split=split,
        batch_size=batch_size,
        device=device,
        precision=precision,
        calibration=calibration,
        mode=mode,
        with_curves=plots is not None,
        images=images,
        skip_bad=skip_bad,
        tta=tta,
    )
    # the results are on disk before the table is printed, so a closed pipe or a stop cannot lose them
    written = write_results(result, out, include_items=out_items == "pred") if out is not None else None
    if result.metrics.get("split", split) != split:  # the fallback of test to val, said rather than silent
        where = data if data is not None else "the run's data"
        click.echo(f"no {split} split in {where}: scoring {result.metrics['split']}")
    print_metrics(result)
    if written is not None:
        click.echo(f"wrote {written}")
    if plots is not None:
        for path in plot_evaluation(result, plots):
            click.echo(f"wrote {path}")
    if result.failures and not skip_bad:  # the scores are of fewer images than asked: said in the exit code
        fail(
            f"{len(result.failures)} image(s) could not be read and are not in these scores (listed above"
            + (f" and in {out} under 'unreadable'" if out is not None else "")
            + "); fix them, or pass --skip-bad to leave them out"
        )


def print_metrics(result) -> None:
    if "bbox" in result.metrics:
        return print_detection_metrics(result)
    m = result.metrics
    click.echo(
        f"data: {m['data']} ({m['images']} images"
        + (f", {m['unreadable']} unreadable" if m["unreadable"] else "")
        + ")"
    )
    for failure in result.failures[:10]:
        click.echo(f"  unreadable: {failure['file']}: {failure['error']}", err=True)
    width = max(len("class"), *(len(c) for c in result.classes))
    click.echo(f"{'class':{width}s}  precision  recall      f1  support")
    for name, row in m["per_class"].items():  # None: undefined (a class the split lacks, or never predicted)
        precision, recall, f1 = (cell(row[key], width) for key, width in (("precision", 9), ("recall", 6), ("f1", 6)))
        click.echo(f"{name:{width}s}  {precision}  {recall}  {f1}  {row['support']:7d}")
    for key in [k for k in m if k.startswith("accuracy_")] + [
        "mean_class_accuracy",
        "precision_macro",
        "recall_macro",
        "f1_macro",
    ]:
        click.echo(f"{key}: {m[key]:.4f}")
    never = [name for name, row in m["per_class"].items() if row["precision"] is None and row["support"]]
    if never:
        click.echo(
            f"(never predicted: {', '.join(never)}; their precision, n/a above, counts as 0 in precision_macro "
            "and f1_macro, as in scikit-learn)"
        )
    print_confusion(result.classes, m["confusion_matrix"])


def print_detection_metrics(result) -> None:
    """COCO summary per IoU type, then AP per class."""
    m = result.metrics
    click.echo(
        f"data: {m['data']} ({m['images']} images, {m['objects']} objects"
        + (f", {m['unreadable']} unreadable" if m["unreadable"] else "")
        + ")"
    )
    for failure in result.failures[:10]:
        click.echo(f"  unreadable: {failure['file']}: {failure['error']}", err=True)
    kinds = [kind for kind in ("bbox", "segm") if kind in m]
    width = max(len("class"), *(len(c) for c in result.classes))
    click.echo(f"{'class':{width}s}  " + "  ".join(f"{kind + ' AP':>8s}" for kind in kinds))
    for name in result.classes:  # a class without objects in the split has no AP: n/a, not 0
        click.echo(f"{name:{width}s}  " + "  ".join(cell(m[kind]["per_class"].get(name), 8) for kind in kinds))
    for kind in kinds:
        click.echo(
            f"{kind} mAP: {m[kind]['map']:.4f}  mAP@0.5: {m[kind]['map_50']:.4f}  mAP@0.75: {m[kind]['map_75']:.4f}  "
            f"AR@100: {m[kind]['mar_100']:.4f}"
        )


def cell(value: float | None, width: int) -> str:
    """A metric in a table column: n/a when it is undefined (None)."""
    return f"{'n/a':>{width}s}" if value is None else f"{value:{width}.4f}"


def print_confusion(classes: list[str], matrix: list[list[int]], limit: int = 30) -> None:
    """Rows: true class, columns: predicted class (skipped for more than `limit` classes; see --plots)."""
    if len(classes) > limit:
        return
    width = max(4, *(len(c) for c in classes), *(len(str(v)) for row in matrix for v in row))
    click.echo("confusion matrix (rows: true, columns: predicted)")
    click.echo(" " * width + " " + " ".join(f"{c:>{width}s}" for c in classes))
    for name, row in zip(classes, matrix):
        click.echo(f"{name:>{width}s} " + " ".join(f"{v:>{width}d}" for v in row))


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="write one output per image here (default: print JSON lines)",
)
@output_options
@model_options
@backend_option
def predict(
    model,
    images,
    out_dir,
    outputs,
    device,
    precision,
    calibration,
    batch_size,
    mode,
    tta,
    backend,
):
    """Classify or detect objects in IMAGES (files or folders) with MODEL; one output per image."""
    from optik.data.decode import IMAGE_EXTENSIONS
    from optik.data.folder import find_images
    from optik.outputs.classification import write_error
    from optik.outputs.names import output_stems
    from optik.tasks.loading import load_predictor

    files = {}  # resolved path -> path as given: an image named twice (a.jpg and its folder) is predicted once
    for item in images:
        if not item.exists():
            fail(f"image or folder not found: {item}")
        for path in find_images(item) if item.is_dir() else [item]:
            files.setdefault(path.resolve(), path)
    files = list(files.values())
    if not files:
        fail(
            "no image files found in "
            + ", ".join(map(str, images))
            + f" (looked for {' '.join(sorted(IMAGE_EXTENSIONS))}, any case)"
        )
    named = {}
    for path in files:
        named.setdefault(path.name, []).append(path)
    clashes = [paths for paths in named.values() if len(paths) > 1]
    predictor = load_predictor(
        model,
        device=device,
        precision=precision,
        batch_size=batch_size,
        mode=mode,
        expected_images=len(files),
        backend=backend,
        tta=tta,
        calibration=calibration,
    )
    output, failed = (
        make_output(predictor.task, **outputs),
        0,
    )
    if out_dir is not None and clashes:  # outputs are named as serve poll names them, by file name
        fail(
            f"two images in different folders have the same name {clashes[0][0].name} ({clashes[0][0]} and {clashes[0][1]});"
            " their outputs in --out-dir would be told apart by order only: rename one, or predict the folders separately"
        )
    stems = output_stems(path.name for path in files)
    for path, stem, result in zip(files, stems, predictor.predict_stream(files)):
        if not result.ok:
            failed += 1
            click.echo(f"error: {path}: {result.reason}", err=True)
            if out_dir is not None:
                write_error(str(path), result.reason, out_dir / f"{stem}.error.json")
        elif out_dir is not None:
            output.write(result, out_dir / f"{stem}{output.suffix}")
        else:
            click.echo(json.dumps({"file": str(path), "prediction": output.payload(result)}))
    if out_dir is not None:
        click.echo(f"wrote {len(files) - failed} prediction(s) to {out_dir}", err=True)
    if failed:
        click.echo(f"{failed} of {len(files)} image(s) could not be read", err=True)
        sys.exit(2)
