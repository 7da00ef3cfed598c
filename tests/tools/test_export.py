"""`optik export --format onnx` and `--backend onnxruntime`: predictions equal PyTorch's through
predict and both services, for a classifier and a detector."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import colour_image, run_optik
from service_helpers import Service

SCORE_TOLERANCE, BOX_PIXELS = 1e-3, 1.0


@pytest.fixture(scope="module")
def shapes_images(tmp_path_factory):
    """Real pictures of what the shapes detector learned, in five sizes. At the model's 128 px,
    160x100 resizes to exactly 128x80, where a graph resizing in float32 gets a row fewer than
    PyTorch; and PyTorch itself resizes 161x120 to 127 columns, where a graph that resized again
    would stretch it to 128."""
    from PIL import Image

    from optik.tools.shapes import make_shapes

    folder = tmp_path_factory.mktemp("shapes_pictures")
    make_shapes(folder, 4, size=96, seed=7, prefix="a")
    make_shapes(folder, 2, size=140, seed=8, prefix="b")
    for source, size in zip(sorted(folder.rglob("*.png")), ((160, 100), (200, 160), (161, 120))):
        Image.open(source).resize(size).save(source.with_name(f"c{size[0]}x{size[1]}.png"))
    return folder


def objects(opex: dict, floor: float = 0.05 + SCORE_TOLERANCE) -> list[tuple[str, float, list[float]]]:
    return [
        (o["label"], o["score"], [o["bbox"][k] for k in ("left", "top", "right", "bottom")])
        for o in opex["objects"]
        if o["score"] > floor
    ]


def assert_same_objects(ours: dict, theirs: dict) -> int:
    """Every clear object of each output has a partner in the other: same label, box within 1 px, score within 1e-3."""
    for a, b in ((ours, theirs), (theirs, ours)):
        everything = objects(b, floor=0.0)
        for label, score, box in objects(a):
            assert any(
                label == l2
                and abs(score - s2) <= SCORE_TOLERANCE
                and max(abs(u - v) for u, v in zip(box, b2)) <= BOX_PIXELS
                for l2, s2, b2 in everything
            ), (label, score, box)
    return len(objects(theirs))


@pytest.mark.slow  # export, then onnxruntime end to end through the CLI
def test_exported_classifier_predicts_like_pytorch(colour_model, tmp_path, optik):
    out = tmp_path / "colours.onnx"
    done = optik("export", colour_model, "--out", out)
    assert done.returncode == 0, done.stderr
    assert "onnxruntime matches PyTorch" in done.stdout and out.is_file()
    rng = np.random.default_rng(5)
    images = []
    for i, colour in enumerate([(220, 30, 30), (30, 200, 40), (30, 60, 220), (120, 120, 120)]):
        images.append(tmp_path / f"img{i}.png")
        colour_image(colour, 40, rng).save(images[-1])
    runs = {}
    for name, model in (("torch", colour_model), ("onnx", out)):
        run = optik("predict", model, *images, "--out-dir", tmp_path / name)
        assert run.returncode == 0, run.stderr
        runs[name] = [json.loads((tmp_path / name / f"img{i}.json").read_text()) for i in range(len(images))]
    for ours, theirs in zip(runs["onnx"], runs["torch"]):
        assert max(ours, key=ours.get) == max(theirs, key=theirs.get)
        assert max(abs(ours[k] - theirs[k]) for k in theirs) < 1e-3


@pytest.mark.slow  # export, then onnxruntime end to end through the CLI
def test_a_file_drop_serves_the_onnx_file(colour_model, tmp_path, optik):
    model = tmp_path / "m.onnx"
    assert optik("export", colour_model, "--out", model).returncode == 0
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        colour_image((30, 200, 40), 40, rng).save(inbox / f"g{i}.png")
    expected = optik("predict", colour_model, *sorted(inbox.glob("*.png")), "--out-dir", tmp_path / "torch")
    assert expected.returncode == 0, expected.stderr
    done = optik("serve", "poll", model, "--in", inbox, "--out", outbox)
    assert done.returncode == 0, done.stderr
    for i in range(3):
        ours, theirs = (json.loads((folder / f"g{i}.json").read_text()) for folder in (outbox, tmp_path / "torch"))
        assert (
            max(ours, key=ours.get) == max(theirs, key=theirs.get)
            and max(abs(ours[k] - theirs[k]) for k in theirs) < 1e-3
        )
    assert not list(inbox.glob("*.png")) and all((outbox / f"g{i}.png").is_file() for i in range(3))


def test_foreign_onnx_files_and_other_tasks_are_refused(colour_model, tmp_path, optik):
    import torch

    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),), str(plain), dynamo=False)
    assert onnx.load(str(plain)).graph.node
    done = optik("predict", plain, colour_model)
    assert done.returncode == 2 and "not exported by optik" in done.stderr and "Traceback" not in done.stderr
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    done = optik("predict", tmp_path / "junk.onnx", colour_model)
    assert done.returncode == 2 and "cannot read" in done.stderr and "damaged or cut short" in done.stderr
    (tmp_path / "alone.xml").write_text("<net/>")  # an IR without its .bin: said as such, not as a parse error
    done = optik("predict", tmp_path / "alone.xml", colour_model)
    assert (
        done.returncode == 2 and "without its weights" in done.stderr and "alone.bin must lie beside it" in done.stderr
    )
    (tmp_path / "alone.bin").write_bytes(b"")
    done = optik("predict", tmp_path / "alone.xml", colour_model)
    assert done.returncode == 2 and "damaged or cut short" in done.stderr


@pytest.mark.slow  # export, then onnxruntime end to end through the CLI
def test_exported_detector_predicts_like_pytorch(shapes_detector, shapes_images, tmp_path, optik):
    out = tmp_path / "shapes.onnx"
    done = optik("export", shapes_detector, "--out", out, "--check-images", shapes_images)
    assert done.returncode == 0, done.stderr
    assert "onnxruntime matches PyTorch on 8 images" in done.stdout, done.stdout  # --check-images reads up to 8
    runs = {}
    # the default batches (8 images of 5 sizes): PyTorch runs each size apart, onnxruntime one image at a time
    for name, model in (("torch", shapes_detector), ("onnx", out)):
        run = optik("predict", model, shapes_images, "--out-dir", tmp_path / name)
        assert run.returncode == 0, run.stderr
        runs[name] = {p.name: json.loads(p.read_text()) for p in sorted((tmp_path / name).glob("*.json"))}
    assert len(runs["onnx"]) == len(runs["torch"]) == 9
    compared = sum(assert_same_objects(runs["onnx"][name], runs["torch"][name]) for name in runs["torch"])
    assert compared > 0  # real objects were compared, not just empty lists
    scores = {}
    for name, model in (("torch", shapes_detector), ("onnx", out)):  # the run's own val split, as recorded
        tested = optik("test", model, "--split", "val", "--out", tmp_path / f"{name}.json")
        assert tested.returncode == 0, tested.stderr
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())["metrics"]
    assert scores["onnx"]["images"] == scores["torch"]["images"] == 8
    assert scores["torch"]["bbox"]["map"] > 0  # (one epoch: a poor detector, but some boxes are right)
    assert scores["onnx"]["bbox"]["map"] == pytest.approx(scores["torch"]["bbox"]["map"], rel=0.05)


@pytest.mark.slow  # export, then onnxruntime end to end through the CLI
@pytest.mark.parametrize("service", ["poll", "redis"])
def test_services_run_a_model_pt_with_backend_onnxruntime(
    service, shapes_detector, shapes_images, tmp_path, optik, redis_server
):
    """The package is exported in memory (and checked) at start-up; answers equal the torch backend's."""
    expected = optik("predict", shapes_detector, shapes_images, "--out-dir", tmp_path / "torch", "--backend", "torch")
    assert expected.returncode == 0, expected.stderr
    pictures = sorted(shapes_images.glob("*.png"))
    if service == "poll":
        inbox, outbox = tmp_path / "in", tmp_path / "out"
        inbox.mkdir()
        for picture in pictures:
            (inbox / picture.name).write_bytes(picture.read_bytes())
        done = optik(
            "serve", "poll", shapes_detector, "--in", inbox, "--out", outbox, "--backend", "onnxruntime", "--verbose"
        )
        assert done.returncode == 0, done.stderr
        assert "onnxruntime" in done.stderr
        answers = {p.stem: json.loads((outbox / f"{p.stem}.json").read_text()) for p in pictures}
    else:
        worker = Service("redis", shapes_detector, "--redis-port", redis_server.port, "--backend", "onnxruntime")
        worker.wait_for("listening on")
        done = run_optik("redis", "send", *pictures, "--redis-port", redis_server.port)
        worker.stop()
        assert done.returncode == 0, done.stderr
        answers = {Path(r["id"]).stem: r["result"] for r in map(json.loads, done.stdout.splitlines())}
        assert "onnxruntime" in worker.log
    compared = 0
    for picture in pictures:
        theirs = json.loads((tmp_path / "torch" / f"{picture.stem}.json").read_text())
        compared += assert_same_objects(answers[picture.stem], theirs)
    assert compared > 0


