"""Shared by the tests: config builders for the CLI (tiny models and toy data, CPU), a tiny trained
segmenter, checkpoints as `intrada fit` writes them, and a process that dies mid-way."""

from __future__ import annotations

import os

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
            "init_args": stage_args(**model_args),
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


SEGMENTER_KEYS = ("depth", "num_classes", "multi_level", "preprocessing", "pretrained", "head_lr_mult")
SCHEDULE_KEYS = {"schedule_steps": "total_steps", "poly_power": "power", "warmup_steps": "warmup_steps", "warmup_factor": "warmup_factor"}


def stage_args(depth: int = 18, lr: float = 0.01, schedule_steps: int = 4, optimizer: str = "ReferenceSGD",
               network: dict | None = None, **rest) -> dict:
    """A stage's ``init_args`` from the few settings tests vary: a DeepLabV2 (depth 18) or the given
    ``network`` block, its optimiser (``optimizer`` at ``lr``) and poly schedule (``schedule_steps``,
    ``warmup_*``); the rest as given. With ``init_ckpt`` (calibration) there is no segmenter block and
    the optimiser is Adam."""
    segmenter = {k: rest.pop(k) for k in SEGMENTER_KEYS if k in rest}
    schedule = {new: rest.pop(old) for old, new in SCHEDULE_KEYS.items() if old in rest}
    schedule.setdefault("total_steps", schedule_steps)
    if "init_ckpt" in rest:
        schedule.setdefault("warmup_steps", 0)  # the stage's 1000 would not fit in a test's few steps
        optimizer_block = {"class_path": "intrada_pl.optim.Adam", "init_args": {"lr": lr, "weight_decay": 0.0}}
    else:
        rest["segmenter"] = network or {"class_path": "intrada_pl.models.DeepLabV2", "init_args": {"depth": depth, **segmenter}}
        optimizer_block = {"class_path": f"intrada_pl.optim.{optimizer}", "init_args": {"lr": lr}}
    return {**rest, "optimizer": optimizer_block, "lr_scheduler": {"class_path": "intrada_pl.optim.Poly", "init_args": schedule}}


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


def save_checkpoint(module, path):
    """A Lightning checkpoint of ``module`` carrying ``_class_path`` as `intrada fit` writes it; returns ``path``."""
    import lightning as L
    import torch

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    blob = torch.load(path, map_location="cpu", weights_only=False)
    blob["hyper_parameters"]["_class_path"] = f"{type(module).__module__}.{type(module).__qualname__}"
    torch.save(blob, path)
    return path


def forked(child) -> int:
    """Run ``child()`` in a forked process that dies without cleanup; return its wait status."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]
