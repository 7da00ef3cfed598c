"""The runtime layer: every engine x precision on the CPU agrees with eager PyTorch on a trained model,
auto races fp32 into every lower precision, compiled models are cached, and an exported OpenVINO IR is
a MODEL for predict, a service, batch-predict and optik test."""

import json
import logging

import numpy as np
import pytest
import torch
from conftest import make_colour_set

from optik.data.transforms import Preprocess
from optik.inference import openvino
from optik.inference.predictor import Classifier
from optik.inference.runtime import RuntimeBackend
from optik.models.package import load_package
from optik.tasks.loading import build_model

# Top-1 agreement with eager fp32 that reduced precisions must keep on the trained colour model.
AGREEMENT = {"bf16": 0.95, "int8": 0.9}


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """Colour pictures to predict (24) and others to calibrate on (30), unlike the training set's seed."""
    root = tmp_path_factory.mktemp("runtime")
    return make_colour_set(root / "predict", per_class=8, seed=11), make_colour_set(
        root / "calibrate", per_class=10, seed=12
    )


@pytest.fixture(scope="module")
def trained(colour_model):
    package = load_package(colour_model)
    return build_model(package), package.classes, Preprocess.from_dict(package.preprocess)


def probabilities(predictor, folder):
    files = sorted(folder.rglob("*.png"))
    return np.stack([result.probs for result in predictor.predict(files)])


@pytest.mark.parametrize(
    "mode, precision",
    [
        ("fused", "32"),
        ("onnx", "32"),
        ("openvino", "32"),
        ("fused", "bf16"),
        ("openvino", "bf16"),
        ("openvino", "int8"),
    ],
)
def test_each_engine_and_precision_agrees_with_eager(trained, colours, mode, precision):
    if precision == "bf16" and mode == "openvino" and not openvino.cpu_has_bf16():
        pytest.skip("this CPU has no bf16 (AMX / avx512_bf16)")
    network, classes, preprocess = trained
    pictures, calibration = colours
    eager = probabilities(Classifier(network, classes, preprocess, device="cpu", batch_size=8, mode="eager"), pictures)
    predictor = Classifier(
        network,
        classes,
        preprocess,
        device="cpu",
        batch_size=8,
        mode=mode,
        precision=precision,
        calibration=calibration if precision == "int8" else None,
    )
    got = probabilities(predictor, pictures)
    assert (predictor.backend.mode, predictor.backend.precision) == (mode, precision)  # no silent fallback
    same = float((got.argmax(1) == eager.argmax(1)).mean())
    if precision == "32":
        assert same == 1.0 and np.abs(got - eager).max() < 1e-4
    else:
        assert same >= AGREEMENT[precision], f"{mode} {precision}: top-1 agreement {same:.2f}"


def test_auto_races_fp32_forms_into_a_bf16_job(trained, colours, caplog):
    network, classes, preprocess = trained
    pictures, _ = colours
    eager = probabilities(Classifier(network, classes, preprocess, device="cpu", mode="eager"), pictures)
    predictor = Classifier(
        network, classes, preprocess, device="cpu", batch_size=8, precision="bf16", expected_images=500
    )
    with caplog.at_level(logging.INFO, logger="optik.inference.runtime"):
        got = probabilities(predictor, pictures)
    measured = [r.getMessage() for r in caplog.records if "images/s on the check images" in r.getMessage()]
    assert any(" 32 on cpu" in line for line in measured) and any(" bf16 on cpu" in line for line in measured)
    chosen = predictor.backend.runtime
    assert chosen.precision in ("32", "bf16") and chosen.mode != "eager"
    if chosen.precision == "32":  # fp32 was faster here: it runs, exactly, and the log says so
        assert (got.argmax(1) == eager.argmax(1)).all() and np.abs(got - eager).max() < 1e-4
        said = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and "bf16 was slower on this job" in r.getMessage()
        ]
        assert said
    else:
        assert (got.argmax(1) == eager.argmax(1)).mean() >= AGREEMENT["bf16"]


def test_a_precision_asked_for_that_does_not_run_is_said(trained, colours, caplog):
    network, classes, preprocess = trained
    pictures, calibration = colours
    # a one-off job (its size unknown): int8's quantization is not worth it, fp32 runs, and a warning says why
    predictor = Classifier(network, classes, preprocess, device="cpu", precision="int8", calibration=calibration)
    with caplog.at_level(logging.WARNING, logger="optik.inference.runtime"):
        probabilities(predictor, pictures)
    assert predictor.backend.runtime.precision == "32"
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("int8 does not repay its set-up on a job this small" in line for line in said), said


