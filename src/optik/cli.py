"""The `optik` command: parse options, build a config, call one library function, print the outcome."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from optik.errors import OptikError
from optik.outputs.objectnet import FORMATS as ROW_FORMATS

PRESET_HELP = "a config file, or a preset name (`optik config list`)"


class OptikGroup(click.Group):
    """Turns user errors (OptikError, also when raised in a DataLoader worker) into one line and exit code 2."""

    def main(self, *args, **kwargs):
        kwargs.setdefault("prog_name", "optik")  # also under `python -m optik`
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:  # bad option or argument: one line, and where to look
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            fail(f"{exc.format_message()}{hint}")
        except click.ClickException as exc:
            fail(exc.format_message())
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OptikError as exc:
            fail(str(exc))
        except OSError as exc:  # a file or folder the user named cannot be written or read
            if exc.filename is None:
                raise
            fail(f"{exc.strerror or exc}: {exc.filename}")
        except Exception as exc:
            if type(exc).__name__ == "MisconfigurationException":  # Lightning's word on devices, strategy, precision
                fail(" ".join(str(exc).split()))
            raise
        except RuntimeError as exc:  # a worker process re-raises our errors as RuntimeError text
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            if last.startswith("optik.errors."):
                fail(last.split(": ", 1)[-1])
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group(cls=OptikGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="optik")
def main():
    """Train, evaluate and serve image classifiers and object detectors on PyTorch."""


# ----------------------------------------------------------------------------- config


@main.group(cls=OptikGroup)
def config():
    """List, export and show configs (the old mmcls_config)."""


@config.command("list")
def config_list():
    """Name the shipped presets."""
    from optik.config.load import preset_names, preset_summary

    for name in preset_names():
        click.echo(f"{name:24s} {preset_summary(name)}")


@config.command("export")
@click.argument("name")
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a key (repeatable)")
@click.option("--force", is_flag=True, help="overwrite FILE if it exists")
def config_export(name, file, overrides, force):
    """Write preset NAME, fully resolved, to FILE (or print it) for editing."""
    from optik.config.load import dump_config, load_config, preset_summary, preset_text
    from optik.files import write_atomic

    preset_text(name)  # unknown name: a clear error before anything else
    cfg = load_config(name, overrides)
    header = f"# optik preset {name}: {preset_summary(name)}\n# set data.root (and data.classes if you want a fixed order), then: optik train THIS_FILE\n"
    text = header + dump_config(cfg)
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
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), help="run folder (default: config work_dir or work_dirs/<task>-<model>)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=5 (repeatable; the old --cfg-options)")
@click.option("--resume", is_flag=False, flag_value="last", default=None, metavar="[CKPT]", help="continue the full training state (no value: last.ckpt of the work dir)")
@click.option("--no-validate", is_flag=True, help="skip validation (model.pt then comes from the last epoch)")
@click.option("--seed", type=int, help="same as --set train.seed=N")
@click.option("--deterministic", is_flag=True, help="same as --set train.deterministic=true")
@click.option("--devices", help="same as --set train.devices=...")
def train(source, work_dir, overrides, resume, no_validate, seed, deterministic, devices):
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
    result = run_train(cfg, work_dir=work_dir, resume=resume)
    if result.package is None:
        return  # not the first process of a distributed run: that one reports
    for key, value in sorted(result.metrics.items()):
        if key.startswith(("val/", "best")):
            click.echo(f"{key}: {value:.4f}")
    click.echo(f"work dir: {result.work_dir}")


def output_options(func):
    """How predictions are written: classification JSON, or OPEX / ROI CSV for detectors (DESIGN §9)."""
    func = click.option("--bbox-as-fallback", "--bbox_as_fallback", type=float, default=-1.0, show_default=True, metavar="RATIO",
                        help="use the box as polygon when the polygon's bounding box covers less than RATIO of the box (<0: off)")(func)
    func = click.option("--fit-bbox-to-polygon", "--fit_bbox_to_polygon", is_flag=True, help="make each box the bounding box of its polygon")(func)
    func = click.option("--output-minrect", "--output_minrect", is_flag=True, help="add the rotated minimum rectangle's width and height of each polygon")(func)
    func = click.option("--mask-nth", "--mask_nth", type=click.IntRange(min=1), default=1, show_default=True, help="use every nth row/column of a mask to find its polygon (faster)")(func)
    func = click.option("--mask-threshold", "--mask_threshold", type=click.FloatRange(0, 1), default=0.1, show_default=True, help="mask score from which a pixel belongs to the object")(func)
    func = click.option("--format", "fmt", type=click.Choice(["json", "opex", "roi"]), help="json (classifiers); opex (<stem>.json) or roi (<stem>-rois.csv) for detectors [default: json / opex]")(func)
    func = click.option("--score", "min_score", type=click.FloatRange(0, 1), help="only classes (objects) scoring at least this")(func)
    func = click.option("--top-k", "--top_x", "top_k", type=click.IntRange(min=1), help="only the K most likely classes, highest first (classifiers)")(func)
    return func


def make_output(task: str, fmt: str | None = None, top_k: int | None = None, min_score: float | None = None, mask_threshold: float = 0.1, mask_nth: int = 1,
                output_minrect: bool = False, fit_bbox_to_polygon: bool = False, bbox_as_fallback: float = -1.0):
    """The output format for a model's task, refusing options that do not apply to it."""
    if task == "detect":
        from optik.outputs.detection import detection_format

        if top_k is not None:
            fail("--top-k applies to classifiers; for a detector use --score to keep the confident objects")
        if fmt == "json":
            fail("--format json is for classifiers; a detector writes opex (<stem>.json) or roi (<stem>-rois.csv)")
        return detection_format(fmt or "opex", min_score=min_score, mask_threshold=mask_threshold, mask_nth=mask_nth, output_minrect=output_minrect,
                                fit_bbox_to_polygon=fit_bbox_to_polygon, bbox_as_fallback=bbox_as_fallback)
    from optik.outputs.classification import ClassificationFormat

    if fmt not in (None, "json"):
        fail(f"--format {fmt} is for detectors; this model is a classifier (its output is JSON)")
    return ClassificationFormat(top_k, min_score)


