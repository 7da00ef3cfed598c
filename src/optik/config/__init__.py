"""Typed run configuration: the pydantic schema, YAML loading with overrides, and presets."""

from optik.config.load import config_to_dict, load_config, parse_config
from optik.config.schema import ClassifyConfig

__all__ = ["ClassifyConfig", "config_to_dict", "load_config", "parse_config"]
