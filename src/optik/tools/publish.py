"""`optik publish`: a release file of a trained model, as the mmcls/mmdet `publish_model` tools made.

The output is a model package (weights, config, classes, preprocessing) with no optimizer, scheduler
or loop state, every tensor on the CPU, loadable with `torch.load(..., weights_only=True)`, and
named `<stem>-<first 8 hex digits of its sha256><suffix>` so a download can be checked against its name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from optik.errors import ConfigError
from optik.files import write_atomic
from optik.models.package import load_package


def published_name(out: Path, digest: str) -> Path:
    suffix = out.suffix or ".pt"
    return out.with_name(f"{out.stem if out.suffix else out.name}-{digest[:8]}{suffix}")


def publish(source: str | Path, out: str | Path) -> Path:
    """Write the release file of `source` (model.pt or a training checkpoint) next to `out`; returns its path."""
    import io

    source, out = Path(source), Path(out)
    if out.is_dir():
        raise ConfigError(f"OUT must be a file name (e.g. {out / 'resnet50_digits.pt'}), not a folder")
    package = load_package(source)
    package.state_dict = {k: v.detach().cpu().contiguous() for k, v in package.state_dict.items()}
    buffer = io.BytesIO()
    torch.save(package.to_dict(), buffer)
    data = buffer.getvalue()
    final = published_name(out, hashlib.sha256(data).hexdigest())
    return write_atomic(final, data)
