"""Config builders shared by the CLI-level tests: tiny models and toy data, CPU."""

from __future__ import annotations

import yaml


def fit_config(toy_root, run_dir, stage: str = "intrada_pl.stages.segmentation.SegmentationModule", **model_args) -> dict:
    """A fit config: depth-18 DeepLabV2 on 64x36 source / 64x32 target, validation every 2 batches."""
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 4,
            "val_check_interval": 2,
            "check_val_every_n_epoch": None,
            "logger": False,
            "enable_progress_bar": False,
            "default_root_dir": str(run_dir),
            "callbacks": [
                {
                    "class_path": "intrada_pl.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run_dir / "checkpoints"), "monitor": "val/mIoU", "mode": "max", "filename": "best-{step}"},
                },
                {
                    "class_path": "intrada_pl.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": "link"},
                },
            ],
        },
        "model": {
            "class_path": stage,
            "init_args": {"depth": 18, "lr": 0.01, "schedule_steps": 4, **model_args},
        },
        "data": {
            "class_path": "intrada_pl.data.datamodules.SourceTargetDataModule",
            "init_args": {
                "source_root": str(toy_root / "GTA5"),
                "source_size": [64, 36],
                "target_root": str(toy_root / "Cityscapes"),
                "target_size": [64, 32],
                "use_target": stage != "intrada_pl.stages.segmentation.SegmentationModule",
                "val_size": [64, 32],
                "batch_size": 2,
                "val_batch_size": 2,
                "num_workers": 0,
            },
        },
    }


def eval_config(toy_root) -> dict:
    """An `intrada test` config on the toy Cityscapes val split."""
    return {
        "trainer": {"accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False},
        "data": {"dataset": "cityscapes", "root": str(toy_root / "Cityscapes"), "split": "val", "size": [64, 32], "num_workers": 0},
    }


def write_yaml(path, content) -> str:
    """Write ``content`` as YAML and return the path as a string."""
    path.write_text(yaml.safe_dump(content))
    return str(path)


def trained_segmenter(seed: int = 0):
    """A depth-18 DeepLabV2 whose BN layers hold real (not default) source statistics."""
    import torch

    from intrada_pl.models.deeplabv2 import DeepLabV2

    torch.manual_seed(seed)
    model = DeepLabV2(19, depth=18, preprocessing="imagenet").train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randint(0, 255, (2, 3, 32, 64)).float())
    return model.eval()
