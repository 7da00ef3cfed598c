"""Tools for small medical image sets: Shades of Gray colour constancy, and the channel mean/std a config needs."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

from optik.data.decode import IMAGE_EXTENSIONS, is_image_file, open_image
from optik.data.folder import find_images
from optik.data.images import refuse_or_skip
from optik.errors import ConfigError, DataError, ImageDecodeError
from optik.files import write_atomic

# Lossy formats are written near their best quality so the correction, not the re-encoding, is what changes;
# JPEG keeps full colour resolution (4:4:4), as colour is what this tool is about.
SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"quality": 95}}

# PIL decodes and encodes without the GIL, so threads scale; a few suffice and bound the memory of large scans.
WORKERS = min(8, os.cpu_count() or 1)


@dataclass
class ColourReport:
    """What `color_constancy` wrote, and which images it could not read (path -> reason)."""

    out: Path
    written: int
    broken: dict[str, str] = field(default_factory=dict)


@dataclass
class StatsReport:
    """Per-channel (R, G, B) mean and std of pixel values in [0, 1], as `data.mean` / `data.std` take them."""

    mean: list[float]
    std: list[float]
    images: int
    pixels: int
    broken: dict[str, str] = field(default_factory=dict)


def check_p(p: float) -> None:
    """The Minkowski norm must be at least 1: below it the estimate is no longer a mean of the illuminant."""
    if not p >= 1:  # also catches NaN
        raise ConfigError(f"p must be at least 1 (1 is gray world, 6 the usual Shades of Gray, inf max-RGB), got {p}")


def shades_of_gray(image: np.ndarray, p: float = 6) -> np.ndarray:
    """Remove a colour cast with Shades of Gray (Finlayson & Trezzi, 2004).

    The illuminant of each channel is the p-norm mean of its values; the gains map that illuminant
    to neutral gray while a neutral one keeps gains of 1, so brightness is kept. p=1 is gray world,
    p=inf is max-RGB. A channel with no light at all keeps a gain of 1 (nothing to scale).

    Args:
        image: uint8 RGB, shape (H, W, 3).
        p: the Minkowski norm, at least 1.

    Returns:
        The corrected uint8 image, shape (H, W, 3).
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise DataError(
            f"expected an RGB image of shape (height, width, 3), got shape {image.shape}; convert it to RGB first"
        )
    check_p(p)
    channels = [image[..., c] / 255.0 for c in range(3)]
    illuminant = np.array([c.max() if np.isinf(p) else np.mean(c**p) ** (1 / p) for c in channels])
    norm = np.linalg.norm(illuminant)
    if norm == 0:  # all black: no light to correct
        return image
    illuminant /= norm
    gains = np.divide(1, np.sqrt(3) * illuminant, out=np.ones(3), where=illuminant > 0)
    # float32 halves the memory of large scans and is exact enough for 8-bit output.
    return np.rint(np.clip(image * gains.astype(np.float32), 0, 255)).astype(np.uint8)


def color_constancy(src: Path, dst: Path, p: float = 6, skip_bad: bool = False) -> ColourReport:
    """Write a Shades of Gray corrected copy of every image under `src` to `dst`, keeping sub-folders, names and formats.

    `src` is an image file or a folder (searched recursively); `dst` is a folder, or, for one image,
    also a file name. The originals are never touched. Unreadable images are left out; without
    `skip_bad` they fail the run (a DataError naming them) once the readable ones are written.
    """
    src, dst = Path(src), Path(dst)
    check_p(p)
    images = list_images(src)
    refuse_overwrite(src, dst)
    if src.is_file():
        targets = [dst if is_image_file(dst) else dst / src.name]
    else:
        targets = [dst / image.relative_to(src) for image in images]
    with ThreadPoolExecutor(WORKERS) as pool:
        reasons = list(pool.map(lambda image, target: correct_file(image, target, p), images, targets))
    broken = {str(image): reason for image, reason in zip(images, reasons) if reason}
    report = ColourReport(out=dst, written=len(images) - len(broken), broken=broken)
    refuse_or_skip(
        broken,
        skip_bad,
        f"image(s) cannot be read (the other {report.written} were written to {dst})",
        "pass --skip-bad",
    )
    return report


