"""`optik data convert`: VOC or YOLO annotations to one COCO JSON; class folders split, listed, or made from list files.

What the class-folder forms write is what `data.format: folder | list` reads: folders and list
files go through the same readers (`class_folders`, `read_list`) as training does.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from optik.data.classes import configured_classes, match_classes, read_labels_file
from optik.data.decode import is_image_file
from optik.data.folder import SPLIT_NAMES, class_folders, has_split_folders
from optik.data.images import check_images, left_out_note, listed_bad, refuse_or_skip
from optik.data.listfile import read_list
from optik.errors import ConfigError, DataError
from optik.files import write_atomic

if TYPE_CHECKING:
    from optik.data.detection_set import DetectionSet

FORMATS = ("voc", "yolo")


def convert_to_coco(
    fmt: str,
    source: str | Path,
    out_json: str | Path,
    classes: list[str] | str | None = None,
    copy_images: bool = False,
    skip_bad: bool = False,
    images: str | Path | None = None,
    split: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Read a VOC or YOLO source and write it as one COCO JSON; returns a summary.

    Args:
        fmt: "voc" or "yolo".
        source: what `read_voc` / `read_yolo` take (a folder, or a VOC devkit list file).
        out_json: the JSON to write (atomically); `file_name`s are relative to its folder.
        classes: class names (list, labels file or comma list); default: OPTIK_CLASSES, else the data's.
        copy_images: copy the images into `<out_json folder>/images/` (keeping their sub-folders).
        skip_bad: leave missing or unreadable images out instead of failing.
        images: the folder the images are in, when the annotations do not say (as data.images).
        split: convert only this split of a source laid out in splits (train, val, test), found as training
            finds it; None: the whole source (several splits are merged, and the report says so).
        overwrite: replace an existing `out_json` (else a ConfigError).

    Returns:
        {"images": count, "objects": count, "classes": names, "report": lines, "json": path}.
    """
    from optik.data.detection_set import FLAG_HINTS, ClassNames  # numpy and COCO masks: for the annotation forms only
    from optik.data.voc import read_voc
    from optik.data.yolo import read_yolo

    if fmt not in FORMATS:
        raise ConfigError(f"cannot convert from {fmt!r}: choose one of {', '.join(FORMATS)}")
    out_json = Path(out_json)
    if out_json.exists() and not overwrite:
        raise ConfigError(f"{out_json} exists; pass --overwrite to replace it")
    named, origin = configured_classes(classes)
    source, notes = split_of(fmt, Path(source), split)
    reader = read_voc if fmt == "voc" else read_yolo
    data = reader(source, ClassNames(named, origin or "classes"), images=images, skip_bad=skip_bad, hints=FLAG_HINTS)
    if copy_images:
        data = copy_images_into(data, out_json.parent / "images")
    write_atomic(out_json, json.dumps(data.to_coco(relative_to=out_json.parent)))
    return {
        "images": len(data),
        "objects": data.num_objects,
        "classes": data.classes,
        "report": [*notes, *data.report],
        "json": str(out_json),
    }


def split_of(fmt: str, source: Path, split: str | None) -> tuple[Path, list[str]]:
    """What to read for `split` of a VOC or YOLO source (its folder or list file, as training finds it), and
    notes: without `split`, a source laid out in several splits is read whole, which merges them."""
    from optik.data import voc, yolo

    module = voc if fmt == "voc" else yolo
    if not source.exists():
        raise DataError(f"{fmt.upper()} source not found: {source} (SOURCE is a folder laid out as {module.LAYOUTS})")
    splits = module.find_splits(source) if source.is_dir() else {}
    if split is None:
        several = [name for name, where in splits.items() if where != source]
        if len(several) > 1:
            return source, [
                f"note: {source} holds the splits {', '.join(several)}; they are merged into one file here "
                "(--split NAME converts one of them)"
            ]
        return source, []
    if split not in splits:
        found = ", ".join(splits) or "none"
        raise ConfigError(f"no {split} split in {source} (splits found: {found})")
    return splits[split], []


def copy_images_into(data: DetectionSet, folder: Path) -> DetectionSet:
    """Copy every image under `folder` (paths below their common folder kept); the set with the new paths."""
    from optik.data.detection_set import with_paths

    paths = [record.path for record in data.records]
    if not paths:
        return data
    base = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
    targets = [folder / os.path.relpath(os.path.abspath(p), base) for p in paths]
    for path, target in zip(paths, targets):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    return with_paths(data, [str(t) for t in targets])


