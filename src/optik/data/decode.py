"""The one function that turns image files or bytes into RGB pictures, with clear reasons on failure.

Every path that reads pixels (training, testing, prediction, the services, batch-predict, probe,
tools) goes through `open_image`, so a photo decodes the same everywhere. The rules:

- EXIF orientation (as cameras and phones write it) is applied, unless the caller asks for the
  stored pixels (`exif_orientation=False`: `data.exif_orientation: false`, recorded in the model
  package). It is read from the header PIL has already parsed: no second decode.
- 16-bit and 32-bit integer images (`I;16*`, `I`: 16-bit PNG and TIFF, scanners) are scaled by their
  bit depth as the file states it (value >> (bits - 8); signed samples: bits - 1), never clipped;
  16-bit RGB is reduced to its high byte by Pillow.
  Float images (`F`) with values in [0, 1] are scaled by 255, others clipped to 0..255.
- Transparency (RGBA, LA, PA, palette or colour-key transparency) is composited onto **white**, as
  a picture with a transparent background looks on a page; pixels hidden by alpha 0 never show.
- CMYK becomes RGB by Pillow's plain formula (no ICC profile); 1-bit, gray, palette and YCbCr as Pillow converts them.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, UnidentifiedImageError

from optik.errors import ImageDecodeError

# Above this many pixels an image is refused (PIL's own decompression-bomb limit, ~179 MP): a
# 30000x30000 "image" would take gigabytes to decode.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
# Pillow warns of images above its own limit while opening them; optik refuses above MAX_PIXELS itself, with
# one clear error, so the warning says nothing. Ignored once for the process: `warnings.catch_warnings` around
# each decode would race in the decoding threads (each restores the filters it saw, not the ones it found).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

# The last chunk of every PNG; pixel data can be complete without it, but a file without it was cut.
PNG_END = b"IEND\xaeB`\x82"

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})


def is_image_file(path: str | Path) -> bool:
    """True for image extensions (case-insensitive), false for hidden and partial files."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def describe_source(source) -> str:
    """How errors and results name an image: its path, or its size for bytes and pictures."""
    if isinstance(source, (str, Path)):
        return str(source)
    if isinstance(source, bytes):
        return f"<{len(source)} bytes>"
    return "<image>"


def open_image(
    source: str | Path | bytes,
    name: str | None = None,
    draft_size: tuple[int, int] | None = None,
    exif_orientation: bool = True,
) -> Image.Image:
    """Open and fully decode an image as 8-bit RGB, by the rules of the module docstring.

    Args:
        source: a file path or the encoded bytes.
        name: what to call the source in errors (defaults to the path).
        draft_size: let JPEG decode at a reduced scale that still covers this (width, height).
        exif_orientation: turn the picture upright as its EXIF orientation says (false: the stored pixels).

    Raises:
        ImageDecodeError: empty, not an image, truncated or corrupt, or too large.
    """
    label = name or describe_source(source)
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise ImageDecodeError(label, exc.strerror or str(exc)) from None
    with fp, decode_errors(label):
        image = _open_checked(fp, label)
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", draft_size)
        image.load()
        if image.format == "PNG" and not has_png_end(fp):
            raise ImageDecodeError(label, "truncated (the file is cut short: the PNG ends before its IEND chunk)")
        picture = to_rgb(image)
        transpose = ORIENTATIONS.get(orientation(image)) if exif_orientation else None
    return picture.transpose(transpose) if transpose is not None else picture


# EXIF orientation -> the transpose that makes the picture upright (as PIL's ImageOps.exif_transpose).
ORIENTATIONS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

BACKGROUND = (255, 255, 255)  # what transparent pixels become
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
DEEP_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when there is none or the EXIF block is malformed.

    Read from what Pillow parsed of the header (JPEG APP1, TIFF tags, WebP and PNG chunks before
    the pixel data), so a lazily opened image stays undecoded: Pillow's PNG `getexif` would decode
    the whole picture to look for an eXIf chunk after the pixels, which a loaded PNG has in its info.
    """
    try:
        return int(Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1))
    except Exception:  # noqa: BLE001 - Pillow raises assorted errors on bad EXIF; a bad tag must not lose a good picture
        return 1


TURNED = frozenset({5, 6, 7, 8})  # orientations whose upright picture has width and height swapped


def to_rgb(image: Image.Image) -> Image.Image:
    """A decoded image of any mode as 8-bit RGB (see the module docstring for the rules)."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in DEEP_GRAY_MODES:
        return Image.fromarray(scaled_to_8_bits(image)).convert("RGB")
    if image.mode == "F":
        values = np.asarray(image)
        values = values * 255 if values.size and np.nanmax(values) <= 1 else values
        return Image.fromarray(np.clip(np.nan_to_num(values), 0, 255).round().astype(np.uint8)).convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, BACKGROUND)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


def scaled_to_8_bits(image: Image.Image) -> np.ndarray:
    """The uint8 levels of a 16- or 32-bit gray image: value >> (bits - 8), bits as the file states them."""
    values = np.asarray(image)
    if image.mode.startswith("I;16"):
        return (values >> 8).astype(np.uint8)
    bits, signed = sample_format(image, values)
    if not signed:  # Pillow holds unsigned 32-bit samples in its signed mode I: read them back as unsigned
        values = values.view(np.uint32)
    return (np.clip(values, 0, None).astype(np.uint64) >> (bits - 1 - 8 if signed else bits - 8)).astype(np.uint8)


