"""Load a run config: YAML file or preset, `--set a.b=value` overrides, validation with clear errors."""

from __future__ import annotations

import difflib
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from optik.config.schema import TASK_SCHEMAS, ClassifyConfig, DetectConfig, PretrainConfig, Section
from optik.errors import ConfigError

AnyConfig = ClassifyConfig | DetectConfig | PretrainConfig


def preset_names() -> list[str]:
    """Names of the shipped presets (config/presets/*.yaml)."""
    folder = resources.files("optik.config") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}{_suggest(name, preset_names())}; `optik config list` names them")
    return (resources.files("optik.config") / "presets" / f"{name}.yaml").read_text()


def preset_summary(name: str) -> str:
    """The first comment line of a preset: what it is for."""
    for line in preset_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def read_yaml(source: str | Path) -> dict[str, Any]:
    """A YAML mapping from a file path or a preset name."""
    path = Path(source)
    if path.is_file():
        text, where = path.read_text(), str(path)
    elif str(source) in preset_names():
        text, where = preset_text(str(source)), f"preset {source}"
    elif path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        raise ConfigError(f"config file not found: {path}")
    else:
        raise ConfigError(f"{source!r} is neither a config file nor a preset{_suggest(str(source), preset_names())}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parse as YAML scalars) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value (e.g. train.epochs=5), got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} holds a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def parse_config(data: dict[str, Any]) -> AnyConfig:
    """Validate a config mapping against its task's schema."""
    task = data.get("task", "classify")
    schema = TASK_SCHEMAS.get(task) if isinstance(task, str) else None
    if schema is None:
        raise ConfigError(f"task: unknown task {task!r}; choose one of {', '.join(TASK_SCHEMAS)}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, schema)) from None


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> AnyConfig:
    """Read a config file or preset (or defaults when None), apply overrides, validate."""
    data = read_yaml(source) if source is not None else {}
    return parse_config(apply_overrides(data, list(overrides)))


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """Plain YAML/JSON-safe values (paths as strings, tuples as lists)."""
    return config.model_dump(mode="json")


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)


def describe_validation_error(exc: ValidationError, schema: type[BaseModel]) -> str:
    """One line per problem: the dotted key, what was wrong, the closest valid key for a typo."""
    lines = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        key = ".".join(loc) or "config"
        if err["type"] == "extra_forbidden":
            valid = _fields_at(schema, loc[:-1])
            hint = _suggest(loc[-1], valid)
            lines.append(f"unknown key {key!r}{hint}" + (f"; valid keys here: {', '.join(valid)}" if not hint else ""))
        elif key == "config" or not loc:
            lines.append(err["msg"].removeprefix("Value error, "))
        else:
            got = err.get("input")
            message = err["msg"].removeprefix("Value error, ")
            shown = "" if isinstance(got, (dict, BaseModel)) or "got" in message else f" (got {got!r})"
            if err["type"] == "missing" and loc and loc[-1].isdigit():  # a tuple given too few values
                key, message, shown = ".".join(loc[:-1]), f"expected {int(loc[-1]) + 1} values", ""
            lines.append(f"{_strip_union_suffix(key)}: {message}{shown}")
    merged: dict[str, list[str]] = {}
    for line in lines:  # one entry per key: union types report one failure per branch
        key, sep, rest = line.partition(": ")
        merged.setdefault(key if sep else line, []).append(rest if sep else "")
    return "; ".join(
        f"{key}: {' or '.join(dict.fromkeys(parts))}" if parts[0] else key for key, parts in merged.items()
    )


def _strip_union_suffix(key: str) -> str:
    # pydantic appends the union branch ("train.devices.int", "data.classes.list[str]"); users know only the key
    return re.sub(r"\.(int|str|float|bool|list\[\w+\])$", "", key)


def _fields_at(schema: type[BaseModel], path: list[str]) -> list[str]:
    model: Any = schema
    for part in path:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, Section) else None
        if field is None:
            return []
        model = field.annotation
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, Section) else []


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
