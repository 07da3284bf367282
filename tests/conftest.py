"""Shared fixtures: tiny toy data in the real layouts, and a quiet, offline environment."""

from __future__ import annotations

import os

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