def correct_file(source: Path, target: Path, p: float) -> str | None:
    """Correct one image into `target`; why it cannot be read, or None when written."""
    try:
        image = open_image(source)
    except ImageDecodeError as exc:
        return exc.reason
    corrected = Image.fromarray(shades_of_gray(np.asarray(image), p))
    fmt = Image.registered_extensions()[target.suffix.lower()]
    options = {
        **SAVE_OPTIONS.get(fmt, {}),
        **({"exif": upright_exif(image.info["exif"])} if "exif" in image.info else {}),
    }
    # No fsync: safe against a killed run, and a big folder of images is not slowed to the disk's pace.
    write_atomic(target, lambda fh: corrected.save(fh, format=fmt, **options), durable=False)
    return None


def upright_exif(data: bytes) -> bytes:
    """The EXIF block of a photo whose pixels are now upright: every tag kept but the orientation, which
    becomes 1 (as stored), so that no viewer (or optik) turns the picture a second time."""
    exif = Image.Exif()
    exif.load(data)
    if ExifTags.Base.Orientation in exif:
        exif[ExifTags.Base.Orientation] = 1
    return exif.tobytes()


def channel_stats(src: Path, skip_bad: bool = False, size: int | None = None) -> StatsReport:
    """The exact per-channel mean and std of every pixel of every image under `src`, for `data.mean` / `data.std`.

    Per-channel histograms of the 8-bit values are summed image by image, so memory stays constant
    however many images there are, and the sums are exact integers (no float cancellation in the
    variance). `size` first resizes the shorter side (bilinear, as training does) so the numbers
    match what the model sees. Unreadable images are left out; without `skip_bad` they fail the run.
    """
    src = Path(src)
    if size is not None and size < 1:
        raise ConfigError(f"size must be a positive number of pixels, got {size}")
    images = list_images(src)
    with ThreadPoolExecutor(WORKERS) as pool:
        counts, broken = np.zeros((3, 256), np.int64), {}
        for image, result in zip(images, pool.map(lambda path: histogram(path, size), images)):
            if isinstance(result, str):
                broken[str(image)] = result
            else:
                counts += result
    refuse_or_skip(broken, skip_bad, "image(s) cannot be read (the statistics would leave them out)", "pass --skip-bad")
    pixels = int(counts[0].sum())
    if pixels == 0:
        raise DataError(
            f"none of the {len(images)} image(s) under {src} could be read; fix them or point at another folder"
        )
    values = np.arange(256, dtype=np.int64)
    sums = [int(n) for n in counts @ values]
    squares = [int(n) for n in counts @ values**2]
    mean = [s / (255 * pixels) for s in sums]
    std = [((q * pixels - s * s) / (255 * 255 * pixels * pixels)) ** 0.5 for s, q in zip(sums, squares)]
    return StatsReport(mean=mean, std=std, images=len(images) - len(broken), pixels=pixels, broken=broken)


def histogram(path: Path, size: int | None) -> np.ndarray | str:
    """Counts of each 8-bit value per channel, shape (3, 256); or why the image cannot be read."""
    try:
        image = open_image(path)
    except ImageDecodeError as exc:
        return exc.reason
    if size is not None:
        image = image.resize(shorter_side_to(image.size, size), Image.BILINEAR)
    return np.array(image.histogram(), np.int64).reshape(3, 256)


def shorter_side_to(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side at `shorter`, the longer rounded down as torchvision's Resize does."""
    width, height = size
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def list_images(src: Path) -> list[Path]:
    if not src.exists():
        raise DataError(f"{src} not found: give an image file or a folder of images")
    images = find_images(src)
    if not images:
        raise DataError(f"no images in {src} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def refuse_overwrite(src: Path, dst: Path) -> None:
    """The output goes elsewhere: into the input folder it would replace originals or be read back on the next run."""
    source, out = src.resolve(), dst.resolve()
    if src.is_dir() and (out == source or source in out.parents) or src.is_file() and out in (source, source.parent):
        raise ConfigError(
            f"the output {dst} would overwrite or mix with the originals ({src}); choose another output folder"
        )
