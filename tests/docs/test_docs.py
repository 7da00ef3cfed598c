"""The docs cannot go stale: the configuration reference holds every schema key, and every `optik ...` command
line in the pages and the README names a real command with real options (docs/hooks.py, run by mkdocs too)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, Field

from optik.cli import main
from optik.config.schema import TASK_SCHEMAS, ClassifyConfig, DataConfig

ROOT = Path(__file__).parents[2]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("optik_docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def schema_keys(schema: type[BaseModel], prefix: str = "") -> dict[str, object]:
    """Dotted key -> field of every key a config of `schema` can hold, sections included."""
    keys = {}
    for name, field in schema.model_fields.items():
        keys[prefix + name] = field
        for part in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(part, type) and issubclass(part, BaseModel):
                keys.update(schema_keys(part, f"{prefix}{name}."))
    return keys


def task_section(page: str, task: str) -> str:
    sections = re.split(r"^## ", page, flags=re.M)
    return next(s for s in sections if s.startswith(f"`task: {task}`"))


def missing_from(page: str, task: str, schema: type[BaseModel]) -> list[str]:
    """The leaf keys of `schema` that have no row in the `task` section of the reference page."""
    rows = task_section(page, task)
    return [
        key
        for key, field in schema_keys(schema).items()
        if not _is_section(field.annotation) and f"| `{key}` |" not in rows
    ]


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def test_the_config_reference_has_a_row_for_every_key_of_every_task(hooks):
    page = hooks.config_reference()
    for task, schema in TASK_SCHEMAS.items():
        assert missing_from(page, task, schema) == [], task
    detect = task_section(page, "detect")
    assert '| `data.format` | one of `coco`, `voc`, `yolo` | `"coco"` | annotation format |' in detect
    classify = task_section(page, "classify")
    assert "| `train.early_stopping` | section or null | `null` |" in classify
    assert "| `train.early_stopping.patience` | int | required |" in classify
    assert "| `data.augment.ratio` | [float, float] | `[0.75, 1.33333]` |" in classify
    for name in ("resnet18_small", "fcos_resnet18_small", "ssl_resnet18_small"):
        assert f"| `{name}` |" in page


def test_a_key_missing_from_the_reference_is_found(hooks):
    class NewData(DataConfig):
        new_key: int = Field(3, description="a key added to the schema")

    class NewConfig(ClassifyConfig):
        data: NewData = Field(default_factory=NewData)

    stock = hooks.config_reference()
    assert missing_from(stock, "classify", NewConfig) == ["data.new_key"]
    regenerated = hooks.config_reference({"classify": NewConfig}, presets=[])
    assert missing_from(regenerated, "classify", NewConfig) == []
    assert "| `data.new_key` | int | `3` | a key added to the schema |" in regenerated


def test_every_key_of_the_schema_says_what_it_is():
    undescribed = [
        f"{task}: {key}"
        for task, schema in TASK_SCHEMAS.items()
        for key, field in schema_keys(schema).items()
        if not _is_section(field.annotation) and not field.description
    ]
    assert undescribed == [], "add Field(description=...) in src/optik/config/schema.py"


def test_every_optik_command_line_in_the_docs_and_the_readme_is_a_real_command(hooks):
    problems, lines = [], 0
    for page in PAGES:
        text = page.read_text()
        lines += sum(len(hooks.optik_invocations(command)) for _, command in hooks.command_lines(text))
        problems += [f"{page.relative_to(ROOT)}, {problem}" for problem in hooks.check_markdown(text, main)]
    assert problems == []
    assert lines > 80  # the pages' code blocks were found and read


SAMPLE = """
Some prose with `optik train --made-up-inline` (inline code is prose, not checked).

```console
$ optik train my.yaml --work-dir runs/x \\
    --epochz 3   # a comment that mentions --not-an-option
error: printed output, not a command --nor-this
$ optik serve pol m.pt
```

```bash
optik serve poll m.pt --in a --out b --prediction_in c | tee log.txt --tee-option
OPTIK_CLASSES=a,b optik predict m.pt imgs/ --top-k=3 --bbox-as-fallback -1 --colour red
docker run --rm -v "$PWD":/workspace -u $(id -u):$(id -g) optik:cuda batch-predict in/ out.csv --no-softmax
torchrun --nproc_per_node 2 -m optik.cli train my.yaml -h --devicez 2
```

```yaml
# not a shell block
command: optik train --anything
```
"""


def test_a_made_up_option_or_command_in_a_command_line_is_reported(hooks):
    problems = hooks.check_markdown(SAMPLE, main)
    assert [p.split(" (in: ")[0] for p in problems] == [
        "line 5: `optik train` has no option --epochz",
        "line 8: `optik serve` has no command 'pol' (did you mean poll?)",
        "line 13: `optik predict` has no option --colour",
        "line 15: `optik train` has no option --devicez (did you mean --devices?)",
    ]
    assert problems[0].endswith(
        "(in: optik train my.yaml --work-dir runs/x --epochz 3   # a comment that mentions --not-an-option)"
    )


def test_a_command_line_is_read_as_the_shell_reads_it(hooks):
    block = (
        "```bash\noptik test m.pt \\\n  data/ --out r.json  # scores\nls | optik data check x && optik --version\n```\n"
    )
    assert hooks.command_lines(block) == [
        (2, "optik test m.pt data/ --out r.json  # scores"),
        (4, "ls | optik data check x && optik --version"),
    ]
    assert hooks.optik_invocations("ls | optik data check x && optik --version") == [
        ["data", "check", "x"],
        ["--version"],
    ]
    assert hooks.optik_invocations("optik test m.pt --out r.json  # --fake in a comment") == [
        ["test", "m.pt", "--out", "r.json"]
    ]
    assert hooks.optik_invocations("docker build -t optik .") == []
