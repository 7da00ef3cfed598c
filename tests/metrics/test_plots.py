"""Evaluation plots: confusion counts readable on every cell and a title that fits, for 2 and for 20
classes; a detector's AP bars and PR curves, one per class, written by `optik test --plots`."""

from __future__ import annotations

import json

import numpy as np
from conftest import run_optik
from matplotlib.colors import to_rgb
from PIL import Image

from optik.metrics.plots import confusion_figure, contrast_ratio, pyplot


def rendered(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def assert_counts_readable_and_title_inside(matrix: np.ndarray, classes: list[str]) -> None:
    fig = confusion_figure(matrix, classes, top1=0.8123)
    renderer = rendered(fig)
    ax = fig.axes[0]
    cells = ax.images[0]
    texts = list(ax.texts)
    assert len(texts) == matrix.size
    for text in texts:
        column, row = (int(round(v)) for v in text.get_position())
        assert text.get_text() == str(matrix[row, column])
        cell = cells.cmap(cells.norm(matrix[row, column]))
        # WCAG AA for normal text: 4.5:1
        assert contrast_ratio(to_rgb(text.get_color()), cell) >= 4.5, (text.get_text(), text.get_color(), cell)
    title = ax.title.get_window_extent(renderer)
    figure = fig.bbox
    assert figure.x0 <= title.x0 and title.x1 <= figure.x1 and figure.y0 <= title.y0 and title.y1 <= figure.y1
    pyplot().close(fig)


def test_two_class_confusion_counts_contrast_with_their_cells():
    # the smallest count is the palest cell: a threshold at half the largest count wrote it white on near-white
    assert_counts_readable_and_title_inside(np.array([[30, 20], [25, 25]]), ["cat", "dog"])
    assert_counts_readable_and_title_inside(np.array([[50, 0], [1, 49]]), ["negative", "positive"])


def test_twenty_class_confusion_counts_contrast_with_their_cells():
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 5, (20, 20)) + np.diag(rng.integers(5, 60, 20))
    assert_counts_readable_and_title_inside(matrix, [f"class_{i:02d}" for i in range(20)])


def test_optik_test_plots_a_detectors_ap_bars_and_pr_curves(shapes_detector, tmp_path):
    """`optik test DETECTOR --plots DIR` (it used to fail on a missing confusion matrix)."""
    from optik.engine.evaluate import evaluate
    from optik.metrics.plots import class_ap_figure, pr_curve_figure

    done = run_optik("test", shapes_detector, "--plots", tmp_path / "plots", "--out", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    written = [line.removeprefix("wrote ") for line in done.stdout.splitlines() if line.startswith("wrote ")]
    pictures = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pictures == ["per_class_ap.png", "pr_curve.png"]
    assert sorted(name.rsplit("/", 1)[-1] for name in written) == ["per_class_ap.png", "pr_curve.png", "r.json"]
    for name in pictures:
        path = tmp_path / "plots" / name
        assert path.stat().st_size > 0
        with Image.open(path) as image:
            assert image.format == "PNG"
            image.verify()

    # one pair of bars and one curve per class with objects in the data (all three shapes here)
    tested = json.loads((tmp_path / "r.json").read_text())
    result = evaluate(shapes_detector, split=tested["metrics"]["split"], with_curves=True)
    present = list(result.curves["bbox"]["per_class"])
    assert sorted(present) == ["circle", "square", "triangle"]
    bars = class_ap_figure(result, "bbox")
    assert len(bars.axes[0].patches) == 2 * len(present)
    assert [label.get_text() for label in bars.axes[0].get_xticklabels()] == present
    curves = pr_curve_figure(result, "bbox")
    lines = [line.get_label() for line in curves.axes[0].get_lines()]
    assert len(lines) == len(present) + 1 and lines[-1].startswith("mean")
    pyplot().close("all")


def test_optik_test_plots_a_classifiers_confusion_matrix(colour_model, tmp_path):
    done = run_optik("test", colour_model, "--split", "val", "--plots", tmp_path / "plots")
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["confusion_matrix.png"]
    with Image.open(tmp_path / "plots" / "confusion_matrix.png") as image:
        assert image.format == "PNG"
        image.verify()