def model_options(func):
    func = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto")(func)
    func = click.option("--precision", type=click.Choice(["32", "bf16", "16"]), default="32", show_default=True, help="32 is exact; bf16 is faster on recent CPUs, 16 needs CUDA")(func)
    func = click.option("--batch-size", type=click.IntRange(min=1), help="images per forward pass (services: the micro-batch size) [default: 32, detectors 8]")(func)
    func = click.option("--optimize", "mode", type=click.Choice(["auto", "fused", "compiled", "onnx", "eager"]), default="auto", show_default=True,
                        help="exact speed-ups: fused (no set-up), onnx (onnxruntime, CPU fp32; auto picks it there for services and 100+ images), compiled (compiles once; auto picks it elsewhere for services and 1000+ images), eager (plain PyTorch)")(func)
    return func


def backend_option(func):
    return click.option("--backend", type=click.Choice(["auto", "torch", "onnxruntime"]), default="auto", show_default=True,
                        help="onnxruntime: run an exported .onnx, or export MODEL in memory first (checked; CPU fp32); auto: onnxruntime for .onnx files")(func)


@main.command("test")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", required=False, type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="write metrics to .json, .yaml or .pkl")
@click.option("--out-items", type=click.Choice(["none", "pred"]), default="none", show_default=True, help="pred: add per-image predictions to --out")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path), help="write confusion_matrix.png here")
@model_options
def test_command(model, data, split, out, out_items, plots, device, precision, batch_size, mode):
    """Evaluate MODEL (model.pt or checkpoint) on DATA (class folders or list file; default: the run's own split)."""
    from optik.engine.evaluate import check_results_path, evaluate, plot_confusion, write_results

    if out_items == "pred" and out is None:
        fail("--out-items pred needs --out FILE to write the predictions to")
    if out is not None:
        check_results_path(out)
    result = evaluate(model, data, split=split, batch_size=batch_size, device=device, precision=precision, mode=mode)
    print_metrics(result)
    if out is not None:
        click.echo(f"wrote {write_results(result, out, include_items=out_items == 'pred')}")
    if plots is not None:
        click.echo(f"wrote {plot_confusion(result, plots)}")


@main.command("probe")
@click.argument("model")
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--k", type=click.IntRange(min=1), default=20, show_default=True, help="neighbours that vote in kNN")
@click.option("--temperature", type=float, default=0.07, show_default=True, help="kNN vote weight exp(similarity / T)")
@click.option("--c", "c", type=float, default=1.0, show_default=True, help="inverse L2 strength of the linear probe")
@click.option("--image-size", type=click.IntRange(min=8), help="input size (default: the model's own; a timm name: 224)")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True, help="image decoding processes")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="also write the report as JSON")
def probe_command(model, data, k, temperature, c, image_size, batch_size, workers, device, out):
    """kNN and linear-probe accuracy of MODEL's frozen features on DATA, per class and their mean.

    MODEL: a backbone.pt (from `task: pretrain`), a model.pt or checkpoint, or a timm name (random
    init, the baseline). DATA: a folder with train/ and test/ (or val/) class folders, class folders
    (split 80/20), or a classify config whose data section names the set (list files too).
    """
    from optik.engine.probe import probe, write_report

    report = probe(model, data, k=k, temperature=temperature, c=c, image_size=image_size, batch_size=batch_size, workers=workers, device=device)
    for line in report.lines():
        click.echo(line)
    if out is not None:
        click.echo(f"wrote {write_report(report, out)}")


