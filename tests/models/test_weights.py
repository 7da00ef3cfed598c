"""Local weights: every container format, prefix handling, and a key report that tells the truth."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from optik.errors import ModelError
from optik.models.weights import load_weights


def small(num_classes=10):
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=num_classes)


def same(a, b, skip=("fc.",)):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items() if not k.startswith(skip))


@pytest.mark.parametrize("wrap", ["plain", "module", "lightning", "model_key"])
def test_containers_and_prefixes_are_found(tmp_path, wrap):
    source = small()
    state = source.state_dict()
    content = {
        "plain": state,
        "module": {f"module.{k}": v for k, v in state.items()},
        "lightning": {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3},
        "model_key": {"model": state, "optimizer": {}},
    }[wrap]
    torch.save(content, tmp_path / "w.pth")
    target = timm.create_model("resnet18", num_classes=10)
    report = load_weights(target, tmp_path / "w.pth")
    assert not report.missing and not report.unexpected and not report.mismatched
    assert len(report.matched) == len(state) and same(source, target, skip=())


def test_backbone_prefix_and_new_head_reported(tmp_path):
    source = small(1000)
    save_file(
        {f"backbone.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    target = timm.create_model("resnet18", num_classes=4)
    report = load_weights(target, tmp_path / "w.safetensors")
    assert report.prefix == "backbone."
    assert sorted(m.split()[0] for m in report.mismatched) == ["fc.bias", "fc.weight"]
    assert "fc.weight" not in report.missing and same(source, target)
    text = "\n".join(report.lines())
    assert "shape mismatch" in text and f"{len(report.matched)}/{len(target.state_dict())}" in text


def test_explicit_prefix_and_no_match(tmp_path):
    source = small()
    torch.save(
        {
            **{f"student.{k}": v for k, v in source.state_dict().items()},
            **{f"teacher.{k}": v * 0 for k, v in source.state_dict().items()},
        },
        tmp_path / "w.pt",
    )
    target = timm.create_model("resnet18", num_classes=10)
    load_weights(target, tmp_path / "w.pt", prefix="student.")
    assert same(source, target, skip=())
    with pytest.raises(ModelError, match="no key starts with"):
        load_weights(target, tmp_path / "w.pt", prefix="nothing.")
    torch.save({"x.y": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ModelError, match="no key .* matches"):
        load_weights(target, tmp_path / "other.pt")


def test_unsafe_pickles_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    torch.save({"state_dict": {"a": torch.zeros(1)}, "hook": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="cannot load"):
        load_weights(small(), tmp_path / "evil.pt")


def test_missing_file():
    with pytest.raises(ModelError, match="not found"):
        load_weights(small(), "/no/such/weights.pth")
