"""The generator's optimiser as an injected component (``optimizer:`` in a stage's config).

A factory holds only hyper-parameters; :meth:`OptimizerFactory.build` turns a segmenter's named
parameter groups into optimiser groups (``lr * lr_mult``, ``weight_decay * decay_mult``), so a new
network brings its own groups and every optimiser treats them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from intrada_pl.models.components import Component
from intrada_pl.errors import ConfigValueError
from intrada_pl.models.segmenter import ParamGroup, Segmenter
from intrada_pl.optim.replay import SGD041


class OptimizerFactory(Component):
    """Base of the ``optimizer:`` components: ``build(segmenter)`` -> a torch optimiser."""

    def __init__(self, lr: float, weight_decay: float) -> None:
        if lr < 0 or weight_decay < 0:
            raise ConfigValueError(f"optimizer: lr and weight_decay must be >= 0, got lr={lr}, weight_decay={weight_decay}")
        self.lr = lr
        self.weight_decay = weight_decay

    def build(self, segmenter: Segmenter) -> torch.optim.Optimizer:  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} must implement build()")

    def groups(self, param_groups: Sequence[ParamGroup]) -> list[dict]:
        """Optimiser groups from the segmenter's groups (empty groups dropped)."""
        return [
            {"params": g["params"], "lr": self.lr * g["lr_mult"], "weight_decay": self.weight_decay * g["decay_mult"], "name": g["name"]}
            for g in param_groups
            if g["params"]
        ]


class ReferenceSGD(OptimizerFactory):
    """SGD as the reference code ran it (the paper configs' default): momentum SGD under PyTorch
    0.4.1 over a list that holds backbone parameters 1, 3 or 4 times (REFERENCE A1), replayed
    exactly by :class:`~intrada_pl.optim.replay.SGD041` (long-run effective rate ~3-4x ``lr``,
    weight decay ~6-10x). Needs a segmenter that knows the reference's list
    (``reference_param_repeats``: DeepLabV2); its other groups (the heads) are listed once."""

    def __init__(self, lr: float = 2.5e-4, momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        super().__init__(lr, weight_decay)
        self.momentum = momentum

    def build(self, segmenter: Segmenter) -> torch.optim.Optimizer:
        repeats_of = getattr(segmenter, "reference_param_repeats", None)
        if repeats_of is None:
            raise ConfigValueError(
                f"optimizer ReferenceSGD replays the reference's DeepLabV2 parameter list; {type(segmenter).__name__} has none: "
                "use intrada_pl.optim.SGD or intrada_pl.optim.AdamW")
        repeats = repeats_of()  # counted on the current requires_grad flags (after freezing BN affine)
        named = dict(segmenter.named_parameters())
        by_count: dict[int, list[nn.Parameter]] = {}
        for name, count in repeats.items():
            by_count.setdefault(count, []).append(named[name])
        listed = {id(p) for params in by_count.values() for p in params}
        backbone = [{"params": params, "repeats": count, "name": f"backbone_x{count}"} for count, params in sorted(by_count.items())]
        others = [ParamGroup(**{**g, "params": [p for p in g["params"] if id(p) not in listed]}) for g in segmenter.param_groups()]
        return SGD041(backbone + self.groups(others), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


class SGD(OptimizerFactory):
    """Plain momentum SGD, each parameter once (``sgd_mode: once`` of earlier versions)."""

    def __init__(self, lr: float = 2.5e-4, momentum: float = 0.9, weight_decay: float = 5e-4) -> None:
        super().__init__(lr, weight_decay)
        self.momentum = momentum

    def build(self, segmenter: Segmenter) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.groups(segmenter.param_groups()), lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


class Adam(OptimizerFactory):
    """Adam (InstCal's calibration parameters: lr 2.5e-3, no weight decay)."""

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0, eps: float = 1e-8) -> None:
        super().__init__(lr, weight_decay)
        self.betas = tuple(betas)
        self.eps = eps

    def build(self, segmenter: Segmenter) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.groups(segmenter.param_groups()), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay, eps=self.eps)


class AdamW(OptimizerFactory):
    """AdamW, the MiT/SegFormer recipe (DAFormer: lr 6e-5, betas (0.9, 0.999), weight decay 0.01,
    none on norms, head lr x10: the multipliers come from the segmenter's groups)."""

    def __init__(self, lr: float = 6e-5, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.01, eps: float = 1e-8) -> None:
        super().__init__(lr, weight_decay)
        self.betas = tuple(betas)
        self.eps = eps

    def build(self, segmenter: Segmenter) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.groups(segmenter.param_groups()), lr=self.lr, betas=self.betas, weight_decay=self.weight_decay, eps=self.eps)
