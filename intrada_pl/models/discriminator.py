"""ADVENT's fully-convolutional domain discriminator (REFERENCE A2)."""

from __future__ import annotations

from torch import nn


class FCDiscriminator(nn.Sequential):
    """Five 4x4 stride-2 convs (C -> ndf -> 2ndf -> 4ndf -> 8ndf -> 1), LeakyReLU(0.2) between.

    Returns logits (no sigmoid: the loss is BCE-with-logits) at 1/32 of the input per side,
    e.g. 16x32 for 512x1024. No normalisation layers, PyTorch default init. A ``Sequential`` so the
    state-dict keys (``0.weight``, ``2.weight``, ..., ``8.bias``) match the reference's.
    """

    def __init__(self, num_classes: int, ndf: int = 64) -> None:
        widths = (num_classes, ndf, 2 * ndf, 4 * ndf, 8 * ndf)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2, inplace=True)]
        layers.append(nn.Conv2d(widths[-1], 1, 4, stride=2, padding=1))
        super().__init__(*layers)
