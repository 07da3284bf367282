"""SGD041 (the ReferenceSGD optimiser) against a literal transcription of PyTorch 0.4.1's SGD step over a duplicated list."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
import yaml
from torch.optim.lr_scheduler import LambdaLR

from intrada_pl.cli import main
from intrada_pl.models.deeplabv2 import BACKBONE_MODULES, reference_lr_multiplicity
from intrada_pl.optim import PolyDecay
from intrada_pl.optim import SGD, ReferenceSGD, SGD041
from intrada_pl.models import DeepLabV2
from intrada_pl.stages.segmentation import SegmentationModule

REPO = Path(__file__).resolve().parents[1]
LR, MOMENTUM, WD, POWER, TOTAL = 0.05, 0.9, 5e-4, 0.9, 10  # a large lr so every step moves the weights


def sgd_041_step(groups: list[dict], state: dict, momentum: float, weight_decay: float) -> None:
    """PyTorch 0.4.1 ``SGD.step`` (tag v0.4.1, torch/optim/sgd.py; dampening 0, no Nesterov),
    walking each group's list entry by entry, duplicates included."""
    for group in groups:
        for p in group["params"]:
            if p.grad is None:
                continue
            d_p = p.grad.data
            d_p.add_(p.data, alpha=weight_decay)  # into .grad, in place
            if id(p) not in state:
                buf = state[id(p)] = torch.zeros_like(p.data)
                buf.mul_(momentum).add_(d_p)
            else:
                buf = state[id(p)]
                buf.mul_(momentum).add_(d_p, alpha=1 - 0)
            p.data.add_(buf, alpha=-group["lr"])


def reference_poly_lrs(groups: list[dict], base_lr: float, i_iter: int) -> None:
    """ADVENT's ``_adjust_learning_rate``: group 0 at ``lr_poly``, group 1 at 10x."""
    lr = base_lr * ((1 - float(i_iter) / TOTAL) ** POWER)
    groups[0]["lr"], groups[1]["lr"] = lr, lr * 10


def set_grads(params: list[torch.Tensor], step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)


def small_problem(seed: int = 0) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Four tensors and the reference-style list: a 1x, b 3x, c 4x interleaved in group 0, head h in group 1."""
    gen = torch.Generator().manual_seed(seed)
    t = {name: torch.randn(shape, generator=gen) for name, shape in {"a": (5, 3), "b": (4,), "c": (2, 3, 3), "h": (6,)}.items()}
    listed = [{"params": [t["c"], t["b"], t["a"], t["c"], t["b"], t["c"], t["b"], t["c"]], "lr": LR}, {"params": [t["h"]], "lr": 10 * LR}]
    return t, listed


def replay_groups(t: dict[str, torch.Tensor]) -> list[dict]:
    return [
        {"params": [t["a"]], "repeats": 1},
        {"params": [t["b"]], "repeats": 3},
        {"params": [t["c"]], "repeats": 4},
        {"params": [t["h"]], "lr": 10 * LR},
    ]


def poly_replay(t: dict[str, torch.Tensor]) -> tuple[SGD041, LambdaLR]:
    optimizer = SGD041(replay_groups(t), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    return optimizer, LambdaLR(optimizer, PolyDecay(TOTAL, POWER))


def run_replay(t, optimizer, scheduler, steps: range) -> None:
    for step in steps:
        set_grads(list(t.values()), step)
        optimizer.step()
        scheduler.step()


def test_replay_equals_041_over_a_duplicated_list_with_poly_lrs():
    """Bitwise equality (float32, CPU) over 6 steps with momentum 0.9, weight decay 5e-4 and the
    poly law applied by LambdaLR on our side, by ADVENT's formula on the literal side."""
    ref, listed = small_problem()
    ours, _ = small_problem()
    start = {name: value.clone() for name, value in ours.items()}
    optimizer, scheduler = poly_replay(ours)
    state: dict = {}
    for step in range(6):
        reference_poly_lrs(listed, LR, step)
        set_grads(list(ref.values()), step)
        sgd_041_step(listed, state, MOMENTUM, WD)
        set_grads(list(ours.values()), step)
        grads = [p.grad.clone() for p in ours.values()]
        optimizer.step()
        scheduler.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(ours.values(), grads))  # .grad left as the loss gradient
        for name in ref:
            assert torch.equal(ours[name], ref[name]), (step, name)
            assert torch.equal(optimizer.state[ours[name]]["momentum_buffer"], state[id(ref[name])]), (step, name)
    assert not any(torch.allclose(ours[name], start[name]) for name in ours)


