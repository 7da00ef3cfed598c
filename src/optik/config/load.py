"""Load a run config: YAML file or preset, `--set a.b=value` overrides, validation with clear errors."""

from __future__ import annotations

import difflib
import re
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from optik.config.pretrained import preprocessing_notes, resolve_model_preprocessing
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
    """The comment a preset opens with (what it is for), its lines joined."""
    lines = []
    for line in preset_text(name).splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(lines)


DATA_TO_SET = {  # what a preset leaves to the user, by task
    "classify": "set data.root (a folder of class sub-folders, optionally in train/ val/ test/; data.classes for a fixed order)",
    "detect": "set data.root (a dataset folder) and data.format (coco, voc or yolo; this preset: {format})",
    "pretrain": "set data.root (a folder of unlabelled images, searched recursively)",
}


def preset_header(name: str, cfg) -> str:
    """The comment `optik config export` opens a preset with: what it is for, and what to set before training."""
    to_set = DATA_TO_SET[cfg.task].format(format=getattr(cfg.data, "format", ""))
    return f"# optik preset {name}: {preset_summary(name)}\n# {to_set}, then: optik train THIS_FILE\n"


def first_sentence(text: str) -> str:
    """Up to and including the first full stop that ends a sentence (not the one of "e.g." or "i.e.")."""
    text = text.strip()
    for end in re.finditer(r"\.\s+(?=[A-Z`])", text):
        if not re.search(r"\b(e\.g|i\.e|etc|vs)$", text[: end.start()]):
            return text[: end.start() + 1]
    return text


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
        raise ConfigError(
            f"{where} is empty (or only comments); write its keys, or start from a preset: "
            f"optik config export resnet18_small {where} --force (optik config list shows them all)"
        )
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
            if node.get(part) is None:  # an absent or null section (train.early_stopping: null) is started
                node[part] = {}
            child = node[part]
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} holds a value, not a section")
            node = child
        node[parts[-1]] = value
    return data


def parse_config(data: dict[str, Any]) -> AnyConfig:
    """Validate a config mapping against its task's schema; the data keys it leaves out take a pretrained
    model's own preprocessing (config/pretrained.py), so every command that reads a config sees the same values."""
    task = data.get("task", "classify")
    schema = TASK_SCHEMAS.get(task) if isinstance(task, str) else None
    if schema is None:
        raise ConfigError(f"task: unknown task {task!r}; choose one of {', '.join(TASK_SCHEMAS)}")
    try:
        cfg = schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, schema)) from None
    return resolve_model_preprocessing(cfg)


def load_config(source: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> AnyConfig:
    """Read a config file or preset (or defaults when None), apply overrides, validate."""
    data = read_yaml(source) if source is not None else {}
    return parse_config(apply_overrides(data, list(overrides)))


def config_to_dict(config: BaseModel) -> dict[str, Any]:
    """Plain YAML/JSON-safe values (paths as strings, tuples as lists)."""
    return config.model_dump(mode="json")


def dump_config(config: BaseModel) -> str:
    """YAML in block style, one key per line and never wrapped, in the schema's order: a file to edit.
    A data key whose value came from the pretrained model (or differs from the model's) says so in a comment."""
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False, width=10_000)
    notes = preprocessing_notes(config) if hasattr(config, "data") else {}
    return annotate(text, "data", notes) if notes else text


def annotate(text: str, section: str, notes: dict[str, str]) -> str:
    """`text` (dump_config's YAML) with `  # note` after each key of the top-level `section` that has one."""
    lines, current = [], None
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            current = line[:-1]
        key = line.strip().partition(":")[0]
        if current == section and line.startswith("  ") and not line.startswith("   ") and key in notes:
            line = f"{line}  # {notes[key]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def describe_validation_error(exc: ValidationError, schema: type[BaseModel]) -> str:
    """One entry per key: the dotted key, what was expected, what was given, the closest valid key for a typo.

    pydantic reports a value that fits no branch of a union (`int | str | list[int]`) once per branch;
    those become one "expected A, B or C; got V", unless the value had a branch's shape (a list) and only
    its items were wrong, which is then what is said.
    """
    problems: dict[str, list[dict]] = {}
    for err in exc.errors():
        parts, tag, rest = _split_loc(err["loc"])
        problems.setdefault(".".join(parts) or "config", []).append({**err, "parts": parts, "tag": tag, "rest": rest})
    return "; ".join(_describe_key(key, errs, schema) for key, errs in problems.items())


