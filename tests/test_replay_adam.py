"""Adam041 against a literal transcription of PyTorch 0.4.1's Adam step."""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from intrada_pl.optim import PolyDecay
from intrada_pl.optim import Adam041

LR, BETAS, EPS, STEPS = 1e-4, (0.9, 0.99), 1e-8, 7  # the discriminators' Adam (REFERENCE: lr 1e-4, betas (0.9, 0.99))
SHAPES = {"conv1.weight": (6, 3, 4, 4), "conv1.bias": (6,), "conv2.weight": (1, 6, 4, 4), "conv2.bias": (1,)}


def moments_041(p: torch.Tensor, st: dict, betas: tuple[float, float], weight_decay: float, amsgrad: bool) -> None:
    """PyTorch 0.4.1 ``Adam.step`` (tag v0.4.1, torch/optim/adam.py) up to the moments: state
    initialisation, the count incremented before use, weight decay into a copy, both averages."""
    grad = p.grad.data
    if len(st) == 0:
        st["step"] = 0
        st["exp_avg"] = torch.zeros_like(p.data)
        st["exp_avg_sq"] = torch.zeros_like(p.data)
        if amsgrad:
            st["max_exp_avg_sq"] = torch.zeros_like(p.data)
    exp_avg, exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
    beta1, beta2 = betas
    st["step"] += 1
    if weight_decay != 0:
        grad = grad.add(p.data, alpha=weight_decay)
    exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if amsgrad:
        torch.max(st["max_exp_avg_sq"], exp_avg_sq, out=st["max_exp_avg_sq"])


def update_041(p: torch.Tensor, st: dict, lr: float, betas: tuple[float, float], eps: float) -> None:
    """The rest of 0.4.1's step: eps added to sqrt(v) before the bias correction, the corrections
    as Python floats folded into one step size."""
    beta1, beta2 = betas
    denom = st.get("max_exp_avg_sq", st["exp_avg_sq"]).sqrt().add_(eps)
    bias_correction1 = 1 - beta1 ** st["step"]
    bias_correction2 = 1 - beta2 ** st["step"]
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    p.data.addcdiv_(st["exp_avg"], denom, value=-step_size)


Update = Callable[[torch.Tensor, dict, float, tuple[float, float], float], None]


def adam_041_step(params, state: dict, lr: float, weight_decay: float = 0.0, amsgrad: bool = False, update: Update = update_041) -> None:
    """One 0.4.1 step over the parameters in order, one at a time."""
    for p in params:
        if p.grad is None:
            continue
        st = state.setdefault(id(p), {})
        moments_041(p, st, BETAS, weight_decay, amsgrad)
        update(p, st, lr, BETAS, EPS)


