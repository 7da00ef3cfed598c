"""List-file datasets: text files of `relative/path label` lines (label: index or class name)."""

from __future__ import annotations

from pathlib import Path

from optik.data.folder import Sample
from optik.errors import DataError


def read_list(
    list_file: str | Path, root: str | Path | None, classes: list[str] | None
) -> tuple[list[Sample], list[str]]:
    """Samples of a list file, and the class names (given, or discovered from name labels in sorted order)."""
    list_file, base = _locate(list_file, root)
    rows = []
    for number, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(f"{list_file}:{number}: expected 'path label', got {line!r}")
        rows.append((number, parts[0].strip(), parts[1].strip()))
    if not rows:
        raise DataError(f"list file {list_file} has no 'path label' lines")
    labels = [label for _, _, label in rows]
    digits = [label.lstrip("-").isdigit() for label in labels]
    numeric = all(digits)
    if any(digits) and not numeric and classes is None:
        first = next(number for (number, _, label) in rows if label.lstrip("-").isdigit())
        raise DataError(f"{list_file}:{first}: labels mix class indices and class names; use one kind throughout")
    if classes is None:
        if numeric:
            count = max(int(label) for label in labels) + 1
            classes = [str(i) for i in range(count)]
        else:
            classes = sorted(set(labels))
    index = {name: i for i, name in enumerate(classes)}
    samples, missing = [], []
    for number, rel, label in rows:
        if numeric:
            target = int(label)
            if not 0 <= target < len(classes):
                raise DataError(
                    f"{list_file}:{number}: label {target} is outside 0..{len(classes) - 1} ({len(classes)} classes)"
                )
        elif label in index:
            target = index[label]
        else:
            raise DataError(f"{list_file}:{number}: unknown class {label!r}; the classes are {classes}")
        path = base / rel
        if not path.is_file():
            missing.append(str(path))
        samples.append((str(path), target))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{len(missing)} image(s) of {list_file} not found: {', '.join(missing[:3])}{more}")
    return samples, classes


def _locate(list_file: str | Path, root: str | Path | None) -> tuple[Path, Path]:
    """The list file (as given, or under root) and the folder its paths are relative to."""
    list_file = Path(list_file)
    if not list_file.is_file() and root is not None and (Path(root) / list_file).is_file():
        list_file = Path(root) / list_file
    if not list_file.is_file():
        raise DataError(f"list file not found: {list_file}")
    return list_file, Path(root) if root is not None else list_file.parent


def read_paths(list_file: str | Path, root: str | Path | None) -> list[str]:
    """The image paths of a list file of `path` or `path label` lines (labels ignored: unlabelled use)."""
    list_file, base = _locate(list_file, root)
    paths, missing = [], []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = base / line
        if not path.is_file() and len(line.rsplit(maxsplit=1)) == 2:
            path = base / line.rsplit(maxsplit=1)[0]
        (paths if path.is_file() else missing).append(str(path))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise DataError(f"{len(missing)} image(s) of {list_file} not found: {', '.join(missing[:3])}{more}")
    if not paths:
        raise DataError(f"list file {list_file} names no images")
    return paths
