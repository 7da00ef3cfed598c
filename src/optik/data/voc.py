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
from optik.data.detection_set import (
    CONFIG_HINTS,
    SPLIT_FOLDERS,
    ClassNames,
    DetectionSet,
    Hints,
    RawObject,
    SetBuilder,
    probe_images,
)
from optik.data.folder import find_images
from optik.errors import DataError

ANNOTATION_FOLDERS = ("Annotations", "annotations")
# where exports put the images beside their annotation folder: the VOC devkit and CVAT, LabelImg, Label Studio
IMAGE_FOLDERS = ("JPEGImages", "images", "Images")
LAYOUTS = (
    "root/<split>/ with <stem>.xml beside each image; or root/Annotations/ (or annotations/) with the images in "
    "JPEGImages/, images/, the folder each XML's <folder> names, or data.images, and, optionally, "
    "ImageSets/Main/<split>.txt lists (without them every XML is read and val is held out of train)"
)


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
    folder: str = ""  # <folder>: LabelImg writes the image folder's name, the devkit "VOC2007"
    path: str = ""  # <path>: where the image was on the annotator's machine


def read_voc(
    source: str | Path,
    names: ClassNames | None = None,
    images: str | Path | None = None,
    skip_bad: bool = False,
    hints: Hints = CONFIG_HINTS,
    exif_orientation: bool = True,
) -> DetectionSet:
    """VOC annotations as a DetectionSet.

    `source`: a folder with `<stem>.xml` files (beside their images or not; images without one are
    kept as images without objects), a devkit-like folder (Annotations/ or annotations/: every XML),
    or a devkit list file ImageSets/Main/<split>.txt. Each XML's image is looked for where
    `find_image` says, `images` (data.images) first. Class names are sorted unless named. Image
    ids are 1..n in path order. A `<size>` is checked against the image's header: upright with
    `exif_orientation`, else as stored.
    """
    source = Path(source)
    xmls, devkit = annotation_files(source)
    parsed = {xml: parse_voc_xml(xml) for xml in xmls}
    pairs, missing = locate_images(parsed, devkit, Path(images) if images is not None else None, hints)
    report = []
    if devkit is None:
        background = [image for image in find_images(source) if image not in pairs]
        if background:
            report.append(f"{source}: {len(background)} image(s) without an .xml file kept as images without objects")
        pairs.update({image: None for image in background})
    found = sorted({obj.name for ann in parsed.values() for obj in ann.objects})
    classes = (names or ClassNames()).resolve(found, f"the object names of {source}")
    label_of = {name: i for i, name in enumerate(classes)}
    expected = {
        str(image): (parsed[xml].width, parsed[xml].height)
        for image, xml in pairs.items()
        if xml is not None and parsed[xml].width > 0 and parsed[xml].height > 0
    }
    ordered = sorted(pairs.items())
    sizes, left_out = probe_images(
        [str(image) for image, _ in ordered], str(source), skip_bad, expected, missing, hints, exif_orientation
    )
    builder = SetBuilder(str(source), exif_orientation)
    for image_id, (image, xml) in enumerate(ordered, start=1):
        if str(image) in sizes:
            objects = [
                RawObject(obj.box, label_of[obj.name], iscrowd=obj.difficult)
                for obj in (parsed[xml].objects if xml is not None else [])
            ]
            builder.add(str(image), *sizes[str(image)], image_id, objects)
    return builder.build(classes, str(source), report, left_out)


def locate_images(
    parsed: dict[Path, VocFile], devkit: Path | None, images: Path | None, hints: Hints
) -> tuple[dict[Path, Path | None], dict[str, str]]:
    """Image -> its XML for every XML (see `find_image`), and the images found nowhere (a path -> what was looked for where)."""
    if images is not None and not images.is_dir():
        raise DataError(f"data.images folder not found: {images} ({hints.images} to the folder that holds the images)")
    pairs: dict[Path, Path | None] = {}
    missing = {}
    for xml, ann in parsed.items():
        image, looked = find_image(xml, ann, devkit, images)
        if image is None:
            places = ", ".join(dict.fromkeys(str(place) for place in looked))
            name = ann.filename or f"{xml.stem}.jpg"  # as the XML names it, not a path where it is not
            missing[name if name not in missing else f"{name} ({xml.name})"] = (
                f"file not found (named by {xml}); looked in {places}; {hints.images} to the folder that holds the images"
            )
            continue
        pairs[image] = xml
    return pairs, missing


