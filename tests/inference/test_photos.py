"""Photos stored turned with an EXIF orientation predict as their upright twin on every path that reads
images: training data, `optik predict`, the file drop and batch-predict; and as stored when the model says so.
Detectors too: boxes in the upright picture's coordinates, and `optik test` reading annotations in that frame."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import COLOURS, colour_image, run_optik
from PIL import Image

# EXIF orientation -> how a camera stores an upright picture (the inverse of what decoding applies)
STORED_AS = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def photo_set(folder: Path) -> Path:
    """`upright.png` (48x32: not square, so a picture left turned is cropped differently) and its twins
    `turned6.png`, `turned8.png`, stored turned with the EXIF orientation that turns them back."""
    folder.mkdir(parents=True, exist_ok=True)
    upright = colour_image(COLOURS["green"], 48, np.random.default_rng(4)).crop((0, 0, 48, 32))
    upright.save(folder / "upright.png")
    for orientation, transpose in STORED_AS.items():
        exif = Image.Exif()
        exif[0x0112] = orientation
        upright.transpose(transpose).save(folder / f"turned{orientation}.png", exif=exif)
    return folder


def stored_pixels(path: Path) -> bytes:
    """The same file's pixels without its EXIF block: what a decoder that ignores orientation sees."""
    buffer = io.BytesIO()
    Image.open(path).save(buffer, "PNG")
    return buffer.getvalue()


def test_training_data_decodes_turned_photos_upright(tmp_path):
    from optik.config.load import load_config
    from optik.data.loaders import build_classify_data

    for split in ("train", "val"):
        for colour in COLOURS:
            photo_set(tmp_path / "data" / split / colour)
    for upright in (True, False):
        cfg = load_config(
            "resnet18_small",
            [f"data.root={tmp_path / 'data'}", "data.image_size=32", f"data.exif_orientation={upright}"],
        )
        val = build_classify_data(cfg.data).datasets["val"]
        tensors = {Path(path).stem: val[i][0] for i, (path, _) in enumerate(val.samples) if "green" in path}
        for turned in ("turned6", "turned8"):
            assert torch.equal(tensors[turned], tensors["upright"]) is upright


def predictions(stdout: str) -> dict[str, dict]:
    return {Path(row["file"]).stem: row["prediction"] for row in map(json.loads, stdout.splitlines())}


def test_predict_serve_poll_and_batch_predict_see_turned_photos_upright(colour_model, tmp_path):
    photos = photo_set(tmp_path / "photos")
    run = run_optik("predict", colour_model, photos)
    assert run.returncode == 0, run.stderr
    predicted = predictions(run.stdout)
    assert predicted["turned6"] == predicted["upright"] == predicted["turned8"]

    inbox, out = photo_set(tmp_path / "in"), tmp_path / "out"
    served = run_optik("serve", "poll", colour_model, "--in", inbox, "--out", out, "--optimize", "fused")
    assert served.returncode == 0, served.stderr
    polled = {name: json.loads((out / f"{name}.json").read_text()) for name in ("upright", "turned6", "turned8")}
    assert polled["turned6"] == polled["upright"] == polled["turned8"]

    rows = tmp_path / "rows.jsonl"
    batch = run_optik("batch-predict", photos, rows, colour_model, "--format", "jsonl", "--workers", "0")
    assert batch.returncode == 0, batch.stderr
    scored = {Path(row["filename"]).stem: row for row in map(json.loads, rows.read_text().splitlines())}
    assert scored["turned6"] == {**scored["upright"], "filename": "turned6.png"}
    assert scored["turned8"] == {**scored["upright"], "filename": "turned8.png"}


def test_a_package_without_the_key_turns_photos_and_one_trained_without_it_does_not(colour_model, tmp_path):
    from optik.config.load import load_config
    from optik.data.transforms import Preprocess
    from optik.tasks.loading import load_predictor

    content = torch.load(colour_model, weights_only=True)
    assert content["preprocess"].get("exif_orientation", True) is True
    older = dict(content, preprocess={k: v for k, v in content["preprocess"].items() if k != "exif_orientation"})
    torch.save(older, tmp_path / "older.pt")  # a package from before the key was recorded
    assert load_predictor(tmp_path / "older.pt", device="cpu").preprocess.exif_orientation is True

    config = load_config("resnet18_small", ["data.exif_orientation=false"])
    recorded = Preprocess.from_data_config(config.data).to_dict()  # what training stores in model.pt
    assert recorded["exif_orientation"] is False
    torch.save(dict(content, preprocess=recorded | {"image_size": 32, "resize_size": 36}), tmp_path / "stored.pt")
    photos = photo_set(tmp_path / "photos")
    (photos / "as_stored.png").write_bytes(stored_pixels(photos / "turned6.png"))
    run = run_optik("predict", tmp_path / "stored.pt", photos)
    assert run.returncode == 0, run.stderr
    predicted = predictions(run.stdout)
    assert predicted["turned6"] == predicted["as_stored"] != predicted["upright"]


