"""Build hooks of the docs site (`hooks:` in mkdocs.yml): the configuration reference is generated from the schema,
and every `optik ...` command line in the pages' code blocks is checked against the click commands.

Both run on every `mkdocs build`, so the reference cannot fall behind the schema and `--strict` fails on a
command line that names a command or an option optik does not have. tests/docs/test_docs.py calls the same
functions, on the pages and on README.md (which the site does not include)."""

from __future__ import annotations

import difflib
import json
import re
import shlex
import types
import typing
from pathlib import Path
from typing import Literal, NamedTuple, Union

import click
from pydantic import BaseModel

CONFIG_PAGE = "reference/config.md"

# --------------------------------------------------------------------------------------- configuration reference


class Row(NamedTuple):
    key: str
    type: str
    default: str
    description: str


def schema_rows(schema: type[BaseModel], prefix: str = "") -> list[Row]:
    """One row per key of `schema`, sections flattened into dotted keys (`data.augment.hflip`)."""
    rows = []
    for name, field in schema.model_fields.items():
        key = prefix + name
        section = _section_in(field.annotation)
        if section is None or _is_optional(field.annotation):
            rows.append(Row(key, type_text(field.annotation), default_text(field), field.description or ""))
        if section is not None:  # an optional section (train.early_stopping) has a row of its own, then its keys
            rows.extend(schema_rows(section, key + "."))
    return rows


