"""What a long run can trust: no checkpoint of non-finite weights in any stage, a non-finite loss
stops before its step, the final iteration is saved, frozen BN statistics stay frozen."""

from __future__ import annotations

import pytest
import torch

from helpers import fit_config, stage_args, write_yaml
from intrada_pl.cli import main

INTER = "intrada_pl.stages.inter.InterDomainModule"
CALIB = "intrada_pl.stages.calibration.CalibrationModule"


def fit(config: dict, run_dir) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    main(["fit", "--config", write_yaml(run_dir / "fit.yaml", config)])


def saved_checkpoints(run_dir) -> list:
    return sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").exists() else []


def test_a_step_that_blows_up_the_weights_is_never_checkpointed(toy_root, tmp_path):
    """lr 1e8: the first step's loss is finite but its update is not; validation (and a save)
    follows every iteration. Before: last.ckpt held the blown-up weights."""
    config = fit_config(toy_root, tmp_path, stage=INTER, schedule_steps=10, lr=1e8)
    config["trainer"].update(max_steps=3, val_check_interval=1)
    with pytest.raises(FloatingPointError, match=r"non-finite weights after iteration \d+ \(model\.[^)]+\); checkpoint not written"):
        fit(config, tmp_path)
    assert_all_finite(saved_checkpoints(tmp_path))


def assert_all_finite(paths: list) -> None:
    for path in paths:
        for value in torch.load(path, weights_only=False)["state_dict"].values():
            assert torch.isfinite(value.float()).all(), path


@pytest.mark.parametrize("stage", ["intrada_pl.stages.segmentation.SegmentationModule", CALIB])
def test_source_only_and_calibration_stop_on_nan(toy_root, tmp_path, stage):
    """lr 1e36: before, these stages trained on NaN and exited 0 with a last.ckpt of NaNs.
    (Calibration with InstCal-C: its MLPs are unbounded; InstCal-U strengths are projected
    into [eps, 1 - eps] and cannot blow up.)"""
    if stage == CALIB:
        source = fit_config(toy_root, tmp_path / "source")
        fit(source, tmp_path / "source")
        config = fit_config(toy_root, tmp_path / "calib", stage=CALIB)
        init = config["model"]["init_args"]
        init.clear()
        init.update(stage_args(init_ckpt=str(tmp_path / "source" / "checkpoints" / "last.ckpt"), calibration="instcal_c", lr=1e36,
                               schedule_steps=10, warmup_steps=0, augmentations=["randaugment"]))
        run_dir = tmp_path / "calib"
    else:
        config, run_dir = fit_config(toy_root, tmp_path, lr=1e36), tmp_path
    config["trainer"].update(max_steps=4, val_check_interval=1)
    with pytest.raises(FloatingPointError, match="non-finite"):
        fit(config, run_dir)
    assert_all_finite(saved_checkpoints(run_dir))


def test_check_finite_false_lets_a_run_go_on(toy_root, tmp_path):
    config = fit_config(toy_root, tmp_path, lr=1e36, check_finite=False)
    config["trainer"].update(max_steps=2, val_check_interval=1)
    fit(config, tmp_path)
    assert (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_the_final_iteration_is_always_saved(toy_root, tmp_path):
    """max_steps 3 with validation every 2: before, last.ckpt stayed at iteration 2."""
    config = fit_config(toy_root, tmp_path, stage=INTER, schedule_steps=10)
    config["trainer"].update(max_steps=3, val_check_interval=2)
    fit(config, tmp_path)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["global_step"] == 3
    assert (tmp_path / "checkpoints" / "best-step=2.ckpt").is_file()  # the best stays a validated one


def test_frozen_bn_keeps_its_running_statistics(toy_root, tmp_path):
    """bn: frozen uses and keeps the running statistics in training (before, Lightning's fit
    never called the module's train() override and the statistics moved)."""
    config = fit_config(toy_root, tmp_path, bn="frozen", pretrained=None)
    config["trainer"].update(max_steps=2, val_check_interval=2)
    fit(config, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(state[k].item() == 0 for k in state if k.endswith("num_batches_tracked"))
    assert all(torch.equal(state[k], torch.ones_like(state[k])) for k in state if k.endswith("running_var"))
