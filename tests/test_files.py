"""Atomic writes: readers see the old file or the whole new one; a failed write leaves no debris."""

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
