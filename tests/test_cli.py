"""The `optik` command as a user meets it: bad input gets exit code 2 and one clear line, never a traceback."""

import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import make_colour_set, run_optik, tiny_overrides


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def train_args(root, *extra):
    args = ["train", "resnet18_small"]
    for item in [*tiny_overrides(root, epochs=1), *extra]:
        args += ["--set", item]
    return args


def test_unknown_config_key_suggests(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  root: x\n  batch_sise: 4\n")
    assert_user_error(run_optik("train", config), "data.batch_sise", "did you mean 'batch_size'")


def test_wrong_value_type(tmp_path):
    assert_user_error(
        run_optik("train", "resnet18_small", "--set", "train.epochs=ten", "--set", f"data.root={tmp_path}"),
        "train.epochs",
        "'ten'",
    )


def test_missing_data_folder(tmp_path):
    assert_user_error(
        run_optik(*train_args(tmp_path / "missing"), "--work-dir", tmp_path / "w"), "data folder not found", "missing"
    )


def test_empty_class_folder(colour_set, tmp_path):
    (colour_set / "purple").mkdir()
    assert_user_error(run_optik(*train_args(colour_set), "--work-dir", tmp_path / "w"), "without images", "purple")


def test_named_classes_not_matching_folders(colour_set, tmp_path):
    proc = run_optik(*train_args(colour_set), "--work-dir", tmp_path / "w", env={"MMCLS_CLASSES": "red,green,yellow"})
    assert_user_error(proc, "MMCLS_CLASSES", "yellow", "blue")


def test_corrupt_image(colour_set, tmp_path):
    good = (colour_set / "red" / "red_0.png").read_bytes()
    (colour_set / "red" / "cut.png").write_bytes(good[: len(good) // 2])
    assert_user_error(
        run_optik(*train_args(colour_set), "--work-dir", tmp_path / "w"), "cut.png", "truncated (the file is cut short"
    )


def test_non_image_with_image_extension(colour_set, tmp_path):
    (colour_set / "blue" / "readme.jpg").write_text("this is a text file, not a picture")
    assert_user_error(run_optik(*train_args(colour_set), "--work-dir", tmp_path / "w"), "readme.jpg", "not an image")


def test_bad_override_and_resume_without_checkpoint(tmp_path):
    assert_user_error(run_optik("config", "show", "resnet18_small", "--set", "train.epochs"), "key=value")
    assert_user_error(
        run_optik(
            "train", "resnet18_small", "--set", f"data.root={tmp_path}", "--work-dir", tmp_path / "w", "--resume"
        ),
        "checkpoint not found",
    )


def test_config_list_export_show(tmp_path):
    listed = run_optik("config", "list")
    assert listed.returncode == 0 and "resnet50_224" in listed.stdout
    out = tmp_path / "mine.yaml"
    assert run_optik("config", "export", "vit_small_224", out).returncode == 0
    shown = run_optik("config", "show", out, "--set", "train.epochs=3")
    assert "epochs: 3" in shown.stdout and "vit_small_patch16_224" in shown.stdout
    assert_user_error(run_optik("config", "export", "vit_smal"), "did you mean 'vit_small_224'")


def test_an_exported_preset_says_what_its_task_needs_set():
    from optik.config.load import load_config, preset_header

    said = {
        name: preset_header(name, load_config(name))
        for name in ("resnet18_small", "fcos_resnet18_small", "ssl_resnet18_small")
    }
    assert all(text.startswith(f"# optik preset {name}: ") for name, text in said.items())
    assert "class sub-folders" in said["resnet18_small"] and "data.classes" in said["resnet18_small"]
    assert "data.format (coco, voc or yolo; this preset: coco)" in said["fcos_resnet18_small"]
    assert "unlabelled images" in said["ssl_resnet18_small"] and "data.classes" not in said["ssl_resnet18_small"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["resnet18_small", "resnet50_224", "efficientnet_b0_224", "vit_small_224"])
def test_every_exported_preset_trains_with_only_data_root(tmp_path, preset):
    root = make_colour_set(tmp_path / "data", per_class=4)
    config = tmp_path / f"{preset}.yaml"
    assert run_optik("config", "export", preset, config).returncode == 0
    proc = run_optik(
        "train",
        config,
        "--work-dir",
        tmp_path / "run",
        "--set",
        f"data.root={root}",
        "--set",
        "train.epochs=1",
        "--set",
        "data.image_size=32",
        "--set",
        "data.batch_size=4",
        "--set",
        "data.num_workers=0",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "model.pt").is_file()


PLUGIN = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.head = nn.Linear(256, num_classes)

    def forward(self, x):
        return self.head(self.features(x))


def build(num_classes=10):
    """A factory that loads its own pretrained backbone from a local file."""
    model = TinyNet(num_classes)
    state = torch.load(__file__.replace("my_model.py", "backbone.pth"), weights_only=True)
    model.features.load_state_dict(state)
    return model
'''


@pytest.mark.slow  # a plug-in trained, tested and predicted through the CLI
def test_plugin_model_fine_tunes_tests_and_predicts(colour_set, tmp_path):
    import importlib.util

    import torch

    plugin = tmp_path / "my_model.py"
    plugin.write_text(PLUGIN)
    spec = importlib.util.spec_from_file_location("my_model_for_test", plugin)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(1)
    torch.save(module.TinyNet(10).features.state_dict(), tmp_path / "backbone.pth")

    work = tmp_path / "run"
    proc = run_optik(
        *train_args(colour_set, f"model.name={plugin}:build", "train.epochs=4", "train.lr=0.01"), "--work-dir", work
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tested = run_optik("test", work / "model.pt", colour_set, "--out", tmp_path / "r.json")
    assert tested.returncode == 0, tested.stderr
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["accuracy_top1"] > 0.6  # 3 classes: chance 0.33
    predicted = run_optik("predict", work / "model.pt", colour_set / "red", "--top-k", "1")
    assert predicted.returncode == 0
    rows = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert len(rows) == 12 and sum(next(iter(r["prediction"])) == "red" for r in rows) >= 8


def test_predict_reports_bad_images_and_keeps_going(colour_set, tmp_path):
    from optik.config import load_config
    from optik.engine.train import train

    result = train(load_config(None, tiny_overrides(colour_set, epochs=1)), work_dir=tmp_path / "run")
    images = tmp_path / "in"
    images.mkdir()
    (images / "good.PNG").write_bytes((colour_set / "red" / "red_0.png").read_bytes())
    (images / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    proc = run_optik("predict", result.package, images, "--out-dir", out, "--top-k", "9")
    assert proc.returncode == 2 and "empty.jpg" in proc.stderr and "Traceback" not in proc.stderr
    scores = json.loads((out / "good.json").read_text())  # --top-k 9 is clamped to the 3 classes, highest first
    assert sorted(scores) == ["blue", "green", "red"] and list(scores.values()) == sorted(scores.values(), reverse=True)
    assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert json.loads((out / "empty.error.json").read_text())["error"] == "empty file (0 bytes)"


def test_option_errors_and_non_model_files_are_one_line(tmp_path):
    assert_user_error(run_optik("test", tmp_path / "nope.pt"), "does not exist", "optik test --help")
    assert_user_error(run_optik("predict", __file__, tmp_path), "no image files found", ".png")
    import numpy as np
    from conftest import colour_image

    colour_image((1, 2, 3), 8, np.random.default_rng(0)).save(tmp_path / "x.png")
    (tmp_path / "zero.pt").write_bytes(b"")
    assert_user_error(run_optik("predict", tmp_path / "zero.pt", tmp_path), "empty (0 bytes)")
    (tmp_path / "labels.txt").write_text("a\nb\n")
    assert_user_error(run_optik("predict", tmp_path / "labels.txt", tmp_path), "not a PyTorch or optik model file")
    out = tmp_path / "mine.yaml"
    assert run_optik("config", "export", "resnet18_small", out).returncode == 0
    assert_user_error(run_optik("config", "export", "resnet18_small", out), "--force")


def test_predict_takes_an_image_named_twice_once_and_names_outputs_as_serve_poll(colour_model, tmp_path):
    from pathlib import Path

    import numpy as np
    from conftest import COLOURS, colour_image

    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    colour_image(COLOURS["red"], 32, rng).save(folder / "a.jpg")
    colour_image(COLOURS["blue"], 32, rng).save(folder / "x.jpg")
    colour_image(COLOURS["green"], 32, rng).save(folder / "x.png")
    listed = run_optik("predict", colour_model, folder / "a.jpg", folder)  # a.jpg given, and again in its folder
    assert listed.returncode == 0, listed.stderr
    files = [json.loads(line)["file"] for line in listed.stdout.splitlines()]
    assert (
        len(files) == 3 and files[0] == str(folder / "a.jpg") and sorted(map(Path, files)) == sorted(folder.iterdir())
    )
    out = tmp_path / "out"
    written = run_optik("predict", colour_model, folder / "a.jpg", folder, "--out-dir", out)
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "x.json", "x.png.json"]  # as serve poll names them
    assert max(json.loads((out / "x.png.json").read_text()).items(), key=lambda kv: kv[1])[0] == "green"


NO_GPU = pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")


@pytest.mark.parametrize(
    ("option", "needles"),
    [
        (["--devices", "0"], ["train.devices", "got 0", "'auto'"]),
        (["--devices", "2.5"], ["train.devices: expected a positive whole number", "got 2.5"]),
        (["--set", "train.devices=abc"], ["train.devices", "list of device ids", "got 'abc'"]),
        (["--set", "model.name=resnet999"], ["unknown timm architecture 'resnet999'", "resnet18", "resnet50"]),
        (["--set", "data.classes=5"], ["data.classes: expected a list of strings or a string", "got 5"]),
        pytest.param(["--set", "train.accelerator=cuda"], ["train.accelerator: cuda", "no CUDA GPU"], marks=NO_GPU),
        pytest.param(["--devices", "0,1"], ["train.devices", "picks GPUs", "on the CPU"], marks=NO_GPU),
    ],
)
def test_devices_accelerator_and_model_name_are_checked_before_any_data_is_read(tmp_path, option, needles):
    """The data root does not exist: had the data been scanned, that would have been the error."""
    missing = tmp_path / "no_data_here"
    proc = run_optik("train", "resnet18_small", "--set", f"data.root={missing}", *option, "--work-dir", tmp_path / "w")
    assert_user_error(proc, *needles)
    assert "data folder not found" not in proc.stderr and "data:" not in proc.stdout


def test_devices_minus_one_is_all_devices_and_reaches_the_data(tmp_path):
    assert "  devices: auto" in run_optik("config", "show", "resnet18_small", "--set", "train.devices=-1").stdout
    missing = tmp_path / "no_data_here"
    proc = run_optik("train", "resnet18_small", "--set", f"data.root={missing}", "--devices", "-1")
    assert_user_error(proc, "data folder not found")


def test_config_list_is_aligned_and_shows_whole_sentences():
    lines = run_optik("config", "list").stdout.splitlines()  # a pipe: one line per preset
    from optik.config.load import preset_names

    assert [line.split()[0] for line in lines] == preset_names()
    column = max(len(name) for name in preset_names()) + 2
    assert all(line[column - 2 : column] == "  " and line[column] != " " for line in lines)
    assert all(line.endswith((".", ")")) for line in lines), lines
    ssl = next(line for line in lines if line.startswith("ssl_resnet18_small"))
    assert ssl.endswith("medical thumbnails); a few minutes on a CPU.")


def test_exported_yaml_is_block_style(tmp_path):
    text = run_optik("config", "export", "fcos_resnet18_small").stdout
    assert "model:\n  name: fcos\n  backbone: resnet18\n" in text and "{" not in text


def test_a_truncated_or_foreign_model_file_says_what_it_is(tmp_path):
    import numpy as np
    import torch
    from conftest import colour_image

    colour_image((1, 2, 3), 8, np.random.default_rng(0)).save(tmp_path / "x.png")
    torch.save({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(3)}, tmp_path / "weights.pth")
    whole = (tmp_path / "weights.pth").read_bytes()
    (tmp_path / "model.pt").write_bytes(whole[: len(whole) - 40])
    assert_user_error(run_optik("predict", tmp_path / "model.pt", tmp_path / "x.png"), "model.pt", "truncated")
    (tmp_path / "model.pt").write_text("not a model at all\n" * 10)
    assert_user_error(
        run_optik("predict", tmp_path / "model.pt", tmp_path / "x.png"), "not a PyTorch or optik model file"
    )
    assert_user_error(
        run_optik("predict", tmp_path / "weights.pth", tmp_path / "x.png"),
        "bare weights",
        "optik train",
        "model.weights: ",
    )


def test_a_run_without_a_terminal_prints_progress_lines_and_names_the_checkpoint_of_model_pt(colour_set, tmp_path):
    import re

    proc = run_optik(*train_args(colour_set, "train.epochs=2", "train.max_steps=2"), "--work-dir", tmp_path / "w")
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [
        line
        for line in proc.stdout.splitlines()
        if re.fullmatch(r"epoch 1/2 step \d/\d loss \d+\.\d{4} [\d.]+ (it/s|s/it)", line)
    ]
    assert [line.split()[3] for line in steps] == ["1/3", "2/3"]  # log_every_n_steps=1; 30 images, 8 a batch
    assert "could not find the monitored key" not in proc.stderr and "Warning" not in proc.stderr
    assert "(from last.ckpt: step 2: train.max_steps ended training before any validation)" in proc.stdout


@pytest.mark.parametrize("command", [["config"], ["train"], ["serve", "poll"], ["serve", "redis"]])
def test_help_says_what_a_command_does_not_what_it_replaced(command):
    text = run_optik(*command, "--help").stdout
    assert text and not re.search(r"\bold\b|mmcls|mmdet|predict_poll|predict_redis", text), text


def test_the_migration_page_maps_the_old_commands():
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "migrating.md").read_text()
    for old in ("mmcls_config", "mmcls_train", "mmcls_predict_poll", "mmcls_predict_redis", "mmdet_predict"):
        assert f"| `{old}" in page


@pytest.mark.slow  # over 10 s: CI runs it; `make test-fast` leaves it out
def test_test_into_a_closed_pipe_ends_quietly_with_the_results_written(colour_model, tmp_path):
    data = make_colour_set(tmp_path / "data", per_class=2)
    process = subprocess.Popen(
        [sys.executable, "-m", "optik.cli", "test", str(colour_model), str(data), "--out", str(tmp_path / "r.json")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # the reader is gone before the first line, as `| head -0` would be
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 0, stderr
    assert "Traceback" not in stderr and "Broken pipe" not in stderr
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["images"] == 6


def test_test_says_when_it_scores_val_for_a_missing_test_split(colour_model, tmp_path):
    data = make_colour_set(tmp_path / "photos", per_class=2, splits=("train", "val"))
    tested = run_optik("test", colour_model, data, "--out", tmp_path / "r.json")
    assert tested.returncode == 0, tested.stderr
    assert tested.stdout.splitlines()[0] == f"no test split in {data}: scoring val"
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]["split"] == "val"


def test_a_class_the_split_lacks_has_no_recall_rather_than_zero(colour_model, tmp_path):
    data = make_colour_set(tmp_path / "photos", per_class=3)
    shutil.rmtree(data / "blue")
    tested = run_optik("test", colour_model, data)
    assert tested.returncode == 0, tested.stderr
    table = tested.stdout.split("confusion matrix")[0].splitlines()  # the per-class table, before the matrix
    rows = {line.split()[0]: line.split()[1:] for line in table if line.split()[:1] in (["red"], ["green"], ["blue"])}
    assert rows["blue"][1:] == ["n/a", "n/a", "0"]  # recall and f1 undefined, support 0
    assert rows["red"][1] != "n/a" and rows["red"][3] == "3"


def test_test_with_unreadable_images_scores_the_rest_and_exits_2_unless_skip_bad(colour_model, tmp_path):
    data = make_colour_set(tmp_path / "photos", per_class=2)
    (data / "red" / "broken.png").write_bytes(b"")
    tested = run_optik("test", colour_model, data, "--out", tmp_path / "r.json")
    assert tested.returncode == 2 and "Traceback" not in tested.stderr
    assert "1 image(s) could not be read" in tested.stderr and "--skip-bad" in tested.stderr
    written = json.loads((tmp_path / "r.json").read_text())  # the scores of the rest are there all the same
    assert written["metrics"]["images"] == 6 and written["unreadable"][0]["file"].endswith("broken.png")
    skipped = run_optik("test", colour_model, data, "--skip-bad")
    assert skipped.returncode == 0, skipped.stderr
    assert "6 images, 1 unreadable" in skipped.stdout


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("serve", "poll", "--model", "m.pt", "--config", "c.py"), "--model is gone: the model is the first argument"),
        (("train", "--cfg-options", "a=1"), "--cfg-options is gone: use --set KEY=VALUE"),
        (("train", "--load-from", "x.pth"), "--load-from is gone: use --set model.weights=FILE"),
        (("predict", "--config", "c.py"), "--config is gone: model.pt holds its config"),
    ],
)
def test_options_of_the_old_tools_say_what_they_are_now(args, said):
    assert_user_error(run_optik(*args), said)


def test_a_missing_data_root_is_said_before_the_work_dir_is_looked_at(tmp_path):
    work_dir = tmp_path / "w"
    (work_dir / "checkpoints").mkdir(parents=True)
    (work_dir / "checkpoints" / "last.ckpt").write_bytes(b"another run's")
    for preset in ("resnet18_small", "ssl_resnet18_small"):
        proc = run_optik("train", preset, "--set", f"data.root={tmp_path / 'nope'}", "--work-dir", work_dir)
        assert_user_error(proc, "data folder not found", "nope")
    assert (work_dir / "checkpoints" / "last.ckpt").read_bytes() == b"another run's"


def test_a_class_never_predicted_is_said_to_count_as_zero_in_the_macro_means(capsys):
    import numpy as np

    from optik.cli.run import print_metrics
    from optik.metrics.classification import classification_metrics
    from optik.metrics.evaluation import EvalResult

    classes = ["left", "plain", "top"]
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.2, 0.1, 0.7]], dtype=np.float32)  # plain never predicted
    metrics = classification_metrics(probs, np.array([0, 1, 2]), classes)
    print_metrics(EvalResult({**metrics, "data": "x", "images": 3, "unreadable": 0}, classes))
    said = capsys.readouterr().out
    assert "precision_macro: 0.5000" in said  # (1 + 0 + 0.5) / 3
    assert "never predicted: plain; their precision, n/a above, counts as 0 in precision_macro" in said
