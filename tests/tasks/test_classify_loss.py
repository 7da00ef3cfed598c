"""The classifier's training loss with class weights: torch's weighted cross-entropy, label smoothing too,
and mixup/cutmix soft targets weighted per sample by their classes' weights."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optik.config.load import config_to_dict
from optik.config.schema import ClassifyConfig
from optik.tasks.training.classify import ClassifyModule, WeightedCrossEntropy

WEIGHTS = [0.5, 4.0, 1.5]


@pytest.fixture
def batch():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(6, 3, generator=generator), torch.tensor([0, 1, 2, 0, 0, 1])


def module(**train) -> ClassifyModule:
    config = config_to_dict(ClassifyConfig(train=train))
    return ClassifyModule(nn.Linear(4, 3), config, ["a", "b", "c"], {}, class_weights=WEIGHTS)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_loss_equals_torch_cross_entropy(batch, smoothing):
    logits, labels = batch
    loss = module(label_smoothing=smoothing).train_loss(logits, labels)
    expected = F.cross_entropy(logits, labels, weight=torch.tensor(WEIGHTS), label_smoothing=smoothing)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, F.cross_entropy(logits, labels, label_smoothing=smoothing))


def test_soft_targets_are_weighted_by_their_classes(batch):
    logits, labels = batch
    loss = WeightedCrossEntropy(WEIGHTS)
    one_hot = F.one_hot(labels, 3).float()
    torch.testing.assert_close(loss(logits, one_hot), F.cross_entropy(logits, labels, weight=torch.tensor(WEIGHTS)))
    # a 70/30 mix of each image with the next one, as mixup makes it
    mixed = 0.7 * one_hot + 0.3 * one_hot.roll(1, dims=0)
    per_sample = -(mixed * logits.log_softmax(-1)).sum(-1)
    sample_weight = 0.7 * torch.tensor(WEIGHTS)[labels] + 0.3 * torch.tensor(WEIGHTS)[labels.roll(1)]
    torch.testing.assert_close(loss(logits, mixed), (per_sample * sample_weight).sum() / sample_weight.sum())


def test_mixup_runs_use_the_weighted_soft_target_loss(batch):
    trained = module(mixup=0.2, label_smoothing=0.1)
    assert trained.mixup is not None and trained.train_loss.label_smoothing == 0  # smoothing is in mixup's targets
    logits, labels = batch
    images = torch.randn(6, 4)
    _, targets = trained.mixup(images.view(6, 4, 1, 1).expand(6, 4, 2, 2).contiguous(), labels)
    assert targets.shape == (6, 3)
    weighted = trained.train_loss(logits, targets)
    unweighted = WeightedCrossEntropy(None)(logits, targets)
    assert torch.isfinite(weighted) and not torch.allclose(weighted, unweighted)