def test_a_second_set_up_reads_the_cached_graph_and_compiled_model(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("OPTIK_CACHE_DIR", str(tmp_path))
    network, _, _ = trained
    batch = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = RuntimeBackend(network, device="cpu", mode="openvino")
    first(batch)
    assert first.mode == "openvino" and not first.model.loaded_from_cache
    assert list((tmp_path / "openvino" / "graphs").glob("*.xml")) and list((tmp_path / "openvino").glob("*.blob"))
    openvino._core.cache_clear()  # a second run starts a new OpenVINO core, as a new process does
    second = RuntimeBackend(network, device="cpu", mode="openvino")
    torch.testing.assert_close(second(batch), first(batch))
    assert second.model.loaded_from_cache


def test_an_exported_ir_runs_predict_a_service_and_batch_predict(colour_model, colours, tmp_path, optik):
    pictures, calibration = colours
    ir = tmp_path / "colours.xml"
    done = optik("export", colour_model, "--format", "openvino", "--out", ir)
    assert done.returncode == 0, done.stderr
    assert "OpenVINO fp32 matches PyTorch" in done.stdout and ir.with_suffix(".bin").is_file()
    files = sorted(pictures.rglob("*.png"))[::4]
    for name, model in (("torch", colour_model), ("ir", ir)):
        run = optik("predict", model, *files, "--out-dir", tmp_path / name)
        assert run.returncode == 0, run.stderr
    for path in files:
        ours, theirs = (json.loads((tmp_path / name / f"{path.stem}.json").read_text()) for name in ("ir", "torch"))
        assert max(ours, key=ours.get) == max(theirs, key=theirs.get)
        assert max(abs(ours[k] - theirs[k]) for k in theirs) < 1e-4

    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for path in files:
        (inbox / path.name).write_bytes(path.read_bytes())
    served = optik("serve", "poll", ir, "--in", inbox, "--out", outbox)
    assert served.returncode == 0, served.stderr
    for path in files:
        assert json.loads((outbox / f"{path.stem}.json").read_text()) == pytest.approx(
            json.loads((tmp_path / "torch" / f"{path.stem}.json").read_text()), abs=1e-4
        )

    rows = tmp_path / "rows.csv"
    batch = optik("batch-predict", pictures, rows, ir, "--format", "csv", "--top-k", "1")
    assert batch.returncode == 0, batch.stderr
    assert len(rows.read_text().splitlines()) == 1 + len(list(pictures.rglob("*.png")))

    for name, model in (("torch", colour_model), ("ir", ir)):
        tested = optik("test", model, pictures, "--out", tmp_path / f"{name}-test.json", "--out-items", "pred")
        assert tested.returncode == 0, tested.stderr
    ours, theirs = (json.loads((tmp_path / f"{name}-test.json").read_text()) for name in ("ir", "torch"))
    assert ours["metrics"]["images"] == theirs["metrics"]["images"] == 24
    assert [p["pred"] for p in ours["predictions"]] == [p["pred"] for p in theirs["predictions"]]
    assert ours["metrics"]["mean_class_accuracy"] == theirs["metrics"]["mean_class_accuracy"]
    own = optik("test", ir, "--split", "val")  # the run's own split, found by the config the export records
    assert own.returncode == 0 and "data: " in own.stdout, own.stderr
    probe = optik("probe", ir, pictures)
    assert probe.returncode == 2 and "exported model" in probe.stderr and "Traceback" not in probe.stderr


def test_an_int8_ir_states_its_agreement_and_predicts(colour_model, colours, tmp_path, optik):
    pictures, calibration = colours
    ir = tmp_path / "int8.xml"
    done = optik("export", colour_model, "--format", "openvino", "--int8", "--calibration", calibration, "--out", ir)
    assert done.returncode == 0, done.stderr
    assert "OpenVINO int8, quantized on 30 calibration images: top-1 same as PyTorch fp32" in done.stdout
    run = optik("predict", ir, pictures, "--top-k", "1")
    assert run.returncode == 0, run.stderr
    assert len(run.stdout.splitlines()) == len(list(pictures.rglob("*.png")))


def test_options_an_engine_cannot_honour_are_one_line_errors(colour_model, colours, shapes_detector, tmp_path, optik):
    pictures, _ = colours
    no_calibration = optik("predict", colour_model, pictures, "--precision", "int8")
    assert no_calibration.returncode == 2 and "give --calibration DIR" in no_calibration.stderr
    fused_int8 = optik(
        "predict", colour_model, pictures, "--precision", "int8", "--optimize", "fused", "--calibration", pictures
    )
    assert fused_int8.returncode == 2 and "int8 runs with OpenVINO" in fused_int8.stderr
    detector = optik("predict", shapes_detector, pictures, "--backend", "openvino")
    assert detector.returncode == 2 and "OpenVINO and int8 run classifiers" in detector.stderr
    half = optik("export", colour_model, "--format", "openvino", "--int8")
    assert half.returncode == 2 and "give both --int8 and --calibration DIR" in half.stderr
    for result in (no_calibration, fused_int8, detector, half):
        assert "Traceback" not in result.stderr
