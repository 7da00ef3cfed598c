"""`optik export --format onnx`: the file predicts like model.pt, through predict and a service."""

import json

import numpy as np
import onnx

from conftest import colour_image


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
        assert max(ours, key=ours.get) == max(theirs, key=theirs.get) and max(abs(ours[k] - theirs[k]) for k in theirs) < 1e-3
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
    assert done.returncode == 2 and "cannot read" in done.stderr
