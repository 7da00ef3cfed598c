"""Detection end to end: train from COCO, VOC and YOLO; `optik test` mAP equals faster-coco-eval's; bad data is refused clearly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from optik.config.load import load_config
from optik.engine.evaluate import evaluate
from optik.engine.train import train
from optik.tools.shapes import write_shapes_set


def shapes_overrides(root, fmt: str = "coco", epochs: int = 1, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        f"data.format={fmt}",
        f"train.epochs={epochs}",
        "data.num_workers=0",
        "data.batch_size=4",
        "train.keep_checkpoints=1",
        "train.log_every_n_steps=1",
        *extra,
    ]


@pytest.mark.parametrize("fmt", ["coco", "voc", "yolo"])
def test_trains_from_each_format(tmp_path, fmt):
    root = write_shapes_set(tmp_path / fmt, fmt, train=12, val=6, size=64)
    result = train(load_config("fcos_resnet18_small", shapes_overrides(root, fmt)), work_dir=tmp_path / "run")
    assert result.package.is_file()
    assert {"val/map", "val/map_50"} <= set(result.metrics)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.task == "detect" and saved.data.format == fmt


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """A detector trained briefly on a shapes set with a test split: (data root, model package)."""
    from conftest import shared_once

    def make(tmp):
        root = write_shapes_set(tmp / "shapes", "coco", train=16, val=6, test=8, size=64)
        run = train(load_config("fcos_resnet18_small", shapes_overrides(root, epochs=2)), work_dir=tmp / "run")
        shutil.rmtree(tmp / "run" / "checkpoints")
        return root, run.package

    return shared_once(tmp_path_factory, "shapes_run", make)


def test_test_map_equals_faster_coco_eval_on_the_same_predictions(shapes_run):
    from faster_coco_eval import COCO, COCOeval_faster

    root, package = shapes_run
    result = evaluate(package, split="test")
    assert result.metrics["images"] == 8 and set(result.metrics["bbox"]["per_class"]) == {
        "circle",
        "square",
        "triangle",
    }

    truth = json.loads((root / "test" / "annotations.json").read_text())
    ids = {image["file_name"]: image["id"] for image in truth["images"]}
    category = {c["name"]: c["id"] for c in truth["categories"]}
    detections = [
        {
            "image_id": ids[item["file"].rsplit("/", 1)[-1]],
            "category_id": category[o["label"]],
            "score": o["score"],
            "bbox": [o["bbox"][0], o["bbox"][1], o["bbox"][2] - o["bbox"][0], o["bbox"][3] - o["bbox"][1]],
        }
        for item in result.items
        for o in item["objects"]
    ]
    assert detections, "the model found nothing: nothing to compare"
    gt = COCO(str(root / "test" / "annotations.json"))
    direct = COCOeval_faster(gt, gt.loadRes(detections), "bbox", print_function=lambda *a, **k: None)
    direct.evaluate()
    direct.accumulate()
    direct.summarize()
    assert result.metrics["bbox"]["map"] == pytest.approx(max(0.0, direct.stats[0]), abs=1e-6)
    assert result.metrics["bbox"]["map_50"] == pytest.approx(max(0.0, direct.stats[1]), abs=1e-6)


@pytest.mark.slow
def test_mask_model_trains_and_scores_segm(tmp_path):
    root = write_shapes_set(tmp_path / "shapes", "coco", train=8, val=4, size=64)
    overrides = shapes_overrides(
        root,
        "coco",
        1,
        "model.name=maskrcnn_resnet50_fpn",
        "model.backbone=resnet18",
        "data.image_size=96",
        "train.validation=false",  # scored once below: an untrained Mask R-CNN's many masks make evaluation slow
    )
    run = train(load_config("fcos_resnet18_small", overrides), work_dir=tmp_path / "run")
    result = evaluate(run.package, split="val")
    assert {"bbox", "segm"} <= set(result.metrics)
    assert 0.0 <= result.metrics["segm"]["map"] <= 1.0


def test_mask_model_on_box_only_data_is_refused(tmp_path, optik):
    root = write_shapes_set(tmp_path / "voc", "voc", train=6, val=3, size=64)
    config = tmp_path / "mask.yaml"
    config.write_text(
        f"task: detect\ndata: {{format: voc, root: {root}, image_size: 96, num_workers: 0}}\nmodel: {{name: maskrcnn_resnet50_fpn, backbone: resnet18}}\ntrain: {{epochs: 1}}\n"
    )
    done = optik("train", config, "--work-dir", tmp_path / "run")
    assert done.returncode == 2 and "boxes only" in done.stderr and "Traceback" not in done.stderr


def test_bad_annotations_fail_the_cli_with_what_to_do(tmp_path, optik):
    root = write_shapes_set(tmp_path / "shapes", "coco", train=6, val=3, size=64)
    doc = json.loads((root / "train" / "annotations.json").read_text())
    doc["annotations"][0]["category_id"] = 42
    (root / "train" / "annotations.json").write_text(json.dumps(doc))
    config = tmp_path / "det.yaml"
    config.write_text(
        f"task: detect\ndata: {{root: {root}, image_size: 64, num_workers: 0}}\nmodel: {{name: fcos_resnet50_fpn, backbone: resnet18}}\ntrain: {{epochs: 1}}\n"
    )
    done = optik("train", config, "--work-dir", tmp_path / "run")
    assert done.returncode == 2 and "42" in done.stderr and "Traceback" not in done.stderr

    doc["annotations"][0]["category_id"] = 1
    (root / "train" / "annotations.json").write_text(json.dumps(doc))
    (root / "train" / doc["images"][0]["file_name"]).unlink()
    done = optik("train", config, "--work-dir", tmp_path / "run")
    assert done.returncode == 2 and "skip_bad" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow  # optik test through the CLI on three data layouts
def test_test_on_a_folder_and_on_a_json(tmp_path, optik, shapes_run):
    root, package = shapes_run
    other = tmp_path / "elsewhere"
    shutil.copytree(root / "test", other)
    by_json = optik("test", package, other / "annotations.json", "--out", tmp_path / "a.json")
    by_folder = optik("test", package, other, "--out", tmp_path / "b.json")
    assert by_json.returncode == 0 and by_folder.returncode == 0, by_json.stderr + by_folder.stderr
    assert "bbox mAP" in by_json.stdout
    a, b = (json.loads((tmp_path / name).read_text())["metrics"] for name in ("a.json", "b.json"))
    assert a["bbox"]["map"] == b["bbox"]["map"] and a["images"] == b["images"] == 8
    missing = optik("test", package, tmp_path / "nowhere")
    assert missing.returncode == 2 and "not found" in missing.stderr


@pytest.mark.slow
def test_a_detector_learns_the_shapes(tmp_path):
    """Real learning, not only plumbing: a short run scores well above what an untrained model gets (~0).

    No validation during training (COCO evaluation every epoch was a quarter of the time): the last
    epoch's model is scored once, on the val images it never saw."""
    root = write_shapes_set(tmp_path / "shapes", "coco", train=96, val=24, size=128)
    run = train(
        load_config(
            "fcos_resnet18_small", shapes_overrides(root, "coco", 8, "data.batch_size=8", "train.validation=false")
        ),
        work_dir=tmp_path / "run",
    )
    result = evaluate(run.package, split="val")
    assert result.metrics["bbox"]["map_50"] > 0.25, result.metrics["bbox"]


