"""`optik probe`, `flops`, `export`, `publish`, `plot`, `report`, `batch-predict` and `objectnet score`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from optik.cli.common import (
    OPTIMIZE_CHOICES,
    OPTIMIZE_HELP,
    PRECISION_CHOICES,
    PRECISION_HELP,
    TTA_CHOICES,
    OptikGroup,
    backend_option,
    calibration_option,
    fail,
    main,
    tta_option,
)
from optik.outputs.objectnet import FORMATS as ROW_FORMATS


@main.command("probe")
@click.argument("model")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True, help="neighbours that vote in kNN")
@click.option("--temperature", type=float, default=0.07, show_default=True, help="kNN vote weight exp(similarity / T)")
@click.option("--c", "c", type=float, default=1.0, show_default=True, help="inverse L2 strength of the linear probe")
@click.option(
    "--image-size", type=click.IntRange(min=8), help="input size (default: the model's own; a timm name: 224)"
)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="image decoding processes")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto")
@click.option("--skip-bad", is_flag=True, help="leave unreadable images out (and report them) instead of failing")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="also write the report as JSON")
def probe_command(model, data, k, temperature, c, image_size, batch_size, workers, device, skip_bad, out):
    """kNN and linear-probe accuracy of MODEL's frozen features on DATA, per class and their mean.

    MODEL: a backbone.pt (from `task: pretrain`), a model.pt or checkpoint, or a timm name (random
    init, the baseline). DATA: a folder with train/ and test/ (or val/) class folders, class folders
    (split 80/20), or a classify config whose data section names the set (list files too).
    """
    from optik.engine.probe import probe, write_report

    report = probe(
        model,
        data,
        k=k,
        temperature=temperature,
        c=c,
        image_size=image_size,
        batch_size=batch_size,
        workers=workers,
        device=device,
        skip_bad=skip_bad,
    )
    for line in report.lines():
        click.echo(line)
    if out is not None:
        click.echo(f"wrote {write_report(report, out)}")


@main.command("flops")
@click.argument("model")
@click.option(
    "--shape",
    nargs=2,
    type=click.IntRange(min=8),
    metavar="H W",
    help="input size [default: the config's or model's image size, else 224 224]",
)
@click.option(
    "--num-classes",
    type=click.IntRange(min=1),
    help="classes of the head, where the config does not name them [default: 1000; detectors 91]",
)
@click.option("--depth", type=click.IntRange(min=1), default=2, show_default=True, help="module levels in the table")
def flops_command(model, shape, num_classes, depth):
    """MACs and parameters of MODEL (config file, preset, model.pt/checkpoint, or timm name), per module."""
    from optik.tools.flops import count_flops, resolve_model

    network, size, name = resolve_model(model, num_classes)
    hw = tuple(shape) if shape else (size, size) if size else (224, 224)
    for line in count_flops(network, hw, depth=depth, name=name).lines():
        click.echo(line)


@main.command("export")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "openvino"]),
    default="onnx",
    show_default=True,
    help="onnx (onnxruntime), or openvino: an IR (.xml + .bin; classifiers)",
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="output file [default: MODEL with .onnx / .xml]"
)
@click.option(
    "--int8",
    is_flag=True,
    help="openvino: quantize to int8 on the --calibration images (agreement with fp32 is printed)",
)
@calibration_option
@click.option(
    "--dynamic-batch/--static-batch",
    default=True,
    show_default=True,
    help="classifiers: any batch size, or only the checked one (detectors: one image of any size)",
)
@click.option(
    "--check-images",
    type=click.Path(path_type=Path),
    help="a folder of real images to check a detector's export on (the first 8, sorted by path) [default: synthetic pictures]",
)
@click.option(
    "--tta",
    type=click.Choice(TTA_CHOICES),
    help="classifiers: the test-time augmentation the .onnx / .xml records, applied by every runner of it (see optik predict --tta) [default: the package's]",
)
def export_command(model, fmt, out, int8, calibration, dynamic_batch, check_images, tta):
    """Export MODEL (model.pt or checkpoint) to ONNX (classifier or detector) or OpenVINO (classifier), checked
    against PyTorch; run it by giving the .onnx / .xml as MODEL."""
    from optik.tools.export import export_model, export_openvino

    if fmt == "openvino":
        path, result = export_openvino(model, out, int8=int8, calibration=calibration, tta=tta)
    elif int8 or calibration is not None:
        raise click.UsageError("--int8 and --calibration are for --format openvino")
    else:
        path, result = export_model(model, out, dynamic_batch=dynamic_batch, check_images=check_images, tta=tta)
    click.echo(f"wrote {path}: {result.summary}")
    if result.unchecked:
        click.echo(
            "note: no object scored above 0.05 on the check images; give --check-images with pictures of what the model detects for a real check",
            err=True,
        )


@main.command("publish")
@click.argument("source", metavar="IN", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
def publish_command(source, out):
    """Release file of IN (model.pt or checkpoint): no optimizer state, CPU tensors, weights_only-safe, hash in the name."""
    from optik.tools.publish import publish

    click.echo(f"wrote {publish(source, out)}")


@main.command("plot")
@click.argument("work_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), help="folder for the PNGs [default: WORK_DIR/plots]"
)
@click.option(
    "--no-eval",
    is_flag=True,
    help="only the curves: skip evaluating model.pt (confusion matrix, per-class AP, PR curves)",
)
def plot_command(work_dir, out, no_eval):
    """Loss, metric and learning-rate curves of the run in WORK_DIR as PNG, and its model's confusion matrix (detectors: AP per class, PR curves)."""
    from optik.tools.report import plot_run

    for path in plot_run(work_dir, out, with_eval=not no_eval):
        click.echo(f"wrote {path}")


