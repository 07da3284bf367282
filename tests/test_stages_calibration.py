"""CalibrationModule: what trains, that it helps on augmented source, and its checkpoint round trip."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import yaml

from helpers import stage_args
from intrada_pl.cli import main
from intrada_pl.models import DeepLabV2, load_segmenter
from intrada_pl.optim import Adam, Poly, ReferenceSGD
from intrada_pl.data.datamodules import SourceTargetDataModule
from intrada_pl.models.bn_calibration import CalibratedBatchNorm
from intrada_pl.stages.calibration import CalibrationModule
from intrada_pl.stages.segmentation import SegmentationModule

torch.set_num_threads(1)

STRENGTH_KEYS = ("momentum_mean", "momentum_var")


def _data(toy_root, batch_size: int = 2) -> SourceTargetDataModule:
    return SourceTargetDataModule(
        source_root=str(toy_root / "GTA5"),
        source_size=(64, 36),
        target_root=str(toy_root / "Cityscapes"),
        use_target=False,
        val_size=(64, 32),
        batch_size=batch_size,
        val_batch_size=4,
        num_workers=0,
    )


def _trainer(root, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root), **kwargs
    )


@pytest.fixture(scope="module")
def source_ckpt(toy_root, tmp_path_factory):
    """A briefly trained depth-18 source model (BN statistics and weights that mean something)."""
    root = tmp_path_factory.mktemp("source")
    L.seed_everything(0)
    model = SegmentationModule(DeepLabV2(depth=18, preprocessing="imagenet"), ReferenceSGD(lr=0.01), Poly(12), bn="trainable")
    trainer = _trainer(root, max_steps=12, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(model, datamodule=_data(toy_root))
    path = root / "source.ckpt"
    trainer.save_checkpoint(path)
    return path


def _augmented_batch(module: CalibrationModule, toy_root) -> dict:
    data = _data(toy_root, batch_size=4)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()["source"]))
    torch.manual_seed(123)
    return {**batch, "image": module.augment(batch["image"])}


def test_one_epoch_lowers_augmented_source_loss_and_trains_only_strengths(source_ckpt, toy_root, tmp_path):
    L.seed_everything(0)
    module = CalibrationModule(str(source_ckpt), optimizer=Adam(lr=0.05), lr_scheduler=Poly(4))
    assert {n for n, p in module.named_parameters() if p.requires_grad} == {
        f"model.{name}.{key}" for name, m in module.model.named_modules() if isinstance(m, CalibratedBatchNorm) for key in STRENGTH_KEYS
    }
    batch = _augmented_batch(module, toy_root)
    with torch.no_grad():
        before = module.supervised_loss(batch, "check")[0].item()
    source_state = {k: v.clone() for k, v in module.model.state_dict().items()}

    _trainer(tmp_path, max_epochs=1, limit_val_batches=0, enable_checkpointing=False).fit(module, datamodule=_data(toy_root))

    module.eval()
    with torch.no_grad():
        after = module.supervised_loss(batch, "check")[0].item()
    assert after < before - 0.01, (before, after)
    changed = {k for k, v in module.model.state_dict().items() if not torch.equal(v, source_state[k])}
    assert changed and all(k.endswith(STRENGTH_KEYS) for k in changed)  # weights, gamma/beta, BN statistics untouched


def _fit_config(source_ckpt, toy_root, run_dir, calibration: str) -> dict:
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": 2,
            "val_check_interval": 2,
            "limit_val_batches": 1,
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run_dir),
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": True}}
            ],
        },
        "model": {
            "class_path": "CalibrationModule",
            "init_args": stage_args(init_ckpt=str(source_ckpt), calibration=calibration, hidden_dim=16, schedule_steps=2, warmup_steps=0, lr=2.5e-3),
        },
        "data": {
            "class_path": "SourceTargetDataModule",
            "init_args": {
                "source_root": str(toy_root / "GTA5"),
                "source_size": [64, 36],
                "target_root": str(toy_root / "Cityscapes"),
                "use_target": False,
                "val_size": [64, 32],
                "batch_size": 2,
                "val_batch_size": 4,
                "num_workers": 0,
            },
        },
    }


@pytest.mark.parametrize("calibration", ["instcal_u", "instcal_c"])
def test_fit_then_test_through_the_cli(calibration, source_ckpt, toy_root, tmp_path):
    run_dir = tmp_path / "calib"
    run_dir.mkdir()
    config = run_dir / "fit.yaml"
    config.write_text(yaml.safe_dump(_fit_config(source_ckpt, toy_root, run_dir, calibration)))
    main(["fit", "--config", str(config)])
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert (run_dir / "strengths.png").stat().st_size > 0
    table = json.loads((run_dir / "strengths.json").read_text())  # the plotted numbers, per named layer
    assert table["columns"] == ["layer", "mean_m", "mean_m_std", "var_m", "var_m_std"]
    assert table["rows"][0][0] == "bn1" and all(0 < row[1] < 1 and 0 < row[3] < 1 for row in table["rows"])

    model, info = load_segmenter(ckpt)  # rebuilt from the checkpoint alone, calibrated layers included
    assert info.calibration == calibration and info.preprocessing == "imagenet" and model.depth == 18
    layers = [m for m in model.modules() if isinstance(m, CalibratedBatchNorm)]
    assert layers and all(m.mode == calibration for m in layers)

    test_config = run_dir / "test.yaml"
    test_config.write_text(yaml.safe_dump({
        "trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False},
        "data": {"dataset": "cityscapes", "root": str(toy_root / "Cityscapes"), "size": [64, 32], "num_workers": 0},
    }))
    out = tmp_path / "out"
    main(["test", "--config", str(test_config), "--ckpt", str(ckpt), "--calibration", calibration, "--output", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["mIoU"] <= 100 and 0 <= metrics["ECE"] <= 100
    assert metrics["results"]["cityscapes"][calibration]["num_images"] == 4


def test_calibrated_checkpoint_is_refused_as_a_starting_point(source_ckpt, tmp_path):
    module = CalibrationModule(str(source_ckpt), lr_scheduler=Poly(1))
    path = tmp_path / "calibrated.ckpt"
    torch.save({"pytorch-lightning_version": L.__version__, "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    with pytest.raises(ValueError, match="already calibrated"):
        CalibrationModule(str(path))