# ----------------------------------------------------------------------------- class folders and list files

SPLIT_LISTS = ("train.txt", "val.txt", "test.txt", "all.txt", "classes.txt")  # what folder_to_lists may write
MARKER = ".optik-convert.json"  # marks a folder written by split_folder / lists_to_folder, so --overwrite may clear it
LINKS = ("copy", "symlink", "hardlink")


@dataclass
class Conversion:
    """What a class-folder or list conversion wrote: images per split and class, and what to tell the user."""

    out: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split ("" for one unsplit set) -> class -> images
    notes: list[str] = field(default_factory=list)  # small classes, files left out, renamed files
    written: list[str] = field(default_factory=list)  # list files (folder_to_lists)

    def table(self) -> list[str]:
        """Images per class (rows) and split (columns), with a total row."""
        splits = list(self.counts)
        width = max([len(name) for name in self.classes] + [5])
        head = [f"{split or 'images':>6}" for split in splits]
        rows = [f"{'class':<{width}} " + " ".join(head)]
        for name in self.classes:
            rows.append(f"{name:<{width}} " + " ".join(f"{self.counts[s].get(name, 0):>6}" for s in splits))
        return rows + [f"{'total':<{width}} " + " ".join(f"{sum(self.counts[s].values()):>6}" for s in splits)]


def check_ratios(ratios: tuple[float, float, float]) -> tuple[float, float, float]:
    """Train, val and test shares: none negative, train above 0, adding up to 1."""
    train, val, test = (float(r) for r in ratios)
    if min(train, val, test) < 0 or train <= 0 or abs(train + val + test - 1) > 1e-3:
        raise ConfigError(
            f"--ratios {train:g} {val:g} {test:g}: give the train, val and test shares, train above 0, adding up to 1 (e.g. 0.8 0.1 0.1)"
        )
    return train, val, test


def split_sizes(count: int, ratios: tuple[float, float, float]) -> tuple[int, int, int]:
    """Train, val and test sizes of one class, by largest remainder; train keeps one image, val gets one from 2 images on, test from 3."""
    exact = [count * share / sum(ratios) for share in ratios]
    sizes = [math.floor(x) for x in exact]
    for i in sorted(range(3), key=lambda i: sizes[i] - exact[i])[: count - sum(sizes)]:
        sizes[i] += 1
    least = [1, int(count >= 2 and ratios[1] > 0), int(count >= 3 and ratios[2] > 0)]
    for i in range(3):
        while sizes[i] < least[i]:  # from the split with the most to spare
            spare = max(range(3), key=lambda j: sizes[j] - least[j])
            sizes[spare], sizes[i] = sizes[spare] - 1, sizes[i] + 1
    return sizes[0], sizes[1], sizes[2]


def stratified_splits(
    images: dict[str, list[Path]], ratios: tuple[float, float, float], seed: int
) -> tuple[dict[str, dict[str, list[Path]]], list[str]]:
    """Split each class apart (seeded by `seed` and the class name); the splits and notes on classes too small for every split."""
    splits: dict[str, dict[str, list[Path]]] = {name: {} for name in SPLIT_NAMES}
    notes = []
    for name, files in images.items():
        group = sorted(files)
        random.Random(f"{seed}/{name}").shuffle(group)  # a string seed hashes the same in every process
        n_train, n_val, _ = split_sizes(len(group), ratios)
        parts = {
            "val": group[:n_val],
            "test": group[n_val : len(group) - n_train],
            "train": group[len(group) - n_train :],
        }
        for split, part in parts.items():
            splits[split][name] = sorted(part)
        empty = [split for split, share in zip(("val", "test"), ratios[1:]) if share > 0 and not parts[split]]
        if empty:
            notes.append(f"class {name!r} has only {len(group)} image(s): none in {' or '.join(empty)}")
    return {split: classes for split, classes in splits.items() if any(classes.values())}, notes


def read_class_images(root: Path, check: bool, skip_bad: bool) -> tuple[dict[str, dict[str, list[Path]]], list[str]]:
    """Split ("" when unsplit) -> class -> images, as optik's folder loader finds them; and notes on files left out."""
    if not root.is_dir():
        raise DataError(f"source folder not found: {root}; give a folder with one sub-folder of images per class")
    if has_split_folders(root):
        per_split = {name: class_folders(root / name) for name in SPLIT_NAMES if (root / name).is_dir()}
        if "train" not in per_split:
            raise DataError(f"{root} has {'/'.join(per_split)} folders but no train/ folder")
    else:
        per_split = {"": class_folders(root)}
    notes = not_image_notes([root / split / name for split, images in per_split.items() for name in images])
    bad, found = find_unreadable(
        [p for images in per_split.values() for files in images.values() for p in files], check or skip_bad, skip_bad
    )
    notes += found
    if bad:
        per_split = {
            s: {c: [p for p in files if str(p) not in bad] for c, files in images.items()}
            for s, images in per_split.items()
        }
    return per_split, notes


