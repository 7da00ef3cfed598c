"""The common detection form: one shapes set read the same from every format, masks, transforms that
keep boxes and masks aligned, seeded splits and loaders, and the ground truth the evaluator scores against."""

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO, COCOeval_faster
from torchvision import tv_tensors

from optik.config.schema import DetectAugmentConfig, DetectDataConfig
from optik.data.detection import (
    DetectionDataset,
    build_detect_data,
    collate_detection,
    detect_datasets,
    detect_eval_transform,
    detect_train_transform,
    make_detect_loader,
)
from optik.errors import DataError
from optik.tools.shapes import write_shapes_set


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """The same 64 px shapes set (4 train, 2 val, 2 test) written as coco, voc and yolo."""
    root = tmp_path_factory.mktemp("shapes")
    return {fmt: write_shapes_set(root / fmt, fmt, train=4, val=2, test=2, size=64) for fmt in ("coco", "voc", "yolo")}


def mask_box(mask: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def test_every_format_reads_to_the_same_boxes_and_labels(shapes):
    results = {fmt: build_detect_data(DetectDataConfig(format=fmt, root=root)) for fmt, root in shapes.items()}
    classes, coco = results["coco"]
    assert classes == ["circle", "square", "triangle"] and list(coco) == ["train", "val", "test"]
    for fmt in ("voc", "yolo"):
        other_classes, other = results[fmt]
        assert other_classes == classes
        for split in coco:
            for a, b in zip(coco[split].records, other[split].records, strict=True):
                assert a.labels.tolist() == b.labels.tolist()
                assert np.abs(a.boxes - b.boxes).max() <= 1.0


def test_masks_lie_inside_their_boxes_with_the_polygon_area(shapes):
    _, sets = build_detect_data(DetectDataConfig(format="coco", root=shapes["coco"]), with_masks=True)
    data = sets["train"]
    for index, record in enumerate(data.records):
        image, target = DetectionDataset(data, with_masks=True)[index]
        assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 64, 64)
        assert target["masks"].shape == (len(record.labels), 64, 64) and target["masks"].dtype == torch.uint8
        for mask, box, area in zip(target["masks"], target["boxes"], record.areas):
            assert abs(int(mask.sum()) - area) <= 0.05 * area
            assert np.abs(np.array(mask_box(mask)) - box.numpy()).max() <= 1.0


def test_flips_move_boxes_and_masks_together(shapes):
    _, sets = build_detect_data(DetectDataConfig(format="voc", root=shapes["voc"]))
    flip = detect_train_transform(DetectAugmentConfig(hflip=1.0, vflip=1.0))
    image, target = DetectionDataset(sets["train"], with_masks=True)[1]  # VOC: whole-pixel boxes, masks fill them
    flipped_image, flipped = flip(image, target)
    assert torch.equal(flipped_image, image.flip(-1).flip(-2))
    for mask, box, original in zip(flipped["masks"], flipped["boxes"], target["boxes"]):
        assert mask_box(mask) == box.int().tolist()
        assert box.tolist() == [64 - original[2], 64 - original[3], 64 - original[0], 64 - original[1]]


def test_zoom_keeps_masks_aligned_and_drops_boxes_left_outside(shapes):
    _, sets = build_detect_data(DetectDataConfig(format="coco", root=shapes["coco"]))
    zoom = detect_train_transform(DetectAugmentConfig(hflip=0.0, scale=(2.0, 2.0), photometric=True))
    kept = 0
    for index in range(len(sets["train"])):
        image, target = zoom(*DetectionDataset(sets["train"], with_masks=True)[index])
        assert image.shape == (3, 64, 64) and image.dtype == torch.uint8
        assert len(target["boxes"]) == len(target["labels"]) == len(target["masks"])
        kept += len(target["boxes"])
        for mask, box in zip(target["masks"], target["boxes"]):
            x0, y0, x1, y1 = mask_box(mask)
            # the mask lies inside its box
            assert box[0] - 1 <= x0 and box[1] - 1 <= y0 and x1 <= box[2] + 1 and y1 <= box[3] + 1
            if box.min() > 0 and box.max() < 64:  # and fills it when the zoom did not cut the object
                assert np.abs(np.array([x0, y0, x1, y1]) - box.numpy()).max() <= 2.0
    assert 0 < kept < sets["train"].num_objects


def test_held_out_val_is_seeded_and_disjoint(tmp_path):
    root = write_shapes_set(tmp_path, "yolo", train=10, val=0, size=64)
    cfg = DetectDataConfig(format="yolo", root=root, val_split=0.3, split_seed=4)
    _, a = build_detect_data(cfg)
    _, b = build_detect_data(cfg)
    _, c = build_detect_data(cfg.model_copy(update={"split_seed": 5}))
    ids = lambda data: [r.image_id for r in data.records]  # noqa: E731
    assert list(a) == ["train", "val"] and len(a["val"]) == 3 and len(a["train"]) == 7
    assert ids(a["val"]) == ids(b["val"]) and ids(a["val"]) != ids(c["val"])
    assert not set(ids(a["train"])) & set(ids(a["val"]))
    assert "held out" in a["val"].report[0] and "seed 4" in a["val"].origin


def test_configured_classes_must_match_the_data(shapes, monkeypatch):
    classes, sets = build_detect_data(
        DetectDataConfig(format="coco", root=shapes["coco"], classes=["triangle", "circle", "square"])
    )
    assert classes == ["triangle", "circle", "square"]
    assert sets["train"].to_coco()["categories"][0]["name"] == "triangle"
    monkeypatch.setenv("OPTIK_CLASSES", "circle,square")
    with pytest.raises(DataError, match="OPTIK_CLASSES do not match.*not named: \\['triangle'\\]"):
        build_detect_data(DetectDataConfig(format="voc", root=shapes["voc"]))


