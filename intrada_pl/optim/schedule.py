"""The poly learning-rate law (with optional warm-up), as a picklable LambdaLR factor and as the ``lr_scheduler:`` component."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR

from intrada_pl.models.components import Component
from intrada_pl.errors import ConfigValueError


class PolyDecay:
    """``(1 - step / total_steps) ** power``, held at 0 past ``total_steps``, after an optional
    linear warm-up.

    ADVENT decays against 250k steps but stops at 120k, so the LR never reaches 0: the
    schedule length is a setting of its own, independent of ``max_steps``.

    InstCal trains with Detectron2's WarmupPolyLR: during the first ``warmup_steps`` the poly
    factor is multiplied by ``warmup_factor * (1 - a) + a`` with ``a = step / warmup_steps``
    (so it ramps from ``warmup_factor`` towards 1); the poly term counts from step 0 throughout.
    ``warmup_steps=0`` is the plain poly law of ADVENT and IntraDA.
    """

    def __init__(self, total_steps: int, power: float = 0.9, warmup_steps: int = 0, warmup_factor: float = 0.001) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")
        if not 0.0 <= warmup_factor <= 1.0:
            raise ValueError(f"warmup_factor must be in [0, 1], got {warmup_factor}")
        self.total_steps = total_steps
        self.power = power
        self.warmup_steps = warmup_steps
        self.warmup_factor = warmup_factor

    def __call__(self, step: int) -> float:
        poly = max(0.0, 1.0 - step / self.total_steps) ** self.power
        if step >= self.warmup_steps:
            return poly
        alpha = step / self.warmup_steps
        return poly * (self.warmup_factor * (1.0 - alpha) + alpha)


class Poly(Component):
    """The ``lr_scheduler:`` component: :class:`PolyDecay` stepped once per training iteration, scaling
    every group's learning rate (the discriminators' too, as the reference does).

    ADVENT / IntraDA: ``total_steps`` 250000, power 0.9, no warm-up. InstCal: Detectron2's
    WarmupPolyLR (1000 steps from 0.001). The MiT recipe: 1500 linear warm-up steps from 1e-6,
    power 1.0 (mmcv's linear warm-up, ``1 - (1 - step / warmup_steps) * (1 - warmup_factor)``,
    is the same law as Detectron2's).
    """

    def __init__(self, total_steps: int = 250_000, power: float = 0.9, warmup_steps: int = 0, warmup_factor: float = 0.001) -> None:
        try:
            self.decay = PolyDecay(total_steps, power, warmup_steps, warmup_factor)
        except ValueError as error:
            raise ConfigValueError(f"lr_scheduler: {error}") from None

    def build(self, optimizer: torch.optim.Optimizer) -> dict:
        """A Lightning scheduler config stepping the decay once per training step."""
        return {"scheduler": LambdaLR(optimizer, self.decay), "interval": "step"}