@main.command("flops")
@click.argument("model")
@click.option("--shape", nargs=2, type=click.IntRange(min=8), metavar="H W", help="input size [default: the config's or model's image size, else 224 224]")
@click.option("--num-classes", type=click.IntRange(min=1), help="classes of the head, where the config does not name them [default: 1000; detectors 91]")
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
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="output file [default: MODEL with .onnx]")
@click.option("--dynamic-batch/--static-batch", default=True, show_default=True, help="classifiers: any batch size, or only the checked one (detectors: one image of any size)")
@click.option("--check-images", type=click.Path(path_type=Path), help="a folder of real images to check a detector's export on [default: synthetic pictures]")
def export_command(model, fmt, out, dynamic_batch, check_images):
    """Export MODEL (model.pt or checkpoint, classifier or detector) to ONNX, checked against PyTorch; run it by giving the .onnx as MODEL."""
    from optik.tools.export import export_model

    path, result = export_model(model, out, dynamic_batch=dynamic_batch, check_images=check_images)
    if result.task == "classify":
        click.echo(f"wrote {path}: onnxruntime matches PyTorch on {result.images} inputs (same top-1, probabilities within {result.max_diff:.1e})")
        return
    click.echo(f"wrote {path}: onnxruntime matches PyTorch on {result.images} images, {result.compared} objects (same labels, "
               f"boxes within {result.max_box_diff:.2g} px, scores within {result.max_diff:.1e})")
    if not result.compared:
        click.echo("note: no object scored above 0.05 on the check images; give --check-images with pictures of what the model detects for a real check", err=True)


