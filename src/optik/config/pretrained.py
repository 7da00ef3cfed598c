"""A pretrained model's own preprocessing: the mean, std, interpolation, crop_pct and input size timm
records for published weights (`pretrained_cfg`) become the defaults of the data keys a config leaves out.

The rule: it applies when `model.pretrained` is true (the weights of the name's default tag, which is
what timm fetches) or when `model.name` carries a tag such as `resnet50.a1_in1k` (those weights, also
when they come from `model.weights`, the offline way). An untagged name without `model.pretrained`
starts from random weights, and keeps the ImageNet defaults. Only what the user's YAML or `--set`
leaves out is filled (pydantic's `model_fields_set`), never a value they wrote. timm knows these
records without any weights, so nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

from optik.config.schema import DataConfig, PretrainDataConfig
from optik.errors import ConfigError

PREPROCESSING_KEYS = ("image_size", "crop_pct", "interpolation", "mean", "std")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")  # what data.interpolation takes


def weights_name(model_cfg) -> str | None:
    """The timm name whose published preprocessing applies to this model, or None (see the module's rule)."""
    name = model_cfg.name
    if ".py:" in name:  # a plug-in (models.classify.is_plugin): it brings no pretrained_cfg
        return None
    if model_cfg.pretrained or "." in name:
        return name
    return None


def model_preprocessing(name: str) -> dict[str, Any]:
    """The data keys timm's `pretrained_cfg` of `name` gives values for (only those our schema can take)."""
    import timm
    from timm.models import get_pretrained_cfg

    if not timm.is_model(name):
        return {}  # check_architecture names the mistake, with similar names, before any data is read
    try:
        pretrained = get_pretrained_cfg(name)
    except RuntimeError:  # "Invalid pretrained tag (x) for resnet50."
        arch = name.partition(".")[0]
        tags = timm.list_pretrained(f"{arch}.*")
        raise ConfigError(
            f"model.name: timm has no weights {name!r}; {arch} has "
            + (", ".join(tags) if tags else "no published weights")
            + f" (or give the bare name {arch})"
        ) from None
    if pretrained is None:
        return {}
    values: dict[str, Any] = {}
    size = pretrained.input_size
    if size and len(size) == 3 and size[1] == size[2]:  # data.image_size is square
        values["image_size"] = int(size[1])
    if pretrained.crop_pct:
        values["crop_pct"] = float(pretrained.crop_pct)
    if pretrained.interpolation in INTERPOLATIONS:
        values["interpolation"] = pretrained.interpolation
    for key in ("mean", "std"):
        value = getattr(pretrained, key)
        if value is not None and len(value) == 3:
            values[key] = tuple(float(v) for v in value)
    return values


def resolve_model_preprocessing(cfg):
    """`cfg` with the data keys it leaves out taken from its pretrained model; the data section
    records, per key, where the value came from or how the model's differs (for `optik config show`)."""
    data = cfg.data
    name = weights_name(cfg.model)
    if name is None or not isinstance(data, (DataConfig, PretrainDataConfig)):
        return cfg  # detectors keep theirs: torchvision's builders normalise on their own
    model_values = model_preprocessing(name)
    unset = {k: v for k, v in model_values.items() if k not in data.model_fields_set}
    notes = {k: f"from {name}" for k in unset}
    for key in PREPROCESSING_KEYS:
        if key in model_values and key not in unset and not same(getattr(data, key), model_values[key]):
            notes[key] = f"{name}'s own is {shown(model_values[key])} (leave the key out to use it)"
    resolved = data.model_copy(update=unset)
    resolved._notes = notes
    return cfg.model_copy(update={"data": resolved})


def same(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(abs(x - y) < 1e-9 for x, y in zip(a, b))
    return a == b if isinstance(a, str) else abs(a - b) < 1e-9


def shown(value) -> str:
    return "[" + ", ".join(f"{v:g}" for v in value) + "]" if isinstance(value, tuple) else str(value)


def preprocessing_notes(cfg) -> dict[str, str]:
    """Data key -> a note on its value and the pretrained model's (empty when no model's applied)."""
    return dict(getattr(cfg.data, "_notes", None) or {})
