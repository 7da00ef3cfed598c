"""The one function that turns image files or bytes into RGB pictures, with clear reasons on failure."""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from optik.errors import ImageDecodeError

# Above this many pixels an image is refused (PIL's own decompression-bomb limit, ~179 MP): a
# 30000x30000 "image" would take gigabytes to decode.
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS

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
    source: str | Path | bytes, name: str | None = None, draft_size: tuple[int, int] | None = None
) -> Image.Image:
    """Open and fully decode an image as RGB.

    Args:
        source: a file path or the encoded bytes.
        name: what to call the source in errors (defaults to the path).
        draft_size: let JPEG decode at a reduced scale that still covers this (width, height).

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
            raise ImageDecodeError(label, "truncated or corrupt (the PNG ends before its IEND chunk)")
    if image.mode != "RGB":
        image = image.convert("RGBA").convert("RGB") if "transparency" in image.info else image.convert("RGB")
    return image


def has_png_end(fp) -> bool:
    """Whether a PNG's IEND chunk is in its last 64 KiB (some tools append data after it)."""
    fp.seek(0, io.SEEK_END)
    fp.seek(max(0, fp.tell() - 65536))
    return PNG_END in fp.read()


def _is_empty(fp) -> bool:
    start = fp.read(1)
    fp.seek(0)
    return not start


@contextmanager
def decode_errors(label: str):
    """Turn what Pillow raises on a bad file into an ImageDecodeError with a reason a user can act on."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we apply MAX_PIXELS ourselves
            yield
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:
        raise ImageDecodeError(label, "not an image (unknown or unsupported format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(label, "image too large (decompression bomb check)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(label, f"truncated or corrupt ({exc})") from None


def _open_checked(fp, label: str) -> Image.Image:
    """Pillow's lazy open (the header only), refusing empty files and images above MAX_PIXELS."""
    if _is_empty(fp):
        raise ImageDecodeError(label, "empty file (0 bytes)")
    image = Image.open(fp)
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(label, f"image too large ({width}x{height} pixels, limit {MAX_PIXELS})")
    return image


def image_size(path: str | Path) -> tuple[int, int]:
    """An image file's (width, height) as its header states it, without decoding pixels (no EXIF rotation).

    Raises:
        ImageDecodeError: missing, empty, not an image, a header cut short, or too large.
    """
    label = str(path)
    try:
        with open(path, "rb") as fp, decode_errors(label), _open_checked(fp, label) as image:
            return image.size
    except FileNotFoundError:  # only `open` raises OSErrors here: decode_errors turns Pillow's into ImageDecodeErrors
        raise ImageDecodeError(label, "file not found") from None
    except OSError as exc:
        raise ImageDecodeError(label, exc.strerror or str(exc)) from None
