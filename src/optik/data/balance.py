"""Imbalanced classes: the class counts of a training set and the loss weights that even them out."""

from __future__ import annotations

from optik.errors import ConfigError


def class_counts(labels: list[int], num_classes: int) -> list[int]:
    """Images per class, in class order."""
    counts = [0] * num_classes
    for label in labels:
        counts[label] += 1
    return counts


def balanced_weights(counts: list[int]) -> list[float]:
    """n_samples / (n_classes * count_c), as scikit-learn's compute_class_weight("balanced"): each class then
    adds the same total weight to the loss. A class without training images gets weight 0 (it adds nothing anyway)."""
    total, present = sum(counts), sum(1 for c in counts if c)
    return [total / (present * c) if c else 0.0 for c in counts]


def loss_weights(setting: str | list[float], counts: list[int]) -> list[float] | None:
    """The class weights of `train.class_weights` for a training set with these counts (None: unweighted)."""
    if setting == "none":
        return None
    if setting == "balanced":
        return balanced_weights(counts)
    if len(setting) != len(counts):
        raise ConfigError(
            f"train.class_weights lists {len(setting)} weight(s), but the data has {len(counts)} classes; "
            f"give one weight per class in class order, or use train.class_weights: balanced"
        )
    return [float(w) for w in setting]