@main.command("publish")
@click.argument("source", metavar="IN", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
def publish_command(source, out):
    """Release file of IN (model.pt or checkpoint): no optimizer state, CPU tensors, weights_only-safe, hash in the name."""
    from optik.tools.publish import publish

    click.echo(f"wrote {publish(source, out)}")


@main.command("plot")
@click.argument("work_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="folder for the PNGs [default: WORK_DIR/plots]")
@click.option("--no-eval", is_flag=True, help="only the curves: skip evaluating model.pt (confusion matrix, per-class AP, PR curves)")
def plot_command(work_dir, out, no_eval):
    """Loss, metric and learning-rate curves of the run in WORK_DIR as PNG, and its model's confusion matrix (detectors: AP per class, PR curves)."""
    from optik.tools.report import plot_run

    for path in plot_run(work_dir, out, with_eval=not no_eval):
        click.echo(f"wrote {path}")


@main.command("report")
@click.argument("work_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="the HTML file [default: WORK_DIR/report.html]; its PNGs go to plots/ beside it")
@click.option("--no-eval", is_flag=True, help="only the curves: skip evaluating model.pt")
def report_command(work_dir, out, no_eval):
    """One HTML page of the run in WORK_DIR: summary, metrics, curves, evaluation plots and config."""
    from optik.tools.report import write_report

    click.echo(f"wrote {write_report(work_dir, out, with_eval=not no_eval)}")


def print_metrics(result) -> None:
    if "bbox" in result.metrics:
        return print_detection_metrics(result)
    m = result.metrics
    click.echo(f"data: {m['data']} ({m['images']} images" + (f", {m['unreadable']} unreadable" if m["unreadable"] else "") + ")")
    for failure in result.failures[:10]:
        click.echo(f"  unreadable: {failure['file']}: {failure['error']}", err=True)
    width = max(len("class"), *(len(c) for c in result.classes))
    click.echo(f"{'class':{width}s}  precision  recall     f1  support")
    for name, row in m["per_class"].items():
        click.echo(f"{name:{width}s}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:5.4f}  {row['support']:7d}")
    for key in [k for k in m if k.startswith("accuracy_")] + ["mean_class_accuracy", "precision_macro", "recall_macro", "f1_macro"]:
        click.echo(f"{key}: {m[key]:.4f}")
    print_confusion(result.classes, m["confusion_matrix"])


def print_detection_metrics(result) -> None:
    """COCO summary per IoU type, then AP per class."""
    m = result.metrics
    click.echo(f"data: {m['data']} ({m['images']} images, {m['objects']} objects" + (f", {m['unreadable']} unreadable" if m["unreadable"] else "") + ")")
    for failure in result.failures[:10]:
        click.echo(f"  unreadable: {failure['file']}: {failure['error']}", err=True)
    kinds = [kind for kind in ("bbox", "segm") if kind in m]
    width = max(len("class"), *(len(c) for c in result.classes))
    click.echo(f"{'class':{width}s}  " + "  ".join(f"{kind + ' AP':>8s}" for kind in kinds))
    for name in result.classes:
        click.echo(f"{name:{width}s}  " + "  ".join(f"{m[kind]['per_class'].get(name, 0.0):8.4f}" for kind in kinds))
    for kind in kinds:
        click.echo(f"{kind} mAP: {m[kind]['map']:.4f}  mAP@0.5: {m[kind]['map_50']:.4f}  mAP@0.75: {m[kind]['map_75']:.4f}  "
                   f"AR@100: {m[kind]['mar_100']:.4f}")


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
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), help="write one output per image here (default: print JSON lines)")
@output_options
@model_options
@backend_option
def predict(model, images, out_dir, top_k, min_score, fmt, mask_threshold, mask_nth, output_minrect, fit_bbox_to_polygon, bbox_as_fallback, device, precision, batch_size, mode,
            backend):
    """Classify or detect objects in IMAGES (files or folders) with MODEL; one output per image."""
    from optik.data.decode import IMAGE_EXTENSIONS
    from optik.data.folder import find_images
    from optik.inference.detector import load_predictor
    from optik.outputs.classification import write_error

    files = []
    for item in images:
        if not item.exists():
            fail(f"image or folder not found: {item}")
        files += find_images(item) if item.is_dir() else [item]
    if not files:
        fail("no image files found in " + ", ".join(map(str, images)) + f" (looked for {' '.join(sorted(IMAGE_EXTENSIONS))}, any case)")
    stems = {}
    for path in files:
        stems.setdefault(path.stem, []).append(path)
    clashes = [paths for paths in stems.values() if len(paths) > 1]
    predictor = load_predictor(model, device=device, precision=precision, batch_size=batch_size, mode=mode, expected_images=len(files), backend=backend)
    output, failed = make_output(task_of(predictor), fmt, top_k, min_score, mask_threshold, mask_nth, output_minrect, fit_bbox_to_polygon, bbox_as_fallback), 0
    if out_dir is not None and clashes:
        fail(f"two images would write the same output {clashes[0][0].stem}{output.suffix}: {clashes[0][0]} and {clashes[0][1]}")
    for path, result in zip(files, predictor.predict_stream(files)):
        if not result.ok:
            failed += 1
            click.echo(f"error: {path}: {result.reason}", err=True)
            if out_dir is not None:
                write_error(str(path), result.reason, out_dir / f"{path.stem}.error.json")
        elif out_dir is not None:
            output.write(result, out_dir / f"{path.stem}{output.suffix}")
        else:
            click.echo(json.dumps({"file": str(path), "prediction": output.payload(result)}))
    if out_dir is not None:
        click.echo(f"wrote {len(files) - failed} prediction(s) to {out_dir}", err=True)
    if failed:
        click.echo(f"{failed} of {len(files)} image(s) could not be read", err=True)
        sys.exit(2)


# ----------------------------------------------------------------------------- batch evaluation


@main.command("batch-predict")
@click.argument("images", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("model", required=False)
@click.option("--model-class", "--model_class", help="file.py:Name, a zero-argument class or factory (with --checkpoint)")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), help="a state_dict for --model-class or a timm MODEL (`module.` prefixes are stripped)")
@click.option("--transform", help="file.py:function giving the preprocessing (PIL image -> tensor) instead of the model's own")
@click.option("--border-crop", type=click.IntRange(min=0), default=0, show_default=True, help="pixels cut from each side first (2 removes ObjectNet's red border)")
@click.option("--format", "fmt", type=click.Choice(ROW_FORMATS), default="objectnet", show_default=True)
@click.option("--top-k", "--top_x", "top_k", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--softmax/--no-softmax", default=True, show_default=True, help="confidences as softmax probabilities, or the raw outputs")
@click.option("--convert-outputs-mode", "--convert_outputs_mode", type=click.Choice(["0", "1"]), default="0", show_default=True, help="1: map ImageNet (PyTorch index) predictions to ObjectNet ids")
@click.option("--objectnet-mappings", type=click.Path(exists=True, file_okay=False, path_type=Path), help="the ObjectNet dataset's mappings/ folder (for mode 1)")
@click.option("--batch-size", "--batch_size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--workers", type=click.IntRange(min=0), help="image loading processes per process [default: half the cores on a CPU, most of them on a GPU]")
@click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto (under torchrun: one GPU per process)")
@click.option("--devices", type=click.IntRange(min=1), default=1, show_default=True, help="processes to shard over, one GPU each (launches torchrun --standalone for you)")
@click.option("--precision", type=click.Choice(["32", "bf16", "16"]), default="32", show_default=True)
@click.option("--optimize", type=click.Choice(["auto", "fused", "compiled", "onnx", "eager"]), default="auto", show_default=True)
@click.option("--resume", is_flag=True, help="keep the rows already in OUT (and its part files) and predict the rest")
@backend_option
def batch_predict(images, out, model, model_class, checkpoint, transform, border_crop, fmt, top_k, softmax, convert_outputs_mode, objectnet_mappings,
                  batch_size, workers, device, devices, precision, optimize, resume, backend):
    """Predict every image below IMAGES into one CSV (ObjectNet challenge format by default).

    MODEL is a model.pt / optik checkpoint, an exported .onnx, or a timm name with --checkpoint; or give
    --model-class file.py:Name --checkpoint W. Run under `torchrun --nproc_per_node N` to shard.
    """
    import os
    import subprocess

    from optik.tools.objectnet import BatchJob
    from optik.tools.objectnet import batch_predict as run_batch

    if devices > 1 and "WORLD_SIZE" not in os.environ:  # the same command, one process per device
        args = sys.argv[1:]
        args = [a for i, a in enumerate(args) if not (a == "--devices" or a.startswith("--devices=") or (i and args[i - 1] == "--devices"))]
        sys.exit(subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(devices), "-m", "optik.cli", *args]))
    job = BatchJob(images, out, model, model_class, checkpoint, transform, border_crop, fmt, top_k, softmax, int(convert_outputs_mode), objectnet_mappings,
                   batch_size, workers, device, precision, optimize, resume, backend)
    report = run_batch(job)
    if os.environ.get("RANK", "0") != "0":
        return
    rate = report.predicted / max(report.seconds, 1e-9)
    click.echo(f"wrote {report.rows} rows to {out} ({report.predicted} predicted now, {report.skipped} kept from before; {rate:.1f} images/s)", err=True)
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
    from optik.tools.objectnet import score_predictions

    score = score_predictions(predictions, answers, range_check=not no_range_check, num_classes=num_classes)
    click.echo(f"top-1: {score.top1:.4f}\ntop-5: {score.top5:.4f}\nimages scored: {score.scored}\ntotal: {score.total}")


