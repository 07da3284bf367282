"""Decoders on four feature maps (finest first): SegFormer's all-MLP head and DAFormer's context-aware fusion.

Both are written from the published descriptions (SegFormer: Xie et al. 2021; DAFormer: Hoyer et
al. 2022, whose released config ``daformer_sepaspp_mitb5.py`` sets ``pool=False``: no image-pooling
branch) and mmseg's published module conventions (Apache-2.0: a ConvModule is conv (no bias) +
``bn`` + ReLU; a depthwise-separable ConvModule is a depthwise then a pointwise ConvModule, each with
BN + ReLU; the classifier of a decode head is a 1x1 conv after ``Dropout2d(0.1)``).
Both heads return logits at the finest map's grid (stride 4 for pyramid encoders).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DAFORMER_DILATIONS = (1, 6, 12, 18)
DROPOUT = 0.1


class ConvBNReLU(nn.Sequential):
    """conv (no bias) + BatchNorm + ReLU, named ``conv``/``bn``/``act`` like mmcv's ConvModule."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int = 1, groups: int = 1) -> None:
        padding = dilation * (kernel // 2)
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.ReLU(inplace=True)


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise dilated 3x3 (+ BN + ReLU), then pointwise 1x1 (+ BN + ReLU)."""

    def __init__(self, c_in: int, c_out: int, dilation: int) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(c_in, c_in, 3, dilation=dilation, groups=c_in)
        self.pointwise = ConvBNReLU(c_in, c_out, 1)


class ChannelLinear(nn.Linear):
    """A per-pixel linear projection of an NCHW map (SegFormer's 'MLP' layer; a 1x1 conv in effect).
    Kept a Linear so its weight has the released files' shape (out x in)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FusionHead(nn.Module):
    """Shared part: every level embedded to ``channels`` and upsampled (bilinear) to the finest grid."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__()
        self.channels = channels
        self.embed = nn.ModuleList(ChannelLinear(c, channels) for c in in_channels)
        self.dropout = nn.Dropout2d(DROPOUT)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def embedded(self, features: Sequence[Tensor]) -> list[Tensor]:
        """The embedded levels c1..c4, all at ``features[0]``'s size."""
        size = features[0].shape[-2:]
        return [F.interpolate(embed(f), size=size, mode="bilinear", align_corners=False)
                for embed, f in zip(self.embed, features, strict=True)]

    def fuse(self, features: Sequence[Tensor]) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.fuse(features)))

    def init_weights(self) -> None:
        """mmseg's decode-head init: convs Kaiming (fan-out, ReLU), BN 1/0, classifier N(0, 0.01) with zero bias;
        the embeddings keep PyTorch's Linear init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)


class SegFormerHead(FusionHead):
    """SegFormer's all-MLP decoder: concat(c4, c3, c2, c1) -> 1x1 conv + BN + ReLU -> dropout -> 1x1 classifier."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__(in_channels, channels, num_classes)
        self.fuse_conv = ConvBNReLU(len(in_channels) * channels, channels, 1)
        self.init_weights()

    def fuse(self, features: Sequence[Tensor]) -> Tensor:
        return self.fuse_conv(torch.cat(self.embedded(features)[::-1], dim=1))


class DAFormerHead(FusionHead):
    """DAFormer's context-aware fusion: concat(c1, c2, c3, c4) -> depthwise-separable ASPP (dilation 1:
    a 1x1 conv; 6, 12, 18: separable 3x3; each BN + ReLU; no image pooling) -> concat -> 3x3 bottleneck
    conv + BN + ReLU -> dropout -> 1x1 classifier."""

    def __init__(self, in_channels: Sequence[int], channels: int, num_classes: int) -> None:
        super().__init__(in_channels, channels, num_classes)
        c_cat = len(in_channels) * channels
        self.aspp = nn.ModuleList(
            ConvBNReLU(c_cat, channels, 1) if d == 1 else SeparableConvBNReLU(c_cat, channels, d)
            for d in DAFORMER_DILATIONS
        )
        self.bottleneck = ConvBNReLU(len(DAFORMER_DILATIONS) * channels, channels, 3)
        self.init_weights()

    def fuse(self, features: Sequence[Tensor]) -> Tensor:
        x = torch.cat(self.embedded(features), dim=1)
        return self.bottleneck(torch.cat([branch(x) for branch in self.aspp], dim=1))


HEADS: dict[str, type[FusionHead]] = {"segformer": SegFormerHead, "daformer": DAFormerHead}
