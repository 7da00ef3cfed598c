"""Batched prediction with a loaded network: shared by `optik predict`, `optik test`, services and batch jobs
(`optik.tasks.loading` turns a model file into the right predictor)."""

from optik.inference.predictor import Classifier, Predictor
from optik.results import Classification, ImageFailure

__all__ = ["Classification", "Classifier", "ImageFailure", "Predictor"]
