"""`optik plot` and `optik report`: a run's loss, metric and learning-rate curves from logs/metrics.csv,
its model's evaluation plots (confusion matrix; per-class AP and PR curves), and one HTML page of them all."""

from __future__ import annotations

import base64
import csv
import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import yaml

from optik.errors import DataError
from optik.files import write_atomic
from optik.metrics.plots import add_legend, pyplot, save_figure

if TYPE_CHECKING:  # torch is imported only when a model is evaluated: curves alone come quickly
    from optik.metrics.evaluation import EvalResult


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


def label_axes(ax, title: str, xlabel: str, ylabel: str | None = None) -> None:
    """Title, axis names, a light grid, the legend (`add_legend`); steps and epochs ticked as whole numbers,
    even where a short run leaves a single one in view."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title)
    ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(alpha=0.3)
    add_legend(ax)


def curve_label(column: str) -> str:
    """`train/loss_step` -> `train/loss (step)`, `train/loss_epoch` -> `train/loss (epoch mean)`."""
    for suffix, said in (("_step", "step"), ("_epoch", "epoch mean")):
        if column.endswith(suffix):
            return f"{column.removesuffix(suffix)} ({said})"
    return column


def loss_figure(log: RunLog):
    """Every training loss (per step, and epoch means) and the validation loss, by training step."""
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    for column in log.columns("loss"):
        steps, _, values = zip(*log.series[column])
        if column.endswith("_step"):
            ax.plot(steps, values, linewidth=0.8, alpha=0.6, label=curve_label(column))
        else:
            ax.plot(steps, values, marker="o", label=curve_label(column))
    label_axes(ax, "loss", "training step", "loss")
    return fig


def metrics_figure(log: RunLog):
    """Every validation metric (accuracy, mAP...) by epoch, counted from 1."""
    fig, ax = pyplot().subplots(figsize=(8, 4.5))
    columns = log.columns("metric")
    epochs = set()
    for column in columns:
        _, logged, values = zip(*log.series[column])
        ax.plot([epoch + 1 for epoch in logged], values, marker="o", label=column)
        epochs.update(epoch + 1 for epoch in logged)
    if len(epochs) == 1:  # one epoch: a unit-wide view, not matplotlib's ±5% around the point
        (epoch,) = epochs
        ax.set_xlim(epoch - 0.5, epoch + 0.5)
    label_axes(ax, "validation metrics", "epoch", columns[0] if len(columns) == 1 else "value")
    return fig


def learning_rate_figure(log: RunLog):
    """The learning rate of each parameter group, by training step."""
    fig, ax = pyplot().subplots(figsize=(8, 3.5))
    for column in log.columns("lr"):
        steps, _, values = zip(*log.series[column])
        ax.plot(steps, values, marker=".", drawstyle="steps-post", label=column.removeprefix("lr-"))
    label_axes(ax, "learning rate (per parameter group)", "training step", "learning rate")
    return fig


def plot_curves(log: RunLog, folder: Path) -> list[Path]:
    """loss.png, metrics.png (with validation) and lr.png: the curves the log has data for."""
    figures = {"loss": loss_figure, "metric": metrics_figure, "lr": learning_rate_figure}
    names = {"loss": "loss.png", "metric": "metrics.png", "lr": "lr.png"}
    return [save_figure(figure(log), folder / names[kind]) for kind, figure in figures.items() if log.columns(kind)]


def plot_evaluation(result: EvalResult, folder: Path) -> list[Path]:
    """The evaluation's plots, as its task draws them (`optik.engine.evaluate.plot_evaluation`)."""
    from optik.engine.evaluate import plot_evaluation as plot_task_evaluation

    return plot_task_evaluation(result, folder)


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
    """A cell: floats to 4 decimals, None (an undefined metric) as n/a."""
    return f"{value:.4f}" if isinstance(value, float) else "n/a" if value is None else html.escape(str(value))


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


def images_section(title: str, paths: list[Path]) -> str:
    """The plots as <img> with the PNG inside the page (a data: URI), so the page is one file to mail."""
    figures = "".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode("ascii")}" '
        f'alt="{html.escape(path.stem)}"><figcaption>{html.escape(path.stem)}</figcaption></figure>\n'
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
    """report.html (default in the work dir): summary, logged metrics, curves, evaluation and config, one file
    with its plots inside; the PNGs are also written to plots/ beside it."""
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
        images_section("Curves", curves),
    ]
    if result is not None:
        sections += [
            evaluation_section(result),
            images_section("Evaluation plots", plot_evaluation(result, folder)),
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