@pytest.mark.slow  # export, then onnxruntime end to end through the CLI
def test_backend_choices_that_cannot_work_are_refused(colour_model, tmp_path, optik):
    model = tmp_path / "m.onnx"
    assert optik("export", colour_model, "--out", model).returncode == 0
    picture = tmp_path / "p.png"
    colour_image((200, 30, 30), 40, np.random.default_rng(0)).save(picture)
    torch_on_onnx = optik("predict", model, picture, "--backend", "torch")
    assert (
        torch_on_onnx.returncode == 2
        and "--backend onnxruntime" in torch_on_onnx.stderr
        and "Traceback" not in torch_on_onnx.stderr
    )
    half = optik("predict", colour_model, picture, "--backend", "onnxruntime", "--precision", "bf16")
    assert half.returncode == 2 and "fp32" in half.stderr
    # a classifier package runs through onnxruntime too, with the same answer as the exported file
    in_memory = optik("predict", colour_model, picture, "--backend", "onnxruntime")
    from_file = optik("predict", model, picture)
    assert in_memory.returncode == 0 and from_file.returncode == 0, in_memory.stderr + from_file.stderr
    ours, theirs = (json.loads(done.stdout.splitlines()[0])["prediction"] for done in (in_memory, from_file))
    assert (
        max(ours, key=ours.get) == max(theirs, key=theirs.get) and max(abs(ours[k] - theirs[k]) for k in theirs) < 1e-3
    )
    # --backend torch keeps `auto` to PyTorch's forms (auto alone races onnxruntime and OpenVINO in on a CPU)
    from optik.tasks.loading import load_predictor

    engines = [
        form.engine for form in load_predictor(colour_model, backend="torch", expected_images=500).backend.plan.forms
    ]
    assert set(engines) == {"torch"}
    assert "onnxruntime" in [
        form.engine for form in load_predictor(colour_model, expected_images=500).backend.plan.forms
    ]
    gpu = optik("predict", colour_model, picture, "--backend", "onnxruntime", "--device", "cuda")
    assert gpu.returncode == 2 and "--device cuda" in gpu.stderr
    compiled = optik("predict", model, picture, "--optimize", "compiled")
    assert compiled.returncode == 2 and "torch backend" in compiled.stderr