def test_explicit_splits_missing_root_and_box_only_data_for_mask_models(shapes, tmp_path):
    cfg = DetectDataConfig(
        format="coco", root=shapes["coco"], train="train/annotations.json", val="test/annotations.json"
    )
    _, sets = build_detect_data(cfg)
    assert sets["val"].origin.endswith("test/annotations.json") and "test" not in sets
    with pytest.raises(DataError, match="data folder not found"):
        build_detect_data(DetectDataConfig(format="coco", root=tmp_path / "nope"))
    with pytest.raises(DataError, match="no coco train split found under .*expected root/<split>/annotations.json"):
        build_detect_data(DetectDataConfig(format="coco", root=tmp_path))
    with pytest.raises(DataError, match="has boxes only"):
        build_detect_data(DetectDataConfig(format="voc", root=shapes["voc"]), with_masks=True)


def test_loader_batches_lists_and_seeded_augmentation_repeats(shapes):
    cfg = DetectDataConfig(format="coco", root=shapes["coco"], augment=DetectAugmentConfig(hflip=0.5, photometric=True))
    _, sets = build_detect_data(cfg, with_masks=True)
    datasets = detect_datasets(sets, cfg.augment, with_masks=True, seed=7)
    assert isinstance(datasets["val"].transform, type(detect_eval_transform()))
    first, again = datasets["train"][(2, 1)], datasets["train"][(2, 1)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    images, targets = next(iter(make_detect_loader(datasets["train"], batch_size=3, workers=0, shuffle_seed=1)))
    assert len(images) == len(targets) == 3 and all(set(t) == {"boxes", "labels", "masks", "image_id"} for t in targets)
    assert collate_detection([(1, {"a": 1}), (2, {"a": 2})]) == ([1, 2], [{"a": 1}, {"a": 2}])


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_ground_truth_scores_perfect_against_itself(shapes, fmt):
    _, sets = build_detect_data(DetectDataConfig(format=fmt, root=shapes[fmt]))
    gt = sets["val"].to_coco()
    detections = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in gt["annotations"]
    ]
    evaluator = COCOeval_faster(COCO(gt), COCO(gt).loadRes(detections), "bbox", print_function=lambda *a: None)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    assert evaluator.stats[0] == pytest.approx(1.0)


def test_mmdet_classes_name_the_order_and_a_mismatch_lists_both(tmp_path, monkeypatch):
    from optik.config.load import load_config
    from optik.data.detection import build_detect_data
    from optik.errors import DataError
    from optik.tools.shapes import write_shapes_set

    root = write_shapes_set(tmp_path / "voc", "voc", train=6, val=3, size=64)
    cfg = load_config(None, ["task=detect", "data.format=voc", f"data.root={root}"]).data
    monkeypatch.setenv("MMDET_CLASSES", "'triangle','square','circle'")
    classes, sets = build_detect_data(cfg)
    assert classes == ["triangle", "square", "circle"]
    plain_classes, plain = build_detect_data(cfg.model_copy(update={"classes": ["circle", "square", "triangle"]}))
    for named, sorted_ in zip(sets["train"].records, plain["train"].records):  # same objects, labels in the named order
        assert [classes[i] for i in named.labels] == [plain_classes[i] for i in sorted_.labels]
    monkeypatch.setenv("MMDET_CLASSES", "circle,square")
    with pytest.raises(DataError, match=r"MMDET_CLASSES.*triangle"):
        build_detect_data(cfg)


def test_data_images_for_voc_and_yolo_and_val_held_out_without_image_sets(tmp_path):
    """Annotations apart from their images, which data.images (relative: under data.root) points at."""
    shapes = write_shapes_set(tmp_path / "shapes", "voc", train=5, val=0, size=64)
    root = tmp_path / "voc"
    (root / "pictures").mkdir(parents=True)
    (root / "annotations").mkdir()
    for xml in (shapes / "train").glob("*.xml"):
        xml.rename(root / "annotations" / xml.name)
    for image in (shapes / "train").glob("*.png"):
        image.rename(root / "pictures" / image.name)
    with pytest.raises(DataError, match=r"looked in .*JPEGImages.*set data.images to the folder"):
        build_detect_data(DetectDataConfig(format="voc", root=root))
    _, sets = build_detect_data(DetectDataConfig(format="voc", root=root, images="pictures"))
    assert (len(sets["train"]), len(sets["val"])) == (4, 1)
    assert all(r.path.startswith(str(root / "pictures")) for part in sets.values() for r in part.records)
    assert "no val split found, so 1 image(s) held out (data.val_split 0.2)" in sets["val"].report[0]

    yolo = write_shapes_set(tmp_path / "yolo", "yolo", train=3, val=0, size=64)
    (yolo / "train").rename(yolo / "labels")
    (tmp_path / "yolo-images").mkdir()
    for image in (yolo / "labels").glob("*.png"):
        image.rename(tmp_path / "yolo-images" / image.name)
    _, sets = build_detect_data(DetectDataConfig(format="yolo", root=yolo, images=tmp_path / "yolo-images"))
    assert len(sets["train"]) + len(sets["val"]) == 3 and sets["train"].num_objects > 0

    with pytest.raises(DataError, match=r"no voc train split found .*ImageSets/Main/<split>.txt lists"):
        build_detect_data(DetectDataConfig(format="voc", root=tmp_path / "yolo-images"))
