"""Multi-scale encoders from timm: MiT (SegFormer's Mix Transformer), any timm pyramid, plain ViTs.

Every encoder returns four NCHW feature maps, finest first (strides 4/8/16/32 for pyramids), so
the decoders in :mod:`intrada_pl.models.heads` run on any of them. Weights never come from a hub
here (``pretrained=False`` always): a local file is loaded later by :mod:`intrada_pl.models.mit_weights`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from intrada_pl.errors import ConfigValueError

#: MiT-B0..B5 are timm's PVTv2 b0..b5 models with MiT's own MLP ratio and stochastic depth.
MIT_VARIANTS = {f"mit_b{i}": f"pvt_v2_b{i}" for i in range(6)}
#: timm's pvt_v2_b0..b4 default to mlp_ratios (8, 8, 4, 4) and drop_path_rate 0: every MiT
#: checkpoint has 4x MLPs (b0's first MLP: 128 hidden units, not 256) and was trained with 0.1.
MIT_ARGS: dict[str, Any] = {"mlp_ratios": (4, 4, 4, 4), "drop_path_rate": 0.1}
NUM_LEVELS = 4


def is_mit(name: str) -> bool:
    """Whether ``name`` is one of the MiT variants (whose released weights :mod:`mit_weights` reads)."""
    return name in MIT_VARIANTS


class SimpleFeaturePyramid(nn.Module):
    """Four maps from a plain ViT's single stride-p map: 4x and 2x by transposed convs, 1x, 0.5x by max-pool.

    The simple feature pyramid of Li et al. 2022, "Exploring Plain Vision Transformer Backbones for
    Object Detection" (ViTDet): 4x is deconv 2x2/2 -> LayerNorm -> GELU -> deconv 2x2/2 (C -> C/2 -> C/4),
    2x one deconv (C -> C/2). ViTDet's per-level 1x1 + 3x3 output convs are left out: our heads embed
    every level with their own projection. Strides are p/4, p/2, p, 2p (4/8/16/32 for p = 16).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2), nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)
        self.down2 = nn.MaxPool2d(2, stride=2)
        self.out_channels = (dim // 4, dim // 2, dim, dim)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [self.up4(x), self.up2(x), x, self.down2(x)]


class TimmEncoder(nn.Module):
    """A timm model as a four-level encoder: ``encoder(x)`` -> four NCHW maps, finest first.

    Pyramid models (MiT, ConvNeXt, Swin, ResNet, ...) give their last four stage outputs through
    ``forward_intermediates``; a plain ViT (all its levels at one stride) gives its last block's
    output (after its final norm, so every weight is used) to a :class:`SimpleFeaturePyramid`. The
    timm model keeps its own module names under ``model.``, so timm weight files load as they are;
    its classifier is pruned.
    """

    def __init__(self, name: str, args: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.name = name
        timm_name = MIT_VARIANTS.get(name, name)
        kwargs = {**(MIT_ARGS if is_mit(name) else {}), **dict(args or {})}
        if not timm.is_model(timm_name):
            raise ConfigValueError(
                f"unknown encoder {name!r}: expected one of {', '.join(MIT_VARIANTS)} or a timm model name "
                "(e.g. convnext_tiny, swin_tiny_patch4_window7_224, resnet50, vit_small_patch14_dinov2)")
        self.plain_vit = not is_mit(name) and _is_plain(timm_name, kwargs)
        if self.plain_vit:
            kwargs.setdefault("dynamic_img_size", True)  # any crop size: timm interpolates the position embedding
        self.model = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
        levels = len(getattr(self.model, "feature_info", ()))
        if not hasattr(self.model, "forward_intermediates") or levels < (1 if self.plain_vit else NUM_LEVELS):
            raise ConfigValueError(f"encoder {name!r}: expected a timm model with forward_intermediates and "
                                   f"{NUM_LEVELS} feature levels (or a plain ViT); it has {levels}")
        self.indices = 1 if self.plain_vit else NUM_LEVELS
        taken = self.model.prune_intermediate_layers(self.indices, prune_norm=not self.plain_vit, prune_head=True)
        info = [self.model.feature_info[i] for i in taken]
        self.stage_modules = tuple(f["module"] for f in info)
        self.pyramid = SimpleFeaturePyramid(info[-1]["num_chs"]) if self.plain_vit else None
        self.out_channels: tuple[int, ...] = (self.pyramid.out_channels if self.pyramid is not None
                                              else tuple(f["num_chs"] for f in info))

    def forward(self, x: Tensor) -> list[Tensor]:
        features = self.model.forward_intermediates(x, indices=self.indices, norm=self.plain_vit,
                                                    intermediates_only=True)
        return self.pyramid(features[-1]) if self.pyramid is not None else list(features)

    def no_weight_decay_names(self) -> set[str]:
        """Parameter names (relative to ``model``) timm exempts from weight decay (position embeddings, tokens)."""
        exempt = getattr(self.model, "no_weight_decay", None)
        return set(exempt()) if callable(exempt) else set()


def _is_plain(timm_name: str, kwargs: Mapping[str, Any]) -> bool:
    """A plain (non-hierarchical) ViT: every feature level at one stride. Probed on the meta device
    (no memory, no init cost) because a ViT must be built with ``dynamic_img_size`` from the start."""
    with torch.device("meta"):
        probe = timm.create_model(timm_name, pretrained=False, num_classes=0, **kwargs)
    return len({f["reduction"] for f in probe.feature_info}) == 1
