"""`optik plot` and `optik report`: a run's loss, metric and learning-rate curves from logs/metrics.csv,
its model's evaluation plots (confusion matrix; per-class AP and PR curves), and one HTML page of them all."""

from __future__ import annotations

import csv
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import numpy as np
import yaml

from optik.errors import DataError
from optik.files import write_atomic

if TYPE_CHECKING:  # torch is imported only when a model is evaluated: curves alone come quickly
    from optik.metrics.evaluation import DetectionResult, EvalResult


@dataclass
class RunLog:
    """logs/metrics.csv as one series per column: (step, epoch, value) for every row that holds a value.

    Lightning writes sparse rows: a row per logged step, per validation and per epoch end, each
    filling only its own columns; learning-rate rows carry a step but no epoch (None here).
    """

    series: dict[str, list[tuple[int, int | None, float]]]

    def columns(self, kind: str) -> list[str]:
        """The columns of one kind: `loss` (train/* and val losses), `metric` (the other val/*) or `lr`."""
        wanted = {
            "loss": lambda c: c.startswith("train/") or (c.startswith("val/") and c.endswith("loss")),
            "metric": lambda c: c.startswith("val/") and not c.endswith("loss"),
            "lr": lambda c: c.startswith("lr-"),
        }[kind]
        return [column for column in self.series if wanted(column)]

    def epochs_done(self) -> int:
        """Epochs that ended (they logged the epoch mean of the training loss)."""
        return len({epoch for _, epoch, _ in self.series.get("train/loss_epoch", [])})


def check_work_dir(work_dir: str | Path) -> Path:
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        raise DataError(f"work dir not found: {work_dir} (give the --work-dir of an `optik train` run)")
    return work_dir


