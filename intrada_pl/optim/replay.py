"""SGD as PyTorch 0.4.1 ran it for ADVENT and IntraDA: over a list that holds parameters repeatedly."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer


def evaluate_closure(closure: Callable[[], Any] | None) -> Any:
    """The loss of an optimiser's ``closure`` (with gradients enabled), as ``torch.optim`` steps do; None without one."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class SGD041(Optimizer):
    """Momentum SGD replaying PyTorch 0.4.1's step over a parameter list with repeats.

    The reference's generator lists backbone parameters once per ancestor module (REFERENCE A1:
    stem conv 1x, block convs 3x, shortcut convs 4x) and 0.4.1's ``SGD.step`` walked that list
    entry by entry. For each entry of ``p`` (``dampening=0``, no Nesterov, as the reference):

        p.grad += weight_decay * p          # in place: the k-th entry has added the decay k times
        buf = momentum * buf + p.grad       # buf: one per tensor, shared by all its entries;
                                            # the first entry ever starts it from zeros (= p.grad)
        p -= lr * buf

    Here every group holds each parameter once and ``repeats``, how many entries the reference's
    list had for it, and ``step`` replays those entries back to back. The order across distinct
    parameters is free: an entry reads and writes only its own tensor's value, gradient and buffer
    (the gradients are all computed before the step), and all entries of one tensor sit in one
    group, so they run with the same hyperparameters in the same relative order as in 0.4.1.

    The decayed gradient accumulates in a copy, so ``.grad`` still holds the loss gradient after
    the step (0.4.1 decayed ``.grad`` itself; the arithmetic is the same). Groups list each tensor
    once, so GradScaler unscales each gradient once and ``state_dict`` is the ordinary one.
    """

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0, weight_decay: float = 0.0, repeats: int = 1) -> None:
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "repeats": repeats})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        repeats = param_group.get("repeats", self.defaults["repeats"])
        if not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"a group's repeats must be a positive integer, got {repeats!r}")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad.clone() for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            for _ in range(group["repeats"]):
                torch._foreach_add_(grads, params, alpha=group["weight_decay"])
                torch._foreach_mul_(bufs, group["momentum"])
                torch._foreach_add_(bufs, grads)
                torch._foreach_add_(params, bufs, alpha=-group["lr"])
        return loss
