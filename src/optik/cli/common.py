"""The `optik` group, its error handling (a user's error is one line and exit code 2), and the options
that several commands share."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from optik.config.schema import TTA_CHOICES
from optik.errors import Interrupted, OptikError

PRESET_HELP = "a config file, or a preset name (`optik config list`)"


class OptikGroup(click.Group):
    """Turns user errors (OptikError, also when raised in a DataLoader worker) into one line and exit code 2."""

    def main(self, *args, **kwargs):
        kwargs.setdefault("prog_name", "optik")  # also under `python -m optik`
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
            sys.stdout.flush()  # output that fit in the buffer meets a closed pipe only here
        except BrokenPipeError:
            closed_pipe()
        except click.NoSuchOption as exc:  # an option of the tools our users come from: what it is now
            if exc.option_name in OLD_OPTIONS:
                fail(f"{exc.option_name} is gone: {OLD_OPTIONS[exc.option_name]}")
            fail(usage_error(exc))
        except click.UsageError as exc:
            fail(usage_error(exc))
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
        except Interrupted as exc:  # the shell's convention: 128 + the signal's number (130 Ctrl-C, 143 SIGTERM)
            click.echo(str(exc), err=True)
            sys.exit(128 + exc.signum)
        except BrokenPipeError:  # before click's own handling, which exits 1
            closed_pipe()
        except OSError as exc:  # a file or folder the user named cannot be written or read
            if exc.filename is None:
                raise
            fail(f"{exc.strerror or exc}: {exc.filename}")
        except RuntimeError as exc:  # a worker process re-raises our errors as RuntimeError text
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            if last.startswith("optik.errors."):
                fail(last.split(": ", 1)[-1])
            raise
        except Exception as exc:
            if type(exc).__name__ == "MisconfigurationException":  # Lightning's word on devices, strategy, precision
                fail(" ".join(str(exc).split()))
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


OLD_OPTIONS = {  # options of mmcls/mmdet tools and their Docker images that optik says differently (docs/migrating.md)
    "--model": "the model is the first argument, e.g. `optik serve poll model.pt --in IN --out OUT`",
    "--config": "model.pt holds its config, so services and predict need none; `optik train CONFIG` takes it first",
    "--cfg-options": "use --set KEY=VALUE (repeatable)",
    "--load-from": "use --set model.weights=FILE to start from weights, or --resume to continue a run",
    "--resume-from": "use --resume [CHECKPOINT] (with --work-dir)",
}


def usage_error(exc: click.UsageError) -> str:
    """A bad option or argument: click's one line, and where to look."""
    hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    return f"{exc.format_message()}{hint}"


