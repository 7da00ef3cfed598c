"""Imbalanced classes: balanced loss weights as scikit-learn computes them, and the class-balanced sampler."""

from collections import Counter

import numpy as np
import pytest

from optik.data.balance import balanced_weights, class_counts, loss_weights
from optik.data.loaders import BalancedSampler
from optik.errors import ConfigError


def test_balanced_weights_follow_the_formula_and_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    labels = [0] * 80 + [1] * 10 + [2] * 30
    counts = class_counts(labels, 3)
    assert counts == [80, 10, 30]
    # n_samples / (n_classes * count_c)
    assert balanced_weights(counts) == pytest.approx([120 / (3 * 80), 120 / (3 * 10), 120 / (3 * 30)])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    assert loss_weights("balanced", counts) == pytest.approx(list(expected))


def test_listed_weights_need_one_per_class():
    assert loss_weights([1, 2.5], [10, 3]) == [1.0, 2.5]
    assert loss_weights("none", [10, 3]) is None
    with pytest.raises(ConfigError, match=r"lists 3 weight\(s\), but the data has 2 classes"):
        loss_weights([1, 2, 3], [10, 3])


def test_balanced_sampler_gives_each_class_its_share_over_an_epoch():
    labels = [0] * 1600 + [1] * 200 + [2] * 400  # 8 : 1 : 2
    sampler = BalancedSampler(labels, seed=3)
    for epoch in range(2):
        keys = list(sampler)
        assert len(keys) == len(labels) and {e for _, e in keys} == {epoch}  # epoch length: the train set's size
        drawn = Counter(labels[index] for index, _ in keys)
        for label in range(3):
            assert abs(drawn[label] - len(labels) / 3) <= 0.1 * len(labels) / 3, drawn


def test_balanced_sampler_order_depends_on_seed_and_epoch_only():
    labels = [0] * 50 + [1] * 5
    first, again = BalancedSampler(labels, seed=1), BalancedSampler(labels, seed=1)
    epoch0 = list(first)
    assert list(again) == epoch0
    resumed = BalancedSampler(labels, seed=1, start_epoch=1)
    assert list(resumed) == list(first) != epoch0  # a resumed run redraws epoch 1 as the uninterrupted one
    assert list(BalancedSampler(labels, seed=2)) != epoch0
