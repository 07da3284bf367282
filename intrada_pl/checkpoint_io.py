"""Checkpoints written beside their target: a crash or a full disk never leaves half a checkpoint.

Lightning's ``TorchCheckpointIO`` saves through an fsspec transaction whose temporary file lives in
the system temp folder: a killed run leaves checkpoint-sized files there, and where that folder is
on another disk the final move is a copy, which a full disk can cut short under the checkpoint's
own name. ``intrada fit / validate / predict`` use :class:`AtomicCheckpointIO` instead (see
:class:`intrada_pl.cli.lightning.TrainingCLI`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from intrada_pl.io import atomic_path, remove_stale_temps


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a synced temporary sibling of the target, renamed over it when complete.

    Any failure removes the temporary file; the temporary files of dead runs in the checkpoint
    folder go at the next save. Remote paths (``s3://``...) are left to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path, fsync=True) as tmp:
            remove_stale_temps(Path(path).parent)
            torch.save(checkpoint, tmp)
