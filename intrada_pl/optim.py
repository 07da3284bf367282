"""The reference's poly learning-rate law, as a picklable LambdaLR factor."""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import LambdaLR


class PolyDecay:
    """``(1 - step / total_steps) ** power``, held at 0 past ``total_steps``.

    ADVENT decays against 250k steps but stops at 120k, so the LR never reaches 0: the
    schedule length is a setting of its own, independent of ``max_steps``.
    """

    def __init__(self, total_steps: int, power: float = 0.9) -> None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}")
        self.total_steps = total_steps
        self.power = power

    def __call__(self, step: int) -> float:
        return max(0.0, 1.0 - step / self.total_steps) ** self.power


def poly_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9) -> dict:
    """A Lightning scheduler config stepping the poly law once per training step."""
    return {"scheduler": LambdaLR(optimizer, PolyDecay(total_steps, power)), "interval": "step"}
