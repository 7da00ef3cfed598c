"""`optik batch-predict` (ObjectNet CSV, plug-in models, mapping files, resume, torchrun) and `optik objectnet score`."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COLOURS, colour_image, run_optik
from PIL import Image

PLUGIN = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A small CNN with 1000 outputs, like an ImageNet classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 1000)

    def forward(self, x):
        return self.fc(self.features(x))
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> tuple[str, Path]:
    """(`file.py:TinyNet`, weights saved from DataParallel, so every key has a `module.` prefix)."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "tiny.py").write_text(PLUGIN)
    sys.path.insert(0, str(root))
    try:
        from tiny import TinyNet
    finally:
        sys.path.remove(str(root))
    torch.manual_seed(0)
    net = TinyNet()
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, root / "weights.pth")
    return f"{root / 'tiny.py'}:TinyNet", root / "weights.pth"


def nested_images(root: Path, count: int = 24) -> dict[str, str]:
    """PNG and JPEG colour images in nested folders; base name -> colour."""
    rng, truth = np.random.default_rng(0), {}
    for i in range(count):
        colour = list(COLOURS)[i % 3]
        folder = root / f"batch{i % 2}" / ("deep" if i % 4 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"img{i:03d}.{'png' if i % 2 else 'jpg'}"
        colour_image(COLOURS[colour], 48, rng).save(folder / name)
        truth[name] = colour
    return truth


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_objectnet_rows_for_a_nested_folder_and_the_scorer_accepts_them(plugin, tmp_path):
    truth = nested_images(tmp_path / "images")
    out = tmp_path / "predictions.csv"
    done = run_optik(
        "batch-predict",
        tmp_path / "images",
        out,
        "--model-class",
        plugin[0],
        "--checkpoint",
        plugin[1],
        "--batch-size",
        "5",
        "--workers",
        "1",
    )
    assert done.returncode == 0, done.stderr
    rows = read_rows(out)
    assert [r[0] for r in rows] == sorted(truth)  # one row per image, no header, sorted by base name
    for row in rows:
        assert len(row) == 11
        ids, scores = [int(v) for v in row[1::2]], [float(v) for v in row[2::2]]
        assert all(0 <= i < 1000 for i in ids) and len(set(ids)) == 5
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps({name: int(row[1]) for name, row in zip(sorted(truth), rows)}))
    score = run_optik("objectnet", "score", out, answers, "--no-range-check")
    assert score.returncode == 0, score.stderr
    assert "top-1: 1.0000" in score.stdout and f"images scored: {len(truth)}" in score.stdout


def test_model_package_csv_and_jsonl_with_labels(colour_model, tmp_path):
    truth = nested_images(tmp_path / "images", 12)
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"out.{fmt}"
        done = run_optik(
            "batch-predict",
            tmp_path / "images",
            out,
            colour_model,
            "--format",
            fmt,
            "--top-k",
            "2",
            "--no-softmax",
            "--workers",
            "0",
        )
        assert done.returncode == 0, done.stderr
        if fmt == "csv":
            header, *rows = read_rows(out)
            assert header == ["filename", "p1", "c1", "p2", "c2", "label1", "label2"]
            labels = {r[0]: r[5] for r in rows}
        else:
            records = [json.loads(line) for line in out.read_text().splitlines()]
            # raw logits
            assert all(len(r["ids"]) == 2 for r in records) and any(
                s > 1 or s < 0 for r in records for s in r["scores"]
            )
            labels = {r["filename"]: r["labels"][0] for r in records}
        assert sum(labels[name] == colour for name, colour in truth.items()) >= 10
    many = run_optik(
        "batch-predict", tmp_path / "images", tmp_path / "k5.csv", colour_model, "--format", "csv", "--workers", "0"
    )  # the default --top-k 5 on a 3-class model: 3 pairs a row, and a header that says so
    assert many.returncode == 0, many.stderr
    header, *rows = read_rows(tmp_path / "k5.csv")
    assert header == ["filename", "p1", "c1", "p2", "c2", "p3", "c3", "label1", "label2", "label3"]
    assert all(len(row) == len(header) for row in rows)


