"""Batched prediction from a model package: shared by `optik predict`, `optik test`, services and batch jobs."""

from optik.inference.predictor import Classification, ImageFailure, Predictor

__all__ = ["Classification", "ImageFailure", "Predictor"]
