"""The losses (intrada_pl/losses.py): self-information and entropy, segmentation and adversarial losses."""

from __future__ import annotations

import math

import pytest
import torch

from intrada_pl.losses import adversarial_loss, entropy_loss, normalized_entropy, segmentation_loss, self_information


def test_self_information_channels_sum_to_normalized_entropy():
    logits = torch.randn(2, 19, 5, 7) * 3
    info = self_information(logits)
    assert info.shape == logits.shape
    p = logits.softmax(1)
    expected = -(p * torch.log2(p)).sum(1) / math.log2(19)
    torch.testing.assert_close(info.sum(1), expected, rtol=1e-5, atol=1e-6)
    assert info.sum(1).min() >= 0 and info.sum(1).max() <= 1
    uniform = self_information(torch.zeros(1, 19, 2, 2)).sum(1)
    torch.testing.assert_close(uniform, torch.ones(1, 2, 2))
    torch.testing.assert_close(entropy_loss(logits), normalized_entropy(logits).mean())


def test_segmentation_loss_ignores_255_and_survives_all_ignored():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 4, 4), 255)
    loss = segmentation_loss(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    labels[0, 0, 0] = 2
    expected = torch.nn.functional.cross_entropy(logits[:, :, 0, 0], torch.tensor([2]))
    torch.testing.assert_close(segmentation_loss(logits, labels), expected)


def test_segmentation_loss_upsamples_logits_to_label_size():
    logits = torch.zeros(1, 2, 3, 3)
    logits[:, 1] = 5.0
    loss = segmentation_loss(logits, torch.ones(1, 9, 9, dtype=torch.long))
    assert loss.item() < 0.01


def test_adversarial_loss_domain_labels():
    d = torch.zeros(1, 1, 2, 2)
    assert adversarial_loss(d, 0.0).item() == pytest.approx(math.log(2))
    assert adversarial_loss(torch.full((1, 1, 2, 2), 10.0), 1.0).item() < 1e-4
