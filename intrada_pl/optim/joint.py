"""Several optimisers stepped as one, so that one training iteration is one optimiser step."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch.optim import Optimizer

from intrada_pl.optim.replay import evaluate_closure


class JointOptimizer(Optimizer):
    """The generator's SGD and the discriminators' Adams as one optimiser.

    The reference computes every gradient of an ADVENT iteration first, then steps G, D_aux and
    D_main one after the other; a joint step does exactly that. Lightning counts optimiser steps,
    so with one optimiser ``max_steps``, ``global_step``, checkpoint names and every logged x-axis
    count iterations whatever the number of members.

    ``param_groups`` are the members' own group dicts: one poly scheduler sets every learning rate
    from each group's base rate (the reference's law for G and D alike), GradScaler unscales every
    gradient, ``LearningRateMonitor`` sees every group. Optimiser state stays in the members
    (``self.optimizers``); ``state_dict`` is the list of theirs.
    """

    def __init__(self, optimizers: Sequence[Optimizer]) -> None:
        if not optimizers:
            raise ValueError("JointOptimizer needs at least one optimiser")
        self.optimizers = list(optimizers)
        super().__init__([p for opt in self.optimizers for group in opt.param_groups for p in group["params"]], defaults={})
        self._share_member_groups()

    def _share_member_groups(self) -> None:
        self.param_groups = [group for opt in self.optimizers for group in opt.param_groups]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate_closure(closure)
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        members = state_dict.get("optimizers")
        if members is None or len(members) != len(self.optimizers):
            found = "none" if members is None else len(members)
            raise ValueError(f"optimiser state holds {found} member optimisers, this model has {len(self.optimizers)}")
        for opt, member in zip(self.optimizers, members):
            opt.load_state_dict(member)
        self._share_member_groups()  # members replace their group dicts when loading
