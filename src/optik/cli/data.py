"""`optik data convert|check|color-constancy|stats`: dataset tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from optik.cli.common import OptikGroup, fail, main


@main.group("data", cls=OptikGroup)
def data_group():
    """Dataset tools."""


@data_group.group("convert", cls=OptikGroup)
def data_convert():
    """Convert datasets: VOC/YOLO annotations to COCO; class folders split, listed, or made from list files."""


def coco_arguments(func):
    """SOURCE, OUT.json and the options the VOC and YOLO conversions share."""
    func = click.option("--skip-bad", is_flag=True, help="leave missing or unreadable images out instead of failing")(
        func
    )
    func = click.option(
        "--copy-images", is_flag=True, help="copy the images next to OUT (images/) so the COCO set stands alone"
    )(func)
    func = click.option("--classes", help="class names (comma list or labels file); default: found in the data")(func)
    func = click.option(
        "--images",
        type=click.Path(file_okay=False, path_type=Path),
        help="folder the images are in, when the annotations' own places do not hold them (as data.images)",
    )(func)
    func = click.option("--overwrite", is_flag=True, help="replace OUT when it exists")(func)
    func = click.option(
        "--split",
        type=click.Choice(["train", "val", "test"]),
        help="convert only this split of a SOURCE laid out in splits (default: all of SOURCE, splits merged)",
    )(func)
    func = click.argument("out", type=click.Path(dir_okay=False, path_type=Path))(func)
    return click.argument("source", type=click.Path(path_type=Path))(func)


def write_coco(
    fmt: str, source: Path, out: Path, classes, images, copy_images: bool, skip_bad: bool, split, overwrite: bool
) -> None:
    from optik.tools.convert import convert_to_coco

    if out.suffix.lower() != ".json":
        fail(f"{out}: the COCO output must be a .json file")
    summary = convert_to_coco(
        fmt,
        source,
        out,
        classes=classes,
        copy_images=copy_images,
        skip_bad=skip_bad,
        images=images,
        split=split,
        overwrite=overwrite,
    )
    for line in summary["report"]:
        click.echo(line, err=True)
    click.echo(
        f"wrote {summary['json']}: {summary['images']} images, {summary['objects']} objects, classes {summary['classes']}"
    )


@data_convert.command("voc")
@coco_arguments
def data_convert_voc(source, out, classes, images, copy_images, skip_bad, split, overwrite):
    """Convert a Pascal VOC dataset (an XML file per image) at SOURCE to one COCO JSON file OUT."""
    write_coco("voc", source, out, classes, images, copy_images, skip_bad, split, overwrite)


@data_convert.command("yolo")
@coco_arguments
def data_convert_yolo(source, out, classes, images, copy_images, skip_bad, split, overwrite):
    """Convert a YOLO dataset (a txt file per image) at SOURCE to one COCO JSON file OUT."""
    write_coco("yolo", source, out, classes, images, copy_images, skip_bad, split, overwrite)


LINK_OPTION = click.option(
    "--link",
    type=click.Choice(["copy", "symlink", "hardlink"]),
    default="copy",
    show_default=True,
    help="put images into OUT as copies, relative symlinks, or hard links (same filesystem)",
)
SEED_OPTION = click.option("--seed", type=int, default=0, show_default=True, help="seed of the per-class shuffle")


def folder_output_options(func):
    """--overwrite, --check and --skip-bad, which every class-folder and list conversion takes."""
    func = click.option(
        "--skip-bad", is_flag=True, help="decode every image and leave unreadable ones out (named) instead of failing"
    )(func)
    func = click.option("--check", is_flag=True, help="decode every image first; unreadable ones are an error")(func)
    return click.option("--overwrite", is_flag=True, help="replace what an earlier `optik data convert` wrote to OUT")(
        func
    )


def print_conversion(conversion) -> None:
    for note in conversion.notes:
        click.echo(f"note: {note}", err=True)
    for line in conversion.table():
        click.echo(line)


@data_convert.command("split")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--ratios",
    nargs=3,
    type=float,
    default=(0.8, 0.1, 0.1),
    show_default=True,
    metavar="TRAIN VAL TEST",
    help="each class's shares; a 0 leaves that split out",
)
@SEED_OPTION
@LINK_OPTION
@folder_output_options
def data_convert_split(source, out, ratios, seed, link, overwrite, check, skip_bad):
    """Split SOURCE (a sub-folder of images per class) into OUT/train|val|test/<class>/, stratified per class.

    A class with 2 or more images gets at least one val image, with 3 or more one test image.
    Files keep their paths below their class folder. SOURCE is only read.
    """
    from optik.tools.convert import split_folder

    conversion = split_folder(source, out, ratios, seed, link, overwrite=overwrite, check=check, skip_bad=skip_bad)
    print_conversion(conversion)
    click.echo(f"wrote {out} (data.root for `data.format: folder`)")


@data_convert.command("folder-to-list")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("out", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--classes",
    help="class names in the model's order (comma list or labels file); default: OPTIK_CLASSES, else sorted folder names",
)
@click.option(
    "--ratios",
    nargs=3,
    type=float,
    default=None,
    metavar="TRAIN VAL TEST",
    help="split a flat SOURCE into train/val/test lists (default: one all.txt)",
)
@SEED_OPTION
@folder_output_options
def data_convert_folder_to_list(source, out, classes, ratios, seed, overwrite, check, skip_bad):
    """Write list files (`path label` lines) and classes.txt for SOURCE's class folders into OUT (default: SOURCE).

    SOURCE/train|val|test/<class>/ gives train.txt, val.txt, test.txt; SOURCE/<class>/ gives all.txt,
    or three lists with --ratios. Paths are relative to OUT, where the lists are.
    """
    from optik.tools.convert import folder_to_lists

    conversion = folder_to_lists(
        source, out, classes, ratios, seed, overwrite=overwrite, check=check, skip_bad=skip_bad
    )
    print_conversion(conversion)
    lists = {Path(path).stem: path for path in conversion.written}
    keys = [
        ("train_list", lists.get("train", lists.get("all"))),
        ("val_list", lists.get("val")),
        ("test_list", lists.get("test")),
        ("classes", lists["classes"]),
    ]
    click.echo(f"wrote {', '.join(conversion.written)}; in a config:\ndata:\n  format: list")
    for key, path in keys:
        if path:
            click.echo(f"  {key}: {path}")


@data_convert.command("list-to-folder")
@click.argument("lists", metavar="LIST...", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="the folder the lists' paths are relative to (data.root); default: each list's folder",
)
@click.option(
    "--classes",
    help="class names for index labels (comma list or labels file); default: OPTIK_CLASSES, else classes.txt beside the first list",
)
@LINK_OPTION
@folder_output_options
def data_convert_list_to_folder(lists, out, root, classes, link, overwrite, check, skip_bad):
    """Put the images of list files into class folders: OUT/<split>/<class>/ for train.txt, val.txt, test.txt, OUT/<class>/ for one other list.

    File names are kept (a repeated name in one class folder gets -2, -3, ...).
    """
    from optik.tools.convert import lists_to_folder

    conversion = lists_to_folder(
        list(lists), out, root, classes, link, overwrite=overwrite, check=check, skip_bad=skip_bad
    )
    print_conversion(conversion)
    click.echo(f"wrote {out} (data.root for `data.format: folder`)")


@data_group.command("check")
@click.argument("root", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def data_check(root, as_json):
    """Decode every image below DIR: unreadable and duplicate files, class counts, sizes. Exit 1 when problems are found."""
    from optik.tools.check import check_folder

    report = check_folder(root)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        for line in report.lines():
            click.echo(line)
    if report.problems:
        sys.exit(1)


@data_group.command("color-constancy")
@click.argument("source", metavar="IN", type=click.Path(path_type=Path))
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--p", "p", type=float, default=6, show_default=True, help="Minkowski norm: 1 is gray world, inf max-RGB")
@click.option("--skip-bad", is_flag=True, help="leave unreadable images out (and list them) instead of failing")
def data_color_constancy(source, out, p, skip_bad):
    """Remove colour casts (Shades of Gray) from the image IN or the images under folder IN, into folder OUT."""
    from optik.tools.colour import color_constancy

    report = color_constancy(source, out, p=p, skip_bad=skip_bad)
    for path, reason in report.broken.items():
        click.echo(f"left out {path}: {reason}", err=True)
    click.echo(f"wrote {report.written} image(s) to {report.out}")


@data_group.command("stats")
@click.argument("source", metavar="DIR", type=click.Path(path_type=Path))
@click.option(
    "--size",
    type=click.IntRange(min=1),
    help="resize the shorter side to this first, as training does [default: native size]",
)
@click.option("--skip-bad", is_flag=True, help="leave unreadable images out (and list them) instead of failing")
@click.option("--json", "as_json", is_flag=True, help="print one JSON object")
def data_stats(source, size, skip_bad, as_json):
    """Per-channel mean and std of every image under DIR, for data.mean / data.std."""
    from dataclasses import asdict

    from optik.tools.colour import channel_stats

    report = channel_stats(source, skip_bad=skip_bad, size=size)
    for path, reason in report.broken.items():
        click.echo(f"left out {path}: {reason}", err=True)
    if as_json:
        click.echo(json.dumps(asdict(report)))
        return
    mean, std = ([round(v, 4) for v in values] for values in (report.mean, report.std))
    click.echo(f"images: {report.images}, pixels: {report.pixels}")
    click.echo(f"mean: {mean}")
    click.echo(f"std: {std}")
    click.echo("# paste into a config:")
    click.echo(f"data: {{mean: {mean}, std: {std}}}")
