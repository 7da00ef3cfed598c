"""`optik plot` and `optik report`: PNG curves and evaluation plots of a finished run, and one HTML page that shows them all."""

from __future__ import annotations

import base64
import io
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import make_colour_set, run_optik, tiny_overrides
from PIL import Image

from optik.errors import DataError
from optik.metrics.plots import pyplot, save_figure
from optik.tools.report import RunLog, learning_rate_figure, loss_figure, metrics_figure, write_report

ODD_CLASS = "r&d <red>"  # a class name the page must escape

# one worker trains the runs once; `plot` and `report` write into classify_run
pytestmark = pytest.mark.xdist_group("report")


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory) -> Path:
    """A resnet trained 2 epochs on the colour set (32 px) by `optik train`; one class folder has an odd name."""
    root = tmp_path_factory.mktemp("report_classify")
    data = make_colour_set(root / "data", per_class=8)
    (data / "red").rename(data / ODD_CLASS)
    done = run_optik(
        "train", "resnet18_small", "--work-dir", root / "run", *(f"--set={o}" for o in tiny_overrides(data, epochs=2))
    )
    assert done.returncode == 0, done.stderr
    return root / "run"


@pytest.fixture(scope="module")
def detect_run(tmp_path_factory) -> Path:
    """An FCOS trained 2 epochs, with validation, on a small shapes set (as the `shapes_detector` fixture, smaller)."""
    from optik.config.load import load_config
    from optik.engine.train import train
    from optik.tools.shapes import write_shapes_set

    root = tmp_path_factory.mktemp("report_detect")
    data = write_shapes_set(root / "data", "coco", train=8, val=4, size=64)
    cfg = load_config(
        "fcos_resnet18_small",
        [
            f"data.root={data}",
            "train.epochs=2",
            "data.image_size=64",
            "data.num_workers=0",
            "data.batch_size=4",
            "train.keep_checkpoints=1",
            "train.log_every_n_steps=1",
        ],
    )
    return train(cfg, work_dir=root / "run").work_dir


class Images(HTMLParser):
    """Every <img> of a page: (alt, src)."""

    def __init__(self):
        super().__init__()
        self.images: list[tuple[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append((dict(attrs)["alt"], dict(attrs)["src"]))


def written(done) -> list[Path]:
    assert done.returncode == 0, done.stderr
    return [Path(line.removeprefix("wrote ")) for line in done.stdout.splitlines()]


def assert_png(picture: Path | bytes) -> None:
    data = picture if isinstance(picture, bytes) else picture.read_bytes()
    assert len(data) > 0, picture if isinstance(picture, Path) else "an empty image"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        image.verify()


def page_images(page: Path) -> dict[str, bytes]:
    """Plot name -> PNG bytes of every image the page shows: each inside the page (a data: URI, nothing to
    fetch from elsewhere), a PNG that opens, and the same as its copy in plots/ beside the page."""
    parser = Images()
    parser.feed(page.read_text())
    pictures = {}
    for name, source in parser.images:
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix), source[:80]
        data = base64.b64decode(source.removeprefix(prefix), validate=True)
        assert_png(data)
        assert (page.parent / "plots" / f"{name}.png").read_bytes() == data
        pictures[name] = data
    return pictures


def test_plot_writes_the_curves_and_the_confusion_matrix(classify_run):
    paths = written(run_optik("plot", classify_run))
    assert [p.name for p in paths] == ["loss.png", "metrics.png", "lr.png", "confusion_matrix.png"]
    for path in paths:
        assert path.parent == classify_run / "plots"
        assert_png(path)


def test_plot_no_eval_writes_only_the_curves_where_asked(classify_run, tmp_path):
    paths = written(run_optik("plot", classify_run, "--no-eval", "--out", tmp_path / "curves"))
    assert sorted(p.name for p in paths) == ["loss.png", "lr.png", "metrics.png"]
    assert all(p.parent == tmp_path / "curves" for p in paths)


def test_report_page_shows_every_plot_the_classes_and_the_config(classify_run):
    (page,) = written(run_optik("report", classify_run))
    assert page == classify_run / "report.html"
    assert set(page_images(page)) == {"loss", "metrics", "lr", "confusion_matrix"}
    text = page.read_text()
    assert "r&amp;d &lt;red&gt;" in text and ODD_CLASS not in text
    assert "green" in text and "blue" in text
    assert "best val/acc1" in text and "resnet18" in text and "<pre>task: classify" in text


def test_detection_report_has_ap_bars_and_pr_curves(detect_run, tmp_path):
    (page,) = written(run_optik("report", detect_run, "--out", tmp_path / "pages" / "det.html"))
    assert set(page_images(page)) == {"loss", "metrics", "lr", "per_class_ap", "pr_curve"}
    text = page.read_text()
    assert all(name in text for name in ("circle", "square", "triangle")) and "best val/map" in text


def test_a_run_without_model_pt_gets_the_curves_only(classify_run, tmp_path):
    unfinished = tmp_path / "unfinished"
    shutil.copytree(classify_run / "logs", unfinished / "logs")
    shutil.copy(classify_run / "config.yaml", unfinished)
    page = write_report(unfinished)
    assert set(page_images(page)) == {"loss", "metrics", "lr"}
    assert "no evaluation" in page.read_text()


@pytest.mark.parametrize("case", ["missing", "no logs"])
def test_a_folder_that_is_no_run_is_a_one_line_error(tmp_path, case):
    folder = tmp_path / "run"
    if case == "no logs":
        folder.mkdir()
    done = run_optik("report", folder)
    assert done.returncode == 2 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert ("work dir not found" if case == "missing" else "no logs/metrics.csv in") in done.stderr


def test_a_log_with_no_values_yet_says_what_to_do(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.csv").write_text("epoch,step,train/loss_step\n")
    with pytest.raises(DataError, match="no logged values yet"):
        write_report(tmp_path)


def test_precision_curves_average_to_the_coco_ap():
    from optik.metrics.coco import coco_metrics, precision_curves

    truth = {
        "images": [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in (1, 2)],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}, {"id": 3, "name": "unseen"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20], "area": 400, "iscrowd": 0},
        ],
    }
    # squares: both found, and one false alarm; the circle missed
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
        {"image_id": 2, "category_id": 1, "bbox": [50, 50, 20, 20], "score": 0.5},
        {"image_id": 1, "category_id": 1, "bbox": [60, 60, 20, 20], "score": 0.7},
        {"image_id": 2, "category_id": 2, "bbox": [70, 5, 20, 20], "score": 0.8},
    ]
    curves = precision_curves(truth, results)
    assert len(curves["recall"]) == 101 and set(curves["per_class"]) == {"square", "circle"}  # no objects, no curve
    square = curves["per_class"]["square"]["iou50"]
    # precision 1 up to recall .5, then 2/3
    assert square[:51] == [1.0] * 51 and square[51:] == pytest.approx([2 / 3] * 50)
    ap = coco_metrics(truth, results)["per_class"]
    assert sum(curves["per_class"]["square"]["iou50_95"]) / 101 == pytest.approx(ap["square"])
    assert max(curves["per_class"]["circle"]["iou50"]) == 0.0
    assert set(precision_curves(truth, [])["per_class"]) == {"square", "circle"}
    # a class without objects in the data has no AP (None), with results or without; one that has them, 0 if missed
    assert ap["unseen"] is None and ap["circle"] == 0.0
    assert coco_metrics(truth, [])["per_class"] == {"square": 0.0, "circle": 0.0, "unseen": None}