# ----------------------------------------------------------------------------- services


def service_options(func):
    """Options both services share: the output, logging, and the model options."""
    func = click.option("--quiet", is_flag=True, help="log only warnings and errors")(func)
    func = click.option("--verbose", is_flag=True, help="log every batch and every empty look")(func)
    return output_options(model_options(backend_option(func)))


def start_predictor(model: Path, device: str, precision: str, batch_size: int | None, mode: str, backend: str, verbose: bool, quiet: bool,
                    output_options: dict, expected_images: int | None = None):
    """Logging on stderr, the predictor loaded, its output format, then the warm-up (a service
    compiles before its first request; output options that do not fit the model fail before that).

    `mode` auto compiles for a service that keeps running (`expected_images` None) or a big one-off job.
    """
    import logging

    from optik.inference.backends import COMPILE_MIN_IMAGES
    from optik.inference.detector import load_predictor

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("optik").setLevel(level)
    expected_images = COMPILE_MIN_IMAGES if expected_images is None else expected_images
    predictor = load_predictor(model, device=device, precision=precision, batch_size=batch_size, mode=mode, expected_images=expected_images, backend=backend)
    output = make_output(task_of(predictor), **output_options)
    predictor.warmup()
    logging.getLogger("optik.services").info("model %s ready on %s (%s, precision %s, batch %d)", model, predictor.device, predictor.backend.mode, precision, predictor.batch_size)
    return predictor, output


def task_of(predictor) -> str:
    from optik.inference.detector import Detector

    return "detect" if isinstance(predictor, Detector) else "classify"


@main.group(cls=OptikGroup)
def serve():
    """Serve a model through a file drop (poll) or Redis (redis)."""