def sample_format(image: Image.Image, values: np.ndarray) -> tuple[int, bool]:
    """(bits per sample, signed) of a 32-bit integer (`I`) image: the TIFF's BitsPerSample and SampleFormat
    tags, else signed 32-bit, or 16-bit when the values fit (Pillow's own 16-bit images)."""
    tags = getattr(image, "tag_v2", None)
    if tags is not None and 258 in tags:
        bits, kind = (value[0] if isinstance(value, tuple) else value for value in (tags[258], tags.get(339, 1)))
        return int(bits), kind == 2  # SampleFormat 2: signed integers
    if not values.size or 0 <= values.min() and values.max() <= 0xFFFF:
        return 16, False
    return 32, True


def is_whole(fp) -> bool | None:
    """Whether an image file is written to its end, by its format's own structure: JPEG (segments then
    end-of-image marker), PNG (IEND chunk), WebP (RIFF length), BMP (file size in its header). False for
    a file too short to tell its format yet; None for a format without such a structure (TIFF, GIF, ...)
    or not an image at all."""
    size = fp.seek(0, io.SEEK_END)
    fp.seek(0)
    head = fp.read(14)
    if len(head) < 14:
        return False
    if head[:2] == b"\xff\xd8":
        return has_jpeg_end(fp)
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return has_png_end(fp)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return size >= int.from_bytes(head[4:8], "little") + 8
    if head[:2] == b"BM" and int.from_bytes(head[2:6], "little") > 14:  # some writers leave the size 0
        return size >= int.from_bytes(head[2:6], "little")
    return None


def has_png_end(fp) -> bool:
    """Whether a PNG's IEND chunk is in its last 64 KiB (some tools append data after it)."""
    fp.seek(0, io.SEEK_END)
    fp.seek(max(0, fp.tell() - 65536))
    return PNG_END in fp.read()


def has_jpeg_end(fp) -> bool:
    """Whether a JPEG is whole: its header segments, walked by their lengths, lead to the image data
    (start of scan), and the file ends with the end-of-image marker after it.

    Walking the segments skips the EXIF thumbnail in APP1, whose own end-of-image marker can be where
    a half-written file stops.
    """
    size = fp.seek(0, io.SEEK_END)
    fp.seek(0)
    if fp.read(2) != b"\xff\xd8":
        return False
    while True:
        head = fp.read(2)
        while head[:1] == b"\xff" and head[1:] == b"\xff":  # fill bytes before a marker
            head = head[1:] + fp.read(1)
        if len(head) < 2 or head[0] != 0xFF or head[1] == 0xD9:
            return False  # cut short, not a marker, or an end of image before any image data
        if head[1] == 0x01 or 0xD0 <= head[1] <= 0xD7:
            continue  # markers without a length
        length = fp.read(2)
        if len(length) < 2:
            return False
        end = fp.tell() + int.from_bytes(length, "big") - 2
        if end > size:
            return False
        if head[1] == 0xDA:  # start of scan: the entropy-coded data runs to the end of image
            break
        fp.seek(end)
    fp.seek(max(end, size - 64))
    return fp.read().rstrip(b"\x00\r\n ").endswith(b"\xff\xd9")  # some writers pad after the EOI marker


def _is_empty(fp) -> bool:
    start = fp.read(1)
    fp.seek(0)
    return not start


@contextmanager
def decode_errors(label: str):
    """Turn what Pillow raises on a bad file into an ImageDecodeError with a reason a user can act on."""
    try:
        yield
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(label, "not an image (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(label, "image too large (decompression bomb check)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, EOFError) or any(sign in str(exc).lower() for sign in CUT_SHORT):
            raise ImageDecodeError(label, TRUNCATED) from None
        raise ImageDecodeError(label, f"corrupt (its image data cannot be decoded: {exc})") from None


TRUNCATED = "truncated (the file is cut short: it ends before its image data does)"
# Pillow's words for data that stops early; its byte counts ("121 bytes not processed") mean nothing to a user
CUT_SHORT = ("truncated", "broken data stream")


def _open_checked(fp, label: str) -> Image.Image:
    """Pillow's lazy open (the header only), refusing empty files and images above MAX_PIXELS."""
    if _is_empty(fp):
        raise ImageDecodeError(label, "empty file (0 bytes)")
    image = Image.open(fp)
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(label, f"image too large ({width}x{height} pixels, limit {MAX_PIXELS})")
    return image


def image_size(path: str | Path, exif_orientation: bool = True) -> tuple[int, int]:
    """An image file's (width, height) from its header, without decoding pixels: the size `open_image`
    gives with the same `exif_orientation` (true: the upright picture's, false: the stored pixels').

    Raises:
        ImageDecodeError: missing, empty, not an image, a header cut short, or too large.
    """
    label = str(path)
    try:
        with open(path, "rb") as fp, decode_errors(label), _open_checked(fp, label) as image:
            width, height = image.size
            return (height, width) if exif_orientation and orientation(image) in TURNED else (width, height)
    except FileNotFoundError:  # only `open` raises OSErrors here: decode_errors turns Pillow's into ImageDecodeErrors
        raise ImageDecodeError(label, "file not found") from None
    except OSError as exc:
        raise ImageDecodeError(label, exc.strerror or str(exc)) from None
