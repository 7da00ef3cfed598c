"""One bad-image policy: unreadable images are found once, then refused by name or left out and counted."""

import io

import numpy as np
import pytest
from PIL import Image

from optik.data.images import MAX_LISTED, check_images, header_sizes, left_out_note, refuse_or_skip
from optik.errors import DataError


def write_images(folder, good: int, bad: int) -> tuple[list[str], list[str]]:
    """`good` readable PNGs (40x30) and `bad` broken ones (half a PNG, an empty file, text) in folder."""
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    broken = [buf.getvalue()[:-200], b"", b"not an image"]
    goods, bads = [folder / f"good{i}.png" for i in range(good)], [folder / f"bad{i:02d}.png" for i in range(bad)]
    for path in goods:
        path.write_bytes(buf.getvalue())
    for i, path in enumerate(bads):
        path.write_bytes(broken[i % 3])
    return [str(p) for p in goods], [str(p) for p in bads]


def test_refusal_names_the_files_their_count_and_the_option(tmp_path):
    goods, bads = write_images(tmp_path, good=2, bad=MAX_LISTED + 3)
    bad = check_images(goods + bads)
    assert (
        list(bad) == bads
        and bad[bads[0]].startswith("truncated (the file is cut short")
        and bad[bads[1]] == "empty file (0 bytes)"
    )
    with pytest.raises(DataError) as info:
        refuse_or_skip(bad, skip_bad=False)
    message = str(info.value)
    assert message.startswith(f"{MAX_LISTED + 3} unreadable image(s): {bads[0]}: truncated (the file is cut short")
    assert all(path in message for path in bads[:MAX_LISTED]) and bads[MAX_LISTED] not in message
    assert "(and 3 more)" in message and message.endswith(
        "Fix or remove them, or set data.skip_bad: true to leave them out"
    )
    with pytest.raises(
        DataError, match=r"^1 image\(s\) cannot be read: .*bad00.png.*or pass --skip-bad to leave them out$"
    ):
        refuse_or_skip({bads[0]: "x"}, skip_bad=False, problem="image(s) cannot be read", hint="pass --skip-bad")


def test_skipping_returns_what_was_left_out(tmp_path):
    goods, bads = write_images(tmp_path, good=3, bad=2)
    left_out = refuse_or_skip(check_images(goods + bads, mode="header"), skip_bad=True)
    # the header of a cut PNG still reads
    assert sorted(left_out) == [bads[1]] and left_out[bads[1]] == "empty file (0 bytes)"
    assert set(refuse_or_skip(check_images(goods + bads), skip_bad=True)) == set(bads)
    assert refuse_or_skip({}, skip_bad=False) == {} and refuse_or_skip({}, skip_bad=True) == {}
    assert left_out_note(left_out) == f"left out 1 unreadable image(s): {bads[1]}: empty file (0 bytes)"


def test_header_sizes_of_good_and_bad_files(tmp_path):
    goods, bads = write_images(tmp_path, good=2, bad=3)
    sizes, bad = header_sizes(goods + bads + [str(tmp_path / "lost.png")])
    assert sizes == {path: (40, 30) for path in goods + bads[:1]}
    assert bad == {
        bads[1]: "empty file (0 bytes)",
        bads[2]: "not an image (unknown or unsupported format)",
        str(tmp_path / "lost.png"): "file not found",
    }