def test_repeats_are_not_k_separate_sgd_steps():
    """The shared buffer compounds within one step: a 3x tensor moves (1 + 1.9 + 2.71) lr g on the
    first step, not 3 lr g (what today's SGD does with a duplicated list)."""
    p = torch.zeros(1, requires_grad=True)
    p.grad = torch.ones(1)
    SGD041([{"params": [p], "repeats": 3}], lr=1.0, momentum=0.9).step()
    torch.testing.assert_close(p.detach(), torch.tensor([-5.61]), rtol=1e-6, atol=0)


def test_state_dict_round_trip_continues_identically():
    straight, _ = small_problem()
    optimizer, scheduler = poly_replay(straight)
    run_replay(straight, optimizer, scheduler, range(3))
    saved = io.BytesIO()
    torch.save({"params": straight, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, saved)
    run_replay(straight, optimizer, scheduler, range(3, 7))

    saved.seek(0)
    blob = torch.load(saved, weights_only=True)
    resumed = {name: value.clone() for name, value in blob["params"].items()}
    optimizer2, scheduler2 = poly_replay(resumed)
    optimizer2.load_state_dict(blob["optimizer"])
    scheduler2.load_state_dict(blob["scheduler"])
    assert [g["repeats"] for g in optimizer2.param_groups] == [1, 3, 4, 1]
    run_replay(resumed, optimizer2, scheduler2, range(3, 7))
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name


def test_grad_scaler_unscales_each_gradient_once():
    """A scaled backward through GradScaler gives the same step as the unscaled one."""
    plain, _ = small_problem()
    scaled, _ = small_problem()
    for t in (plain, scaled):
        for p in t.values():
            p.requires_grad_(True)
    opt_plain = SGD041(replay_groups(plain), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    opt_scaled = SGD041(replay_groups(scaled), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for _ in range(2):
        sum((p**2).sum() for p in plain.values()).backward()
        opt_plain.step()
        opt_plain.zero_grad()
        scaler.scale(sum((p**2).sum() for p in scaled.values())).backward()
        scaler.step(opt_scaled)
        scaler.update()
        opt_scaled.zero_grad()
    for name in plain:
        assert torch.equal(scaled[name], plain[name]), name


def test_once_repeats_equal_torch_sgd():
    """With every repeat 1 the replay is today's SGD (the ``once`` mode's optimiser)."""
    ours, _ = small_problem()
    theirs, _ = small_problem()
    groups = [{"params": [ours["a"], ours["b"], ours["c"]]}, {"params": [ours["h"]], "lr": 10 * LR}]
    optimizer = SGD041(groups, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    groups = [{"params": [theirs["a"], theirs["b"], theirs["c"]]}, {"params": [theirs["h"]], "lr": 10 * LR}]
    sgd = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WD, foreach=False)
    for step in range(4):
        set_grads(list(ours.values()), step)
        set_grads(list(theirs.values()), step)
        optimizer.step()
        sgd.step()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-7, atol=0)


def reference_generator_list(model) -> list[torch.nn.Parameter]:
    """ADVENT's ``get_1x_lr_params_no_scale``: every module under conv1, bn1, layer1..4 yields its
    recursive parameters that require grad."""
    return [p for top in BACKBONE_MODULES for m in getattr(model, top).modules() for p in m.parameters() if p.requires_grad]


def test_deeplab_generator_optimizer_equals_041_on_the_reference_list():
    module = SegmentationModule(DeepLabV2(depth=18), optimizer=ReferenceSGD(lr=LR))
    assert module.hparams.optimizer["class_path"].endswith(".ReferenceSGD")
    optimizer = module.configure_optimizers()["optimizer"]
    counts = reference_lr_multiplicity(module.model)
    names = {p: n for n, p in module.model.named_parameters()}
    repeats = {names[p]: g["repeats"] for g in optimizer.param_groups if g["name"] != "heads" for p in g["params"]}
    assert repeats == counts and set(counts.values()) == {1, 3, 4}
    heads = next(g for g in optimizer.param_groups if g["name"] == "heads")
    assert heads["lr"] == 10 * LR and heads["repeats"] == 1

    reference = copy.deepcopy(module.model)
    listed = [{"params": reference_generator_list(reference), "lr": LR}, {"params": reference.head_parameters(), "lr": 10 * LR}]
    assert len(listed[0]["params"]) == sum(counts.values())
    scheduler = LambdaLR(optimizer, PolyDecay(TOTAL, POWER))
    state: dict = {}
    for step in range(3):
        reference_poly_lrs(listed, LR, step)
        set_grads(list(reference.parameters()), step)
        set_grads(list(module.model.parameters()), step)
        sgd_041_step(listed, state, MOMENTUM, module.optimizer_factory.weight_decay)
        optimizer.step()
        scheduler.step()
    ours = dict(module.model.named_parameters())
    for name, value in reference.named_parameters():
        assert torch.equal(ours[name], value), name


def test_plain_sgd_is_torch_sgd():
    module = SegmentationModule(DeepLabV2(depth=18), optimizer=SGD(lr=LR))
    optimizer = module.configure_optimizers()["optimizer"]
    assert type(optimizer) is torch.optim.SGD
    backbone, heads = optimizer.param_groups
    assert backbone["params"] == module.model.backbone_parameters() and backbone["lr"] == LR
    assert heads["params"] == module.model.head_parameters() and heads["lr"] == 10 * LR
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 5e-4


def test_trainable_bn_is_listed_as_the_reference_generator_would():
    module = SegmentationModule(DeepLabV2(depth=18), bn="trainable")
    names = {p: n for n, p in module.model.named_parameters()}
    groups = module.configure_optimizers()["optimizer"].param_groups
    repeats = {names[p]: g["repeats"] for g in groups if g["name"] != "heads" for p in g["params"]}
    assert repeats["bn1.weight"] == 1 and repeats["layer1.0.bn1.bias"] == 3 and repeats["layer2.0.downsample.1.weight"] == 4


def test_bad_repeats_are_rejected():
    with pytest.raises(ValueError, match="repeats"):
        SGD041([{"params": [torch.zeros(1)], "repeats": 0}], lr=0.1)


PUBLISHED = ("inter_gta5", "inter_synthia", "inter_synscapes", "minent_gta5", "intra_gta5", "intra_synthia")


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_configs_set_reference_sgd(name, capsys):
    """The paper configs name the 0.4.1 replay; --print_config shows it with every setting, and the
    command line replaces it."""
    config = REPO / "configs" / f"{name}.yaml"
    assert yaml.safe_load(config.read_text())["model"]["init_args"]["optimizer"]["class_path"] == "intrada_pl.optim.ReferenceSGD"
    key = "source_root" if name.startswith(("inter", "minent")) else "root"
    for extra, shown in (([], "ReferenceSGD"), (["--model.init_args.optimizer", "intrada_pl.optim.AdamW"], "AdamW")):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(config), f"--data.{key}", "/x", *extra, "--print_config"])
        assert exit_info.value.code in (0, None)
        optimizer = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["optimizer"]
        assert optimizer["class_path"].endswith(shown) and "weight_decay" in optimizer["init_args"]
