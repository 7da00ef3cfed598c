"""Which image files cannot be read, and the one policy for them: refuse naming them, or leave them out (`skip_bad`).

Training data, detection data, `optik data convert`, colour constancy and `optik data check` all
find bad images here and treat them the same way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

from optik.data.decode import image_size, open_image
from optik.errors import DataError, ImageDecodeError

MAX_LISTED = 10  # bad files named in one message


def check_images(paths: list[str], mode: str = "full", workers: int | None = None) -> dict[str, str]:
    """Path -> reason for every image that cannot be read (`full` decodes, `header` only reads the header)."""

    def problem(path: str) -> str | None:
        try:
            open_image(path) if mode == "full" else image_size(path)
        except ImageDecodeError as exc:
            return exc.reason
        except OSError as exc:
            return exc.strerror or str(exc)
        return None

    workers = workers or min(8, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        reasons = list(pool.map(problem, paths, chunksize=64))
    return {path: reason for path, reason in zip(paths, reasons) if reason}


def header_sizes(
    paths: list[str], workers: int | None = None, exif_orientation: bool = True
) -> tuple[dict[str, tuple[int, int]], dict[str, str]]:
    """(width, height) of each image from its header, upright or as stored (see `image_size`), and path ->
    reason for those without a readable one."""

    def size(path: str) -> tuple[int, int] | str:
        try:
            return image_size(path, exif_orientation)
        except ImageDecodeError as exc:
            return exc.reason

    workers = workers or min(16, (os.cpu_count() or 1) * 2)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(size, paths))
    sizes = {path: result for path, result in zip(paths, results) if not isinstance(result, str)}
    return sizes, {path: result for path, result in zip(paths, results) if isinstance(result, str)}


def listed_bad(bad: Mapping[str, str]) -> str:
    """`path: reason; ...` for the first MAX_LISTED bad files, in the given order, and how many more there are."""
    listed = "; ".join(f"{path}: {reason}" for path, reason in list(bad.items())[:MAX_LISTED])
    return listed + (f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else "")


def refuse_or_skip(
    bad: Mapping[str, str],
    skip_bad: bool,
    problem: str = "unreadable image(s)",
    hint: str = "set data.skip_bad: true",
    fix: str = "Fix or remove them",
) -> dict[str, str]:
    """The one policy for bad images: without `skip_bad`, a DataError naming them; with it, the ones to leave out.

    Args:
        bad: path -> why it cannot be used, in the order to name them.
        skip_bad: leave them out instead of failing.
        problem: what they are, after their count ("unreadable image(s)" -> "3 unreadable image(s): ...").
        hint: the option that leaves them out, as the user gives it ("set data.skip_bad: true", "pass --skip-bad").
        fix: what else the user can do, as a sentence start ("Fix or remove them").

    Returns:
        The bad images left out (path -> reason), empty when there are none.

    Raises:
        DataError: there are bad images and `skip_bad` is false; it names the first MAX_LISTED and the count.
    """
    if bad and not skip_bad:
        raise DataError(f"{len(bad)} {problem}: {listed_bad(bad)}. {fix}, or {hint} to leave them out")
    return dict(bad)


def left_out_note(left_out: Mapping[str, str], problem: str = "unreadable image(s)") -> str:
    """The report line for images `refuse_or_skip` left out: their count and the first of them."""
    return f"left out {len(left_out)} {problem}: {listed_bad(left_out)}"