def eps_after_correction(p, st, lr, betas, eps) -> None:
    """Today's torch.optim.Adam: sqrt(v) / sqrt(bias_correction2), then + eps."""
    beta1, beta2 = betas
    denom = (st["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** st["step"])).add_(eps)
    p.data.addcdiv_(st["exp_avg"], denom, value=-lr / (1 - beta1 ** st["step"]))


def correction_on_exp_avg_only(p, st, lr, betas, eps) -> None:
    denom = st["exp_avg_sq"].sqrt().add_(eps)
    p.data.addcdiv_(st["exp_avg"], denom, value=-lr / (1 - betas[0] ** st["step"]))


def step_counted_from_zero(p, st, lr, betas, eps) -> None:
    """The corrections read the count as it was before this step (0 at the first)."""
    update_041(p, {**st, "step": st["step"] - 1}, lr, betas, eps)


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {name: 0.1 * torch.randn(shape, generator=gen) for name, shape in SHAPES.items()}


def set_grads(params: list[torch.Tensor], step: int) -> None:
    """Gradients of every magnitude from 1e-9 to 1e-1 (eps matters at the small end), new each step;
    conv2.bias gets none at step 2 (its count must then lag the others')."""
    gen = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate(params):
        magnitude = 10 ** torch.empty(p.shape).uniform_(-9, -1, generator=gen)
        p.grad = None if (step, i) == (2, 3) else torch.randn(p.shape, generator=gen) * magnitude


def run_literal(t: dict[str, torch.Tensor], update: Update) -> dict:
    state: dict = {}
    for step in range(STEPS):
        set_grads(list(t.values()), step)
        adam_041_step(t.values(), state, LR, update=update)
    return state


def assert_same(ours: dict[str, torch.Tensor], optimizer: Adam041, ref: dict[str, torch.Tensor], state: dict) -> None:
    for name, p in ours.items():
        assert torch.equal(p, ref[name]), name
        mine, theirs = optimizer.state[p], state[id(ref[name])]
        assert mine.keys() == theirs.keys() and mine["step"] == theirs["step"], name
        assert all(torch.equal(mine[key], theirs[key]) for key in mine if key != "step"), name


@pytest.mark.parametrize("weight_decay, amsgrad", [(0.0, False), (1e-3, False), (0.0, True)])
def test_replay_equals_041_bitwise(weight_decay, amsgrad):
    """Weights and state bitwise equal (float32, CPU) after every one of 7 steps with the
    discriminators' lr and betas; ``.grad`` still holds the loss gradient afterwards."""
    ref, ours = tensors(), tensors()
    start = {name: value.clone() for name, value in ours.items()}
    optimizer = Adam041(ours.values(), lr=LR, betas=BETAS, weight_decay=weight_decay, amsgrad=amsgrad)
    state: dict = {}
    for step in range(STEPS):
        set_grads(list(ref.values()), step)
        adam_041_step(ref.values(), state, LR, weight_decay, amsgrad)
        set_grads(list(ours.values()), step)
        grads = {name: p.grad.clone() for name, p in ours.items() if p.grad is not None}
        optimizer.step()
        assert all(torch.equal(ours[name].grad, g) for name, g in grads.items())
        assert_same(ours, optimizer, ref, state)
    assert optimizer.state[ours["conv1.bias"]]["step"] == STEPS and optimizer.state[ours["conv2.bias"]]["step"] == STEPS - 1
    assert not any(torch.equal(ours[name], start[name]) for name in ours)


def test_todays_adam_differs_from_041():
    """torch.optim.Adam adds eps after the bias correction: at the first step 0.4.1 moves by
    lr * g / (|g| + eps / sqrt(1 - beta2)) = lr * g / (|g| + 1e-7), today's by lr * g / (|g| + 1e-8)."""
    theirs, ours = ({name: torch.zeros(shape) for name, shape in SHAPES.items()} for _ in range(2))  # updates exact
    adam = torch.optim.Adam(theirs.values(), lr=LR, betas=BETAS, eps=EPS, foreach=False)
    replay = Adam041(ours.values(), lr=LR, betas=BETAS, eps=EPS)
    set_grads(list(theirs.values()), 0)
    set_grads(list(ours.values()), 0)
    adam.step()
    replay.step()
    w, grad = "conv1.weight", ours["conv1.weight"].grad.double()
    ratio = ours[w].double() / theirs[w].double()
    expected = (grad.abs() + 1e-8) / (grad.abs() + 1e-7)
    torch.testing.assert_close(ratio, expected, rtol=1e-5, atol=0)
    assert ratio.min() < 0.2 and ratio.max() > 0.99


@pytest.mark.parametrize("mutant", [eps_after_correction, correction_on_exp_avg_only, step_counted_from_zero])
def test_the_comparison_catches_mutants(mutant):
    """A transcription with one line changed no longer matches the replay (counting from 0, the
    first correction divides by 1 - beta ** 0 = 0)."""
    ours = tensors()
    optimizer = Adam041(ours.values(), lr=LR, betas=BETAS, eps=EPS)
    for step in range(STEPS):
        set_grads(list(ours.values()), step)
        optimizer.step()
    ref = tensors()
    with pytest.raises((AssertionError, ZeroDivisionError)):
        state = run_literal(ref, mutant)
        assert_same(ours, optimizer, ref, state)


def test_state_dict_round_trip_continues_identically():
    """Saved after 3 steps, loaded into a fresh optimiser (and scheduler): 3 more steps equal 6 straight."""

    def fresh(t):
        optimizer = Adam041(t.values(), lr=LR, betas=BETAS, eps=EPS)
        return optimizer, LambdaLR(optimizer, PolyDecay(10, 0.9))

    def run(t, optimizer, scheduler, steps):
        for step in steps:
            set_grads(list(t.values()), step)
            optimizer.step()
            scheduler.step()

    straight = tensors()
    optimizer, scheduler = fresh(straight)
    run(straight, optimizer, scheduler, range(3))
    saved = io.BytesIO()
    torch.save({"params": straight, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, saved)
    run(straight, optimizer, scheduler, range(3, 6))

    saved.seek(0)
    blob = torch.load(saved, weights_only=True)
    assert [sorted(s) for s in blob["optimizer"]["state"].values()] == [["exp_avg", "exp_avg_sq", "step"]] * 4
    assert [s["step"] for s in blob["optimizer"]["state"].values()] == [3, 3, 3, 2]
    resumed = {name: value.clone() for name, value in blob["params"].items()}
    optimizer2, scheduler2 = fresh(resumed)
    optimizer2.load_state_dict(blob["optimizer"])
    scheduler2.load_state_dict(blob["scheduler"])
    run(resumed, optimizer2, scheduler2, range(3, 6))
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
        assert all(torch.equal(optimizer2.state[resumed[name]][k], optimizer.state[straight[name]][k]) for k in ("exp_avg", "exp_avg_sq"))


def test_lambda_lr_sets_the_rate_each_step():
    """With the poly law applied by LambdaLR, each step uses lr = base * factor(step), as the
    reference set ``param_groups[0]['lr']`` by hand before stepping."""
    ref, ours = tensors(), tensors()
    optimizer = Adam041(ours.values(), lr=LR, betas=BETAS, eps=EPS)
    decay = PolyDecay(10, 0.9)
    scheduler = LambdaLR(optimizer, decay)
    state: dict = {}
    for step in range(STEPS):
        assert optimizer.param_groups[0]["lr"] == LR * decay(step)
        set_grads(list(ref.values()), step)
        adam_041_step(ref.values(), state, LR * decay(step))
        set_grads(list(ours.values()), step)
        optimizer.step()
        scheduler.step()
        assert_same(ours, optimizer, ref, state)


def test_bad_hyperparameters_are_rejected():
    p = [torch.zeros(1)]
    for kwargs in ({"lr": -1.0}, {"eps": -1e-8}, {"weight_decay": -1.0}, {"betas": (1.0, 0.99)}, {"betas": (0.9, -0.1)}):
        with pytest.raises(ValueError):
            Adam041(p, **kwargs)
