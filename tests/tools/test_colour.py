"""`optik data color-constancy` and `optik data stats`: casts removed, exact channel statistics, broken files named."""

import json

import numpy as np
import pytest
from PIL import Image

from optik.errors import ConfigError, DataError
from optik.tools.colour import color_constancy, shades_of_gray

CAST = (1.3, 1.0, 0.7)


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Light and shade at several scales, coarse ones strongest as in natural scenes, and faint colour noise: neutral, values 40..180."""
    shade = np.zeros((height, width))
    for scale in (2, 4, 8, 16):
        noise = rng.normal(0, 1, (height // scale + 1, width // scale + 1)).astype(np.float32)
        shade += scale * np.asarray(Image.fromarray(noise).resize((width, height), Image.BILINEAR))
    scene = 110 + 45 * shade[..., None] / shade.std() + rng.normal(0, 2, (height, width, 3))
    return np.clip(scene, 40, 180)


def cast_image(rng: np.random.Generator, height: int = 96, width: int = 128) -> Image.Image:
    return Image.fromarray(np.rint(texture(rng, height, width) * CAST).astype(np.uint8))


def assert_user_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, proc.stderr


def test_p1_is_gray_world_and_inf_is_max_rgb():
    image = np.array([[[200, 100, 50], [0, 100, 50]]], np.uint8)
    # channel means (100, 100, 50): gray world gains sqrt(3) * (1/2, 1/2, 1)
    assert shades_of_gray(image, p=1).tolist() == [[[173, 87, 87], [0, 87, 87]]]
    # channel maxima (200, 100, 50): max-RGB gains sqrt(7) * (1/4, 1/2, 1)
    assert shades_of_gray(image, p=float("inf")).tolist() == [[[132, 132, 132], [0, 132, 132]]]


def test_neutral_and_black_images_are_kept():
    gray = np.full((4, 5, 3), 90, np.uint8)
    black = np.zeros((4, 5, 3), np.uint8)
    assert np.array_equal(shades_of_gray(gray), gray) and np.array_equal(shades_of_gray(black), black)


def test_wrong_shape_and_p_are_refused():
    with pytest.raises(DataError, match="RGB image of shape"):
        shades_of_gray(np.zeros((4, 5), np.uint8))
    with pytest.raises(ConfigError, match="at least 1"):
        shades_of_gray(np.zeros((4, 5, 3), np.uint8), p=0.5)


def test_colour_cast_is_removed_keeping_folders_names_and_formats(tmp_path, optik):
    rng = np.random.default_rng(0)
    src = tmp_path / "scans"
    (src / "lesions").mkdir(parents=True)
    cast_image(rng).save(src / "a.png")
    cast_image(rng).save(src / "lesions" / "b.jpg", quality=95)
    originals = {p: p.read_bytes() for p in src.rglob("*.*")}

    proc = optik("data", "color-constancy", src, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "wrote 2 image(s)" in proc.stdout
    for name, fmt in (("a.png", "PNG"), ("lesions/b.jpg", "JPEG")):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.format == fmt
            means = np.asarray(image.convert("RGB"), np.float64).mean(axis=(0, 1))
        assert means.max() / means.min() < 1.02, means
    assert {p: p.read_bytes() for p in src.rglob("*.*")} == originals


def test_stats_match_numpy_over_all_pixels(tmp_path, optik):
    rng = np.random.default_rng(1)
    src = tmp_path / "set"
    (src / "nested" / "deeper").mkdir(parents=True)
    cast_image(rng, 30, 40).save(src / "a.png")
    cast_image(rng, 17, 23).save(src / "nested" / "b.png")
    # grayscale counts as RGB
    Image.fromarray(rng.integers(0, 256, (9, 50), dtype=np.uint8)).save(src / "nested" / "deeper" / "gray.png")
    (src / "notes.txt").write_text("not an image")
    pixels = (
        np.concatenate([np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3) for p in sorted(src.rglob("*.png"))])
        / 255
    )

    proc = optik("data", "stats", src, "--json")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert (stats["images"], stats["pixels"]) == (3, 30 * 40 + 17 * 23 + 9 * 50)
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0), rtol=0, atol=1e-6)

    text = optik("data", "stats", src).stdout
    mean = [round(v, 4) for v in stats["mean"]]
    assert f"mean: {mean}" in text and f"data: {{mean: {mean}, std: " in text

    resized = json.loads(optik("data", "stats", src, "--size", "10", "--json").stdout)
    assert resized["pixels"] == 10 * 13 + 10 * 13 + 55 * 10  # shorter side 10, longer rounded down


def test_broken_images_are_named_and_the_good_ones_written(tmp_path, optik):
    src = tmp_path / "scans"
    src.mkdir()
    cast_image(np.random.default_rng(2)).save(src / "good.jpg", quality=95)
    (src / "corrupt.png").write_bytes(b"this is no picture" * 10)
    (src / "cut.jpg").write_bytes((src / "good.jpg").read_bytes()[:1500])
    (src / "empty.jpg").write_bytes(b"")

    proc = optik("data", "color-constancy", src, tmp_path / "out")
    assert_user_error(proc, "3 image(s) cannot be read", "corrupt.png", "cut.jpg", "empty.jpg", "--skip-bad")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.jpg"]
    assert_user_error(optik("data", "stats", src), "corrupt.png", "cut.jpg", "empty.jpg")

    proc = optik("data", "color-constancy", src, tmp_path / "out2", "--skip-bad")
    assert proc.returncode == 0 and "wrote 1 image(s)" in proc.stdout
    assert all(name in proc.stderr for name in ("corrupt.png", "cut.jpg", "empty.jpg")), proc.stderr
    proc = optik("data", "stats", src, "--skip-bad", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["images"] == 1


def test_missing_input_and_output_inside_input_are_refused(tmp_path, optik):
    assert_user_error(optik("data", "color-constancy", tmp_path / "missing", tmp_path / "out"), "missing not found")
    assert_user_error(optik("data", "stats", tmp_path / "missing"), "missing not found")
    (tmp_path / "empty").mkdir()
    assert_user_error(optik("data", "stats", tmp_path / "empty"), "no images in")

    src = tmp_path / "scans"
    src.mkdir()
    cast_image(np.random.default_rng(3)).save(src / "a.png")
    assert_user_error(
        optik("data", "color-constancy", src, src / "corrected"), "would overwrite or mix with the originals"
    )
    with pytest.raises(ConfigError):
        color_constancy(src, src)
    with pytest.raises(ConfigError):
        color_constancy(src / "a.png", src)  # would write a.png over itself
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]


def test_one_image_file_to_a_file_or_a_folder(tmp_path):
    cast_image(np.random.default_rng(4)).save(tmp_path / "a.png")
    assert color_constancy(tmp_path / "a.png", tmp_path / "fixed.png").written == 1
    assert color_constancy(tmp_path / "a.png", tmp_path / "out").written == 1
    assert (tmp_path / "fixed.png").read_bytes() == (tmp_path / "out" / "a.png").read_bytes()


@pytest.mark.parametrize("orientation", [6, 8])
def test_a_photo_turned_by_exif_is_written_upright_once_with_its_other_tags(tmp_path, orientation):
    upright = cast_image(np.random.default_rng(5), 40, 80)  # 80 wide, 40 high
    stored = upright.transpose(Image.Transpose.ROTATE_90 if orientation == 6 else Image.Transpose.ROTATE_270)
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = orientation, "PhoneMaker"  # orientation, camera make
    stored.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    assert color_constancy(tmp_path / "photo.jpg", tmp_path / "out").written == 1
    with Image.open(tmp_path / "out" / "photo.jpg") as written:
        tags = written.getexif()
        assert written.size == (80, 40) and tags.get(0x0112) == 1 and tags.get(0x010F) == "PhoneMaker"
    from optik.data.decode import open_image

    assert open_image(tmp_path / "out" / "photo.jpg").size == (80, 40)  # not turned a second time
