"""Stage 1 (ADVENT / MinEnt): losses, manual optimisation, schedules, DDP, bf16, W&B, resume, guards."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import fit_config, write_yaml
from intrada_pl.cli import main
from intrada_pl.errors import ConfigValueError
from intrada_pl.models import DeepLabV2
from intrada_pl.optim import SGD, Adam041, AdamW, ReferenceSGD
from intrada_pl.stages.inter import InterDomainModule
from probes import StepRecorder

INTER = "intrada_pl.stages.inter.InterDomainModule"
REPO = Path(__file__).resolve().parents[1]


def fixed_batch(seed: int = 0) -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(seed)
    source = {
        "image": torch.randint(0, 256, (1, 3, 32, 64), generator=gen, dtype=torch.uint8),
        "label": torch.randint(0, 19, (1, 32, 64), generator=gen),
    }
    source["label"][0, :4] = 255
    target = {"image": torch.randint(0, 256, (1, 3, 40, 80), generator=gen, dtype=torch.uint8)}
    return source, target


def self_info(logits: torch.Tensor) -> torch.Tensor:
    p = logits.softmax(1)
    return -p * torch.log2(p + 1e-30) / math.log2(logits.shape[1])


def up(logits: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(logits, size=like.shape[-2:], mode="bilinear", align_corners=True)


def bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


@torch.no_grad()
def test_losses_equal_a_hand_computation():
    torch.manual_seed(0)
    module = InterDomainModule(DeepLabV2(depth=18)).eval()
    source, target = fixed_batch()
    terms, source_logits = module.source_terms(source)
    target_terms, target_logits = module.target_terms(target)
    terms.update(target_terms)

    aux_s, main_s = module.model(source["image"])
    aux_t, main_t = module.model(target["image"])
    expected = {
        "train/loss_seg_main": F.cross_entropy(up(main_s, source["image"]), source["label"], ignore_index=255),
        "train/loss_seg_aux": F.cross_entropy(up(aux_s, source["image"]), source["label"], ignore_index=255),
        "train/loss_adv_main": bce(module.d_main(self_info(up(main_t, target["image"]))), 0.0),
        "train/loss_adv_aux": bce(module.d_aux(self_info(up(aux_t, target["image"]))), 0.0),
    }
    assert terms.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, rtol=1e-5, atol=1e-6)
    objective = (
        expected["train/loss_seg_main"] + 0.1 * expected["train/loss_seg_aux"]
        + 0.001 * expected["train/loss_adv_main"] + 0.0002 * expected["train/loss_adv_aux"]
    )
    torch.testing.assert_close(module.generator_objective(terms), objective, rtol=1e-5, atol=1e-6)

    d_terms = module.discriminator_losses(source_logits, target_logits)
    for level, d, s, t in (("main", module.d_main, main_s, main_t), ("aux", module.d_aux, aux_s, aux_t)):
        d_source = d(self_info(up(s, source["image"])))
        d_target = d(self_info(up(t, target["image"])))
        torch.testing.assert_close(d_terms[f"train/loss_d_{level}"], bce(d_source, 0.0) / 2 + bce(d_target, 1.0) / 2, rtol=1e-5, atol=1e-6)
        assert d_terms[f"train/d_acc_source_{level}"] == (d_source < 0).float().mean()


def test_discriminator_input_is_c_channel_self_information_at_input_resolution():
    module = InterDomainModule(DeepLabV2(depth=18)).eval()
    seen = []
    module.d_main.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    source, target = fixed_batch()
    with torch.no_grad():
        module.target_terms(target)
    x = seen[0]
    assert x.shape == (1, 19, 40, 80)  # C channels, target input size
    entropy = x.sum(1)
    assert entropy.min() >= 0 and entropy.max() <= 1 + 1e-6


def test_minent_has_no_discriminator_and_uses_entropy():
    module = InterDomainModule(DeepLabV2(depth=18), method="minent").eval()
    assert not hasattr(module, "d_main")
    source, target = fixed_batch()
    with torch.no_grad():
        terms, _ = module.target_terms(target)
        _, main_t = module.model(target["image"])
    expected = self_info(up(main_t, target["image"])).sum(1).mean()
    torch.testing.assert_close(terms["train/loss_ent_main"], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        InterDomainModule(DeepLabV2(depth=18), method="adventt")


def test_generator_optimizer_components():
    """The default ReferenceSGD lists the backbone as the reference did; SGD once each; AdamW by the
    segmenter's groups; ReferenceSGD refuses a network without the reference's list."""
    with torch.device("meta"):
        module = InterDomainModule(DeepLabV2(depth=101), optimizer=ReferenceSGD(lr=1.0))
    groups = {g["name"]: g for g in module.configure_optimizers()["optimizer"].optimizers[0].param_groups}
    assert list(groups) == ["backbone_x1", "backbone_x3", "backbone_x4", "heads"]
    assert {name: g["lr"] for name, g in groups.items()} == {"backbone_x1": 1.0, "backbone_x3": 1.0, "backbone_x4": 1.0, "heads": 10.0}
    assert len(groups["backbone_x1"]["params"]) == 1 and len(groups["backbone_x4"]["params"]) == 4  # stem conv; shortcut convs
    assert sum(len(g["params"]) * g["repeats"] for name, g in groups.items() if name != "heads") == 314  # the reference's entries
    once = SGD(lr=1.0).build(module.model)
    assert type(once) is torch.optim.SGD
    assert {g["name"]: (g["lr"], len(g["params"])) for g in once.param_groups} == {"backbone": (1.0, 104), "heads": (10.0, 16)}
    adamw = AdamW(lr=2.0, weight_decay=0.01).build(module.model)
    assert {g["name"]: (g["lr"], g["weight_decay"]) for g in adamw.param_groups} == {"backbone": (2.0, 0.01), "heads": (20.0, 0.01)}

    discriminators = module.configure_optimizers()["optimizer"].optimizers[1:]
    assert [type(d) for d in discriminators] == [Adam041, Adam041]  # 0.4.1's Adam, as the reference ran
    with torch.device("meta"):
        today = InterDomainModule(DeepLabV2(depth=18), adam_d="torch").configure_optimizers()["optimizer"].optimizers[1:]
    assert [type(d) for d in today] == [torch.optim.Adam, torch.optim.Adam]

    class NoReferenceList(DeepLabV2):
        reference_param_repeats = None

    with pytest.raises(ConfigValueError, match="ReferenceSGD replays the reference's DeepLabV2 parameter list"):
        ReferenceSGD().build(NoReferenceList(depth=18))


def fit_inter(toy_root, run_dir, iterations: int, recorder=None, **overrides) -> None:
    """``iterations`` ADVENT iterations (one joint optimiser step each) through the real CLI."""
    trainer = overrides.pop("trainer", {})
    config = fit_config(toy_root, run_dir, stage=INTER, **{"schedule_steps": 10, **overrides})
    config["trainer"]["max_steps"] = iterations
    config["trainer"].update(trainer)
    run_dir.mkdir(parents=True, exist_ok=True)
    args = ["fit", "--config", write_yaml(run_dir / "fit.yaml", config)]
    if recorder is not None:
        from lightning.pytorch.cli import LightningCLI

        # attach the in-memory recorder the CLI cannot build from YAML
        original = LightningCLI.instantiate_trainer

        def with_recorder(self, **kwargs):
            trainer = original(self, **kwargs)
            trainer.callbacks.append(recorder)
            return trainer

        LightningCLI.instantiate_trainer = with_recorder
        try:
            main(args)
        finally:
            LightningCLI.instantiate_trainer = original
    else:
        main(args)


def reference_order_gradients(module: InterDomainModule, source: dict, target: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One ADVENT iteration's gradients computed as the official loop does (REFERENCE A3): D frozen;
    source CE backward; target forward, adversarial BCE backward; D unfrozen; each D's source
    (label 0) and target (label 1) halves backward from detached maps."""
    d_params = [p for n, p in module.named_parameters() if n.startswith("d_")]
    module.zero_grad()
    for p in d_params:
        p.requires_grad_(False)
    aux_s, main_s = (up(x, source["image"]) for x in module.model(source["image"]))
    (F.cross_entropy(main_s, source["label"], ignore_index=255) + 0.1 * F.cross_entropy(aux_s, source["label"], ignore_index=255)).backward()
    aux_t, main_t = (up(x, target["image"]) for x in module.model(target["image"]))
    (0.001 * bce(module.d_main(self_info(main_t)), 0.0) + 0.0002 * bce(module.d_aux(self_info(aux_t)), 0.0)).backward()
    for p in d_params:
        p.requires_grad_(True)
    for logits, label in (((aux_s, main_s), 0.0), ((aux_t, main_t), 1.0)):
        for d, x in zip((module.d_aux, module.d_main), logits):
            (bce(d(self_info(x.detach())), label) / 2).backward()
    return flat_grads(module.model), flat_grads(module, prefix="d_")


