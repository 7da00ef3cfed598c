"""Config loading: schema validation, overrides, presets, error messages users can act on."""

import pytest
import yaml

from optik.config.load import apply_overrides, dump_config, load_config, parse_config, preset_names
from optik.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_and_yaml_values(tmp_path):
    cfg = load_config(write(tmp_path, "data:\n  root: /data/x\n  batch_size: 7\ntrain:\n  precision: bf16-mixed\n"))
    assert cfg.task == "classify"
    assert str(cfg.data.root) == "/data/x" and cfg.data.batch_size == 7
    assert cfg.train.precision == "bf16-mixed" and cfg.train.epochs == 10


def test_overrides_parse_as_yaml_scalars(tmp_path):
    cfg = load_config(
        write(tmp_path, "train:\n  epochs: 3\n"),
        ["train.epochs=5", "train.lr=3e-4", "data.augment.hflip=0", "train.precision=32", "data.classes=[a, b]"],
    )
    assert cfg.train.epochs == 5 and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.augment.hflip == 0 and cfg.train.precision == "32" and cfg.data.classes == ["a", "b"]


def test_unknown_key_names_it_and_suggests(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "data:\n  rot: /x\n"))
    assert "data.rot" in str(info.value) and "did you mean 'root'" in str(info.value)


def test_keys_of_an_optional_section_are_suggested_and_listed():
    with pytest.raises(ConfigError, match="did you mean 'min_delta'"):
        load_config("resnet18_small", ["train.early_stopping={patience: 3, min_dleta: 0.1}"])
    with pytest.raises(ConfigError, match="valid keys here: patience, min_delta"):
        load_config("resnet18_small", ["train.early_stopping={patience: 3, zzzzqqq: 1}"])
    with pytest.raises(ConfigError) as info:  # as people type it: no space after the colon
        load_config("resnet18_small", ["train.early_stopping={patience:5}"])
    said = str(info.value)
    assert "YAML needs a space after the colon (patience: 5)" in said and "patience: missing (a required key" in said


def test_a_val_split_of_zero_points_to_training_without_validation():
    with pytest.raises(
        ConfigError, match=r"data.val_split: .*greater than 0; got 0; to train on every image, .*--no-validate"
    ):
        load_config("resnet18_small", ["data.val_split=0"])


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match="valid keys here: .*epochs"):
        load_config(write(tmp_path, "train:\n  zzzzqqq: 1\n"))


def test_wrong_type_names_key_and_value(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "data:\n  batch_size: many\n"))
    assert "data.batch_size" in str(info.value) and "'many'" in str(info.value)


def test_bad_override_syntax_and_unknown_preset():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.epochs"])
    with pytest.raises(ConfigError, match="did you mean 'resnet50_224'"):
        load_config("resnet50_22")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "data: [1,\n"))
    for text in ("", "# only a comment\n"):
        with pytest.raises(ConfigError, match=r"is empty \(or only comments\).*optik config export"):
            load_config(write(tmp_path, text))


def test_unknown_task_and_optimizer(tmp_path):
    with pytest.raises(ConfigError, match="unknown task"):
        load_config(write(tmp_path, "task: segment\n"))
    with pytest.raises(ConfigError, match="unknown optimizer"):
        load_config(None, ["train.optimizer=adamww"])


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_and_round_trips(name):
    cfg = load_config(name)
    assert cfg.data.root is None  # the user sets it
    assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg


def test_presets_cover_the_promised_families():
    models = {load_config(name).model.name for name in preset_names()}
    assert {"resnet18", "resnet50", "efficientnet_b0", "vit_small_patch16_224"} <= models
    assert any(load_config(name).data.image_size <= 64 for name in preset_names())


def test_example_configs_validate():
    from pathlib import Path

    examples = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
    assert examples
    for path in examples:
        cfg = load_config(path)
        assert cfg.data.root is not None and cfg.task in ("classify", "pretrain")


@pytest.mark.parametrize(
    ("given", "meant"), [(-1, "auto"), ("-1", "auto"), ("auto", "auto"), (2, 2), ("2", 2), ("0,1", [0, 1]), ([1], [1])]
)
def test_devices_in_every_form_lightning_takes(given, meant):
    assert parse_config({"train": {"devices": given}}).train.devices == meant


@pytest.mark.parametrize("given", [0, -2, 2.5, "abc", "", True, [], [0, 0], [-1]])
def test_devices_that_name_no_device_are_refused_in_the_users_terms(given):
    with pytest.raises(ConfigError) as info:
        parse_config({"train": {"devices": given}})
    message = str(info.value)
    assert message.startswith("train.devices: ") and f"got {given!r}" in message
    assert "Input should be" not in message and " or Input" not in message
    assert ("0 devices" in message) == (given == 0)  # -2 is not told it means no devices


def test_a_value_that_fits_no_branch_of_a_union_is_one_line():
    with pytest.raises(ConfigError) as info:
        parse_config({"data": {"classes": 5}})
    assert str(info.value) == (
        "data.classes: expected a list of strings or a string (class names, or a labels file); got 5"
    )
    with pytest.raises(ConfigError) as info:  # a list, but an item of the wrong type: that item is named
        parse_config({"data": {"classes": ["cat", 7]}})
    assert str(info.value) == "data.classes: item 1: expected a string; got 7"
    with pytest.raises(ConfigError) as info:
        parse_config({"train": {"grad_clip": "high"}})
    assert str(info.value) == "train.grad_clip: expected a number; got 'high'"


def test_dumped_config_is_block_style_and_never_wrapped():
    text = dump_config(load_config("fcos_resnet18_small", ["data.root=" + "x" * 150]))
    lines = text.splitlines()
    assert "{" not in text and "model:" in lines and "  name: fcos" in lines
    assert f"  root: {'x' * 150}" in lines
    assert all(line.startswith(" ") or line.endswith(":") or ": " in line for line in lines)


def test_preset_summary_is_the_whole_opening_comment():
    from optik.config.load import first_sentence, preset_summary

    summary = preset_summary("ssl_resnet18_small")
    assert first_sentence(summary).endswith("medical thumbnails); a few minutes on a CPU.")
    assert first_sentence("ViT-Small/16 at 224 px (e.g. DeiT). More text.") == "ViT-Small/16 at 224 px (e.g. DeiT)."


ARCHITECTURE = r"resnet\d+|mobilenet|efficientnet_b\d|vit_small|vgg\d+|fasterrcnn|maskrcnn|retinanet|fcos|ssdlite"


@pytest.mark.parametrize("name", preset_names())
def test_each_presets_name_matches_its_model(name):
    """A preset named for an architecture builds that architecture and names no other."""
    import re

    model = load_config(name).model
    built = f"{model.name} {getattr(model, 'backbone', None) or ''}"
    assert set(re.findall(ARCHITECTURE, name)) == set(re.findall(ARCHITECTURE, built)), (name, built)


def test_a_value_where_a_section_belongs_says_a_section_is_expected():
    with pytest.raises(ConfigError) as info:
        load_config("resnet18_small", ["data=5"])
    assert str(info.value) == "data: expected a section (keys under data:); got 5"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"task": "pretrain", "ssl": {"views": {"vflip": True}}},
            "ssl.views.vflip: a number is wanted, not true; this is a probability",
        ),
        (
            {"data": {"augment": {"hflip": False}}},
            "data.augment.hflip: a number is wanted, not false; this is a probability",
        ),
        ({"train": {"epochs": True}}, "train.epochs: a number is wanted, not true"),
    ],
)
def test_true_or_false_for_a_number_is_refused_not_read_as_1_or_0(data, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert str(info.value).startswith(message)
