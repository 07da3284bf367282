"""Shared fixtures: tiny toy data in the real layouts, and a quiet, offline environment."""

from __future__ import annotations

import logging
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory):
    """A few generated images in the GTA5 and Cityscapes layouts (shared, read-only)."""
    from intrada_pl.data.toy import ToySpec, generate

    root = tmp_path_factory.mktemp("toy")
    spec = ToySpec(source_images=8, target_train=6, target_val=4, source_size=(128, 72), target_size=(128, 64))
    generate(root, spec)
    return root


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
def no_wandb_run_left_open():
    """A W&B run an in-process test opened is finished after it, so the next test's logger starts its own."""
    yield
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