def give_mixed_shapes(split_folder):
    """Pad every other image of a COCO split to a wide or a tall canvas (objects stay where they were):
    a validation batch then mixes image shapes, which torchvision pads to one size."""
    from PIL import Image

    doc = json.loads((split_folder / "annotations.json").read_text())
    for i, image in enumerate(doc["images"]):
        if i % 2:
            size = (128, 64) if i % 4 == 1 else (64, 128)
            path = split_folder / image["file_name"]
            canvas = Image.new("RGB", size, (90, 90, 90))
            with Image.open(path) as picture:
                canvas.paste(picture.convert("RGB"), (0, 0))
            canvas.save(path)
            image["width"], image["height"] = size
    (split_folder / "annotations.json").write_text(json.dumps(doc))


@pytest.mark.slow  # over 10 s: CI runs it; `make test-fast` leaves it out
def test_best_val_map_is_what_optik_test_reports_on_the_val_images(tmp_path, optik):
    """Training's val/map and `optik test --split val` score the same predictions with the same evaluator,
    even when a validation batch mixes wide and tall images (it used to pad them together)."""
    root = write_shapes_set(tmp_path / "shapes", "coco", train=16, val=6, size=64)
    give_mixed_shapes(root / "val")
    overrides = shapes_overrides(root, "coco", 3, "data.image_size=64")
    run = train(load_config("fcos_resnet18_small", overrides), work_dir=tmp_path / "run")
    best = run.metrics["best val/map"]
    assert best > 0, "the model found nothing: nothing to compare"
    done = optik("test", run.package, "--split", "val", "--out", tmp_path / "val.json")
    assert done.returncode == 0, done.stderr
    tested = json.loads((tmp_path / "val.json").read_text())["metrics"]
    assert tested["images"] == 6
    # relative too: this tiny model's mAP is small, so 1e-4 alone would hide a real difference
    assert tested["bbox"]["map"] == pytest.approx(best, rel=1e-4, abs=1e-4)


