"""Metrics of a model over a labelled set, free of the training loop: classification, COCO detection, and the result files."""
