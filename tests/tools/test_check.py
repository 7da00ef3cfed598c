"""`optik data check`: every broken and duplicate file named, classes counted, sizes binned."""

import json
import shutil

from conftest import make_colour_set


def test_a_clean_set_passes_with_its_counts(tmp_path, optik):
    data = make_colour_set(tmp_path / "data", per_class=3, splits=("train", "val"))
    done = optik("data", "check", data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "classes (train): 3, 9 images: blue 3, green 3, red 3" in done.stdout and "no problems found" in done.stdout


def test_broken_and_duplicate_files_are_named(tmp_path, optik):
    data = make_colour_set(tmp_path / "data", per_class=4)
    red = data / "red"
    (red / "zero.png").write_bytes(b"")
    (red / "cut.png").write_bytes((red / "red_0.png").read_bytes()[:200])
    (red / "text.jpg").write_text("not an image")
    shutil.copy(red / "red_1.png", data / "blue" / "copy_of_red.png")
    (data / "notes.txt").write_text("hello")
    done = optik("data", "check", data, "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert {p.rsplit("/", 1)[1] for p in report["unreadable"]} == {"zero.png", "cut.png", "text.jpg"}
    assert [sorted(p.rsplit("/", 1)[1] for p in group) for group in report["duplicates"]] == [
        ["copy_of_red.png", "red_1.png"]
    ]
    assert report["classes"][""] == {"blue": 5, "green": 4, "red": 7} and report["problems"] == 4
    assert report["not_images"][0].endswith("notes.txt")
    assert sum(report["sizes"].values()) == 13 and report["sizes"]["< 64"] == 13  # the 32 px images that decode


def test_missing_folder_is_a_clear_error(tmp_path, optik):
    done = optik("data", "check", tmp_path / "nowhere")
    assert done.returncode == 2 and "folder not found" in done.stderr and "Traceback" not in done.stderr