def test_two_images_with_one_base_name_stop_the_run(plugin, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / "images" / folder).mkdir(parents=True)
        colour_image(COLOURS["red"], 32, np.random.default_rng(0)).save(tmp_path / "images" / folder / "same.png")
    done = run_optik(
        "batch-predict",
        tmp_path / "images",
        tmp_path / "out.csv",
        "--model-class",
        plugin[0],
        "--checkpoint",
        plugin[1],
    )
    assert done.returncode == 2 and "share the base name 'same.png'" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.csv").exists()


def write_mappings(folder: Path) -> dict[str, int]:
    """A small set of files in the ObjectNet dataset's formats; returns the expected PyTorch index -> ObjectNet id."""
    folder.mkdir()
    (folder / "folder_to_objectnet_label.json").write_text(
        json.dumps({"zebra_toy": "Zebra toy", "apple": "apple", "banana": "Banana", "alarm_clock": "Alarm clock"})
    )
    # sorted case-sensitively: Alarm clock 0, Banana 1, Zebra toy 2, apple 3
    (folder / "objectnet_to_imagenet_1k.json").write_text(
        json.dumps(
            {
                "Zebra toy": "zebra",
                "apple": "Granny Smith; pomegranate",
                "Alarm clock": "analog clock; digital clock; wall clock",
            }
        )
    )
    labels = [f"class {i}" for i in range(1000)]
    labels[340], labels[948], labels[957], labels[409], labels[530], labels[892] = (
        "zebra",
        "Granny Smith",
        "pomegranate",
        "analog clock",
        "digital clock",
        "wall clock",
    )
    (folder / "imagenet_to_label_2012_v2").write_text("\n".join(labels) + "\n")
    shift = {i: (i + 7) % 1000 for i in range(1000)}  # PyTorch index i is ImageNet 2012 id i + 7
    (folder / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(k): v for k, v in shift.items()}))
    pytorch_of = {v: k for k, v in shift.items()}
    return {
        pytorch_of[340]: 2,
        pytorch_of[948]: 3,
        pytorch_of[957]: 3,
        pytorch_of[409]: 0,
        pytorch_of[530]: 0,
        pytorch_of[892]: 0,
    }


def test_mapping_files_follow_the_objectnet_rules(tmp_path):
    from optik.data.objectnet import objectnet_labels, pytorch_to_objectnet

    expected = write_mappings(tmp_path / "mappings")
    assert objectnet_labels(tmp_path / "mappings") == ["Alarm clock", "Banana", "Zebra toy", "apple"]
    ids = pytorch_to_objectnet(tmp_path / "mappings")
    assert {i: int(ids[i]) for i in np.flatnonzero(ids >= 0)} == expected  # several ImageNet ids share one ObjectNet id
    assert (ids == -1).sum() == 1000 - len(expected)  # everything else is unmapped


def test_mode_1_writes_objectnet_ids_and_minus_one_for_unmapped(plugin, tmp_path):
    expected = write_mappings(tmp_path / "mappings")
    mapped = sorted(expected)[:3]
    # a model that always ranks: mapped[0], an unmapped class, mapped[1], mapped[2], another unmapped one
    favourite = [mapped[0], 5, mapped[1], mapped[2], 6]
    weights = {k: v for k, v in torch.load(plugin[1]).items()}
    weights["module.fc.weight"] = torch.zeros(1000, 8)
    weights["module.fc.bias"] = torch.full((1000,), -10.0)
    weights["module.fc.bias"][favourite] = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    torch.save(weights, tmp_path / "fixed.pth")
    nested_images(tmp_path / "images", 4)
    out = tmp_path / "out.csv"
    done = run_optik(
        "batch-predict",
        tmp_path / "images",
        out,
        "--model-class",
        plugin[0],
        "--checkpoint",
        tmp_path / "fixed.pth",
        "--convert_outputs_mode",
        "1",
        "--objectnet-mappings",
        tmp_path / "mappings",
        "--border-crop",
        "2",
    )
    assert done.returncode == 0, done.stderr
    for row in read_rows(out):
        assert [int(v) for v in row[1::2]] == [expected[mapped[0]], -1, expected[mapped[1]], expected[mapped[2]], -1]
    missing = run_optik(
        "batch-predict",
        tmp_path / "images",
        out,
        "--model-class",
        plugin[0],
        "--checkpoint",
        plugin[1],
        "--convert-outputs-mode",
        "1",
    )
    assert missing.returncode == 2 and "--objectnet-mappings" in missing.stderr