def test_16_bit_photos_predict_as_their_8_bit_twins(colour_model, tmp_path):
    import cv2

    photos = tmp_path / "deep"
    photos.mkdir()
    eight = np.asarray(colour_image(COLOURS["blue"], 40, np.random.default_rng(6)))
    Image.fromarray(eight).save(photos / "eight.png")
    deep = (eight.astype(np.uint16) << 8) | 0x80
    assert cv2.imwrite(str(photos / "deep_rgb.png"), deep[..., ::-1])  # OpenCV writes BGR
    assert cv2.imwrite(str(photos / "deep_rgb.tiff"), deep[..., ::-1])
    Image.fromarray(eight[..., 2]).save(photos / "eight_gray.png")
    Image.fromarray(deep[..., 2]).save(photos / "deep_gray.png")  # 16-bit gray: decoded all white before
    run = run_optik("predict", colour_model, photos)
    assert run.returncode == 0, run.stderr
    files = {Path(row["file"]).name: row["prediction"] for row in map(json.loads, run.stdout.splitlines())}
    assert files["deep_rgb.png"] == files["eight.png"] == files["deep_rgb.tiff"]
    assert files["deep_gray.png"] == files["eight_gray.png"]


def opex_objects(folder: Path) -> dict[str, list[tuple[str, float, list[float]]]]:
    """Stem -> (label, score, box) of each object in the OPEX files `optik predict --out-dir` wrote."""
    found = {}
    for path in folder.glob("*.json"):
        objects = json.loads(path.read_text())["objects"]
        found[path.stem] = [
            (o["label"], o["score"], [o["bbox"][k] for k in ("left", "top", "right", "bottom")]) for o in objects
        ]
    return found


def assert_same_boxes(ours: list, theirs: list) -> None:
    assert len(ours) == len(theirs) > 0  # real objects, not two empty lists
    for (label, score, box), (label2, score2, box2) in zip(sorted(ours), sorted(theirs)):
        assert label == label2 and abs(score - score2) <= 1e-3
        assert max(abs(u - v) for u, v in zip(box, box2)) <= 1.0


@pytest.mark.slow  # a detector through `optik predict`
def test_a_detector_finds_in_a_turned_photo_the_boxes_of_its_upright_twin(shapes_detector, tmp_path):
    from optik.errors import DataError
    from optik.models.package import load_package
    from optik.tasks.detect import detect_test_set
    from optik.tasks.loading import load_predictor
    from optik.tools.shapes import draw_image

    content = torch.load(shapes_detector, weights_only=True)
    assert content["preprocess"]["exif_orientation"] is True and content["config"]["data"]["exif_orientation"] is True
    photos = tmp_path / "photos"
    photos.mkdir()
    upright, _ = draw_image(np.random.default_rng(3), 96, 3)
    upright = upright.crop((0, 0, 96, 72))  # not square: a picture left turned would be another size
    upright.save(photos / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(STORED_AS[6]).save(photos / "turned6.png", exif=exif)
    run = run_optik("predict", shapes_detector, photos, "--out-dir", tmp_path / "opex", "--optimize", "eager")
    assert run.returncode == 0, run.stderr
    found = opex_objects(tmp_path / "opex")
    assert_same_boxes(found["turned6"], found["upright"])  # in the upright picture's coordinates

    # packages from before the key decode upright, as classifiers do; those saved with false keep the stored pixels
    without_key = {k: v for k, v in content["preprocess"].items() if k != "exif_orientation"}
    torch.save(dict(content, preprocess=without_key), tmp_path / "older.pt")
    torch.save(dict(content, preprocess=without_key | {"exif_orientation": False}), tmp_path / "stored.pt")
    (photos / "as_stored.png").write_bytes(stored_pixels(photos / "turned6.png"))
    older = load_predictor(tmp_path / "older.pt", device="cpu", mode="eager")
    assert torch.equal(older.decode(photos / "turned6.png"), older.decode(photos / "upright.png"))
    stored = load_predictor(tmp_path / "stored.pt", device="cpu", mode="eager")
    assert torch.equal(stored.decode(photos / "turned6.png"), stored.decode(photos / "as_stored.png"))

    # optik test reads the annotations in the frame its detector decodes in
    image = {"id": 1, "file_name": "turned6.png", "width": 96, "height": 72}
    truth = photos / "upright.json"
    truth.write_text(json.dumps({"images": [image], "annotations": [], "categories": [{"id": 1, "name": "square"}]}))
    (record,) = detect_test_set(load_package(shapes_detector), truth, "test")[0].records
    assert (record.width, record.height) == (96, 72)
    with pytest.raises(DataError, match="the file is 72x96 but its annotations say 96x72"):
        detect_test_set(load_package(tmp_path / "stored.pt"), truth, "test")
