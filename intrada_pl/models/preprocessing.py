"""Input normalisation inside the model, so a checkpoint carries its own pre-processing."""

from __future__ import annotations

import torch
from torch import Tensor, nn

PREPROCESSING = ("caffe_bgr", "imagenet")

# Caffe DeepLab / ADVENT / IntraDA: BGR order, 0-255 scale, mean only (B, G, R order).
_CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
# torchvision ImageNet statistics (RGB, for inputs scaled to 0..1).
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


class InputNormalization(nn.Module):
    """Maps raw RGB pixels (B x 3 x H x W, 0..255, uint8 or float) to the backbone's input.

    ``caffe_bgr`` matches the reference implementations (RGB->BGR, mean subtraction, no std);
    ``imagenet`` matches torchvision weights. Both are written as ``(x - mean) / std`` in
    0..255 units. Buffers are non-persistent so state dicts keep the reference key layout.
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in PREPROCESSING:
            raise ValueError(f"unknown preprocessing {mode!r}; valid modes: {', '.join(PREPROCESSING)}")
        self.mode = mode
        self.to_bgr = mode == "caffe_bgr"
        if self.to_bgr:
            mean, std = _CAFFE_BGR_MEAN, (1.0, 1.0, 1.0)
        else:
            mean = tuple(255.0 * m for m in _IMAGENET_MEAN)
            std = tuple(255.0 * s for s in _IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.to_bgr:
            x = x.flip(1)
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
