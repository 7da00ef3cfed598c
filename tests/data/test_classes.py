"""Class names from the config, a labels file or the environment, and the errors when they do not match."""

import pytest

from optik.data.classes import configured_classes, match_classes
from optik.errors import ConfigError, DataError


def test_list_and_quotes_stripped():
    names, origin = configured_classes(['"cat"', " 'dog' ", "bird"])
    assert names == ["cat", "dog", "bird"] and origin == "data.classes"


def test_labels_file_one_per_line_or_one_comma_line(tmp_path):
    lines = tmp_path / "labels.txt"
    lines.write_text("cat\ndog\n\nbird\n")
    assert configured_classes(str(lines))[0] == ["cat", "dog", "bird"]
    comma = tmp_path / "labels_comma.txt"
    comma.write_text('"cat", "dog","bird"\n')
    assert configured_classes(str(comma))[0] == ["cat", "dog", "bird"]


def test_missing_labels_file_is_an_error():
    with pytest.raises(ConfigError, match="labels file not found"):
        configured_classes("/no/such/labels.txt")


@pytest.mark.parametrize("var", ["OPTIK_CLASSES", "MMCLS_CLASSES", "MMDET_CLASSES"])
def test_environment_comma_list(monkeypatch, var):
    monkeypatch.setenv(var, "'a',b, c")
    assert configured_classes(None) == (["a", "b", "c"], var)


def test_environment_file_and_config_wins(monkeypatch, tmp_path):
    labels = tmp_path / "l.txt"
    labels.write_text("x\ny\n")
    monkeypatch.setenv("OPTIK_CLASSES", str(labels))
    assert configured_classes(None)[0] == ["x", "y"]
    assert configured_classes(["p", "q"])[0] == ["p", "q"]


def test_duplicates_rejected():
    with pytest.raises(ConfigError, match="duplicate"):
        configured_classes(["a", "a"])


def test_mismatch_lists_both_sides():
    with pytest.raises(DataError) as info:
        match_classes(["cat", "dog"], "data.classes", ["cat", "fox"], "the class folders of /d")
    text = str(info.value)
    assert (
        "['cat', 'dog']" in text
        and "['cat', 'fox']" in text
        and "not named: ['fox']" in text
        and "no data for: ['dog']" in text
    )
    assert match_classes(["dog", "cat"], "x", ["cat", "dog"], "y") == ["dog", "cat"]  # the named order is kept
