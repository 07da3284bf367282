"""The interface every segmentation network implements, so every stage runs on any of them.

A stage trains, ranks, calibrates and tests a :class:`Segmenter` without knowing which network it
is: it calls the network, asks it for its parameter groups (each with its learning-rate and
weight-decay multipliers), its normalisation layers and its named layer groups. A new network is
one subclass and one config block (``segmenter: {class_path: ..., init_args: ...}``).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TypedDict

from torch import Tensor, nn

from intrada_pl.models.components import Component

# Normalisation layers calibration and test-time methods may touch.
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


class ParamGroup(TypedDict):
    """Trainable parameters an optimiser treats alike: ``lr = lr_mult * lr``, ``weight_decay = decay_mult * weight_decay``."""

    name: str
    params: list[nn.Parameter]
    lr_mult: float
    decay_mult: float


class Segmenter(Component, nn.Module):
    """A segmentation network (abstract).

    ``forward(images)`` takes raw RGB pixels (N x 3 x H x W, 0..255, float or uint8; the network
    normalises them itself, so a checkpoint carries its own pre-processing) and returns
    ``(aux logits or None, main logits)`` on the network's output grid; stages upsample.

    Attributes every subclass sets: ``num_classes``; ``multi_level`` (whether ``aux`` is
    returned); ``preprocessing`` (the input normalisation's name); ``pretrained`` (a local weight
    file loaded by :meth:`load_pretrained` when a training stage starts, or None).
    """

    num_classes: int
    multi_level: bool
    preprocessing: str
    pretrained: str | None

    def forward(self, images: Tensor) -> tuple[Tensor | None, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def param_groups(self) -> list[ParamGroup]:
        """The trainable parameters (``requires_grad``), each in exactly one named group."""
        raise NotImplementedError  # pragma: no cover - abstract

    def load_pretrained(self) -> str:
        """Initialise from ``self.pretrained`` (local file; None: warn, keep the random init); say what was loaded."""
        raise NotImplementedError  # pragma: no cover - abstract

    def layer_groups(self) -> dict[str, tuple[str, ...]]:
        """Named groups of layers for ``METHOD[group,...]`` and ``intrada calibrate-layers``:
        group name -> shell-style patterns on qualified module names, in network order."""
        return {}

    def norm_layers(self) -> dict[str, nn.Module]:
        """The normalisation layers (qualified name -> module), in network order."""
        return {name: m for name, m in self.named_modules() if isinstance(m, NORM_TYPES)}

    def layers_in_group(self, group: str) -> list[str]:
        """Qualified names of the normalisation layers a group (or a pattern) selects."""
        patterns = self.layer_groups().get(group, (group,))
        return [n for n in self.norm_layers() if any(fnmatchcase(n, p) for p in patterns)]

    def freeze_norm_affine(self) -> None:
        """Stop training the BatchNorm affine parameters (the reference's frozen BN; running
        statistics still update in train mode)."""
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                for p in m.parameters():
                    p.requires_grad_(False)
