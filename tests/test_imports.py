"""The house rules of DESIGN §4 that the import-linter contracts (pyproject.toml) do not state on their
own: no import cycle anywhere (a package and its own modules included), one owner per task, and
writers and predictors that stay free of what they do not need at run time."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp

from optik.config.schema import TASK_SCHEMAS
from optik.tasks import TASKS

SRC = Path(__file__).resolve().parents[1] / "src" / "optik"


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), imports inside functions included."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_between_optik_modules():
    graph = grimp.build_graph("optik")
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    package = tmp_path / "loopy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from loopy import b\n")
    (package / "b.py").write_text("from loopy import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cycles(grimp.build_graph("loopy")) == [["loopy.a", "loopy.b"]]


def test_every_task_of_the_schema_has_its_task_object():
    assert set(TASKS) == set(TASK_SCHEMAS)
    assert all(task.name == name for name, task in TASKS.items())


def test_only_tasks_and_config_branch_on_the_task_name():
    branch = re.compile(r"""task\s*(==|!=)|\.task\s+(not\s+)?in\b|\[["']task["']\]\s*(==|!=)""")
    offenders = [
        f"{path.relative_to(SRC)}:{number}: {line.strip()}"
        for path in SRC.rglob("*.py")
        if path.relative_to(SRC).parts[0] not in ("tasks", "config")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if branch.search(line)
    ]
    assert offenders == []


def imported_by(*modules: str) -> set[str]:
    code = f"import sys; import {', '.join(modules)}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(run.stdout.split())


def test_writers_and_results_do_not_import_torch():
    loaded = imported_by(
        "optik.results",
        "optik.outputs.opex",
        "optik.outputs.roi_csv",
        "optik.outputs.polygons",
        "optik.outputs.classification",
        "optik.outputs.objectnet",
        "optik.outputs.detection",
    )
    assert "torch" not in loaded and "optik" in loaded


def test_prediction_and_evaluation_do_not_import_lightning():
    loaded = imported_by(
        "optik.tasks.loading",
        "optik.engine.evaluate",
        "optik.inference.detector",
        "optik.inference.batch",
        "optik.services.poller",
        "optik.services.redis_service",
        "optik.metrics.coco",
    )
    assert "lightning" not in loaded and "torch" in loaded


def modules_loaded_by_command(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run `python -X importtime -m optik.cli ARGS` as a user would; what it printed and the top-level modules it imported."""
    run = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "optik.cli", *args], capture_output=True, text=True, cwd=cwd
    )
    names = {
        line.rsplit("|", 1)[-1].strip().split(".")[0] for line in run.stderr.splitlines() if "import time:" in line
    }
    return run, names


def test_clients_config_and_help_start_without_torch(tmp_path, redis_server):
    """A scorer, a client of a service and the config/help commands start in a fraction of a second: no torch."""
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "p.csv").write_text("a.png,1,0.9\n")
    (tmp_path / "a.json").write_text('{"a.png": 1}')
    port = str(redis_server.port)
    commands = {
        ("--help",): 0,
        ("train", "--help"): 0,
        ("serve", "http", "--help"): 0,
        ("config", "list"): 0,
        ("config", "show", "resnet18_small"): 0,
        ("objectnet", "score", "p.csv", "a.json"): 0,
        # nothing serves the channel: the client gives up after its timeout, having sent the image
        ("redis", "send", "a.png", "--redis-port", port, "--timeout", "0.5"): 2,
    }
    for args, code in commands.items():
        run, loaded = modules_loaded_by_command(*args, cwd=tmp_path)
        assert run.returncode == code, (args, run.stderr[-2000:])
        assert "optik" in loaded and not loaded & {"torch", "torchvision", "timm", "lightning"}, (args, loaded)
