"""optik: train, evaluate and serve image classifiers and object detectors on PyTorch."""

__version__ = "0.1.0"
