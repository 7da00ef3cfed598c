"""Class names: from the config (list or labels file), the environment, or the data itself."""

from __future__ import annotations

import os
from pathlib import Path

from optik.errors import ConfigError, DataError

ENV_VARS = ("OPTIK_CLASSES", "MMCLS_CLASSES", "MMDET_CLASSES")


def clean_name(name: str) -> str:
    """Strip whitespace and the quotes users put around names."""
    return name.strip().strip("\"'").strip()


def split_names(text: str) -> list[str]:
    """Names from a labels text: one per line, or one comma-separated line."""
    lines = [line for line in text.splitlines() if line.strip()]
    parts = lines[0].split(",") if len(lines) == 1 else lines
    return [name for name in (clean_name(p) for p in parts) if name]


def read_labels_file(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"labels file not found: {path}")
    names = split_names(path.read_text())
    if not names:
        raise ConfigError(f"labels file {path} holds no class names")
    return names


def parse_classes(value: list[str] | str, origin: str) -> list[str]:
    """A list as given, or a labels file path, or (for env values) a comma list."""
    if isinstance(value, list):
        names = [clean_name(str(v)) for v in value]
    elif Path(value).is_file():
        names = read_labels_file(value)
    elif "," in value or origin != "data.classes":
        names = split_names(value)
    else:
        raise ConfigError(f"{origin}: labels file not found: {value} (give a list of names or an existing file)")
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"{origin}: duplicate class names {dupes}")
    if not names:
        raise ConfigError(f"{origin}: no class names given")
    return names


def configured_classes(value: list[str] | str | None) -> tuple[list[str] | None, str]:
    """Class names named by the user: `data.classes`, else the first set env var; with their origin."""
    if value is not None:
        return parse_classes(value, "data.classes"), "data.classes"
    for var in ENV_VARS:
        if os.environ.get(var, "").strip():
            return parse_classes(os.environ[var].strip(), var), var
    return None, ""


def match_classes(named: list[str] | None, origin: str, found: list[str], where: str) -> list[str]:
    """The class list to use: the named one when it matches the data, else an error listing both."""
    if named is None:
        return found
    missing, extra = sorted(set(found) - set(named)), sorted(set(named) - set(found))
    if missing or extra:
        raise DataError(
            f"classes named in {origin} do not match {where}: named {named}, found {found}"
            + (f"; not named: {missing}" if missing else "")
            + (f"; no data for: {extra}" if extra else "")
        )
    return named
