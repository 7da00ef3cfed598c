"""Datasets, class names, image decoding and transforms."""