def flat_grads(module: torch.nn.Module, prefix: str = "") -> torch.Tensor:
    return torch.cat([p.grad.flatten() for n, p in module.named_parameters() if n.startswith(prefix) and p.grad is not None])


class FirstIterationProbe(__import__("lightning").pytorch.Callback):
    """The module and batch before the first iteration, and the gradients its single step applies."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.module, self.batch = __import__("copy").deepcopy(pl_module), __import__("copy").deepcopy(batch)
            self.steps = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps += 1
        if self.steps == 1:
            self.grads = (flat_grads(pl_module.model), flat_grads(pl_module, prefix="d_"))


def test_one_iteration_is_one_step_with_the_reference_order_gradients(toy_root, tmp_path):
    probe = FirstIterationProbe()
    fit_inter(toy_root, tmp_path, iterations=2, recorder=probe)
    assert probe.steps == 2  # one joint optimiser step per iteration
    blob = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert blob["global_step"] == 2 and len(blob["optimizer_states"]) == 1 and len(blob["lr_schedulers"]) == 1
    assert (tmp_path / "checkpoints" / "best-step=2.ckpt").is_file()  # names count iterations
    module = probe.module.train()
    expected_g, expected_d = reference_order_gradients(module, probe.batch["source"], probe.batch["target"])
    torch.testing.assert_close(probe.grads[0], expected_g, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(probe.grads[1], expected_d, rtol=1e-4, atol=1e-6)


def test_poly_schedule_on_generator_and_both_discriminators(toy_root, tmp_path):
    recorder = StepRecorder()
    fit_inter(toy_root, tmp_path, iterations=3, recorder=recorder, lr=0.01, lr_d=1e-3)
    factor = (1 - 3 / 10) ** 0.9
    assert recorder.lrs == {  # one joint optimiser: backbone (per reference repeat count), heads, D_aux, D_main
        "backbone_x1": pytest.approx(0.01 * factor), "backbone_x3": pytest.approx(0.01 * factor),
        "backbone_x4": pytest.approx(0.01 * factor), "heads": pytest.approx(0.1 * factor),
        "d_aux": pytest.approx(1e-3 * factor), "d_main": pytest.approx(1e-3 * factor),
    }


def test_bf16_mixed_precision_losses_finite_and_decreasing(toy_root, tmp_path):
    recorder = StepRecorder()
    fit_inter(toy_root, tmp_path, iterations=8, recorder=recorder, lr=0.01, trainer={"precision": "bf16-mixed", "val_check_interval": 8})
    seg = [m["train/loss_seg_main"] for m in recorder.metrics]
    assert all(math.isfinite(v) for m in recorder.metrics for v in m.values())
    assert sum(seg[-3:]) / 3 < sum(seg[:3]) / 3


def test_exact_resume_equals_uninterrupted_run(toy_root, tmp_path):
    n = 3
    fit_inter(toy_root, tmp_path / "straight", iterations=2 * n, trainer={"val_check_interval": n})
    fit_inter(toy_root, tmp_path / "resumed", iterations=n, trainer={"val_check_interval": n})
    resumed_cfg = str(tmp_path / "resumed" / "fit.yaml")
    config = __import__("yaml").safe_load(open(resumed_cfg))
    config["trainer"]["max_steps"] = 2 * n
    write_yaml(tmp_path / "resumed" / "fit.yaml", config)
    main(["fit", "--config", resumed_cfg, "--ckpt_path", "last"])

    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert straight["global_step"] == resumed["global_step"] == 2 * n
    assert any(k.startswith("d_aux.") for k in straight["state_dict"])
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    (joint_a,), (joint_b,) = straight["optimizer_states"], resumed["optimizer_states"]
    assert len(joint_a["optimizers"]) == 3  # G, D_aux, D_main
    for a, b in zip(joint_a["optimizers"], joint_b["optimizers"]):
        for state_a, state_b in zip(a["state"].values(), b["state"].values()):
            for k in state_a:
                torch.testing.assert_close(torch.as_tensor(state_b[k]), torch.as_tensor(state_a[k]), rtol=0, atol=1e-6)
    assert [s["last_epoch"] for s in straight["lr_schedulers"]] == [s["last_epoch"] for s in resumed["lr_schedulers"]] == [2 * n]


def test_non_finite_loss_stops_training_and_keeps_checkpoints(toy_root, tmp_path, monkeypatch):
    import intrada_pl.stages.inter as inter

    fit_inter(toy_root, tmp_path, iterations=2, trainer={"val_check_interval": 2})
    last = tmp_path / "checkpoints" / "last.ckpt"
    before = last.resolve().read_bytes()
    calls = {"n": 0}
    original = inter.adversarial_loss

    def poisoned(d_logits, domain):
        calls["n"] += 1
        loss = original(d_logits, domain)
        return loss * float("nan") if calls["n"] > 6 else loss  # from the 2nd resumed iteration

    monkeypatch.setattr(inter, "adversarial_loss", poisoned)
    config = __import__("yaml").safe_load(open(tmp_path / "fit.yaml"))
    config["trainer"]["max_steps"] = 6
    write_yaml(tmp_path / "fit.yaml", config)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at iteration 3: train/loss_adv_aux, train/loss_adv_main"):
        main(["fit", "--config", str(tmp_path / "fit.yaml"), "--ckpt_path", "last"])
    assert last.resolve().read_bytes() == before
    for value in torch.load(last, weights_only=False)["state_dict"].values():
        assert torch.isfinite(value.float()).all()


def test_wandb_offline_run_holds_losses_lrs_accuracies_iou_and_panels(toy_root, tmp_path, monkeypatch, offline_wandb):
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = {"class_path": "intrada_pl.loggers.WandbLogger", "init_args": {"save_dir": str(tmp_path), "project": "t"}}
    panels = {"class_path": "intrada_pl.callbacks.SegmentationPanels", "init_args": {"num_images": 2}}
    config = fit_config(toy_root, tmp_path, stage=INTER, schedule_steps=10)
    config["trainer"].update(max_steps=2, logger=logger, log_every_n_steps=1)
    config["trainer"]["callbacks"].append(panels)
    main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])
    offline_wandb.finish()  # a CLI process finishes the run at exit; in-process we do it here,
    offline_wandb.teardown()  # and wait for the W&B service to flush it (slow on a loaded machine)

    run = next((tmp_path / "wandb").glob("offline-run-*"))
    # wandb >= 0.2x keeps offline history only in the binary run file; its keys are stored verbatim
    records = next(run.glob("run-*.wandb")).read_bytes()
    for key in (
        "train/loss_seg_main", "train/loss_seg_aux", "train/loss_adv_main", "train/loss_adv_aux",
        "train/loss_d_main", "train/loss_d_aux", "train/d_acc_source_main", "train/d_acc_target_main",
        "train/lr", "train/lr_d", "val/mIoU", "val/IoU/road", "val/panels", "val/entropy", "val/iou_table",
    ):
        assert key.encode() in records, key
    media = run / "files" / "media"
    assert len(list((media / "images" / "mask" / "val").glob("panels_*.mask.png"))) >= 2  # GT + prediction masks
    assert len(list((media / "images" / "val").glob("entropy_*.png"))) == 2
    table = json.loads(next((media / "table" / "val").glob("iou_table_*.table.json")).read_text())
    assert table["columns"] == ["class", "IoU"] and table["data"][0][0] == "road"


def test_config_files_parse(capsys):
    """Every training config parses, and its dataset root can be overridden from the command line."""
    for config in sorted((REPO / "configs").glob("*.yaml")):
        if config.name.startswith(("test_", "rank_", "pipeline_")):
            continue
        key = "source_root" if "SourceTargetDataModule" in config.read_text() else "root"
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--config", str(config), f"--data.{key}", "/x", "--print_config"])
        assert exit_info.value.code in (0, None), config.name
        assert f"{key}: /x" in capsys.readouterr().out, config.name


@pytest.mark.system
def test_ddp_two_processes_keep_identical_weights_and_bn_buffers(toy_root, tmp_path):
    verdict_path = tmp_path / "verdict.json"
    config = fit_config(toy_root, tmp_path, stage=INTER, schedule_steps=10)
    config["trainer"].update(devices=2, strategy="ddp", max_steps=3, val_check_interval=3, num_sanity_val_steps=0)
    config["trainer"]["callbacks"].append({"class_path": "probes.DDPProbe", "init_args": {"out": str(verdict_path)}})
    config["data"]["init_args"]["batch_size"] = 1
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    result = subprocess.run(
        [sys.executable, "-m", "intrada_pl.cli", "fit", "--config", write_yaml(tmp_path / "fit.yaml", config)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    verdict = json.loads(verdict_path.read_text())
    assert verdict["world_size"] == 2
    assert verdict["generator"] and verdict["discriminators"] and verdict["bn"] and verdict["bn_changed"]
    rank0, rank1 = verdict["names"]
    assert len(rank0) == len(rank1) == 6  # 3 iterations x (source + target)
    assert rank0 != rank1  # each rank saw its own samples