def test_images_repeated_across_ranks_are_scored_once():
    from optik.tasks.training.detect import merge_shards

    def found(image_id, score):
        return {"image_id": image_id, "category_id": 1, "bbox": [0, 0, 5, 5], "score": score}

    # two ranks; the sampler padded rank 1's shard with image 1 again
    shards = [[found(1, 0.9), found(1, 0.4), found(2, 0.8)], [found(3, 0.7), found(1, 0.9), found(1, 0.4)]]
    merged = merge_shards(shards)
    assert sorted((r["image_id"], r["score"]) for r in merged) == [(1, 0.4), (1, 0.9), (2, 0.8), (3, 0.7)]


def write_labelimg_set(root: Path, count: int, images_folder: str = "images") -> Path:
    """A shapes set as LabelImg leaves it: root/<images_folder>/ and root/annotations/ side by side, each XML
    with <folder>images</folder> and the <path> of the annotator's machine, no ImageSets, no split folders."""
    shapes = write_shapes_set(root.parent / f"{root.name}-shapes", "voc", train=count, val=0, size=64)
    (root / images_folder).mkdir(parents=True)
    (root / "annotations").mkdir()
    for xml in sorted((shapes / "train").glob("*.xml")):
        tree = ET.parse(xml)
        filename = tree.getroot().findtext("filename")
        for tag, text in (("folder", "images"), ("path", f"/home/annotator/shapes/images/{filename}")):
            ET.SubElement(tree.getroot(), tag).text = text
        tree.write(root / "annotations" / xml.name)
        shutil.move(shapes / "train" / filename, root / images_folder / filename)
    shutil.rmtree(shapes)
    return root


@pytest.fixture(scope="module")
def labelimg_run(tmp_path_factory):
    """A detector trained on a LabelImg-layout VOC set (val held out of it): (data root, model package)."""
    from conftest import shared_once

    def make(tmp):
        root = write_labelimg_set(tmp / "labelimg", 10)
        run = train(load_config("fcos_resnet18_small", shapes_overrides(root, "voc")), work_dir=tmp / "run")
        shutil.rmtree(tmp / "run" / "checkpoints")
        return root, run.package

    return shared_once(tmp_path_factory, "labelimg_run", make)


@pytest.mark.slow  # a detector run with validation
def test_a_labelimg_voc_set_trains_as_it_is(labelimg_run):
    root, package = labelimg_run
    assert package.is_file()
    saved = load_config(package.parent / "config.yaml")
    assert saved.data.format == "voc" and saved.data.root == root
    result = evaluate(package, split="val")  # the share training held out
    assert result.metrics["images"] == 2 and result.metrics["split"] == "val"
    tested = evaluate(package, split="test")  # no test split: val serves, and the result says so
    assert tested.metrics["split"] == "val" and tested.metrics["images"] == 2


def test_labelimg_set_converts_to_coco_with_images_elsewhere(tmp_path, optik):
    root = write_labelimg_set(tmp_path / "labelimg", 4, images_folder="photos")  # <folder>images</folder> is no folder
    out = tmp_path / "coco" / "train.json"
    refused = optik("data", "convert", "voc", root, out)
    assert refused.returncode == 2 and "pass --images DIR" in refused.stderr and "--skip-bad" in refused.stderr
    done = optik("data", "convert", "voc", root, out, "--images", root / "photos")
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert len(doc["images"]) == 4 and doc["annotations"]
    assert all((out.parent / image["file_name"]).is_file() for image in doc["images"])


@pytest.mark.slow  # optik test through the CLI, three times
def test_optik_test_reads_a_set_laid_out_as_for_training(tmp_path, optik, labelimg_run):
    root, package = labelimg_run
    done = optik("test", package, root, "--out", tmp_path / "all.json")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "all.json").read_text())["metrics"]["images"] == 10  # no splits: all of it
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    next((broken / "images").iterdir()).unlink()
    refused = optik("test", package, broken)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "pass --skip-bad" in refused.stderr and "data.skip_bad" not in refused.stderr
    skipped = optik("test", package, broken, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert "9 images" in skipped.stdout and "1 unreadable" in skipped.stdout


def test_skip_bad_leaving_no_training_images_stops_before_training(tmp_path, optik):
    root = write_shapes_set(tmp_path / "voc", "voc", train=4, val=2, size=64)
    for image in (root / "train").glob("*.png"):
        image.write_bytes(b"not a png")
    overrides = [f"--set={o}" for o in shapes_overrides(root, "voc")] + ["--set=data.skip_bad=true"]
    done = optik("train", "fcos_resnet18_small", "--work-dir", tmp_path / "run", *overrides)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "no training images left: skip_bad left out all 4 image(s)" in done.stderr
    assert "not an image" in done.stderr and "last.ckpt" not in done.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "logs").exists()