def closed_pipe() -> None:
    """The reader of stdout went away (`optik test ... | head -1`): a normal end, as for Unix tools."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout once more at exit: let that go nowhere
    sys.exit(0)


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.group(cls=OptikGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="optik")
def main():
    """Train, evaluate and serve image classifiers and object detectors on PyTorch."""


OUTPUT_KEYS = (
    "fmt",
    "top_k",
    "min_score",
    "mask_threshold",
    "mask_nth",
    "output_minrect",
    "fit_bbox_to_polygon",
    "bbox_as_fallback",
)


def output_options(func):
    """How predictions are written: classification JSON, or OPEX / ROI CSV for detectors (DESIGN §9).

    The command gets them as one `outputs` dict (`make_output(task, **outputs)`)."""

    command = func

    @functools.wraps(command)
    def with_outputs(*args, **kwargs):
        return command(*args, outputs={key: kwargs.pop(key) for key in OUTPUT_KEYS}, **kwargs)

    func = with_outputs
    func = click.option(
        "--bbox-as-fallback",
        "--bbox_as_fallback",
        type=float,
        default=-1.0,
        show_default=True,
        metavar="RATIO",
        help="use the box as polygon when the polygon's bounding box covers less than RATIO of the box (<0: off)",
    )(func)
    func = click.option(
        "--fit-bbox-to-polygon",
        "--fit_bbox_to_polygon",
        is_flag=True,
        help="make each box the bounding box of its polygon",
    )(func)
    func = click.option(
        "--output-minrect",
        "--output_minrect",
        is_flag=True,
        help="add the rotated minimum rectangle's width and height of each polygon",
    )(func)
    func = click.option(
        "--mask-nth",
        "--mask_nth",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        help="use every nth row/column of a mask to find its polygon (faster)",
    )(func)
    func = click.option(
        "--mask-threshold",
        "--mask_threshold",
        type=click.FloatRange(0, 1),
        default=0.1,
        show_default=True,
        help="mask score from which a pixel belongs to the object",
    )(func)
    func = click.option(
        "--format",
        "fmt",
        type=click.Choice(["json", "opex", "roi"]),
        help="json (classifiers); opex (<stem>.json) or roi (<stem>-rois.csv) for detectors [default: json / opex]",
    )(func)
    func = click.option(
        "--score", "min_score", type=click.FloatRange(0, 1), help="only classes (objects) scoring at least this"
    )(func)
    func = click.option(
        "--top-k",
        "--top_x",
        "top_k",
        type=click.IntRange(min=1),
        help="only the K most likely classes, highest first (classifiers)",
    )(func)
    return func


def make_output(
    task: str,
    fmt: str | None = None,
    top_k: int | None = None,
    min_score: float | None = None,
    mask_threshold: float = 0.1,
    mask_nth: int = 1,
    output_minrect: bool = False,
    fit_bbox_to_polygon: bool = False,
    bbox_as_fallback: float = -1.0,
):
    """The output format for a model's task, refusing options that do not apply to it."""
    from optik.tasks import get_task

    return get_task(task).output_format(
        fmt,
        top_k,
        min_score,
        mask_threshold=mask_threshold,
        mask_nth=mask_nth,
        output_minrect=output_minrect,
        fit_bbox_to_polygon=fit_bbox_to_polygon,
        bbox_as_fallback=bbox_as_fallback,
    )


TTA_HELP = (
    "test-time augmentation (classifiers): the softmax averaged over the original image and each flip named, "
    "in one forward pass; hflip adds the image mirrored left-right, vflip upside down, hflip,vflip both "
    "(three views: not the two flips at once); none: off [default: what the model records, data.tta]"
)


def tta_option(func):
    return click.option("--tta", type=click.Choice(TTA_CHOICES), help=TTA_HELP)(func)


def model_options(func):
    func = tta_option(func)
    func = click.option("--device", default="auto", show_default=True, help="cpu, cuda, cuda:N or auto")(func)
    func = calibration_option(func)
    func = click.option(
        "--precision",
        type=click.Choice(PRECISION_CHOICES),
        default="32",
        show_default=True,
        help=PRECISION_HELP,
    )(func)
    func = click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        help="images per forward pass (services: the micro-batch size) [default: 32, detectors 8]",
    )(func)
    func = click.option(
        "--optimize",
        "mode",
        type=click.Choice(OPTIMIZE_CHOICES),
        default="auto",
        show_default=True,
        help=OPTIMIZE_HELP,
    )(func)
    return func


PRECISION_CHOICES = ["32", "bf16", "16", "int8"]
PRECISION_HELP = (
    "32 is exact; bf16 is faster on recent CPUs (OpenVINO where the CPU has AMX/avx512_bf16), 16 needs CUDA, "
    "int8 (classifiers, CPU) quantizes on --calibration images; auto never runs a lower precision slower than 32"
)
OPTIMIZE_CHOICES = ["auto", "fused", "compiled", "onnx", "openvino", "eager"]
OPTIMIZE_HELP = (
    "how the model runs: fused (exact, no set-up), onnx (onnxruntime, CPU fp32), openvino (CPU: 32, bf16, int8), "
    "compiled (torch.compile, compiles once), eager (plain PyTorch); auto: on a CPU the fastest that agrees with "
    "eager, measured on the first batch, for services and jobs whose set-up pays off (else fused); on a GPU "
    "compiled for services and 1000+ images"
)


def calibration_option(func):
    return click.option(
        "--calibration",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="a folder of images like the real ones (the first 300 are used) to quantize on, for --precision int8",
    )(func)


def backend_option(func):
    return click.option(
        "--backend",
        type=click.Choice(["auto", "torch", "onnxruntime", "openvino"]),
        default="auto",
        show_default=True,
        help="onnxruntime / openvino: run an exported .onnx / .xml, or convert MODEL in memory first (checked; CPU), an error if that fails; torch: PyTorch only; auto: the file's engine, else --optimize decides",
    )(func)