@serve.command("poll")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--in", "--prediction_in", "in_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="folder that images are dropped into")
@click.option("--out", "--prediction_out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="folder for <stem>.json (and, by default, the processed images)")
@click.option("--tmp", "--prediction_tmp", "tmp_dir", type=click.Path(file_okay=False, path_type=Path), help="stage outputs here before renaming them into --out (same filesystem)")
@click.option("--done", "done_dir", type=click.Path(file_okay=False, path_type=Path), help="move processed images here instead of --out")
@click.option("--failed", "failed_dir", type=click.Path(file_okay=False, path_type=Path), help="move undecodable images here [default: OUT/failed]")
@click.option("--delete-input", "--delete_input", is_flag=True, help="delete processed images instead of moving them")
@click.option("--continuous", is_flag=True, help="keep looking for new images every --poll-wait seconds")
@click.option("--poll-wait", "--poll_wait", type=click.FloatRange(min=0), default=1.0, show_default=True, help="seconds between looks at an empty folder (--continuous)")
@click.option("--watch", "--use_watchdog", is_flag=True, help="react to file events at once (keeps running), rescanning every --watch-interval")
@click.option("--watch-interval", "--watchdog_check_interval", type=click.FloatRange(min=0.01), default=10.0, show_default=True, help="seconds between rescans with --watch")
@click.option("--settle", type=click.FloatRange(min=0), default=1.0, show_default=True, help="a file without an end marker (JPEG and PNG have one) is taken once unchanged this long")
@service_options
def serve_poll(model, in_dir, out_dir, tmp_dir, done_dir, failed_dir, delete_input, continuous, poll_wait, watch, watch_interval, settle, top_k, min_score, fmt,
               mask_threshold, mask_nth, output_minrect, fit_bbox_to_polygon, bbox_as_fallback, verbose, quiet, device, precision, batch_size, mode, backend):
    """Predict images dropped into --in: <stem>.json (or -rois.csv) in --out, then move the image on (the old predict_poll).

    Without --continuous or --watch it empties the folder once and exits.
    """
    from optik.services.loop import Stop
    from optik.data.decode import is_image_file
    from optik.services.poller import FilePoller, PollOptions, folder_lock

    options = PollOptions(in_dir, out_dir, tmp_dir, done_dir, failed_dir, delete_input, continuous, watch, poll_wait, watch_interval, settle)
    stop = Stop()
    one_pass = None if continuous or watch else sum(1 for p in in_dir.iterdir() if is_image_file(p.name))
    with folder_lock(in_dir):  # before the model loads: a second poller is refused at once
        outputs = dict(fmt=fmt, top_k=top_k, min_score=min_score, mask_threshold=mask_threshold, mask_nth=mask_nth, output_minrect=output_minrect,
                       fit_bbox_to_polygon=fit_bbox_to_polygon, bbox_as_fallback=bbox_as_fallback)
        predictor, output = start_predictor(model, device, precision, batch_size, mode, backend, verbose, quiet, outputs, expected_images=one_pass)
        with stop.on_signals():
            FilePoller(predictor, output, options, stop).run(locked=True)


def redis_options(func):
    func = click.option("--redis-ssl-ca", type=click.Path(exists=True, dir_okay=False), help="CA certificate file to verify the server with")(func)
    func = click.option("--redis-ssl", is_flag=True, help="connect with TLS")(func)
    func = click.option("--redis-password-env", "--redis_password_env", metavar="VAR", help="read the password from environment variable VAR")(func)
    func = click.option("--redis-password", "--redis_password", help="password (prefer --redis-password-env)")(func)
    func = click.option("--redis-username", help="ACL user name")(func)
    func = click.option("--redis-db", "--redis_db", type=click.IntRange(min=0), default=0, show_default=True)(func)
    func = click.option("--redis-port", "--redis_port", type=click.IntRange(1, 65535), default=6379, show_default=True)(func)
    func = click.option("--redis-host", "--redis_host", default="localhost", show_default=True)(func)
    func = click.option("--redis-out", "--redis_out", default="predictions", show_default=True, help="channel (pubsub) or stream (stream) for the predictions")(func)
    func = click.option("--redis-in", "--redis_in", default="images", show_default=True, help="channel pattern (pubsub) or stream (stream) the images come from")(func)
    func = click.option("--mode", "transport", type=click.Choice(["pubsub", "stream"]), default="pubsub", show_default=True, help="pubsub: the old images' protocol; stream: consumer groups, nothing lost")(func)
    return func


def connect_options(host, port, db, username, password, password_env, ssl, ssl_ca):
    import os

    from optik.services.redis_service import RedisOptions

    if password_env is not None:
        if password is not None:
            fail("give --redis-password or --redis-password-env, not both")
        if password_env not in os.environ:
            fail(f"--redis-password-env {password_env}: that environment variable is not set")
        password = os.environ[password_env]
    return RedisOptions(host, port, db, password or None, username, ssl or ssl_ca is not None, ssl_ca)


@serve.command("redis")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@redis_options
@click.option("--group", default="optik", show_default=True, help="consumer group of the workers (stream)")
@click.option("--consumer", help="this worker's name in the group (stream) [default: host-pid]")
@click.option("--claim-idle-ms", type=click.IntRange(min=1), default=30000, show_default=True, help="take over entries another worker left unacknowledged this long (stream)")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True, help="deliveries before an entry goes to <redis-in>:dead (stream)")
@click.option("--max-wait-ms", type=click.FloatRange(min=0), default=10, show_default=True, help="after the first image, wait this long for more to fill the batch")
@click.option("--maxlen", type=click.IntRange(min=1), help="trim the output stream to about this many entries (stream)")
@click.option("--delete-processed", is_flag=True, help="delete input entries once answered, so the input stream does not grow (stream)")
@service_options
def serve_redis(model, transport, redis_in, redis_out, redis_host, redis_port, redis_db, redis_username, redis_password, redis_password_env, redis_ssl, redis_ssl_ca,
                group, consumer, claim_idle_ms, max_attempts, max_wait_ms, maxlen, delete_processed, top_k, min_score, fmt, mask_threshold, mask_nth, output_minrect,
                fit_bbox_to_polygon, bbox_as_fallback, verbose, quiet, device, precision, batch_size, mode, backend):
    """Predict images sent through Redis (the old predict_redis; --mode stream to scale out and lose nothing)."""
    from optik.services.loop import Stop
    from optik.services.redis_service import PubSubService, StreamOptions, StreamService, check_auth

    connection = connect_options(redis_host, redis_port, redis_db, redis_username, redis_password, redis_password_env, redis_ssl, redis_ssl_ca)
    check_auth(connection)
    outputs = dict(fmt=fmt, top_k=top_k, min_score=min_score, mask_threshold=mask_threshold, mask_nth=mask_nth, output_minrect=output_minrect,
                   fit_bbox_to_polygon=fit_bbox_to_polygon, bbox_as_fallback=bbox_as_fallback)
    predictor, output = start_predictor(model, device, precision, batch_size, mode, backend, verbose, quiet, outputs)
    stop = Stop()
    if transport == "pubsub":
        service = PubSubService(predictor, output, connection, redis_in, redis_out, max_wait_ms, stop)
    else:
        streams = StreamOptions(redis_in, redis_out, group, claim_idle_ms=claim_idle_ms, max_attempts=max_attempts, max_wait_ms=max_wait_ms, maxlen=maxlen, delete_processed=delete_processed)
        if consumer:
            streams.consumer = consumer
        service = StreamService(predictor, output, connection, streams, stop)
    with stop.on_signals():
        service.run()