def _describe_key(key: str, errs: list[dict], schema: type[BaseModel]) -> str:
    first = errs[0]
    if first["type"] == "extra_forbidden":
        valid = _fields_at(schema, first["parts"][:-1])
        name = first["parts"][-1]
        if ":" in name:  # `{patience:5}`: YAML reads a colon with no space after it as part of the key
            left, _, right = name.partition(":")
            return f"unknown key {key!r}: YAML needs a space after the colon ({left}: {right.strip()})"
        hint = _suggest(name, valid)
        return f"unknown key {key!r}{hint}" + (f"; valid keys here: {', '.join(valid)}" if not hint else "")
    if not first["parts"]:
        return first["msg"].removeprefix("Value error, ")
    if any(err["tag"] for err in errs) and not any(err["rest"] for err in errs):
        expected = list(dict.fromkeys(_expected(err["tag"]) for err in errs if err["tag"]))
        field = _field_at(schema, first["parts"])
        about = f" ({field.description})" if field is not None and field.description else ""
        return f"{key}: expected {_either(expected)}{about}; got {first['input']!r}"
    said = [_describe_one(err) for err in errs if err["rest"] or not err["tag"]]
    hint = VALUE_HINTS.get(first["parts"][-1], "")
    return f"{key}: {'; '.join(dict.fromkeys(said))}" + (f"; {hint}" if hint else "")


def _describe_one(err: dict) -> str:
    if err["type"] == "missing" and err["rest"] and isinstance(err["rest"][-1], int):  # a tuple given too few values
        return f"expected {err['rest'][-1] + 1} values"
    if err["type"] in ("model_type", "dict_type") and err["parts"] and not err["rest"]:
        # pydantic's "valid dictionary or instance of DataConfig" names a class the user never wrote
        return f"expected a section (keys under {err['parts'][-1]}:); got {err.get('input')!r}"
    message = TYPE_EXPECTED.get(err["type"]) or err["msg"].removeprefix("Value error, ").replace(
        "Input should", "should"
    )
    where = f"item {err['rest'][0]}: " if err["rest"] and isinstance(err["rest"][0], int) else ""
    got = err.get("input")
    shown = "" if isinstance(got, (dict, BaseModel)) or "got" in message else f"; got {got!r}"
    return f"{where}{message}{shown}"


VALUE_HINTS = {  # what a user who gave a value out of range usually wants instead
    "val_split": "to train on every image, turn validation off (train.validation: false, or optik train --no-validate)",
}
TYPE_EXPECTED = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "missing": "missing (a required key: give it a value)",
}

# how pydantic names a union's branch in an error's location: "int", "list[str]", "literal['a','b']"
UNION_TAG = re.compile(r"(int|float|str|bool|none|(list|tuple|set|dict|literal)\[.*\]|function-\w+\[.*\])")
TAG_WORDS = {"int": "a whole number", "float": "a number", "str": "a string", "bool": "true or false", "none": "null"}
ITEM_WORDS = {"int": "whole numbers", "float": "numbers", "str": "strings", "bool": "true/false values"}


def _split_loc(loc: tuple) -> tuple[list[str], str | None, list]:
    """(field names, the union branch tag if any, what follows: item indices)."""
    parts: list[str] = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            return parts, None, list(loc[i:])
        if UNION_TAG.fullmatch(part):
            return parts, part, list(loc[i + 1 :])
        parts.append(part)
    return parts, None, []


def _expected(tag: str) -> str:
    container = re.fullmatch(r"(list|tuple|set)\[(\w+)(, \.\.\.)?\]", tag)
    if container:
        return f"a list of {ITEM_WORDS.get(container.group(2), 'values')}"
    if tag.startswith("literal["):
        return "one of " + ", ".join(re.findall(r"'[^']*'", tag))
    return TAG_WORDS.get(tag, tag)


def _either(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


def _field_at(schema: type[BaseModel], path: list[str]):
    model: Any = schema
    field = None
    for part in path:
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, Section) else None
        if field is None:
            return None
        model = field.annotation
    return field


def _fields_at(schema: type[BaseModel], path: list[str]) -> list[str]:
    model: Any = schema
    for part in path:
        field = model.model_fields.get(part) if _is_section(model) else None
        if field is None:
            return []
        # an optional section (`EarlyStoppingConfig | None`): the section's own keys
        model = next((arg for arg in typing.get_args(field.annotation) if _is_section(arg)), field.annotation)
    return list(model.model_fields) if _is_section(model) else []


def _is_section(model: Any) -> bool:
    return isinstance(model, type) and issubclass(model, Section)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
