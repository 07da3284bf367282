"""Shared fixtures: tiny toy data in the real layouts, one tiny network as a released file and as our
checkpoint, and a quiet environment with W&B off (a test of what W&B receives turns it on)."""

from __future__ import annotations

import logging
import os
import sys
import tempfile

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["WANDB_MODE"] = "disabled"  # child processes too; see `offline_wandb`

import pytest  # noqa: E402

from helpers import save_checkpoint, trained_segmenter  # noqa: E402


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A few generated images in the GTA5 and Cityscapes layouts (shared, read-only)."""
    from intrada_pl.data.toy import ToySpec, generate

    root = tmp_path_factory.mktemp("toy")
    spec = ToySpec(source_images=8, target_train=6, target_val=4, source_size=(128, 72), target_size=(128, 64))
    generate(root, spec)
    return root


@pytest.fixture(scope="session")
def deeplab_pth(tmp_path_factory):
    """A released-style ``.pth``: the bare state dict of ``helpers.trained_segmenter()`` (a depth-18,
    19-class DeepLabV2 whose BN layers hold statistics, so that its predictions are not one class
    everywhere), read as ``caffe_bgr`` as released ADVENT files are. Shared: read it, never write beside it."""
    import torch

    path = tmp_path_factory.mktemp("deeplab") / "GTA2Cityscapes_AdvEnt.pth"
    torch.save(trained_segmenter().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def deeplab_ckpt(deeplab_pth, tmp_path_factory):
    """The same network in our Lightning checkpoint format, as `intrada fit` writes it (a
    SegmentationModule's, ``_class_path`` included): what a test needs of "a source checkpoint"
    when it does not train one. Shared, read-only."""
    import torch

    from intrada_pl.models import DeepLabV2
    from intrada_pl.stages.segmentation import SegmentationModule

    module = SegmentationModule(DeepLabV2(depth=18))
    module.model.load_state_dict(torch.load(deeplab_pth, weights_only=True))
    return save_checkpoint(module, tmp_path_factory.mktemp("deeplab_ckpt") / "inter.ckpt")


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """The system temp folder, redirected to an empty folder of this test."""
    folder = tmp_path / "systemp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(autouse=True)
def log_to_this_tests_stderr(monkeypatch):
    """Logging handlers that a library made while an earlier test captured stderr hold that test's
    closed stream; point them at this test's, so a log line is output, not a 'Logging error'."""
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger))]
    for logger in loggers:
        for handler in logger.handlers:
            if type(handler) is logging.StreamHandler and getattr(handler.stream, "closed", False):
                monkeypatch.setattr(handler, "stream", sys.stderr)


@pytest.fixture(autouse=True)
def wandb_off(monkeypatch):
    """W&B disabled in every test, whatever the one before did (Lightning's ``WandbLogger(offline=True)``
    sets ``WANDB_MODE`` for the whole process); a run an in-process test opened is finished after it,
    so the next test's logger starts its own."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B on, offline, for a test of what it receives: its files under the test's folder
    (``tmp_path / "wandb_dir"`` and the like; a logger's ``save_dir`` still wins), every run finished
    and flushed afterwards. Gives the ``wandb`` module."""
    wandb = pytest.importorskip("wandb")
    wandb.teardown()  # a W&B session reads the environment once: the one an earlier test started would ignore this one's
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    yield wandb
    wandb.finish()
    wandb.teardown()
