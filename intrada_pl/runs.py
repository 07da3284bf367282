"""A run's folder: one stable place per config for its checkpoints and logs, and what
``--ckpt_path last`` resumes.

A config names its run folder once, ``trainer.default_root_dir`` (``runs/inter_gta5``). Loggers
without a ``save_dir`` log there (``logs/metrics.csv``, ``wandb/``) and checkpoints go to its
``checkpoints/`` (:class:`intrada_pl.callbacks.ModelCheckpoint`), so rerunning the config with
``--ckpt_path last`` finds the run it continues, and ``--trainer.default_root_dir DIR`` moves a
whole run. Lightning's own ``"last"`` silently starts from scratch when there is nothing to
resume (a days-long run restarted by a typo); here that is an error, and ``last_if_present``
is the explicit "resume if there is something, else start" of requeue scripts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

LAST = "last"
LAST_IF_PRESENT = "last_if_present"


class NothingToResumeError(FileNotFoundError):
    """``--ckpt_path last`` found no checkpoint to resume (or a ``last.ckpt`` link to a missing file)."""


def run_folder(trainer: Any) -> str:
    """The run folder of a parsed ``trainer`` config (Lightning's default: the working directory)."""
    return trainer.get("default_root_dir") or os.getcwd()


def _entries(value: Any) -> list:
    """A config's logger or callback setting as a list of ``{class_path, init_args}`` entries."""
    if not value or value is True:
        return []
    return list(value) if isinstance(value, list) else [value]


def place_loggers(trainer: Any) -> None:
    """Loggers whose ``save_dir`` is unset log into the run folder."""
    for logger in _entries(trainer.get("logger")):
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if init_args is not None and "save_dir" in init_args and init_args["save_dir"] is None:
            init_args["save_dir"] = run_folder(trainer)


def checkpoint_folders(trainer: Any) -> list[Path]:
    """Where the config's ``save_last`` checkpoint callbacks write ``last.ckpt``."""
    folders = []
    for callback in _entries(trainer.get("callbacks")):
        init_args = callback.get("init_args") or {}
        if str(callback.get("class_path", "")).endswith("ModelCheckpoint") and init_args.get("save_last"):
            folders.append(Path(init_args.get("dirpath") or os.path.join(run_folder(trainer), "checkpoints")))
    return folders


def resolve_resume(ckpt_path: str | None, trainer: Any) -> str | None:
    """``last`` -> the run's ``last.ckpt`` or :class:`NothingToResumeError`; ``last_if_present`` ->
    it or ``None`` (start fresh); anything else unchanged."""
    if ckpt_path not in (LAST, LAST_IF_PRESENT):
        return ckpt_path
    folders = checkpoint_folders(trainer)
    for folder in folders:
        last = folder / "last.ckpt"
        if last.is_symlink() and not last.exists():
            raise NothingToResumeError(f"--ckpt_path {ckpt_path}: {last} links to {os.readlink(last)}, which does not exist")
        if last.is_file():
            return str(last)
    if ckpt_path == LAST_IF_PRESENT:
        return None
    where = ", ".join(str(folder) for folder in folders) or "(the config has no ModelCheckpoint with save_last)"
    raise NothingToResumeError(
        f"--ckpt_path last: no last.ckpt to resume in {where}; start without --ckpt_path, point "
        f"--trainer.default_root_dir at the run to continue, or use --ckpt_path {LAST_IF_PRESENT} (requeue scripts)"
    )