@main.group("data", cls=OptikGroup)
def data_group():
    """Dataset tools."""


@data_group.group("convert", cls=OptikGroup)
def data_convert():
    """Convert datasets: VOC/YOLO annotations to COCO; class folders split, listed, or made from list files."""


def coco_arguments(func):
    """SOURCE, OUT.json and the options the VOC and YOLO conversions share."""
    func = click.option("--skip-bad", is_flag=True, help="leave missing or unreadable images out instead of failing")(func)
    func = click.option("--copy-images", is_flag=True, help="copy the images next to OUT (images/) so the COCO set stands alone")(func)
    func = click.option("--classes", help="class names (comma list or labels file); default: found in the data")(func)
    func = click.argument("out", type=click.Path(dir_okay=False, path_type=Path))(func)
    return click.argument("source", type=click.Path(path_type=Path))(func)


def write_coco(fmt: str, source: Path, out: Path, classes, copy_images: bool, skip_bad: bool) -> None:
    from optik.tools.convert import convert_to_coco

    if out.suffix.lower() != ".json":
        fail(f"{out}: the COCO output must be a .json file")
    summary = convert_to_coco(fmt, source, out, classes=classes, copy_images=copy_images, skip_bad=skip_bad)
    for line in summary["report"]:
        click.echo(line, err=True)
    click.echo(f"wrote {summary['json']}: {summary['images']} images, {summary['objects']} objects, classes {summary['classes']}")


@data_convert.command("voc")
@coco_arguments
def data_convert_voc(source, out, classes, copy_images, skip_bad):
    """Convert a Pascal VOC dataset (an XML file per image) at SOURCE to one COCO JSON file OUT."""
    write_coco("voc", source, out, classes, copy_images, skip_bad)


@data_convert.command("yolo")
@coco_arguments
def data_convert_yolo(source, out, classes, copy_images, skip_bad):
    """Convert a YOLO dataset (a txt file per image) at SOURCE to one COCO JSON file OUT."""
    write_coco("yolo", source, out, classes, copy_images, skip_bad)


LINK_OPTION = click.option("--link", type=click.Choice(["copy", "symlink", "hardlink"]), default="copy", show_default=True,
                           help="put images into OUT as copies, relative symlinks, or hard links (same filesystem)")
SEED_OPTION = click.option("--seed", type=int, default=0, show_default=True, help="seed of the per-class shuffle")


def folder_output_options(func):
    """--overwrite, --check and --skip-bad, which every class-folder and list conversion takes."""
    func = click.option("--skip-bad", is_flag=True, help="decode every image and leave unreadable ones out (named) instead of failing")(func)
    func = click.option("--check", is_flag=True, help="decode every image first; unreadable ones are an error")(func)
    return click.option("--overwrite", is_flag=True, help="replace what an earlier `optik data convert` wrote to OUT")(func)


def print_conversion(conversion) -> None:
    for note in conversion.notes:
        click.echo(f"note: {note}", err=True)
    for line in conversion.table():
        click.echo(line)


@data_convert.command("split")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--ratios", nargs=3, type=float, default=(0.8, 0.1, 0.1), show_default=True, metavar="TRAIN VAL TEST",
              help="each class's shares; a 0 leaves that split out")
@SEED_OPTION
@LINK_OPTION
@folder_output_options
def data_convert_split(source, out, ratios, seed, link, overwrite, check, skip_bad):
    """Split SOURCE (a sub-folder of images per class) into OUT/train|val|test/<class>/, stratified per class.

    A class with 2 or more images gets at least one val image, with 3 or more one test image.
    Files keep their paths below their class folder. SOURCE is only read.
    """
    from optik.tools.convert import split_folder

    conversion = split_folder(source, out, ratios, seed, link, overwrite=overwrite, check=check, skip_bad=skip_bad)
    print_conversion(conversion)
    click.echo(f"wrote {out} (data.root for `data.format: folder`)")


@data_convert.command("folder-to-list")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--classes", help="class names in the model's order (comma list or labels file); default: OPTIK_CLASSES, else sorted folder names")
@click.option("--ratios", nargs=3, type=float, default=None, metavar="TRAIN VAL TEST", help="split a flat SOURCE into train/val/test lists (default: one all.txt)")
@SEED_OPTION
@folder_output_options
def data_convert_folder_to_list(source, out, classes, ratios, seed, overwrite, check, skip_bad):
    """Write list files (`path label` lines) and classes.txt for SOURCE's class folders into OUT (default: SOURCE).

    SOURCE/train|val|test/<class>/ gives train.txt, val.txt, test.txt; SOURCE/<class>/ gives all.txt,
    or three lists with --ratios. Paths are relative to OUT, where the lists are.
    """
    from optik.tools.convert import folder_to_lists

    conversion = folder_to_lists(source, out, classes, ratios, seed, overwrite=overwrite, check=check, skip_bad=skip_bad)
    print_conversion(conversion)
    lists = {Path(path).stem: path for path in conversion.written}
    keys = [("train_list", lists.get("train", lists.get("all"))), ("val_list", lists.get("val")), ("test_list", lists.get("test")),
            ("classes", lists["classes"])]
    click.echo(f"wrote {', '.join(conversion.written)}; in a config:\ndata:\n  format: list")
    for key, path in keys:
        if path:
            click.echo(f"  {key}: {path}")


