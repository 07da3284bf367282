"""The reference's poly learning-rate law, as a picklable LambdaLR factor."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


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


def poly_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0, warmup_factor: float = 0.001
) -> dict:
    """A Lightning scheduler config stepping :class:`PolyDecay` once per training step."""
    decay = PolyDecay(total_steps, power, warmup_steps, warmup_factor)
    return {"scheduler": LambdaLR(optimizer, decay), "interval": "step"}
