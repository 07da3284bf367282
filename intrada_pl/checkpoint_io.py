"""Checkpoints written beside their target: a crash or a full disk never leaves half a checkpoint.

Lightning's ``TorchCheckpointIO`` saves through an fsspec transaction whose temporary file lives in
the system temp folder: a killed run leaves checkpoint-sized files there, and where that folder is
on another disk the final move is a copy, which a full disk can cut short under the checkpoint's
own name. ``intrada fit / validate / predict`` use :class:`AtomicCheckpointIO` instead (see
:class:`intrada_pl.cli.lightning.TrainingCLI`).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from intrada_pl.errors import BadInputError
from intrada_pl.io import atomic_path, remove_stale_temps


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a synced temporary sibling of the target, renamed over it when complete.

    Any failure removes the temporary file; the temporary files of dead runs in the checkpoint
    folder go at the next save. Remote paths (``s3://``...) are left to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        try:
            with atomic_path(path, fsync=True) as tmp:
                remove_stale_temps(Path(path).parent)
                with open(tmp, "wb") as file:  # through a Python file: a refused write's OSError (errno) is kept
                    torch.save(checkpoint, file)
        except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError of its writer
            reason = _storage_problem(error)
            if reason is None:
                raise
            raise CheckpointWriteError(f"cannot write checkpoint {path}: {reason}; the previous one is intact. "
                                       "Free space (or raise the limit), then resume with --ckpt_path last") from error


class CheckpointWriteError(BadInputError, OSError):
    """The disk refused a checkpoint (full, or over a file-size or quota limit): one line, not a traceback."""


_STORAGE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EFBIG: "File too large (a file-size limit)", errno.EDQUOT: "Disk quota exceeded"}


def _storage_problem(error: BaseException) -> str | None:
    """What storage limit ``error`` (or an error it wraps) hit, or None if it is another failure."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in _STORAGE_ERRNOS:
            return _STORAGE_ERRNOS[error.errno]
        text = str(error)
        for message in _STORAGE_ERRNOS.values():
            if message.split(" (")[0] in text:
                return message
        error = error.__cause__ or error.__context__
