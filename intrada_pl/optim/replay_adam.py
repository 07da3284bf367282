"""Adam as PyTorch 0.4.1 ran it for ADVENT's and IntraDA's discriminators: eps before the bias correction."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from intrada_pl.optim.replay import evaluate_closure


class Adam041(Optimizer):
    """Adam replaying PyTorch 0.4.1's step (tag v0.4.1, ``torch/optim/adam.py``, ``Adam.step``).

    For each parameter ``p`` with a gradient, 0.4.1 ran (its ``add_(scalar, tensor)`` forms kept):

        grad = p.grad.data
        if len(state) == 0:                       # zeros_like(p.data); max_exp_avg_sq if amsgrad
            state['step'] = 0
        state['step'] += 1                        # before use: the first step is t = 1
        if group['weight_decay'] != 0:
            grad = grad.add(group['weight_decay'], p.data)      # a copy: p.grad is not changed
        exp_avg.mul_(beta1).add_(1 - beta1, grad)
        exp_avg_sq.mul_(beta2).addcmul_(1 - beta2, grad, grad)
        if amsgrad:
            torch.max(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            denom = max_exp_avg_sq.sqrt().add_(group['eps'])
        else:
            denom = exp_avg_sq.sqrt().add_(group['eps'])
        bias_correction1 = 1 - beta1 ** state['step']           # Python floats
        bias_correction2 = 1 - beta2 ** state['step']
        step_size = group['lr'] * math.sqrt(bias_correction2) / bias_correction1
        p.data.addcdiv_(-step_size, exp_avg, denom)

    eps is added to ``sqrt(v)`` before the bias correction; today's ``torch.optim.Adam`` divides
    ``sqrt(v)`` by ``sqrt(bias_correction2)`` first and adds eps after, i.e. 0.4.1 ran today's
    Adam with eps scaled by ``1 / sqrt(1 - beta2 ** t)``: with the discriminators' beta2 = 0.99
    10x at step 1, 3.2x at step 10, 1.26x at step 100, within 1% of 1x from step 400 on.

    Source: the v0.4.0 release's rendered source (pytorch.github.io, docs/0.4.0/_modules/torch/
    optim/adam.html) and the v1.0.0a0 tree of November 2018 agree on every line above except
    the weight decay, which pytorch/pytorch#12107 (September 2018, after v0.4.1 of July 2018)
    made in place (``grad.add_``); pytorch/pytorch#12218 quotes the copy form as released.

    The state is 0.4.1's: ``step`` a Python int, ``exp_avg``, ``exp_avg_sq`` (and
    ``max_exp_avg_sq`` with amsgrad), so ``state_dict`` is the ordinary one and Lightning
    checkpoints resume exactly.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
    ) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"betas must be in [0, 1), got {tuple(betas)}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "amsgrad": amsgrad})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = evaluate_closure(closure)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict[str, Any]) -> None:
        """One parameter's 0.4.1 step, in the order of the source above."""
        state = self.state[p]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        grad = p.grad
        if group["weight_decay"] != 0:
            grad = grad.add(p, alpha=group["weight_decay"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        if group["amsgrad"]:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            exp_avg_sq = state["max_exp_avg_sq"]
        denom = exp_avg_sq.sqrt().add_(group["eps"])
        bias_correction1 = 1 - beta1 ** state["step"]
        bias_correction2 = 1 - beta2 ** state["step"]
        step_size = group["lr"] * math.sqrt(bias_correction2) / bias_correction1
        p.addcdiv_(exp_avg, denom, value=-step_size)
