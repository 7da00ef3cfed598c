"""The Classifier: same answers as the plain model in every mode, bad inputs reported per image, top-k rules."""

import io

import numpy as np
import pytest
import timm
import torch
from conftest import colour_image

from optik.data.transforms import Preprocess, eval_transform
from optik.errors import ConfigError
from optik.inference import openvino
from optik.inference.backends import fuse_conv_bn
from optik.inference.predictor import Classifier
from optik.inference.runtime import COMPILE_MIN_IMAGES, RuntimeBackend, plan

PRE = Preprocess(image_size=32, resize_size=36, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
CLASSES = ["a", "b", "c", "d", "e", "f"]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=len(CLASSES)).train()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them is a real test
        for _ in range(5):
            net(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [colour_image(tuple(int(c) for c in rng.integers(0, 255, 3)), 40, rng) for _ in range(20)]


def reference(model, images):
    batch = torch.stack([eval_transform(PRE)(image) for image in images])
    with torch.no_grad():
        return model(batch).softmax(-1).numpy()


@pytest.mark.parametrize(
    "mode", ["eager", "fused", pytest.param("compiled", marks=pytest.mark.slow), "onnx", "openvino"]
)  # compiling: slow
def test_every_mode_matches_eager_pytorch(model, images, mode):
    predictor = Classifier(model, CLASSES, PRE, device="cpu", batch_size=8, mode=mode)
    results = predictor.predict(images)  # 20 images: batches of 8, 8, 4 (the last one padded when compiled)
    expected = reference(model, images)
    got = np.stack([r.probs for r in results])
    assert (got.argmax(1) == expected.argmax(1)).all()
    assert np.abs(got - expected).max() < 1e-4
    assert predictor.backend.mode == mode


def test_decoding_threads_make_pixels_and_batches_are_normalised_as_evaluation_does(model, images):
    predictor = Classifier(model, CLASSES, PRE, device="cpu", batch_size=8, mode="eager")
    pixels = [predictor.decode(image) for image in images[:5]]  # no torch op in the decoding threads
    assert all(p.dtype == np.uint8 and p.shape == (32, 32, 3) for p in pixels)
    expected = torch.stack([eval_transform(PRE)(image) for image in images[:5]])  # what training evaluates on
    assert torch.equal(predictor.normalize.batch(pixels), expected)  # the same numbers, bit for bit
    assert torch.equal(predictor.load(images[0]), expected[0])


def forms(*args) -> list[tuple[str, str]]:
    return [(form.mode, form.precision) for form in plan(*args).forms]


def test_auto_races_every_form_of_the_machine_and_keeps_fp32_in_lower_precisions():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert forms("auto", "auto", "32", cpu, None) == [("fused", "32")]  # a one-off predict: no set-up cost
    job = plan("auto", "auto", "32", cpu, 500)
    assert job.race and [f.mode for f in job.forms] == ["fused", "onnx", "openvino"]  # cheapest set-up first
    assert ("compiled", "32") in forms("auto", "auto", "32", cpu, COMPILE_MIN_IMAGES)
    assert forms("auto", "torch", "32", cpu, 500) == [("fused", "32")]  # PyTorch's own forms only
    bf16 = forms("auto", "auto", "bf16", cpu, 500)
    assert {("fused", "32"), ("onnx", "32"), ("openvino", "32"), ("fused", "bf16")} <= set(bf16)
    assert (("openvino", "bf16") in bf16) == openvino.cpu_has_bf16()
    assert forms("auto", "auto", "32", cuda, COMPILE_MIN_IMAGES)[0] == ("compiled", "32")
    assert forms("openvino", "auto", "bf16", cpu, 10) == [("openvino", "bf16"), ("fused", "bf16")]
    named = plan("auto", "openvino", "32", cpu, 10)  # the user named the engine: no fallback
    assert [f.mode for f in named.forms] == ["openvino"] and not named.fallback


def test_fusion_folds_every_batch_norm(model):
    fused = fuse_conv_bn(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-4)


def test_bf16_is_close_but_not_promised_exact(model, images):
    predictor = Classifier(model, CLASSES, PRE, device="cpu", precision="bf16", batch_size=8, mode="fused")
    got = np.stack([r.probs for r in predictor.predict(images)])
    assert np.abs(got - reference(model, images)).max() < 0.1


def test_sources_bytes_paths_and_failures(model, images, tmp_path):
    path = tmp_path / "x.png"
    images[0].save(path)
    buf = io.BytesIO()
    images[0].save(buf, "JPEG", quality=95)
    predictor = Classifier(model, CLASSES, PRE, device="cpu", batch_size=2, mode="eager")
    results = predictor.predict([path, buf.getvalue(), b"garbage", images[0], tmp_path / "missing.png"])
    assert [r.ok for r in results] == [True, True, False, True, False]
    assert results[2].reason.startswith("not an image") and "No such file" in results[4].reason
    assert results[0].label == results[3].label and np.allclose(results[0].probs, results[3].probs)


def test_top_k_is_clamped_and_sorted(model, images):
    result = Classifier(model, CLASSES, PRE, device="cpu", mode="eager").predict(images[:1])[0]
    full = result.to_dict()
    assert list(full) == CLASSES and sum(full.values()) == pytest.approx(1.0, abs=1e-5)
    top = result.to_dict(top_k=100)
    assert len(top) == len(CLASSES) and list(top.values()) == sorted(top.values(), reverse=True)
    assert list(result.to_dict(top_k=2)) == [name for name, _ in result.top(2)] and result.top(1)[0] == (
        result.label,
        result.score,
    )


def test_option_errors():
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        RuntimeBackend(torch.nn.Linear(2, 2), device="cpu", precision="16")
    with pytest.raises(ConfigError, match="precision must be"):
        RuntimeBackend(torch.nn.Linear(2, 2), device="cpu", precision="8")
    with pytest.raises(ConfigError, match="onnxruntime backend runs fp32"):
        RuntimeBackend(torch.nn.Linear(2, 2), device="cpu", precision="bf16", mode="onnx")
    with pytest.raises(ConfigError, match="mode must be one of"):
        RuntimeBackend(torch.nn.Linear(2, 2), device="cpu", mode="fast")
    with pytest.raises(ConfigError, match="--calibration DIR"):
        RuntimeBackend(torch.nn.Linear(2, 2), device="cpu", precision="int8", mode="auto")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            RuntimeBackend(torch.nn.Linear(2, 2), device="cuda")


def test_a_model_onnx_cannot_export_runs_fused(images):
    class Unexportable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3)

        def forward(self, x):
            return torch.digamma(self.conv(x).mean((2, 3)).exp() + 1)  # an operator ONNX has no form for

    net = Unexportable().eval()
    predictor = Classifier(net, CLASSES, PRE, device="cpu", batch_size=8, mode="onnx")
    got = np.stack([r.probs for r in predictor.predict(images)])
    assert predictor.backend.mode == "fused" and np.abs(got - reference(net, images)).max() < 1e-4


