"""One decode function and one header-size function: good images in every format and mode, a clear reason for every broken one."""

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageFile

from optik.data.decode import image_size, is_image_file, open_image, orientation
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
    "truncated jpeg": (encoded("JPEG", size=(200, 150))[:600], "file is cut short"),
    "png cut before IEND": (encoded("PNG", size=(200, 150))[:-200], "file is cut short"),
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
        (encoded("PNG")[:24], "file is cut short"),  # cut inside its header
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


# Photos as cameras and scanners write them: EXIF orientation, 16/32-bit and float samples, alpha, CMYK.

UPRIGHT = np.random.default_rng(7).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # 40 wide, 30 high

# EXIF orientation -> how the camera stored an upright picture (the inverse of what decoding applies)
STORED_AS = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270, 3: Image.Transpose.ROTATE_180}


def rotated_twin(orientation: int, fmt: str = "PNG", **options) -> bytes:
    """UPRIGHT stored turned, with the EXIF orientation that turns it back."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(UPRIGHT).transpose(STORED_AS[orientation]).save(buffer, fmt, exif=exif, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_turns_a_photo_upright(orientation):
    data = rotated_twin(orientation)
    assert np.array_equal(np.asarray(open_image(data)), UPRIGHT)
    stored = open_image(data, exif_orientation=False)  # the pixels as stored, for data annotated that way
    assert np.array_equal(np.asarray(stored), np.asarray(Image.fromarray(UPRIGHT).transpose(STORED_AS[orientation])))


def test_exif_orientation_of_a_jpeg_with_draft_decoding():
    upright = io.BytesIO()
    Image.fromarray(UPRIGHT).save(upright, "JPEG", quality=100, subsampling=0)
    rotated = rotated_twin(6, "JPEG", quality=100, subsampling=0)
    twin = np.asarray(open_image(upright.getvalue()), dtype=int)
    assert np.abs(np.asarray(open_image(rotated), dtype=int) - twin).max() <= 2  # JPEG rounding, nothing more
    small = open_image(rotated, draft_size=(10, 10))  # decoded at a reduced scale, then turned upright
    assert small.width < 40 and small.width / small.height == pytest.approx(40 / 30)


def header_only(data: bytes, fmt: str) -> bytes:
    """A file cut just after its image data starts: a header and no pixels."""
    return data[: data.index(b"\xff\xda" if fmt == "JPEG" else b"IDAT") + 20]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_image_size_of_a_turned_photo_is_upright_from_its_header_alone(fmt, tmp_path):
    path = tmp_path / f"turned.{fmt.lower()}"
    path.write_bytes(header_only(rotated_twin(6, fmt), fmt))
    assert image_size(path) == (40, 30)  # upright, as open_image decodes it: nothing but the header was read
    assert image_size(path, exif_orientation=False) == (30, 40)
    with pytest.raises(ImageDecodeError):
        open_image(path)
    plain = io.BytesIO()
    Image.fromarray(UPRIGHT).save(plain, fmt)  # no EXIF: Pillow's PNG getexif would decode the pixels to look for it
    path.write_bytes(header_only(plain.getvalue(), fmt))
    assert image_size(path) == (40, 30)
    lazy = Image.open(io.BytesIO(plain.getvalue()))
    assert orientation(lazy) == 1 and lazy.tile  # tiles still to decode: the pixels were not read to look for EXIF


def saved(array: np.ndarray, fmt: str) -> bytes:
    """`array` as a file: 16-bit RGB through OpenCV (Pillow writes no 16-bit colour), anything else through Pillow."""
    if array.ndim == 3:
        import cv2

        ok, encoded = cv2.imencode(f".{fmt.lower()}", array[..., ::-1])  # OpenCV writes BGR
        assert ok
        return encoded.tobytes()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


EIGHT_BIT = np.random.default_rng(8).integers(0, 256, (30, 40, 3), dtype=np.uint8)
LOW_BYTE = np.random.default_rng(9).integers(0, 256, (30, 40, 3), dtype=np.uint16)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("channels", ["gray", "rgb"])
def test_16_bit_images_decode_as_their_8_bit_twins(fmt, channels):
    twin = EIGHT_BIT[..., 0] if channels == "gray" else EIGHT_BIT
    deep = (twin.astype(np.uint16) << 8) | (LOW_BYTE[..., 0] if channels == "gray" else LOW_BYTE)
    data = saved(deep, fmt)
    assert Image.open(io.BytesIO(data)).mode == ("I;16" if channels == "gray" else "RGB")
    decoded = np.asarray(open_image(data), dtype=int)
    expected = np.stack([twin] * 3, axis=-1) if channels == "gray" else twin
    assert np.abs(decoded - expected).max() <= 1


def test_32_bit_and_float_scanner_images_scale_by_their_range():
    gray = EIGHT_BIT[..., 0]
    signed = saved(gray.astype(np.int32) << 23, "TIFF")  # 32-bit signed: 31 bits of range
    floats = saved(gray.astype(np.float32) / 255, "TIFF")  # float in [0, 1]
    for data, mode in ((signed, "I"), (floats, "F")):
        assert Image.open(io.BytesIO(data)).mode == mode
        assert np.array_equal(np.asarray(open_image(data))[..., 1], gray), mode


def test_one_bit_images_are_black_and_white():
    bits = EIGHT_BIT[..., 0] > 127
    decoded = np.asarray(open_image(saved(bits, "PNG")))
    assert set(np.unique(decoded)) <= {0, 255} and np.array_equal(decoded[..., 0] == 255, bits)


def test_transparency_is_composited_onto_white():
    rgba = np.dstack([EIGHT_BIT, np.tile(np.array([0, 128, 255], dtype=np.uint8), (30, 14))[:, :40]])
    decoded = np.asarray(open_image(_png(Image.fromarray(rgba, "RGBA"))), dtype=int)
    alpha = rgba[..., 3:].astype(int)
    expected = (EIGHT_BIT * alpha + 255 * (255 - alpha)) / 255
    assert np.abs(decoded - expected).max() <= 1
    assert (decoded[alpha[..., 0] == 0] == 255).all()  # a fully transparent pixel is white, whatever colour it hid
    la = Image.fromarray(np.dstack([EIGHT_BIT[..., 0], rgba[..., 3]]), "LA")
    decoded_la = np.asarray(open_image(_png(la)), dtype=int)[..., 0]
    assert np.abs(decoded_la - (EIGHT_BIT[..., 0] * alpha[..., 0] + 255 * (255 - alpha[..., 0])) / 255).max() <= 1


def test_palette_images_with_and_without_transparency():
    palette = Image.fromarray(EIGHT_BIT).quantize(16)
    opaque = np.asarray(open_image(_png(palette)))
    assert np.array_equal(opaque, np.asarray(palette.convert("RGB")))
    clear = np.asarray(open_image(_png(palette, transparency=0)))  # palette entry 0 is transparent
    hidden = np.asarray(palette) == 0
    assert hidden.any() and (clear[hidden] == 255).all() and np.array_equal(clear[~hidden], opaque[~hidden])


def test_cmyk_jpeg_becomes_rgb_by_the_plain_formula():
    cmyk = Image.fromarray(EIGHT_BIT).convert("CMYK")
    buffer = io.BytesIO()
    cmyk.save(buffer, "JPEG", quality=100)
    decoded = np.asarray(open_image(buffer.getvalue()), dtype=int)
    assert Image.open(io.BytesIO(buffer.getvalue())).mode == "CMYK"
    assert np.abs(decoded - EIGHT_BIT.astype(int)).mean() < 3  # RGB -> CMYK -> RGB, through JPEG at quality 100


def _png(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def test_a_jpeg_is_whole_only_with_its_image_data_and_final_end_marker():
    from conftest import jpeg_with_thumbnail

    from optik.data.decode import has_jpeg_end

    data = jpeg_with_thumbnail()
    thumbnail_end = data.index(b"\xff\xd9") + 2
    assert thumbnail_end < len(data) - 2  # the thumbnail's end-of-image marker is early in the file
    assert has_jpeg_end(io.BytesIO(data)) and has_jpeg_end(io.BytesIO(data + b"\x00\x00"))
    for cut in (thumbnail_end, len(data) // 2, len(data) - 1):
        assert not has_jpeg_end(io.BytesIO(data[:cut])), cut


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_a_file_is_whole_by_its_formats_structure_and_not_before(fmt):
    from optik.data.decode import is_whole

    data = encoded(fmt, size=(64, 48))
    assert is_whole(io.BytesIO(data)) is True
    for cut in (5, len(data) // 3, len(data) - 1):
        assert is_whole(io.BytesIO(data[:cut])) is False, cut


@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "PPM"])
def test_formats_without_a_structure_to_check_are_unknown(fmt):
    from optik.data.decode import is_whole

    assert is_whole(io.BytesIO(encoded(fmt))) is None
    assert is_whole(io.BytesIO(b"this is a text file, not a photo\n")) is None
    assert is_whole(io.BytesIO(b"")) is False  # an empty file: its writer has not started


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_file_cut_short_says_so_without_pillows_byte_counts(tmp_path, fmt):
    data = encoded(fmt, size=(200, 150))
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])  # Pillow says "image file is truncated (N bytes not processed)"
    with pytest.raises(ImageDecodeError) as info:
        open_image(path)
    assert info.value.reason.startswith("truncated (the file is cut short")
    assert "bytes not processed" not in info.value.reason and "Truncated File Read" not in info.value.reason


def test_decoding_in_threads_leaves_the_warning_filters_as_they_were(tmp_path):
    """`warnings.catch_warnings` is not thread-safe (each restores the filters it saw on entering): decoders
    running at once must not touch the filters, or one of them leaves another's filter in place for good."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from optik.data.decode import open_image

    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (384, 512, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
    before = list(warnings.filters)
    with ThreadPoolExecutor(8) as pool:
        for _ in range(6):  # the race needs decoders to overlap: a few rounds make that near certain
            assert len(list(pool.map(open_image, sorted(tmp_path.glob("*.jpg")) * 4))) == 32
            assert warnings.filters == before