def read_log(work_dir: Path) -> RunLog:
    """The run's metrics.csv; a clear error when there is none, or nothing logged yet."""
    path = work_dir / "logs" / "metrics.csv"
    if not path.is_file():
        raise DataError(f"no logs/metrics.csv in {work_dir}: is it an optik work dir of a run that started?")
    series: dict[str, list[tuple[int, int | None, float]]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        for line, row in enumerate(reader, start=2):
            try:
                step, epoch = int(float(row.get("step") or 0)), int(float(row["epoch"])) if row.get("epoch") else None
                for column, cell in row.items():
                    if column not in ("step", "epoch") and cell:
                        series.setdefault(column, []).append((step, epoch, float(cell)))
            except (TypeError, ValueError) as exc:
                raise DataError(
                    f"{path} line {line} is not a row of numbers ({exc}): is it a Lightning metrics.csv?"
                ) from exc
    if not series:
        raise DataError(
            f"{path} holds no logged values yet: let the run train a few steps (train.log_every_n_steps) and try again"
        )
    return RunLog(series)


def read_config(work_dir: Path) -> dict:
    path = work_dir / "config.yaml"
    if not path.is_file():
        raise DataError(f"no config.yaml in {work_dir}: is it an optik work dir of a run that started?")
    return yaml.safe_load(path.read_text()) or {}


# ----------------------------------------------------------------------------- plots


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_axes(ax, title: str, xlabel: str, ylabel: str | None = None, integer_x: bool = True) -> None:
    """Title, axis names, a light grid and the legend; steps and epochs ticked as whole numbers."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def save_figure(fig, path: Path) -> Path:
    """Write the figure as PNG atomically and free it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    write_atomic(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    pyplot().close(fig)
    return path


def curve_label(column: str) -> str:
    """`train/loss_step` -> `train/loss (step)`, `train/loss_epoch` -> `train/loss (epoch mean)`."""
    for suffix, said in (("_step", "step"), ("_epoch", "epoch mean")):
        if column.endswith(suffix):
            return f"{column.removesuffix(suffix)} ({said})"
    return column


def plot_losses(log: RunLog, folder: Path) -> Path:
    """loss.png: every training loss (per step, and epoch means) and the validation loss, by step."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for column in log.columns("loss"):
        steps, _, values = zip(*log.series[column])
        if column.endswith("_step"):
            ax.plot(steps, values, linewidth=0.8, alpha=0.6, label=curve_label(column))
        else:
            ax.plot(steps, values, marker="o", label=curve_label(column))
    label_axes(ax, "loss", "step", "loss")
    return save_figure(fig, folder / "loss.png")


def plot_metrics(log: RunLog, folder: Path) -> Path:
    """metrics.png: every validation metric (accuracy, mAP...) by epoch."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for column in log.columns("metric"):
        _, epochs, values = zip(*log.series[column])
        ax.plot([epoch + 1 for epoch in epochs], values, marker="o", label=column)
    label_axes(ax, "validation metrics", "epoch")
    return save_figure(fig, folder / "metrics.png")


def plot_learning_rate(log: RunLog, folder: Path) -> Path:
    """lr.png: the learning rate of each parameter group, by step."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for column in log.columns("lr"):
        steps, _, values = zip(*log.series[column])
        ax.plot(steps, values, marker=".", drawstyle="steps-post", label=column.removeprefix("lr-"))
    label_axes(ax, "learning rate (per parameter group)", "step", "learning rate")
    return save_figure(fig, folder / "lr.png")


def plot_curves(log: RunLog, folder: Path) -> list[Path]:
    """The curves the log has data for: loss, validation metrics (with validation), learning rate."""
    plots = {"loss": plot_losses, "metric": plot_metrics, "lr": plot_learning_rate}
    return [plot(log, folder) for kind, plot in plots.items() if log.columns(kind)]


def plot_class_ap(result: DetectionResult, iou_type: str, folder: Path) -> Path:
    """per_class_ap[_segm].png: AP@[.5:.95] and AP@.5 of every class, side by side."""
    plt = pyplot()
    curves = result.curves[iou_type]["per_class"]
    classes = [name for name in result.classes if name in curves]  # a class with no objects in the data has no AP
    ap = [result.metrics[iou_type]["per_class"].get(name, 0.0) for name in classes]
    ap50 = [float(np.mean(curves[name]["iou50"])) for name in classes]
    positions = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(min(24, 3 + 0.5 * len(classes)), 4.5))
    ax.bar(positions - 0.2, ap, width=0.4, label="AP@[.5:.95]")
    ax.bar(positions + 0.2, ap50, width=0.4, label="AP@.5")
    ax.set_xticks(positions, classes, rotation=90 if len(classes) > 8 else 0)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AP")
    ax.set_title(f"{iou_type} AP per class (mAP {result.metrics[iou_type]['map']:.4f})")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, folder / f"per_class_ap{'' if iou_type == 'bbox' else '_' + iou_type}.png")


def plot_pr_curves(result: DetectionResult, iou_type: str, folder: Path) -> Path:
    """pr_curve[_segm].png: precision over recall at IoU 0.5, one line per class and their mean."""
    plt = pyplot()
    curves = result.curves[iou_type]
    recall, per_class = curves["recall"], curves["per_class"]
    fig, ax = plt.subplots(figsize=(7, 6))
    for name, curve in per_class.items():
        ax.plot(recall, curve["iou50"], linewidth=1, label=f"{name} (AP@.5 {np.mean(curve['iou50']):.3f})")
    if per_class:
        mean = np.mean([curve["iou50"] for curve in per_class.values()], axis=0)
        ax.plot(recall, mean, color="black", linewidth=2.5, linestyle="--", label=f"mean (mAP@.5 {mean.mean():.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    label_axes(ax, f"{iou_type} precision-recall at IoU 0.5", "recall", "precision", integer_x=False)
    if len(per_class) > 20:  # many classes: a smaller legend
        ax.legend(fontsize=5, ncol=3)
    return save_figure(fig, folder / f"pr_curve{'' if iou_type == 'bbox' else '_' + iou_type}.png")


def plot_evaluation(result: EvalResult, folder: Path) -> list[Path]:
    """Confusion matrix for a classifier; per-class AP bars and PR curves (per IoU type) for a detector."""
    from optik.engine.evaluate import plot_confusion
    from optik.metrics.evaluation import DetectionResult

    if not isinstance(result, DetectionResult):
        return [plot_confusion(result, folder)]
    return [plot(result, iou_type, folder) for iou_type in result.curves for plot in (plot_class_ap, plot_pr_curves)]


def evaluate_run(work_dir: Path) -> EvalResult | None:
    """The run's model.pt on its own test split (val when it has none); None without a model.pt (pretraining, or unfinished)."""
    from optik.engine.evaluate import evaluate

    model = work_dir / "model.pt"
    if not model.is_file():
        return None
    try:
        return evaluate(model, split="test", with_curves=True)
    except DataError as exc:
        raise DataError(f"cannot evaluate {model}: {exc}; pass --no-eval to plot the curves only") from exc


def plot_run(work_dir: str | Path, out: str | Path | None = None, with_eval: bool = True) -> list[Path]:
    """Curves of a run's log, and (with `with_eval`) its model's evaluation plots, as PNGs in `out` (default WORK_DIR/plots)."""
    work_dir = check_work_dir(work_dir)
    folder = Path(out) if out is not None else work_dir / "plots"
    paths = plot_curves(read_log(work_dir), folder)
    result = evaluate_run(work_dir) if with_eval else None
    return paths + (plot_evaluation(result, folder) if result is not None else [])


# ----------------------------------------------------------------------------- HTML


def number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))