def annotation_files(source: Path) -> tuple[list[Path], Path | None]:
    """The XML files of a VOC source, and its devkit-like folder (the one holding Annotations/) or None."""
    if source.is_file():
        lists = source.parent
        devkit = lists.parents[1] if lists.name == "Main" and lists.parent.name == "ImageSets" else lists
        return _listed_xmls(devkit, _listed_ids(source), source), devkit
    if not source.is_dir():
        raise DataError(f"VOC folder not found: {source} (set data.root to a folder laid out as {LAYOUTS})")
    annotations = annotation_folder(source)
    if annotations is not None:
        xmls = sorted(p for p in annotations.rglob("*.xml") if not p.name.startswith("."))
        if not xmls:
            raise DataError(f"{annotations} holds no .xml annotation files")
        return xmls, source
    xmls = sorted(p for p in source.rglob("*.xml") if not p.name.startswith("."))
    if not xmls:
        raise DataError(f"no VOC .xml annotation files in {source}; expected {LAYOUTS}")
    return xmls, None


def annotation_folder(root: Path) -> Path | None:
    """root/Annotations (the devkit, CVAT, Label Studio) or root/annotations (LabelImg users), when there is one."""
    return next((root / name for name in ANNOTATION_FOLDERS if (root / name).is_dir()), None)


def _listed_ids(list_file: Path) -> list[str]:
    """Image ids of a devkit ImageSets file (the first word of each line)."""
    return [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]


def _listed_xmls(devkit: Path, ids: list[str], where: Path) -> list[Path]:
    annotations = annotation_folder(devkit) or devkit / "Annotations"
    missing = [i for i in ids if not (annotations / f"{i}.xml").is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} annotation file(s) listed in {where} not found in {annotations}: {missing[:10]}; "
            "fix the list or add the XML files"
        )
    if not ids:
        raise DataError(f"{where} lists no images")
    return [annotations / f"{image_id}.xml" for image_id in ids]


def find_image(xml: Path, ann: VocFile, devkit: Path | None, images: Path | None) -> tuple[Path | None, list[Path]]:
    """The image an XML file describes, and the folders looked in (in order).

    Looked for, by its <filename>, then as `<xml stem>.<image extension>`: in `images` (data.images),
    beside the XML, in the folder its <folder> names (LabelImg writes the image folder's name:
    a sibling of the XML's folder), at its <path> when that exists (an absolute path on the
    annotator's machine usually does not), in the devkit's JPEGImages/ or images/.
    """
    folders = [images] if images is not None else []
    folders.append(xml.parent)
    if ann.folder:
        folders += [xml.parent.parent / ann.folder, xml.parent / ann.folder]
    if devkit is not None:
        folders += [devkit / name for name in IMAGE_FOLDERS]
    folders = list(dict.fromkeys(folders))
    names = [ann.filename] if ann.filename else []
    names += [f"{xml.stem}{ext}" for ext in sorted(IMAGE_EXTENSIONS)] + [
        f"{xml.stem}{ext.upper()}" for ext in sorted(IMAGE_EXTENSIONS)
    ]
    path = Path(ann.path) if ann.path else None
    if path is not None and not path.is_absolute():
        path = xml.parent / path
    for name in names:  # every folder by the file name first: a stem match elsewhere is a weaker guess
        for folder in folders:
            if (folder / name).is_file():
                return folder / name, folders
        if name == ann.filename and path is not None and path.is_file():
            return path, folders
    return None, folders + ([path.parent] if path is not None else [])


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
    text = {key: (root.findtext(key) or "").strip() for key in ("filename", "folder", "path")}
    ann = VocFile(text["filename"], width, height, folder=text["folder"], path=text["path"])
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
    """Split name -> VOC source found under root: split folders, else the devkit's ImageSets lists, else root itself as train.

    Root itself is the train split when it has an Annotations/ (or annotations/) folder or .xml files anywhere below.
    """
    found = {}
    for split, folders in SPLIT_FOLDERS.items():
        folder = next((root / name for name in folders if (root / name).is_dir()), None)
        if folder is not None:
            found[split] = folder
    if found:
        return found
    if annotation_folder(root) is not None:
        lists = root / "ImageSets" / "Main"
        for split, names in (("train", ("train", "trainval")), ("val", ("val",)), ("test", ("test",))):
            list_file = next((lists / f"{name}.txt" for name in names if (lists / f"{name}.txt").is_file()), None)
            if list_file is not None:
                found[split] = list_file
        if "train" in found:
            return found
    return {"train": root} if next(root.rglob("*.xml"), None) is not None else {}
