"""Sliding-window inference: logits of an image from overlapping windows, for networks trained on
crops (the MiT recipe trains on 512x512). Whole-image inference stays the default everywhere.

The windows follow the law mmsegmentation's ``slide`` mode documents: ``ceil((size - window) /
stride) + 1`` windows per axis, the last one moved back to end at the border, each window's logits
upsampled to the window and summed, divided by how many windows cover each pixel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from intrada_pl.losses import upsample


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Start offsets along one axis: every ``stride``, the last window ending at the border."""
    if window >= size:
        return [0]
    count = math.ceil((size - window) / stride) + 1
    return sorted({min(i * stride, size - window) for i in range(count)})


def sliding_window_logits(segment: Callable[[Tensor], Tensor], images: Tensor, window: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """Logits at the input's resolution (N x C x H x W) from ``segment`` (images -> logits on the
    network's grid) applied to overlapping ``window`` = (height, width) crops every ``stride``."""
    height, width = images.shape[-2:]
    wh, ww = min(window[0], height), min(window[1], width)
    total: Tensor | None = None
    count = images.new_zeros((1, 1, height, width), dtype=torch.float32)
    for top in window_starts(height, wh, stride[0]):
        for left in window_starts(width, ww, stride[1]):
            logits = segment(images[..., top:top + wh, left:left + ww]).float()
            logits = upsample(logits, (wh, ww))
            if total is None:
                total = logits.new_zeros((images.shape[0], logits.shape[1], height, width))
            total[..., top:top + wh, left:left + ww] += logits
            count[..., top:top + wh, left:left + ww] += 1
    return total / count