def one_epoch_log(groups: int = 1) -> RunLog:
    """A 1-epoch run's log: three steps, one validation, one or more learning-rate groups."""
    series = {
        "train/loss_step": [(0, 0, 1.2), (1, 0, 1.0), (2, 0, 0.9)],
        "train/loss_epoch": [(2, 0, 1.03)],
        "val/loss": [(2, 0, 0.95)],
        "val/acc1": [(2, 0, 0.61)],
        "val/mean_class_acc": [(2, 0, 0.58)],
    }
    for group in range(1, groups + 1):
        series[f"lr-AdamW/pg{group}"] = [(0, None, 0.001 * group), (2, None, 0.0005 * group)]
    return RunLog(series)


def visible_ticks(ax) -> list[float]:
    low, high = ax.get_xlim()
    return [tick for tick in ax.get_xticks() if low <= tick <= high]


def test_a_one_epoch_run_is_ticked_in_whole_epochs_and_steps():
    log = one_epoch_log()
    metrics, loss = metrics_figure(log), loss_figure(log)
    for fig in (metrics, loss):
        fig.canvas.draw()
    ax = metrics.axes[0]
    assert ax.get_xlabel() == "epoch"
    assert all(list(line.get_xdata()) == [1] for line in ax.get_lines())  # epochs counted from 1
    assert visible_ticks(ax) == [1.0]
    ax = loss.axes[0]
    assert ax.get_xlabel() == "training step"
    ticks = visible_ticks(ax)
    assert ticks and all(float(tick).is_integer() for tick in ticks)
    pyplot().close("all")


@pytest.mark.parametrize("groups", [1, 3])
def test_the_learning_rate_legend_hides_no_curve(groups, tmp_path):
    fig = learning_rate_figure(one_epoch_log(groups))
    fig.tight_layout()  # as save_figure does
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert ax.get_xlabel() == "training step"
    legend = ax.get_legend()
    if groups == 1:
        assert legend is None  # one curve: the axis label names it
    else:
        assert [text.get_text() for text in legend.get_texts()] == [f"AdamW/pg{g}" for g in range(1, groups + 1)]
        box, plot_area = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert box.x0 >= plot_area.x1  # beside the axes, not over the lines
        assert box.x1 <= fig.bbox.x1 and box.y0 >= fig.bbox.y0  # and inside the picture
    assert_png(save_figure(fig, tmp_path / "lr.png"))
