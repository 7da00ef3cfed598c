"""Everyday tools around training: sample data, FLOPs, publishing, export, dataset checks."""