def type_text(annotation) -> str:
    """A type as a user writes its values in YAML: `int`, `path or null`, one of `a`, `b`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in args)
    if origin in (Union, types.UnionType):
        return " or ".join(type_text(arg) for arg in args)
    if origin in (list, tuple):
        if origin is tuple and Ellipsis not in args:
            return "[" + ", ".join(type_text(arg) for arg in args) + "]"
        return f"list of {type_text(args[0])}"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    return f"`{json.dumps(_plain(value))}`"


def _plain(value):
    if isinstance(value, float):
        return float(f"{value:.6g}")  # 4/3 reads 1.33333, not 1.3333333333333333
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _section_in(annotation) -> type[BaseModel] | None:
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _is_optional(annotation) -> bool:
    return type(None) in typing.get_args(annotation)


def config_reference(
    schemas: dict[str, type[BaseModel]] | None = None, presets: list[tuple[str, str, str]] | None = None
) -> str:
    """The reference page: a table of every key per task, and the presets (name, task, what it is for)."""
    if schemas is None:
        from optik.config.schema import TASK_SCHEMAS as schemas
    if presets is None:
        presets = shipped_presets()
    out = [
        "# Configuration reference",
        "",
        "Every key of a run config, per task, generated from the schema (`src/optik/config/schema.py`) each time",
        "the site is built. `optik config show FILE_OR_PRESET` prints a config with every key resolved, and",
        "`--set KEY=VALUE` on `optik train`, `optik config show` and `optik config export` overrides any key below.",
        "",
    ]
    for task, schema in schemas.items():
        out += [f"## `task: {task}`", "", "| key | type | default | description |", "|---|---|---|---|"]
        out += [f"| `{r.key}` | {r.type} | {r.default} | {_cell(r.description)} |" for r in schema_rows(schema)]
        out.append("")
    out += [
        "## Presets",
        "",
        "`optik config list` names them; `optik config export NAME my.yaml` writes one out for editing, and a",
        "preset name works wherever a config file does (`optik train resnet18_small --set data.root=data`).",
        "",
        "| preset | task | for |",
        "|---|---|---|",
    ]
    out += [f"| `{name}` | {task} | {_cell(summary)} |" for name, task, summary in presets]
    return "\n".join(out) + "\n"


def shipped_presets() -> list[tuple[str, str, str]]:
    from optik.config.load import preset_names, preset_summary, read_yaml

    return [(name, read_yaml(name).get("task", "classify"), preset_summary(name)) for name in preset_names()]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------------------- command lines in the pages

FENCE = re.compile(r"^\s*(```|~~~)\s*([\w-]*)")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"|", "||", "&&", ";", "&"}
WRAPPERS = {"srun", "sudo", "time", "nohup", "exec"}


def command_lines(markdown: str) -> list[tuple[int, str]]:
    """(line number, command) of every shell line in the fenced shell blocks of `markdown`, continuations joined.

    In a block where some lines start with a `$ ` prompt, only those are commands (the rest is their output)."""
    lines = markdown.splitlines()
    found, block, language = [], None, ""
    for number, line in enumerate(lines, 1):
        fence = FENCE.match(line)
        if fence and block is None:
            block, language = [], fence.group(2).lower()
        elif fence:
            if language in SHELL_LANGUAGES:
                found += _commands_of(block)
            block = None
        elif block is not None:
            block.append((number, line))
    return found


def _commands_of(block: list[tuple[int, str]]) -> list[tuple[int, str]]:
    prompted = any(line.lstrip().startswith("$ ") for _, line in block)
    commands, pending, first = [], "", 0
    for number, line in block:
        if pending:
            line = line.lstrip()
        elif prompted and not line.lstrip().startswith("$ "):
            continue
        else:
            first, line = number, line.lstrip().removeprefix("$ ")
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1].rstrip() + " "
            continue
        commands.append((first, pending + line))
        pending = ""
    return commands


def optik_invocations(command: str) -> list[list[str]]:
    """The arguments given to `optik` in a shell command: `optik ...`, `python -m optik(.cli) ...`, `torchrun ...
    -m optik.cli ...`, `srun optik ...`, and `docker run ... optik ...` (the image's entry point is `optik`)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # an unclosed quote ("the model's own" in prose): plain words then
        tokens = command.split()
    segments, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    return [args for args in map(_optik_args, segments) if args is not None]


def _optik_args(words: list[str]) -> list[str] | None:
    while words and (re.fullmatch(r"[A-Za-z_]\w*=.*", words[0]) or words[0] in WRAPPERS):
        words = words[1:]
    if not words:
        return None
    if words[0] == "optik":
        return words[1:]
    if words[0] == "docker" and "run" in words[:2]:
        image = next((i for i, word in enumerate(words) if word == "optik" or word.startswith("optik:")), None)
        return None if image is None else words[image + 1 :]
    for i, word in enumerate(words[:-1]):
        if word == "-m" and words[i + 1] in ("optik", "optik.cli"):
            return words[i + 2 :]
    return None


def check_invocation(args: list[str], group: click.Group) -> list[str]:
    """What is wrong with `optik ARGS`: a command that does not exist, or an option its command does not have."""
    # the group's context settings (`-h` besides `--help`) reach every subcommand, as in a real run
    command, context, path = group, click.Context(group, info_name="optik", **group.context_settings), ["optik"]
    problems = []
    for arg in args:
        if isinstance(command, click.Group) and not arg.startswith("-"):
            sub = command.commands.get(arg)
            if sub is None:
                return [f"`{' '.join(path)}` has no command {arg!r}{_did_you_mean(arg, command.commands)}"]
            command, context = sub, click.Context(sub, info_name=arg, parent=context, **sub.context_settings)
            path.append(arg)
        elif arg.startswith("-") and arg != "-" and not _is_number(arg):
            name = arg.split("=", 1)[0]
            known = _option_names(command, context)
            if name not in known:
                problems.append(f"`{' '.join(path)}` has no option {name}{_did_you_mean(name, known)}")
    return problems


def check_markdown(markdown: str, group: click.Group) -> list[str]:
    """`line N: problem` for each wrong `optik` command line in the fenced shell blocks of `markdown`."""
    return [
        f"line {number}: {problem} (in: {command.strip()})"
        for number, command in command_lines(markdown)
        for args in optik_invocations(command)
        for problem in check_invocation(args, group)
    ]


def _option_names(command: click.Command, context: click.Context) -> set[str]:
    names = set(command.get_help_option_names(context))
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts + param.secondary_opts)
    return names


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else ""


# --------------------------------------------------------------------------------------- the mkdocs hooks


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, CONFIG_PAGE, content=config_reference()))
    return files


def on_page_markdown(markdown, page, config, files):
    from mkdocs.plugins import get_plugin_logger

    from optik.cli import main

    log = get_plugin_logger("optik-docs")
    for problem in check_markdown(markdown, main):
        log.warning(f"{page.file.src_uri}, {problem}")
    return markdown
