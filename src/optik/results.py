"""What a predictor returns per image: a classification, a detection, or the reason it failed (numpy only: writers import it without torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Classification:
    """Class probabilities (softmax) of one image."""

    source: str
    classes: list[str]
    probs: np.ndarray

    ok = True

    @property
    def label(self) -> str:
        return self.classes[int(self.probs.argmax())]

    @property
    def index(self) -> int:
        return int(self.probs.argmax())

    @property
    def score(self) -> float:
        return float(self.probs.max())

    def top(self, k: int) -> list[tuple[str, float]]:
        """The k most likely classes, highest first (k is clamped to the class count)."""
        order = np.argsort(-self.probs, kind="stable")[: max(1, min(k, len(self.classes)))]
        return [(self.classes[i], float(self.probs[i])) for i in order]

    def to_dict(self, top_k: int | None = None) -> dict[str, float]:
        """`{class: score}` in class order, or the top K in score order."""
        if top_k is None:
            return dict(zip(self.classes, np.asarray(self.probs).tolist()))
        return dict(self.top(top_k))


@dataclass
class Detection:
    """The objects found in one image, highest score first, in the image's own pixel coordinates.

    Attributes:
        source: the image's name (path, or what the caller named it).
        classes: class names; `labels` index into them (0-based, no background class).
        width, height: size of the decoded image the coordinates refer to.
        boxes: (N, 4) float32 `x0, y0, x1, y1` in pixels (x1/y1 exclusive edges, as torchvision).
        labels: (N,) int64 class indices.
        scores: (N,) float32 confidences in [0, 1].
        masks: (N, height, width) float32 soft masks in [0, 1] for instance segmentation models, else None.
    """

    source: str
    classes: list[str]
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    masks: np.ndarray | None = None

    ok = True

    def __len__(self) -> int:
        return len(self.scores)

    def label_names(self) -> list[str]:
        return [self.classes[int(i)] for i in self.labels]

    def keep(self, selected: np.ndarray) -> Detection:
        """The same detection with only the objects `selected` picks (a boolean mask or indices)."""
        masks = None if self.masks is None else self.masks[selected]
        return Detection(
            self.source,
            self.classes,
            self.width,
            self.height,
            self.boxes[selected],
            self.labels[selected],
            self.scores[selected],
            masks,
        )

    def above(self, min_score: float | None) -> Detection:
        """Only the objects scoring at least `min_score` (all when None)."""
        return self if min_score is None else self.keep(self.scores >= min_score)


@dataclass
class ImageFailure:
    """An input that could not be predicted, and why."""

    source: str
    reason: str

    ok = False


Result = Classification | Detection | ImageFailure
