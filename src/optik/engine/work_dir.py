"""What a training run owns in its work dir, so that a new run never silently lands on an earlier one:
`optik train` into a work dir that holds another run is refused unless it resumes (`--resume`) or
starts over (`--overwrite`, which first removes what optik wrote there and nothing else)."""

from __future__ import annotations

import shutil
from pathlib import Path

from optik.errors import ConfigError

# what `optik train` writes, and the defaults of `optik plot` / `optik report` (they describe the run);
# files a user put there, or wrote with `optik test --out` / `optik predict --out-dir`, stay
RUN_FILES = ("config.yaml", "model.pt", "backbone.pt", "report.html")
RUN_FOLDERS = ("checkpoints", "logs", "plots")


def earlier_run(work_dir: Path) -> list[Path]:
    """The files that show a run already trained here: checkpoints, a model package, logged metrics.
    (config.yaml alone is no run: it is written just before training starts.)"""
    found = sorted((work_dir / "checkpoints").glob("*.ckpt"))
    found += [work_dir / name for name in ("model.pt", "backbone.pt", "logs/metrics.csv")]
    return [path for path in found if path.is_file()]


def claim_work_dir(work_dir: Path, overwrite: bool, weights: Path | None = None) -> None:
    """Refuse a work dir holding another run, or, with `overwrite`, remove that run's files first.

    `weights` (model.weights) must not be among them: the run would delete what it starts from.
    """
    found = earlier_run(work_dir)
    if not found:
        return
    if not overwrite:
        shown = ", ".join(str(path.relative_to(work_dir)) for path in found[:3]) + (", ..." if len(found) > 3 else "")
        raise ConfigError(
            f"{work_dir} holds another run ({shown}); continue it with --resume, start over with --overwrite "
            "(removes its checkpoints, logs, plots, report and model package), or give another --work-dir"
        )
    owned = [work_dir / name for name in (*RUN_FILES, *RUN_FOLDERS)]
    if weights is not None and any(_within(Path(weights), path) for path in owned):
        raise ConfigError(
            f"model.weights {weights} is a file of the run --overwrite would remove; copy it out of {work_dir} "
            "first, or train into another --work-dir"
        )
    for path in owned:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.is_file():
            path.unlink()


def _within(path: Path, owned: Path) -> bool:
    path, owned = path.resolve(), owned.resolve()
    return path == owned or owned in path.parents
