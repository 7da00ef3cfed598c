"""ObjectNet's own mapping files: ImageNet (PyTorch index) predictions -> ObjectNet class ids.

The dataset ships `mappings/` with:
- `folder_to_objectnet_label.json`: `{"folder": "ObjectNet label", ...}` (313 labels);
- `objectnet_to_imagenet_1k.json`: `{"ObjectNet label": "ImageNet label; ImageNet label", ...}`;
- `imagenet_to_label_2012_v2`: one ImageNet label per line, line N = ImageNet 2012 id N;
- `pytorch_to_imagenet_2012_id.json`: `{"PyTorch index": ImageNet 2012 id, ...}`.

An ObjectNet id is the index of its label in the case-sensitive sorted list of the labels.
Several ImageNet classes can map to one ObjectNet id; a class that maps to none gives -1.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from optik.errors import DataError

MAPPING_FILES = (
    "folder_to_objectnet_label.json",
    "objectnet_to_imagenet_1k.json",
    "imagenet_to_label_2012_v2",
    "pytorch_to_imagenet_2012_id.json",
)


def objectnet_labels(mappings: str | Path) -> list[str]:
    """The ObjectNet labels in id order (case-sensitive sort)."""
    folders = _read_json(Path(mappings), "folder_to_objectnet_label.json")
    return sorted(set(folders.values()))


def pytorch_to_objectnet(mappings: str | Path, num_outputs: int = 1000) -> np.ndarray:
    """Array `ids` with `ids[pytorch_index]` = the ObjectNet id of that ImageNet class, or -1."""
    folder = Path(mappings)
    missing = [name for name in MAPPING_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"--objectnet-mappings {folder}: missing {', '.join(missing)} (the ObjectNet dataset's mappings/ folder has them)"
        )
    label_id = {label: i for i, label in enumerate(objectnet_labels(folder))}
    imagenet_lines = (folder / "imagenet_to_label_2012_v2").read_text(encoding="utf-8").splitlines()
    imagenet_id = {line.strip(): i for i, line in enumerate(imagenet_lines) if line.strip()}
    pytorch_of = {int(v): int(k) for k, v in _read_json(folder, "pytorch_to_imagenet_2012_id.json").items()}
    ids = np.full(num_outputs, -1, dtype=np.int64)
    for label, names in _read_json(folder, "objectnet_to_imagenet_1k.json").items():
        if label not in label_id:
            raise DataError(
                f"objectnet_to_imagenet_1k.json names {label!r}, which folder_to_objectnet_label.json does not have"
            )
        for name in (n.strip() for n in names.split(";") if n.strip()):
            if name not in imagenet_id:
                raise DataError(
                    f"objectnet_to_imagenet_1k.json maps {label!r} to {name!r}, which is not a line of imagenet_to_label_2012_v2"
                )
            index = pytorch_of.get(imagenet_id[name])
            if index is None or index >= num_outputs:
                raise DataError(
                    f"ImageNet class {name!r} (id {imagenet_id[name]}) has no PyTorch index below {num_outputs} in pytorch_to_imagenet_2012_id.json"
                )
            ids[index] = label_id[label]
    return ids


def _read_json(folder: Path, name: str) -> dict:
    try:
        content = json.loads((folder / name).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{folder / name} not found (the ObjectNet dataset's mappings/ folder has it)") from None
    except ValueError as exc:
        raise DataError(f"{folder / name} is not valid JSON ({exc})") from None
    if not isinstance(content, dict):
        raise DataError(f"{folder / name} should hold a JSON object")
    return content