def test_a_model_that_branches_on_values_is_not_exported(images):
    class Branching(torch.nn.Module):  # a trace would freeze one branch into the ONNX graph
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3)

        def forward(self, x):
            features = self.conv(x).mean((2, 3))
            return features if float(x.abs().max()) < 1000 else -features  # these images take the first branch

    net = Branching().eval()
    predictor = Classifier(net, CLASSES, PRE, device="cpu", batch_size=4, mode="onnx")
    got = np.stack([r.probs for r in predictor.predict(images)])
    assert predictor.backend.mode == "fused" and np.abs(got - reference(net, images)).max() < 1e-4


def test_a_model_the_optimiser_cannot_handle_falls_back(images):
    class Odd(torch.nn.Module):  # data-dependent Python control flow and a non-tensor side effect
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 6, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            return self.conv(x).mean((2, 3)) * (1 if float(x.mean()) > -100 else -1)

    odd = Odd().eval()
    for mode in ("compiled", "onnx", "openvino"):
        predictor = Classifier(odd, CLASSES, PRE, device="cpu", batch_size=8, mode=mode)
        got = np.stack([r.probs for r in predictor.predict(images)])
        assert np.abs(got - reference(odd, images)).max() < 1e-4


def test_a_failing_batch_reaches_the_caller_after_the_batches_before_it():
    from optik.inference.predictor import stream

    def run_batch(loaded):
        if loaded[0][1] == 2:
            raise RuntimeError("the network failed")
        return [value for _, value in loaded]

    seen = []
    with pytest.raises(RuntimeError, match="the network failed"):
        for value in stream(((i, None) for i in range(8)), lambda item: ("x", item[0]), run_batch, 2, 1):
            seen.append(value)
    assert seen == [0, 1]
