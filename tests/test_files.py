"""Atomic writes: readers see the old file or the whole new one; a failed write leaves no debris."""

import numpy as np
import pytest

from optik.files import write_atomic


def test_bytes_text_and_callable(tmp_path):
    write_atomic(tmp_path / "a" / "x.bin", b"\x00\x01")
    write_atomic(tmp_path / "y.txt", "héllo")
    write_atomic(tmp_path / "z.bin", lambda fh: fh.write(b"abc"), staging_dir=tmp_path / "stage", durable=False)
    assert (tmp_path / "a" / "x.bin").read_bytes() == b"\x00\x01" and (tmp_path / "y.txt").read_text() == "héllo"
    assert (tmp_path / "z.bin").read_bytes() == b"abc" and not list((tmp_path / "stage").iterdir())


def test_failure_keeps_the_old_content_and_no_temp_file(tmp_path):
    target = tmp_path / "out.json"
    write_atomic(target, "old")

    def explode(fh):
        fh.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_atomic(target, explode)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_numbers_are_written_without_float_noise():
    import struct

    from optik.files import tidy_floats, tidy_number, tidy_numbers

    as_float32 = struct.unpack("f", struct.pack("f", 0.1))[0]  # what a float32 tensor's .item() gives
    assert as_float32 != 0.1 and tidy_number(as_float32) == 0.1
    assert tidy_number(0.7499999999999999) == 0.75 and tidy_number(0.001) == 0.001  # float64: 12 digits
    for value in (2.303351879119873, 1 / 3, 1e-300, 123456789.123, 123456789.0):  # each reads back as what it was
        tidy = tidy_number(value)
        same = struct.unpack("f", struct.pack("f", tidy))[0] == value if abs(value) < 3e38 else False
        assert same or abs(tidy - value) <= 1e-12 * abs(value)
    singles = np.random.default_rng(0).random(2000, dtype=np.float32) ** 9  # float32s from 1 down to ~1e-30
    for single in singles.tolist():  # the shortest decimal that reads back as the same float32
        tidy = tidy_number(single)
        assert float(np.float32(tidy)) == single
        digits = len(f"{tidy:e}".split("e")[0].replace(".", "").rstrip("0"))
        assert digits == 1 or float(np.float32(float(f"{single:.{digits - 1}g}"))) != single
    assert tidy_floats(singles.tolist()) == [tidy_number(single) for single in singles.tolist()]
    mixed = [*singles[:3].tolist(), 1 / 3, float("nan"), 1e39]  # not all float32 values: one at a time
    assert tidy_floats(mixed)[:4] == [tidy_number(value) for value in mixed[:4]] and tidy_floats(mixed)[5] == 1e39
    assert tidy_floats([]) == []
    assert tidy_numbers({"a": [0.7499999999999999, 3, None, True], "b": (float("nan"),)})["a"] == [0.75, 3, None, True]
