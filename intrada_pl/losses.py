"""Losses and entropy maps shared by every stage (ADVENT, IntraDA, InstCal, TENT)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from intrada_pl.data.labels import IGNORE_INDEX


def upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear with ``align_corners=True``, as the reference upsamples logits everywhere."""
    if logits.shape[-2:] == size:
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


def segmentation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over labelled pixels (255 ignored).

    A batch without a single labelled pixel gives 0 with a gradient path, not NaN, so an
    all-ignore crop cannot poison the weights.
    """
    logits = upsample(logits, tuple(labels.shape[-2:]))
    if not bool((labels != IGNORE_INDEX).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)


def self_information(logits: Tensor) -> Tensor:
    """Weighted self-information ``-p * log2(p) / log2(C)`` per class (ADVENT's discriminator input).

    Summed over channels it is the entropy normalised to [0, 1].
    """
    num_classes = logits.shape[1]
    log_p = F.log_softmax(logits.float(), dim=1)
    return -log_p.exp() * log_p / math.log(num_classes)


def normalized_entropy(logits: Tensor) -> Tensor:
    """Per-pixel entropy in [0, 1], shape B x H x W."""
    return self_information(logits).sum(dim=1)


def entropy_loss(logits: Tensor) -> Tensor:
    """MinEnt objective: mean normalised entropy over batch and pixels."""
    return normalized_entropy(logits).mean()


def adversarial_loss(d_logits: Tensor, domain: float) -> Tensor:
    """BCE-with-logits against a constant map of the domain label (source 0, target 1)."""
    return F.binary_cross_entropy_with_logits(d_logits.float(), torch.full_like(d_logits, domain, dtype=torch.float32))
