"""One decode function and one header-size function: good images in every format and mode, a clear reason for every broken one."""

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageFile

from optik.data.decode import image_size, is_image_file, open_image
from optik.errors import ImageDecodeError


def encoded(fmt: str, mode: str = "RGB", size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(
        mode
    ).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "fmt,mode",
    [
        ("PNG", "RGB"),
        ("PNG", "L"),
        ("PNG", "RGBA"),
        ("PNG", "P"),
        ("JPEG", "RGB"),
        ("JPEG", "L"),
        ("BMP", "RGB"),
        ("GIF", "P"),
        ("TIFF", "RGB"),
        ("WEBP", "RGB"),
        ("PPM", "RGB"),
    ],
)
def test_every_format_decodes_to_rgb(tmp_path, fmt, mode):
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(encoded(fmt, mode))
    for source in (path, path.read_bytes()):
        image = open_image(source)
        assert image.mode == "RGB" and image.size == (40, 30)


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG that declares an enormous size (only the header, like a decompression bomb)."""
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


BROKEN = {
    "zero bytes": (b"", "empty file"),
    "text with an image name": (b"hello, this is not an image\n" * 5, "not an image"),
    "truncated jpeg": (encoded("JPEG", size=(200, 150))[:600], "truncated or corrupt"),
    "png cut before IEND": (encoded("PNG", size=(200, 150))[:-200], "truncated or corrupt"),
    "30000x30000 declared": (huge_png_header(30000, 30000), "too large"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_images_get_a_reason(tmp_path, case):
    data, reason = BROKEN[case]
    path = tmp_path / "broken.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError) as info:
        open_image(path)
    assert reason in info.value.reason and str(path) in str(info.value)
    with pytest.raises(ImageDecodeError, match=reason):
        open_image(data, name="payload")


def test_missing_file_is_a_decode_error(tmp_path):
    with pytest.raises(ImageDecodeError, match="No such file"):
        open_image(tmp_path / "absent.png")


def test_extensions_are_case_insensitive_and_hidden_files_skipped():
    assert is_image_file("a/B.JPG") and is_image_file("x.Png") and is_image_file("y.tiff") and is_image_file("z.pgm")
    assert not is_image_file(".hidden.jpg") and not is_image_file("notes.txt") and not is_image_file("a.jpg.part")


def test_error_survives_pickling_as_its_own_type():
    import pickle

    err = pickle.loads(pickle.dumps(ImageDecodeError("a.jpg", "empty file (0 bytes)")))
    assert isinstance(err, ImageDecodeError) and err.reason == "empty file (0 bytes)"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_size_reads_the_header_only(tmp_path, fmt, monkeypatch):
    path = tmp_path / f"image.{fmt.lower()}"
    data = encoded(fmt, size=(200, 150))
    path.write_bytes(data)
    assert image_size(path) == (200, 150)
    path.write_bytes(data[: len(data) // 2])  # pixel data cut in half: decoding fails, the header still holds
    with pytest.raises(ImageDecodeError, match="truncated"):
        open_image(path)
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("image_size decoded pixels"))
    assert image_size(path) == (200, 150)


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty file (0 bytes)"),
        (encoded("PNG")[:24], "truncated or corrupt"),  # cut inside its header
        (b"hello, this is not an image\n" * 5, "not an image"),
        (huge_png_header(30000, 30000), "too large"),
    ],
)
def test_image_size_of_a_bad_file_is_a_decode_error(tmp_path, data, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(data)
    with pytest.raises(ImageDecodeError) as info:
        image_size(path)
    assert reason in info.value.reason and info.value.source == str(path)
    with pytest.raises(ImageDecodeError, match="file not found"):
        image_size(tmp_path / "absent.png")