def table(header: list[str] | None, rows: list[list]) -> str:
    """An HTML table, every cell escaped (floats to 4 decimals)."""
    head = "<tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in header) + "</tr>\n" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{number(cell)}</td>" for cell in row) + "</tr>\n" for row in rows)
    return f"<table>\n{head}{body}</table>\n"


def best_of(log: RunLog, column: str) -> tuple[float, int | None]:
    """The best value of a column (lowest for losses, highest otherwise) and its epoch."""
    pick = min if column in log.columns("loss") else max
    _, epoch, value = pick(log.series[column], key=lambda point: point[2])
    return value, epoch


def monitor_column(log: RunLog, monitor: str) -> str | None:
    """The log column of `train.monitor` (an epoch-mean column for step-logged values such as train/loss)."""
    return next((column for column in (monitor, f"{monitor}_epoch") if column in log.series), None)


def summary_section(config: dict, log: RunLog, classes: list[str], work_dir: Path) -> str:
    """Task, model, epochs, best monitored value and classes."""
    train = config.get("train", {})
    monitor = train.get("monitor", "")
    column = monitor_column(log, monitor)
    model = config.get("model", {})
    rows = [
        ["work dir", str(work_dir.resolve())],
        ["task", config.get("task", "?")],
        ["model", model.get("name", "?") + (f" (backbone {model['backbone']})" if model.get("backbone") else "")],
        ["epochs", f"{log.epochs_done()} of {train.get('epochs', '?')}"],
    ]
    if column is not None:
        value, epoch = best_of(log, column)
        rows.append([f"best {monitor}", f"{value:.4f}" + (f" (epoch {epoch + 1})" if epoch is not None else "")])
    if classes:
        rows.append([f"classes ({len(classes)})", ", ".join(classes)])
    return "<h2>Run</h2>\n" + table(None, rows)


def log_metrics_section(log: RunLog) -> str:
    """Final and best value of every logged epoch-level value (step-level and learning-rate columns left out)."""
    columns = [c for c in log.columns("metric") + log.columns("loss") if not c.endswith("_step")]
    rows = []
    for column in columns:
        value, epoch = best_of(log, column)
        rows.append([curve_label(column), log.series[column][-1][2], value, epoch + 1 if epoch is not None else ""])
    return "<h2>Training log</h2>\n" + table(["value", "final", "best", "best epoch"], rows)


