"""Pascal VOC XML annotations (one file per image) read into a DetectionSet.

Box coordinates are taken as written (as torchvision and mmdetection do), without the 1-based
pixel shift some tools apply. `difficult` objects, which the VOC metric ignores, are kept as
ignore regions: iscrowd 1 in the ground truth, left out of training targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from optik.data.decode import IMAGE_EXTENSIONS
from optik.data.detection_set import SPLIT_FOLDERS, ClassNames, DetectionSet, RawObject, SetBuilder, probe_images
from optik.data.folder import find_images
from optik.errors import DataError

LAYOUTS = "root/<split>/ with <stem>.xml beside each image, or the VOC devkit layout root/Annotations/ + root/JPEGImages/ + root/ImageSets/Main/<split>.txt"


@dataclass
class VocObject:
    name: str
    box: tuple[float, float, float, float]
    difficult: bool


@dataclass
class VocFile:
    """What one XML file says: the image's file name and size (0 when not given) and its objects."""

    filename: str
    width: int
    height: int
    objects: list[VocObject] = field(default_factory=list)


def read_voc(source: str | Path, names: ClassNames | None = None, skip_bad: bool = False) -> DetectionSet:
    """VOC annotations as a DetectionSet.

    `source`: a folder of images with `<stem>.xml` beside them (images without one are kept as
    images without objects), a devkit folder (Annotations/ + JPEGImages/: every XML), or a devkit
    list file ImageSets/Main/<split>.txt. Class names are sorted unless named. Image ids are
    1..n in path order.
    """
    source = Path(source)
    pairs, report = voc_pairs(source)
    parsed = {xml: parse_voc_xml(xml) for _, xml in pairs if xml is not None}
    found = sorted({obj.name for ann in parsed.values() for obj in ann.objects})
    classes = (names or ClassNames()).resolve(found, f"the object names of {source}")
    label_of = {name: i for i, name in enumerate(classes)}
    expected = {
        str(image): (parsed[xml].width, parsed[xml].height)
        for image, xml in pairs
        if xml is not None and parsed[xml].width > 0 and parsed[xml].height > 0
    }
    sizes, skipped = probe_images([str(image) for image, _ in pairs], str(source), skip_bad, expected)
    builder = SetBuilder(str(source))
    for image_id, (image, xml) in enumerate(pairs, start=1):
        if str(image) in sizes:
            objects = [
                RawObject(obj.box, label_of[obj.name], iscrowd=obj.difficult)
                for obj in (parsed[xml].objects if xml is not None else [])
            ]
            builder.add(str(image), *sizes[str(image)], image_id, objects)
    return builder.build(classes, str(source), report + skipped)


def voc_pairs(source: Path) -> tuple[list[tuple[Path, Path | None]], list[str]]:
    """(image, its XML or None) pairs of a VOC source, and report lines."""
    if source.is_file():
        devkit = (
            source.parents[2]
            if source.parent.name == "Main" and source.parent.parent.name == "ImageSets"
            else source.parent
        )
        return _devkit_pairs(devkit, _listed_ids(source), source), []
    if not source.is_dir():
        raise DataError(f"VOC folder not found: {source} (set data.root to a folder laid out as {LAYOUTS})")
    if (source / "Annotations").is_dir():
        ids = sorted(p.stem for p in (source / "Annotations").glob("*.xml"))
        return _devkit_pairs(source, ids, source / "Annotations"), []
    return _folder_pairs(source)


def _listed_ids(list_file: Path) -> list[str]:
    """Image ids of a devkit ImageSets file (the first word of each line)."""
    return [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]


def _devkit_pairs(devkit: Path, ids: list[str], where: Path) -> list[tuple[Path, Path | None]]:
    missing = [i for i in ids if not (devkit / "Annotations" / f"{i}.xml").is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} annotation file(s) listed in {where} not found in {devkit / 'Annotations'}: {missing[:10]}; "
            "fix the list or add the XML files"
        )
    if not ids:
        raise DataError(f"{where} lists no images")
    pairs = []
    for image_id in ids:
        xml = devkit / "Annotations" / f"{image_id}.xml"
        pairs.append((_image_for(xml, devkit / "JPEGImages"), xml))
    return pairs


def _folder_pairs(folder: Path) -> tuple[list[tuple[Path, Path | None]], list[str]]:
    xmls = sorted(p for p in folder.rglob("*.xml") if not p.name.startswith("."))
    if not xmls:
        raise DataError(f"no VOC .xml annotation files in {folder}; expected {LAYOUTS}")
    pairs = {_image_for(xml, xml.parent): xml for xml in xmls}
    background = [image for image in find_images(folder) if image not in pairs]
    report = (
        [f"{folder}: {len(background)} image(s) without an .xml file kept as images without objects"]
        if background
        else []
    )
    pairs.update({image: None for image in background})
    return sorted(pairs.items()), report


def _image_for(xml: Path, folder: Path) -> Path:
    """The image an XML file describes: `<stem>.<ext>` in folder, else its <filename>, else `<stem>.jpg` (missing)."""
    for ext in sorted(IMAGE_EXTENSIONS):
        for candidate in (folder / f"{xml.stem}{ext}", folder / f"{xml.stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    filename = _filename(xml)
    return folder / filename if filename else folder / f"{xml.stem}.jpg"


def _filename(xml: Path) -> str:
    try:
        return (ET.parse(xml).getroot().findtext("filename") or "").strip()
    except (ET.ParseError, OSError):
        return ""


def parse_voc_xml(path: Path) -> VocFile:
    """One VOC XML file; malformed XML or objects without a name or numeric box are errors naming the file."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{path}:{exc.position[0]}: malformed XML ({exc}); fix or remove the file") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if root.tag != "annotation":
        raise DataError(f"{path} is not a VOC annotation: its root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    width, height = (_int(size.findtext(key)) if size is not None else 0 for key in ("width", "height"))
    ann = VocFile((root.findtext("filename") or "").strip(), width, height)
    for number, obj in enumerate(root.findall("object"), start=1):
        ann.objects.append(_voc_object(obj, f"{path}: object {number}"))
    return ann


def _voc_object(obj: ET.Element, where: str) -> VocObject:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise DataError(f"{where} has no <name>; give every object a class name")
    box = obj.find("bndbox")
    try:
        coords = tuple(float(box.findtext(key)) for key in ("xmin", "ymin", "xmax", "ymax"))
    except (AttributeError, TypeError, ValueError):
        raise DataError(f"{where} ({name}): <bndbox> needs numeric <xmin>, <ymin>, <xmax>, <ymax>") from None
    return VocObject(name, coords, _int(obj.findtext("difficult")) == 1)


def _int(text: str | None) -> int:
    try:
        return int(float(text)) if text is not None and text.strip() else 0
    except ValueError:
        return 0


def find_splits(root: Path) -> dict[str, Path]:
    """Split name -> VOC source found under root: split folders, else the devkit's ImageSets lists, else the devkit itself as train."""
    found = {}
    for split, folders in SPLIT_FOLDERS.items():
        folder = next((root / name for name in folders if (root / name).is_dir()), None)
        if folder is not None:
            found[split] = folder
    if found or not (root / "Annotations").is_dir():
        return found
    lists = root / "ImageSets" / "Main"
    for split, names in (("train", ("train", "trainval")), ("val", ("val",)), ("test", ("test",))):
        list_file = next((lists / f"{name}.txt" for name in names if (lists / f"{name}.txt").is_file()), None)
        if list_file is not None:
            found[split] = list_file
    return found if "train" in found else {"train": root}
