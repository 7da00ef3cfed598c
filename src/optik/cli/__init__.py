"""The `optik` command: parse options, build a config, call one library function, print the outcome.

The group and the shared options are in `common`; the commands live beside it by theme (run: config,
train, test, predict; tools; serve; data) and register on `main` when imported here."""

from optik.cli import data, run, serve, tools  # noqa: F401 - importing a module registers its commands
from optik.cli.common import main

__all__ = ["main"]
