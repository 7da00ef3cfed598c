"""The benchmark's model as an ObjectNet-style plug-in: `--model-class benchmarks/resnet50_plugin.py:build`."""

import timm


def build():
    return timm.create_model("resnet50", num_classes=1000)