@data_convert.command("list-to-folder")
@click.argument("lists", metavar="LIST...", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), help="the folder the lists' paths are relative to (data.root); default: each list's folder")
@click.option("--classes", help="class names for index labels (comma list or labels file); default: OPTIK_CLASSES, else classes.txt beside the first list")
@LINK_OPTION
@folder_output_options
def data_convert_list_to_folder(lists, out, root, classes, link, overwrite, check, skip_bad):
    """Put the images of list files into class folders: OUT/<split>/<class>/ for train.txt, val.txt, test.txt, OUT/<class>/ for one other list.

    File names are kept (a repeated name in one class folder gets -2, -3, ...).
    """
    from optik.tools.convert import lists_to_folder

    conversion = lists_to_folder(list(lists), out, root, classes, link, overwrite=overwrite, check=check, skip_bad=skip_bad)
    print_conversion(conversion)
    click.echo(f"wrote {out} (data.root for `data.format: folder`)")


@data_group.command("check")
@click.argument("root", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def data_check(root, as_json):
    """Decode every image below DIR: unreadable and duplicate files, class counts, sizes. Exit 1 when problems are found."""
    from optik.tools.check import check_folder

    report = check_folder(root)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        for line in report.lines():
            click.echo(line)
    if report.problems:
        sys.exit(1)


@data_group.command("color-constancy")
@click.argument("source", metavar="IN", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--p", "p", type=float, default=6, show_default=True, help="Minkowski norm: 1 is gray world, inf max-RGB")
@click.option("--skip-bad", is_flag=True, help="leave unreadable images out (and list them) instead of failing")
def data_color_constancy(source, out, p, skip_bad):
    """Remove colour casts (Shades of Gray) from the image IN or the images under folder IN, into folder OUT."""
    from optik.tools.colour import color_constancy

    report = color_constancy(source, out, p=p, skip_bad=skip_bad)
    for path, reason in report.broken.items():
        click.echo(f"left out {path}: {reason}", err=True)
    click.echo(f"wrote {report.written} image(s) to {report.out}")


@data_group.command("stats")
@click.argument("source", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--size", type=click.IntRange(min=1), help="resize the shorter side to this first, as training does [default: native size]")
@click.option("--skip-bad", is_flag=True, help="leave unreadable images out (and list them) instead of failing")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def data_stats(source, size, skip_bad, as_json):
    """Per-channel mean and std of every image under DIR, for data.mean / data.std."""
    from dataclasses import asdict

    from optik.tools.colour import channel_stats

    report = channel_stats(source, skip_bad=skip_bad, size=size)
    for path, reason in report.broken.items():
        click.echo(f"left out {path}: {reason}", err=True)
    if as_json:
        click.echo(json.dumps(asdict(report)))
        return
    mean, std = ([round(v, 4) for v in values] for values in (report.mean, report.std))
    click.echo(f"images: {report.images}, pixels: {report.pixels}")
    click.echo(f"mean: {mean}")
    click.echo(f"std: {std}")
    click.echo("# paste into a config:")
    click.echo(f"data: {{mean: {mean}, std: {std}}}")


@main.group("redis", cls=OptikGroup)
def redis_group():
    """Talk to a running `optik serve redis`."""


@redis_group.command("send")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@redis_options
@click.option("--raw", is_flag=True, help="publish the bare image bytes (as srh-broadcast -b does) instead of a JSON envelope with an id (pubsub); replies then carry no file name")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=30.0, show_default=True, help="seconds to wait for all replies")
def redis_send(images, transport, redis_in, redis_out, redis_host, redis_port, redis_db, redis_username, redis_password, redis_password_env, redis_ssl, redis_ssl_ca, raw, timeout):
    """Send IMAGES to a service and print each reply as a JSON line."""
    from optik.services.redis_service import send_images

    connection = connect_options(redis_host, redis_port, redis_db, redis_username, redis_password, redis_password_env, redis_ssl, redis_ssl_ca)
    errors = 0
    for reply in send_images(connection, list(images), redis_in, redis_out, transport, raw, timeout):
        errors += isinstance(reply, dict) and "error" in reply
        click.echo(json.dumps(reply))
    if errors:
        fail(f"{errors} of {len(images)} image(s) could not be predicted (see the error replies above)")


if __name__ == "__main__":
    main()
