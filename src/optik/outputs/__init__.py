"""Prediction output formats, written atomically."""
