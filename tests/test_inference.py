"""Sliding-window inference (intrada_pl/models/sliding_window.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from intrada_pl.inference import sliding_window_logits, window_starts


def test_window_starts_cover_the_axis_and_end_at_the_border():
    assert window_starts(1024, 512, 341) == [0, 341, 512]
    assert window_starts(512, 512, 341) == [0]
    assert window_starts(300, 512, 341) == [0]
    starts = window_starts(1000, 300, 200)
    assert starts[0] == 0 and starts[-1] == 700 and all(b - a <= 200 for a, b in zip(starts, starts[1:]))


def test_a_window_as_large_as_the_image_is_whole_image_inference():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, stride=4, padding=1)
    images = torch.rand(2, 3, 32, 64)
    whole = F.interpolate(conv(images), size=(32, 64), mode="bilinear", align_corners=True)
    torch.testing.assert_close(sliding_window_logits(conv, images, (32, 64), (16, 16)), whole)


def test_overlapping_windows_are_averaged():
    """A pointwise network (1x1 conv at full resolution) gives the same logits whatever the windows."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 1)
    images = torch.rand(1, 3, 40, 70)
    torch.testing.assert_close(sliding_window_logits(conv, images, (24, 24), (10, 15)), conv(images), rtol=1e-5, atol=1e-6)
    calls = []
    sliding_window_logits(lambda x: calls.append(tuple(x.shape[-2:])) or conv(x), images, (24, 24), (10, 15))
    assert set(calls) == {(24, 24)} and len(calls) == len(window_starts(40, 24, 10)) * len(window_starts(70, 24, 15))