@pytest.mark.slow
def test_resume_after_sigkill_predicts_every_image_exactly_once(plugin, tmp_path):
    truth = nested_images(tmp_path / "images", 120)
    out = tmp_path / "out.csv"
    args = [
        sys.executable,
        "-m",
        "optik.cli",
        "batch-predict",
        str(tmp_path / "images"),
        str(out),
        "--model-class",
        plugin[0],
        "--checkpoint",
        str(plugin[1]),
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--optimize",
        "eager",
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    part = tmp_path / "out.csv.part-0"
    deadline = time.monotonic() + 120
    while (not part.exists() or part.read_text().count("\n") < 20) and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = part.read_text().count("\n")
    assert 20 <= written < len(truth)  # killed midway
    done = run_optik(*args[3:], "--resume")
    assert done.returncode == 0, done.stderr
    assert f"{len(truth) - written} predicted now, {written} kept from before" in done.stderr
    rows = read_rows(out)
    assert [r[0] for r in rows] == sorted(truth) and not part.exists()
    fresh = tmp_path / "fresh.csv"
    assert run_optik(*args[3:5], fresh, *args[6:]).returncode == 0
    again = read_rows(fresh)
    assert [r[:1] + r[1::2] for r in rows] == [r[:1] + r[1::2] for r in again]  # same ids as an uninterrupted run
    assert np.allclose([[float(v) for v in r[2::2]] for r in rows], [[float(v) for v in r[2::2]] for r in again])


@pytest.mark.slow
def test_torchrun_two_processes_write_the_same_csv_as_one(plugin, tmp_path):
    nested_images(tmp_path / "images", 30)
    common = [
        "--model-class",
        plugin[0],
        "--checkpoint",
        str(plugin[1]),
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    single = run_optik("batch-predict", tmp_path / "images", tmp_path / "one.csv", *common)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launched = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "optik.cli",
            "batch-predict",
            str(tmp_path / "images"),
            str(tmp_path / "two.csv"),
            *common,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert launched.returncode == 0, launched.stderr
    spawned = run_optik(
        "batch-predict",
        tmp_path / "images",
        tmp_path / "spawned.csv",
        *common,
        "--devices",
        "2",
        env={"OMP_NUM_THREADS": "1"},
    )
    assert spawned.returncode == 0, spawned.stderr
    one = read_rows(tmp_path / "one.csv")
    for name in ("two.csv", "spawned.csv"):
        two = read_rows(tmp_path / name)
        assert [r[:1] + r[1::2] for r in one] == [r[:1] + r[1::2] for r in two]  # names and ids (filename,id,p,...)
        assert np.allclose(
            [[float(v) for v in r[2::2]] for r in one], [[float(v) for v in r[2::2]] for r in two], atol=1e-5
        )
    assert not list(tmp_path.glob("*.part-*"))


@pytest.mark.parametrize(
    "lines, message",
    [
        (["a.png,1,0.9", "nope.png,2,0.5"], "'nope.png' is not in answers.json"),
        (["filename,p1,c1", "a.png,1,0.9"], "looks like `--format csv`"),
        (["a.png,1,0.9", "a.png,1,0.9"], "appears twice"),
        (["a.png,one,0.9"], "not an integer id"),
        (["a.png,400,0.9"], "outside [-1, 312]"),
        (["a.png,1,high"], "not a number"),
        (["a.png,1,0.9,2"], "1 to 5"),
        (["a.png," + ",".join(["1,0.1"] * 6)], "1 to 5"),
        (["a.png,1,0.9", ""], "empty line"),
    ],
)
def test_score_rejects_a_malformed_file(tmp_path, lines, message):
    (tmp_path / "answers.json").write_text(json.dumps({"a.png": 1, "b.png": 2}))
    (tmp_path / "pred.csv").write_text("\n".join(lines) + "\n")
    done = run_optik("objectnet", "score", tmp_path / "pred.csv", tmp_path / "answers.json")
    assert done.returncode == 2 and message in done.stderr and "rejected" in done.stderr


def test_score_top1_top5_and_missing_images(tmp_path):
    answers = {"a.png": 1, "b.png": 2, "c.png": [3, 4], "d.png": 5}  # d.png has no row: it counts as wrong
    (tmp_path / "answers.json").write_text(json.dumps(answers))
    rows = ["a.png,1,0.9,7,0.05", "b.png,7,0.6,8,0.2,2,0.1,9,0.05,10,0.05", "c.png,4,0.5,3,0.5"]
    (tmp_path / "pred.csv").write_text("\n".join(rows) + "\n")
    done = run_optik("objectnet", "score", tmp_path / "pred.csv", tmp_path / "answers.json")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:4] == ["top-1: 0.5000", "top-5: 0.7500", "images scored: 3", "total: 4"]
    (tmp_path / "far.csv").write_text("a.png,400,0.9\n")
    assert (
        run_optik("objectnet", "score", tmp_path / "far.csv", tmp_path / "answers.json", "--no-range-check").returncode
        == 0
    )


def test_large_jpegs_decode_at_reduced_scale_with_the_same_picture(tmp_path):
    """Draft decoding only for JPEGs at least 4x the size needed; the resized picture stays nearly the same."""
    from optik.inference.batch import PLUGIN_PREPROCESS, FlatImages

    rng = np.random.default_rng(0)
    # 1200x1000, photo-like detail
    smooth = np.kron(rng.integers(0, 255, (60, 50, 3)), np.ones((20, 20, 1))).astype(np.uint8)
    Image.fromarray(smooth).save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(smooth[:400, :500]).save(tmp_path / "small.jpg", quality=95)
    dataset = FlatImages([tmp_path / "big.jpg", tmp_path / "small.jpg"], PLUGIN_PREPROCESS, None)
    assert (
        dataset._draft_size(tmp_path / "big.jpg") == (448, 448) and dataset._draft_size(tmp_path / "small.jpg") is None
    )
    _, drafted, _ = dataset[0]
    full = FlatImages([tmp_path / "big.jpg"], PLUGIN_PREPROCESS, None)
    full._draft_size = lambda path: None
    _, exact, _ = full[0]
    assert drafted.shape == exact.shape == (3, 224, 224)
    assert (drafted.float() - exact.float()).abs().mean() < 2.0  # of 255


def test_resume_after_a_row_cut_short(plugin, tmp_path):
    """A kill in the middle of writing a row: the fragment is dropped and that image predicted again."""
    truth = nested_images(tmp_path / "images", 8)
    out = tmp_path / "out.csv"
    args = [
        "batch-predict",
        tmp_path / "images",
        out,
        "--model-class",
        plugin[0],
        "--checkpoint",
        plugin[1],
        "--workers",
        "0",
    ]
    assert run_optik(*args).returncode == 0
    rows = out.read_text().splitlines(keepends=True)
    out.unlink()
    (tmp_path / "out.csv.part-0").write_text("".join(rows[:3]) + rows[3][:12])  # three rows and a fragment
    done = run_optik(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert out.read_text().splitlines(keepends=True) == rows and [r[0] for r in read_rows(out)] == sorted(truth)


def test_unreadable_images_are_reported_and_the_rest_written(plugin, tmp_path):
    nested_images(tmp_path / "images", 6)
    (tmp_path / "images" / "broken.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "images" / "tiny.png").write_bytes(_tiny_png())
    out = tmp_path / "out.csv"
    done = run_optik(
        "batch-predict",
        tmp_path / "images",
        out,
        "--model-class",
        plugin[0],
        "--checkpoint",
        plugin[1],
        "--border-crop",
        "2",
        "--workers",
        "1",
    )
    assert done.returncode == 2 and "2 image(s) could not be read" in done.stderr and "Traceback" not in done.stderr
    assert "broken.jpg: not an image" in done.stderr and "too small for --border-crop 2" in done.stderr
    assert len(read_rows(out)) == 6


def _tiny_png() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (3, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_option_mistakes_are_one_line_errors(plugin, colour_model, tmp_path):
    nested_images(tmp_path / "images", 2)
    out = tmp_path / "out.csv"
    cases = [
        (["--model-class", plugin[0], "--checkpoint", plugin[1], "--top-k", "6"], "at most 5 predictions"),
        ([colour_model, "--checkpoint", plugin[1]], "carries its own weights"),
        (["--model-class", plugin[0]], "needs --checkpoint"),
        (["resnet50"], "needs its weights"),
        (["not_a_model_or_file"], "neither a file nor a timm architecture"),
    ]
    for extra, message in cases:
        done = run_optik("batch-predict", tmp_path / "images", out, *extra)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr, (extra, done.stderr)