def not_image_notes(folders: list[Path]) -> list[str]:
    """A note naming the files in class folders that optik's loaders skip because their extension is not an image's."""
    others = sorted(
        str(p)
        for folder in folders
        for p in folder.rglob("*")
        if p.is_file()
        and not is_image_file(p)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    return not_image_note(others)


def not_image_note(others: list[str]) -> list[str]:
    """The note on files left out because their extension is not an image's (none when there are none)."""
    if not others:
        return []
    return [
        f"left out {len(others)} file(s) that are not images by their extension: {', '.join(others[:5])}"
        + (" ..." if len(others) > 5 else "")
    ]


def find_unreadable(paths: list[Path], check: bool, skip_bad: bool) -> tuple[dict[str, str], list[str]]:
    """The images to leave out (path -> reason) and notes on what was found.

    With `check`, every image is decoded: the unreadable ones are an error naming them, or left out with
    `skip_bad`. Without it only headers are read, and a note names the files that do not read as images,
    which are written as they are.
    """
    if not check:
        suspect = check_images([str(p) for p in paths], "header")
        if not suspect:
            return {}, []
        return {}, [
            f"{len(suspect)} file(s) do not read as images and are written as they are: "
            f"{listed_bad(dict(sorted(suspect.items())))}; --check refuses them, --skip-bad leaves them out"
        ]
    bad = refuse_or_skip(
        dict(sorted(check_images([str(p) for p in paths], "full").items())), skip_bad, hint="add --skip-bad"
    )
    return bad, [left_out_note(bad)] if bad else []


def prepare_out(out: Path, overwrite: bool, record: dict) -> None:
    """Make OUT ready: new or empty, or (with overwrite) an earlier conversion whose folders are removed; then mark it."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} is a file; give a folder for OUT")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if entries and not (out / MARKER).is_file():
        raise DataError(
            f"{out} is not empty; give a new or empty folder (--overwrite only replaces what `optik data convert` wrote)"
        )
    if entries and not overwrite:
        raise DataError(f"{out} holds an earlier conversion; add --overwrite to replace it, or give a new folder")
    if entries:
        for name in json.loads((out / MARKER).read_text()).get("folders", []):
            target = out / name
            if target.is_dir() and not target.is_symlink() and target.parent == out:
                shutil.rmtree(target)
    write_atomic(out / MARKER, json.dumps(record, indent=1))


def refuse_inside(out: Path, paths: list[Path], what: str) -> None:
    """OUT must hold none of the source's files: the source is only ever read."""
    dst = out.resolve()
    inside = [p for p in paths if dst == p.resolve() or dst in p.resolve().parents]
    if inside:
        raise DataError(f"OUT ({out}) holds {what} ({inside[0]}); give a folder outside it")


def place(source: Path, target: Path, link: str) -> None:
    """Put one image at `target` (whole or not at all): a copy, a relative symlink or a hard link."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if link == "copy":
        with open(source, "rb") as fh:
            write_atomic(target, lambda out: shutil.copyfileobj(fh, out, 1 << 20), durable=False)
        shutil.copystat(source, target)
        return
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if link == "symlink":  # relative, so the link holds when both folders move together (or are mounted elsewhere)
            os.symlink(os.path.relpath(os.path.realpath(source), os.path.realpath(target.parent)), temp)
        else:
            os.link(source, temp)
        os.replace(temp, target)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if link == "hardlink" and exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise DataError(
                f"cannot hard-link {source} into {target.parent} ({exc.strerror}); use --link copy or --link symlink"
            ) from None
        raise


def check_link(link: str) -> None:
    if link not in LINKS:
        raise ConfigError(f"--link {link}: choose one of {', '.join(LINKS)}")


def split_folder(
    source: str | Path,
    out: str | Path,
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    link: str = "copy",
    overwrite: bool = False,
    check: bool = False,
    skip_bad: bool = False,
) -> Conversion:
    """Split a folder of class sub-folders into `OUT/{train,val,test}/<class>/`, stratified per class and seeded.

    Each image keeps its path below its class folder; the source is only read. A split with
    a share of 0 is not written (optik then holds out val from train, and tests on val).

    Args:
        ratios: the train, val and test shares (adding up to 1).
        link: "copy", "symlink" (relative links) or "hardlink" (same filesystem only).
        overwrite: replace an earlier output of this function in OUT (anything else there is refused).
        check: decode every image first and refuse unreadable ones; skip_bad leaves them out instead.
    """
    source, out, ratios = Path(source), Path(out), check_ratios(ratios)
    check_link(link)
    if source.is_dir() and has_split_folders(source):
        raise DataError(
            f"{source} is split already (it has train/ val/ or test/ folders); split a folder of class sub-folders"
        )
    per_split, notes = read_class_images(source, check, skip_bad)
    images = per_split[""]
    if source.resolve() in out.resolve().parents:
        raise DataError(f"OUT ({out}) is inside the source folder {source}; give a folder beside it")
    refuse_inside(out, [source], "the source folder")
    splits, small = stratified_splits(images, ratios, seed)
    record = {
        "made_by": "optik data convert split",
        "source": str(source),
        "ratios": ratios,
        "seed": seed,
        "link": link,
        "folders": list(splits),
    }
    prepare_out(out, overwrite, record)
    for split, classes in splits.items():
        for name, files in classes.items():
            for path in files:
                place(path, out / split / name / path.relative_to(source / name), link)
    counts = {split: {name: len(files) for name, files in classes.items()} for split, classes in splits.items()}
    return Conversion(out, sorted(images), counts, notes + small)


def list_labels(classes: list[str]) -> list[str]:
    """The label to write for each class: its name when every name reads back as one, else its index."""

    def readable(name: str) -> bool:  # one token that read_list will not take for an index
        return bool(name) and not any(c.isspace() for c in name) and not name.lstrip("-").isdigit()

    return list(classes) if all(readable(name) for name in classes) else [str(i) for i in range(len(classes))]


def list_line(path: Path, label: str, base: Path) -> str:
    """One `path label` line, the path relative to `base` as read_list reads it back."""
    rel = Path(os.path.relpath(path, base)).as_posix()
    if rel != rel.rstrip() or "\n" in rel or "\r" in rel:
        raise DataError(
            f"{path}: a list file cannot hold a path that ends in a space or holds a line break; rename the file"
        )
    if rel.startswith("#") or rel != rel.lstrip():
        rel = f"./{rel}"  # not a comment, and keeps its leading spaces
    return f"{rel} {label}"


def folder_to_lists(
    source: str | Path,
    out: str | Path | None = None,
    classes: list[str] | str | None = None,
    ratios: tuple[float, float, float] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    check: bool = False,
    skip_bad: bool = False,
) -> Conversion:
    """List files for a folder of class sub-folders, as `data.format: list` reads them.

    A folder with train/ val/ test/ gives `train.txt`, `val.txt`, `test.txt`; a flat one gives
    `all.txt`, or the three lists split as `split_folder` does when `ratios` is given. Beside them
    `classes.txt` holds the class names in optik's order (`classes`, OPTIK_CLASSES, else sorted).
    Paths are relative to the list files' folder (OUT, default the source folder). Labels are
    class names, or indices into classes.txt when a name could not be read back as a label.
    """
    source = Path(source)
    out = Path(out) if out is not None else source
    per_split, notes = read_class_images(source, check, skip_bad)
    if ratios is not None:
        if "" not in per_split:
            raise DataError(
                f"{source} is split already (it has train/ val/ or test/ folders); leave out --ratios to list its splits"
            )
        per_split, small = stratified_splits(per_split[""], check_ratios(ratios), seed)
        notes += small
    named, origin = configured_classes(classes)
    first = per_split.get("train", per_split.get(""))
    names = match_classes(
        named, "--classes" if classes is not None else origin, sorted(first), f"the class folders of {source}"
    )
    for split, images in per_split.items():
        unknown = sorted(set(images) - set(names))
        if unknown:
            raise DataError(f"{source / split} has class folders not in train/: {unknown}; the classes are {names}")
    existing = [name for name in SPLIT_LISTS if (out / name).exists()]
    if existing and not overwrite:
        raise DataError(
            f"{out} already has {', '.join(existing)}; add --overwrite to replace them, or give another OUT folder"
        )
    labels = list_labels(names)
    if labels != names:
        notes.append(
            f"labels are class indices (a class name has spaces or is a number): set data.classes to {out / 'classes.txt'}"
        )
    label_of, written = dict(zip(names, labels)), []
    for split, images in per_split.items():
        lines = [list_line(path, label_of[name], out) for name in names for path in images.get(name, [])]
        written.append(str(write_atomic(out / f"{split or 'all'}.txt", "\n".join(lines) + "\n")))
    written.append(str(write_atomic(out / "classes.txt", "\n".join(names) + "\n")))
    for name in existing:  # a list an earlier run wrote and this one did not would mix two conversions
        if str(out / name) not in written:
            (out / name).unlink()
    counts = {split: {name: len(images.get(name, [])) for name in names} for split, images in per_split.items()}
    return Conversion(out, names, counts, notes, written)


def list_classes(lists: list[Path], classes: list[str] | str | None) -> tuple[list[str] | None, str]:
    """The class names for reading lists: given, OPTIK_CLASSES, else a classes.txt beside the first list (None: from the labels)."""
    named, origin = configured_classes(classes)
    beside = lists[0].parent / "classes.txt"
    if named is None and beside.is_file():
        return read_labels_file(beside), str(beside)
    return named, "--classes" if classes is not None else origin or "the labels"


def list_targets(lists: list[Path]) -> dict[Path, str]:
    """List file -> split folder: train/val/test lists fill OUT/<split>/, one other list fills OUT/ itself."""
    names = [path.stem if path.stem in SPLIT_NAMES else "" for path in lists]
    if len(set(names)) != len(names) or ("" in names and len(names) > 1):
        raise DataError(
            "give one list file, or lists named train.txt, val.txt, test.txt (one each): their names choose the split folders"
        )
    return dict(zip(lists, names))


def lists_to_folder(
    lists: list[str | Path],
    out: str | Path,
    root: str | Path | None = None,
    classes: list[str] | str | None = None,
    link: str = "copy",
    overwrite: bool = False,
    check: bool = False,
    skip_bad: bool = False,
) -> Conversion:
    """Class folders from list files: `OUT/<split>/<class>/` for train/val/test lists, `OUT/<class>/` for one other list.

    Paths are read as `data.format: list` reads them (relative to `root`, else to the list's folder).
    Files keep their names; a second file of one name in a class folder gets `-2`, `-3`, ...
    """
    lists, out = [Path(p) for p in lists], Path(out)
    check_link(link)
    targets = list_targets(lists)
    named, origin = list_classes(lists, classes)
    ordered = sorted(lists, key=lambda p: SPLIT_NAMES.index(targets[p]) if targets[p] else 0)
    samples, names = {}, named
    for path in ordered:  # train first: its classes name the others' labels, as optik reads them
        samples[path], names = read_list(path, root, names)
    notes = [f"class names from {origin}"]
    for name in names:
        if (
            not name
            or name.startswith(".")
            or "/" in name
            or "\\" in name
            or (name in SPLIT_NAMES and "" in targets.values())
        ):
            raise DataError(
                f"class {name!r} cannot be a class folder name (hidden, a path, or a split name); rename it with --classes"
            )
    paths = [Path(p) for rows in samples.values() for p, _ in rows]
    others = sorted({str(p) for p in paths if not is_image_file(p)})
    notes += not_image_note(others)
    unreadable, found = find_unreadable([p for p in paths if is_image_file(p)], check or skip_bad, skip_bad)
    notes += found
    bad = set(unreadable) | set(others)
    folders = sorted({targets[p] for p in lists} - {""}) or list(names)
    refuse_inside(out, lists + paths, "a source file")
    prepare_out(
        out,
        overwrite,
        {
            "made_by": "optik data convert list-to-folder",
            "lists": [str(p) for p in lists],
            "link": link,
            "folders": folders,
        },
    )
    counts, renamed = {}, 0
    for path in ordered:
        split, taken = targets[path], set()
        counts[split] = {name: 0 for name in names}
        for image, label in samples[path]:
            if image in bad:
                continue
            folder = out / split / names[label]
            target = free_name(folder, Path(image).name, taken)
            renamed += target.name != Path(image).name
            place(Path(image), target, link)
            counts[split][names[label]] += 1
    if renamed:
        notes.append(f"renamed {renamed} file(s) whose name was taken in their class folder (name-2.ext, ...)")
    return Conversion(out, list(names), counts, notes)


def free_name(folder: Path, name: str, taken: set[Path]) -> Path:
    """`folder/name`, or `folder/stem-N.ext` with the first N not yet taken; marks it taken."""
    target, n = folder / name, 1
    while target in taken:
        n += 1
        target = folder / f"{Path(name).stem}-{n}{Path(name).suffix}"
    taken.add(target)
    return target
