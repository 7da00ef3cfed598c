"""File writing that never leaves a half-written file behind: temp file in the same folder, then rename."""

from __future__ import annotations

import errno
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np


def write_atomic(
    path: str | Path,
    data: bytes | str | Callable[[IO[bytes]], None],
    staging_dir: str | Path | None = None,
    durable: bool = True,
) -> Path:
    """Write `data` (bytes, text, or a callable that writes to a binary file) to `path` atomically.

    The content goes to a temporary file (in `staging_dir`, which must be on the same filesystem,
    or next to `path`), is flushed to disk, then renamed over `path`: readers see the old file or
    the whole new one, never a part. `durable=False` skips the fsync: still safe against a killed
    process, not against a power cut, and much cheaper for large files written often.
    """
    path = Path(path)
    folder = Path(staging_dir) if staging_dir is not None else path.parent
    folder.mkdir(parents=True, exist_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def move_atomic(source: str | Path, target: str | Path) -> Path:
    """Move a file so that `target` appears whole or not at all, also across filesystems.

    Within one filesystem this is a rename. Across filesystems the file is copied to a temporary
    name next to `target`, synced and renamed, and only then is `source` removed: a crash leaves
    the source in place (and at worst a stray temp file), never a partial target.
    """
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with open(source, "rb") as fh:
            write_atomic(target, lambda out: shutil.copyfileobj(fh, out, 1 << 20))
        shutil.copystat(source, target)
        source.unlink()
    return target


def temp_target(path: str | Path) -> str | None:
    """The name of the file a `write_atomic` temp file (`.<name>.<random>.tmp`) was to become; None for other files."""
    name = Path(path).name
    if not (name.startswith(".") and name.endswith(".tmp")) or name.count(".") < 3:
        return None
    return name[1:].rsplit(".", 2)[0]


def remove_temp_files_of(folder: str | Path, names: set[str]) -> int:
    """Delete the `write_atomic` temp files in `folder` that were to become one of `names`, whatever their age.

    For a writer that owns those names (a restarted service): its killed run's half-written outputs go at once.
    """
    removed = 0
    for path in Path(folder).glob(".*.tmp"):
        if temp_target(path) in names:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def remove_stale_temp_files(folder: str | Path, older_than: float = 600.0) -> int:
    """Delete `write_atomic` temp files (`.<name>.<random>.tmp`) a killed process left in `folder`.

    Only files untouched for `older_than` seconds go, so a writer at work elsewhere keeps its own.
    """
    removed, now = 0, time.time()
    for path in Path(folder).glob(".*.tmp"):
        try:
            if now - path.stat().st_mtime > older_than:
                path.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def tidy_number(value):
    """A float as it is worth writing to a file: a float32 value (a tensor's `.item()`) as the shortest
    decimal that reads back as the same float32 (0.1, not 0.10000000149011612), any other float to 12
    significant digits (0.75, not 0.7499999999999999). Other values are returned as they are."""
    if not isinstance(value, float) or not math.isfinite(value):
        return value
    if abs(value) < 3e38 and float(single := np.float32(value)) == value:
        return float(str(single))  # numpy prints a float32 as its shortest round-trip decimal (Dragon4)
    return float(f"{value:.12g}")


def tidy_floats(values) -> list:
    """`tidy_number` of each of many floats (a row of class probabilities), in one numpy pass when they are
    all float32 values, as a model's outputs are."""
    array = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        singles = array.astype(np.float32)
    if array.ndim != 1 or not np.array_equal(singles.astype(np.float64), array):
        return [tidy_number(float(value)) for value in values]
    return list(map(float, map(str, singles)))


def tidy_numbers(data):
    """`tidy_number` through nested dicts, lists and tuples (lists come back for tuples)."""
    if isinstance(data, dict):
        return {key: tidy_numbers(item) for key, item in data.items()}
    if isinstance(data, (list, tuple)):
        return [tidy_numbers(item) for item in data]
    return tidy_number(data)
