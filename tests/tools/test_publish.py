"""`optik publish`: weights_only-safe, no optimizer state, and the name carries its own content's hash."""

import hashlib
import re

import torch

from optik.models.package import load_package


def test_published_file_is_clean_and_named_by_its_hash(colour_model, tmp_path, optik):
    done = optik("publish", colour_model, tmp_path / "release" / "colours.pt")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "release" / re.search(r"(colours-[0-9a-f]{8}\.pt)", done.stdout).group(1)
    assert path.name == f"colours-{hashlib.sha256(path.read_bytes()).hexdigest()[:8]}.pt"
    content = torch.load(path, weights_only=True)
    assert "optimizer_states" not in content and "lr_schedulers" not in content
    assert all(t.device.type == "cpu" for t in content["state_dict"].values())
    package = load_package(path)
    assert package.classes == ["red", "green", "blue"]
    assert all(torch.equal(package.state_dict[k], v) for k, v in load_package(colour_model).state_dict.items())


def test_a_training_checkpoint_loses_its_optimizer_state(tmp_path, optik):
    from conftest import make_colour_set, tiny_overrides

    data = make_colour_set(tmp_path / "data", per_class=4)
    args = [f"--set={o}" for o in tiny_overrides(data, epochs=1)]
    assert optik("train", "resnet18_small", "--work-dir", tmp_path / "run", *args).returncode == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert "optimizer_states" in torch.load(ckpt, weights_only=True, map_location="cpu")
    done = optik("publish", ckpt, tmp_path / "out.pt")
    assert done.returncode == 0, done.stderr
    published = next(tmp_path.glob("out-*.pt"))
    content = torch.load(published, weights_only=True)
    assert "optimizer_states" not in content and content["format"] == "optik-model"
