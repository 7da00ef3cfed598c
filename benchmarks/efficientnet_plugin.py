"""An EfficientNet-style model (depthwise convolutions) as an ObjectNet-style plug-in: `--model-class benchmarks/efficientnet_plugin.py:build`."""

import timm


def build():
    return timm.create_model("efficientnet_lite0", num_classes=1000)