@pytest.mark.slow  # export, then onnxruntime end to end through the CLI
def test_a_static_batch_export_takes_any_number_of_images(colour_model, tmp_path, optik):
    """The graph takes batches of 16 only: optik pads every batch to it (here 5 images, then 2)."""
    model = tmp_path / "static.onnx"
    assert optik("export", colour_model, "--out", model, "--static-batch").returncode == 0
    rng = np.random.default_rng(4)
    pictures = []
    for i in range(7):
        pictures.append(tmp_path / f"s{i}.png")
        colour_image([(220, 30, 30), (30, 200, 40), (30, 60, 220)][i % 3], 40, rng).save(pictures[-1])
    runs = [optik("predict", m, *pictures, "--batch-size", "5") for m in (model, colour_model)]
    assert all(done.returncode == 0 for done in runs), runs[0].stderr + runs[1].stderr
    ours, theirs = ([json.loads(line)["prediction"] for line in done.stdout.splitlines()] for done in runs)
    assert len(ours) == len(theirs) == 7
    for a, b in zip(ours, theirs):
        assert max(a, key=a.get) == max(b, key=b.get) and max(abs(a[k] - b[k]) for k in b) < 1e-3
    refused = optik("export", colour_model, "--out", tmp_path / "x.onnx", "--check-images", tmp_path)
    assert refused.returncode == 2 and "for detectors" in refused.stderr


@pytest.mark.slow  # export, then onnxruntime end to end through the CLI
def test_batch_predict_runs_an_onnx_file_and_backend_onnxruntime(colour_model, tmp_path, optik):
    """The same rows (ids, and scores within 1e-3) from PyTorch, the exported file, and a model.pt exported in memory."""
    model = tmp_path / "m.onnx"
    assert optik("export", colour_model, "--out", model).returncode == 0
    rng = np.random.default_rng(3)
    (tmp_path / "images").mkdir()
    for i in range(10):
        colour_image([(220, 30, 30), (30, 200, 40), (30, 60, 220)][i % 3], 40, rng).save(
            tmp_path / "images" / f"i{i}.png"
        )
    rows = {}
    for name, args in (
        ("torch", (colour_model, "--backend", "torch")),
        ("file", (model,)),
        ("memory", (colour_model, "--backend", "onnxruntime")),
    ):
        out = tmp_path / f"{name}.jsonl"
        done = optik(
            "batch-predict", tmp_path / "images", out, *args, "--format", "jsonl", "--top-k", "3", "--workers", "0"
        )
        assert done.returncode == 0, done.stderr
        rows[name] = {r["filename"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert len(rows["torch"]) == 10
    for name in ("file", "memory"):
        assert rows[name].keys() == rows["torch"].keys()
        for key, theirs in rows["torch"].items():
            assert rows[name][key]["ids"][0] == theirs["ids"][0]
            assert max(abs(a - b) for a, b in zip(sorted(rows[name][key]["scores"]), sorted(theirs["scores"]))) < 1e-3
    wrong = optik("batch-predict", tmp_path / "images", tmp_path / "x.csv", model, "--optimize", "compiled")
    assert wrong.returncode == 2 and "torch backend" in wrong.stderr
