"""Which images `optik test MODEL LIST` scores: a list file's paths are relative to its own folder."""

from pathlib import Path

import numpy as np
from conftest import COLOURS, colour_image

from optik.models.package import load_package
from optik.tasks.classify import test_samples as samples_of


def write_list(folder: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(1)
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        colour_image(COLOURS[name], 32, rng).save(folder / name / f"{name}_0.png")
    list_file = folder / "test.txt"
    list_file.write_text("".join(f"{name}/{name}_0.png {name}\n" for name in names))
    return list_file


def test_a_list_reads_its_own_folder_not_the_runs_data_root(colour_model, tmp_path):
    package = load_package(colour_model)
    root = Path(package.config["data"]["root"])
    assert (root / "red" / "red_0.png").is_file()  # the same relative paths exist under the run's data.root
    list_file = write_list(tmp_path, ["red", "blue"])
    samples, origin, _ = samples_of(package.config, package.classes, list_file, "test")
    assert samples == [(str(tmp_path / "red" / "red_0.png"), 0), (str(tmp_path / "blue" / "blue_0.png"), 2)]
    assert origin == str(list_file)


def test_the_runs_own_list_reads_its_data_root_and_says_so(tmp_path):
    root = tmp_path / "data"
    write_list(root, ["green"])
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "val.txt").write_text("green/green_0.png green\n")
    config = {"data": {"root": str(root), "train_list": str(lists / "val.txt")}}
    samples, origin, _ = samples_of(config, ["red", "green", "blue"], lists / "val.txt", "test")
    assert samples == [(str(root / "green" / "green_0.png"), 1)]
    assert origin == f"{lists / 'val.txt'} (paths relative to the run's data.root {root})"