@main.command("report")
@click.argument("work_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="the HTML file [default: WORK_DIR/report.html]; its PNGs go to plots/ beside it",
)
@click.option("--no-eval", is_flag=True, help="only the curves: skip evaluating model.pt")
def report_command(work_dir, out, no_eval):
    """One HTML page of the run in WORK_DIR: summary, metrics, curves, evaluation plots and config."""
    from optik.tools.report import write_report

    click.echo(f"wrote {write_report(work_dir, out, with_eval=not no_eval)}")


@main.command("batch-predict")
@click.argument("images", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("model", required=False)
@click.option(
    "--model-class", "--model_class", help="file.py:Name, a zero-argument class or factory (with --checkpoint)"
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    help="a state_dict for --model-class or a timm MODEL (`module.` prefixes are stripped)",
)
@click.option(
    "--transform", help="file.py:function giving the preprocessing (PIL image -> tensor) instead of the model's own"
)
@click.option(
    "--border-crop",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="pixels cut from each side first (2 removes ObjectNet's red border)",
)
@click.option("--format", "fmt", type=click.Choice(ROW_FORMATS), default="objectnet", show_default=True)
@click.option(
    "--top-k",
    "--top_x",
    "top_k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="predictions per row, highest first (at most the model's number of classes)",
)
@click.option(
    "--softmax/--no-softmax",
    default=True,
    show_default=True,
    help="confidences as softmax probabilities, or the raw outputs",
)
@click.option(
    "--convert-outputs-mode",
    "--convert_outputs_mode",
    type=click.Choice(["0", "1"]),
    default="0",
    show_default=True,
    help="1: map ImageNet (PyTorch index) predictions to ObjectNet ids",
)
@click.option(
    "--objectnet-mappings",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="the ObjectNet dataset's mappings/ folder (for mode 1)",
)
@click.option("--batch-size", "--batch_size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    help="image loading processes per process [default: half the cores on a CPU, most of them on a GPU]",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cpu, cuda, cuda:N or auto (under torchrun: one GPU per process)",
)
@click.option(
    "--devices",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="processes to shard over, one GPU each (launches torchrun --standalone for you)",
)
@click.option("--precision", type=click.Choice(PRECISION_CHOICES), default="32", show_default=True, help=PRECISION_HELP)
@calibration_option
@click.option("--optimize", type=click.Choice(OPTIMIZE_CHOICES), default="auto", show_default=True, help=OPTIMIZE_HELP)
@click.option("--resume", is_flag=True, help="keep the rows already in OUT (and its part files) and predict the rest")
@tta_option
@backend_option
def batch_predict(
    images,
    out,
    model,
    model_class,
    checkpoint,
    transform,
    border_crop,
    fmt,
    top_k,
    softmax,
    convert_outputs_mode,
    objectnet_mappings,
    batch_size,
    workers,
    device,
    devices,
    precision,
    calibration,
    optimize,
    resume,
    tta,
    backend,
):
    """Predict every image below IMAGES into one CSV (ObjectNet challenge format by default).

    MODEL is a model.pt / optik checkpoint, an exported .onnx or OpenVINO .xml, or a timm name with --checkpoint; or give
    --model-class file.py:Name --checkpoint W. Run under `torchrun --nproc_per_node N` to shard.
    """
    import os
    import subprocess

    from optik.tools.objectnet import BatchJob
    from optik.tools.objectnet import batch_predict as run_batch

    if devices > 1 and "WORLD_SIZE" not in os.environ:  # the same command, one process per device
        args = sys.argv[1:]
        args = [
            a
            for i, a in enumerate(args)
            if not (a == "--devices" or a.startswith("--devices=") or (i and args[i - 1] == "--devices"))
        ]
        sys.exit(
            subprocess.call(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    "--nproc_per_node",
                    str(devices),
                    "-m",
                    "optik.cli",
                    *args,
                ]
            )
        )
    job = BatchJob(
        images,
        out,
        model,
        model_class,
        checkpoint,
        transform,
        border_crop,
        fmt,
        top_k,
        softmax,
        int(convert_outputs_mode),
        objectnet_mappings,
        batch_size,
        workers,
        device,
        precision,
        optimize,
        resume,
        backend,
        tta,
        calibration,
    )
    report = run_batch(job)
    if os.environ.get("RANK", "0") != "0":
        return
    rate = report.predicted / max(report.seconds, 1e-9)
    click.echo(
        f"wrote {report.rows} rows to {out} ({report.predicted} predicted now, {report.skipped} kept from before; {rate:.1f} images/s)",
        err=True,
    )
    if report.failures:
        for path, reason in report.failures[:10]:
            click.echo(f"  unreadable: {path}: {reason}", err=True)
        fail(f"{len(report.failures)} image(s) could not be read; they have no row in {out}")


@main.group(cls=OptikGroup)
def objectnet():
    """ObjectNet challenge tools."""


@objectnet.command("score")
@click.argument("predictions", type=click.Path(exists=True, dir_okay=False))
@click.argument("answers", type=click.Path(exists=True, dir_okay=False))
@click.option("--no-range-check", is_flag=True, help="accept prediction ids outside [-1, num-classes)")
@click.option("--num-classes", type=click.IntRange(min=1), default=313, show_default=True)
def objectnet_score(predictions, answers, no_range_check, num_classes):
    """Score PREDICTIONS (ObjectNet CSV) against ANSWERS (JSON: file name -> id) with the challenge's rules."""
    from optik.metrics.objectnet import score_predictions

    score = score_predictions(predictions, answers, range_check=not no_range_check, num_classes=num_classes)
    click.echo(f"top-1: {score.top1:.4f}\ntop-5: {score.top5:.4f}\nimages scored: {score.scored}\ntotal: {score.total}")
