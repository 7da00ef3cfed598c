"""The tasks optik trains: classify, detect and pretrain, one object each, found by the name a config
or a model package gives (`task:`). Everything that differs between tasks is asked of this object."""

from __future__ import annotations

from optik.errors import ConfigError
from optik.tasks.base import Task
from optik.tasks.classify import CLASSIFY
from optik.tasks.detect import DETECT
from optik.tasks.pretrain import PRETRAIN

TASKS: dict[str, Task] = {"classify": CLASSIFY, "detect": DETECT, "pretrain": PRETRAIN}


def get_task(name: str) -> Task:
    """The task called `name` (a config's or a package's `task`)."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}: this optik version has {', '.join(TASKS)}")
    return TASKS[name]