def evaluation_section(result: EvalResult) -> str:
    """The evaluation's data, headline numbers and per-class table."""
    m = result.metrics
    lines = [
        "<h2>Evaluation of model.pt</h2>\n",
        f"<p>on {html.escape(str(m['data']))}: {m['images']} images"
        + (f", {m['unreadable']} unreadable" if m["unreadable"] else "")
        + "</p>\n",
    ]
    if "confusion_matrix" in m:
        lines.append(table(["metric", "value"], [[key, value] for key, value in m.items() if isinstance(value, float)]))
        lines.append(
            table(
                ["class", "precision", "recall", "f1", "support"],
                [[name, c["precision"], c["recall"], c["f1"], c["support"]] for name, c in m["per_class"].items()],
            )
        )
        return "".join(lines)
    for iou_type, curves in result.curves.items():
        scores = m[iou_type]
        lines.append(
            f"<h3>{iou_type}: mAP {scores['map']:.4f}, mAP@.5 {scores['map_50']:.4f}, mAP@.75 {scores['map_75']:.4f}</h3>\n"
        )
        ap50 = {name: float(np.mean(curve["iou50"])) for name, curve in curves["per_class"].items()}
        lines.append(
            table(
                ["class", "AP@[.5:.95]", "AP@.5"],
                [[name, ap, ap50.get(name, "no objects")] for name, ap in scores["per_class"].items()],
            )
        )
    return "".join(lines)


def images_section(title: str, paths: list[Path], page: Path) -> str:
    """The plots as <img> with paths relative to the page."""
    figures = "".join(
        f'<figure><img src="{html.escape(quote(Path(os.path.relpath(path, page.parent)).as_posix()))}" alt="{html.escape(path.stem)}">'
        f"<figcaption>{html.escape(path.stem)}</figcaption></figure>\n"
        for path in paths
    )
    return f"<h2>{html.escape(title)}</h2>\n{figures}" if paths else ""


STYLE = """body { font-family: sans-serif; margin: 2em; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 100%; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }"""


def write_report(work_dir: str | Path, out: str | Path | None = None, with_eval: bool = True) -> Path:
    """report.html (default in the work dir): summary, logged metrics, curves, evaluation and config; the plots go to plots/ beside it."""
    work_dir = check_work_dir(work_dir)
    page = Path(out) if out is not None else work_dir / "report.html"
    folder = page.parent / "plots"
    log, config = read_log(work_dir), read_config(work_dir)
    curves = plot_curves(log, folder)
    result = evaluate_run(work_dir) if with_eval else None
    classes = result.classes if result is not None else package_classes(work_dir)
    sections = [
        summary_section(config, log, classes, work_dir),
        log_metrics_section(log),
        images_section("Curves", curves, page),
    ]
    if result is not None:
        sections += [
            evaluation_section(result),
            images_section("Evaluation plots", plot_evaluation(result, folder), page),
        ]
    elif with_eval:
        sections.append(
            "<p>No model.pt in the work dir (a pretraining run, or one that has not finished): no evaluation.</p>\n"
        )
    sections.append(f"<h2>Config</h2>\n<pre>{html.escape((work_dir / 'config.yaml').read_text())}</pre>\n")
    title = html.escape(f"optik report: {work_dir.resolve().name}")
    text = (
        f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8"><title>{title}</title>\n<style>\n{STYLE}\n</style></head>\n'
        f"<body>\n<h1>{title}</h1>\n{''.join(sections)}</body>\n</html>\n"
    )
    return write_atomic(page, text)


def package_classes(work_dir: Path) -> list[str]:
    """Class names of the run's model.pt (none without one)."""
    from optik.models.package import load_package

    model = work_dir / "model.pt"
    return load_package(model).classes if model.is_file() else []
