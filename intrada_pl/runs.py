"""A run's folder: one stable place per config for its checkpoints and logs, what
``--ckpt_path last`` resumes, and what every run records there by default.

A config names its run folder once, ``trainer.default_root_dir`` (``runs/inter_gta5``). Loggers
without a ``save_dir`` log there (``logs/metrics.csv``, ``wandb/``) and checkpoints go to its
``checkpoints/`` (:class:`intrada_pl.callbacks.ModelCheckpoint`), so rerunning the config with
``--ckpt_path last`` finds the run it continues, and ``--trainer.default_root_dir DIR`` moves a
whole run. Lightning's own ``"last"`` silently starts from scratch when there is nothing to
resume (a days-long run restarted by a typo); here that is an error, and ``last_if_present``
is the explicit "resume if there is something, else start" of requeue scripts. Both take the
newest of ``last.ckpt`` and the ``hpc_ckpt_N.ckpt`` that Lightning's SLURM auto-requeue saves
into the run folder when the scheduler signals the job.

Every stage gets the same dashboards and checkpoints unless its config names its own
(:func:`default_loggers`, :func:`default_callbacks`): a change to logging is made here once,
and a config holds only what is particular to it. A run folder is one W&B run
(:func:`folder_run_id`) and can be moved or copied: its checkpoints and logs go on from where
they are (:class:`intrada_pl.callbacks.ModelCheckpoint`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from intrada_pl.errors import BadInputError, ConfigValueError
from intrada_pl.io import write_text

LAST = "last"
LAST_IF_PRESENT = "last_if_present"
RUN_ID_FILE = Path("wandb") / "run_id"  # a run folder's W&B run id (:func:`folder_run_id`)


class NothingToResumeError(BadInputError, FileNotFoundError):
    """``--ckpt_path last`` found no checkpoint to resume (or a ``last.ckpt`` link to a missing file)."""


def check_config_shape(path: str, data: Any) -> None:
    """A ``--config`` file's parsed YAML is a mapping of settings whose ``trainer`` (if set) is a
    mapping: else :class:`ConfigValueError` naming the file (jsonargparse and Lightning fail on
    these deep inside, with a traceback or a message that names neither file nor key)."""
    if data is None:
        raise ConfigValueError(f"--config {path} is empty")
    if not isinstance(data, dict):
        raise ConfigValueError(f"--config {path} must be a mapping of settings (trainer:, model:, data:, ...), got {yaml_kind(data)}")
    trainer = data.get("trainer")
    if trainer is not None and not isinstance(trainer, dict):
        raise ConfigValueError(f"--config {path}: trainer must be a mapping of Trainer settings, got {yaml_kind(trainer)}")


def yaml_kind(value: Any) -> str:
    """What a parsed YAML value is, for a message: ``a list``, ``a str``."""
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else f"a {type(value).__name__}"


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
    """Where the config's ``save_last`` checkpoint callbacks write ``last.ckpt`` (the run's
    ``checkpoints/`` when the config names none: :func:`default_callbacks`)."""
    default = Path(run_folder(trainer)) / "checkpoints"
    checkpoints = [c for c in _entries(trainer.get("callbacks")) if str(c.get("class_path", "")).endswith("ModelCheckpoint")]
    if not checkpoints:
        return [default]
    return [Path((c.get("init_args") or {}).get("dirpath") or default) for c in checkpoints if (c.get("init_args") or {}).get("save_last")]


def hpc_checkpoints(trainer: Any) -> list[Path]:
    """What Lightning's SLURM auto-requeue saved on its signal: ``<run>/hpc_ckpt_N.ckpt``."""
    return sorted(Path(run_folder(trainer)).glob("hpc_ckpt_*.ckpt"))


def resolve_resume(ckpt_path: str | None, trainer: Any) -> str | None:
    """``last`` -> the run's newest checkpoint to continue (its ``last.ckpt``, or a SLURM
    requeue's ``hpc_ckpt_N.ckpt`` if newer) or :class:`NothingToResumeError`; ``last_if_present``
    -> it or ``None`` (start fresh); anything else unchanged."""
    if ckpt_path not in (LAST, LAST_IF_PRESENT):
        return ckpt_path
    folders = checkpoint_folders(trainer)
    candidates = hpc_checkpoints(trainer)
    for folder in folders:
        last = folder / "last.ckpt"
        if last.is_symlink() and not last.exists():
            raise NothingToResumeError(f"--ckpt_path {ckpt_path}: {last} links to {os.readlink(last)}, which does not exist")
        if last.is_file():
            candidates.append(last)
    if candidates:
        return str(max(candidates, key=lambda path: path.stat().st_mtime))
    if ckpt_path == LAST_IF_PRESENT:
        return None
    where = ", ".join(str(folder) for folder in folders) or "(the config has no ModelCheckpoint with save_last)"
    raise NothingToResumeError(
        f"--ckpt_path last: no last.ckpt to resume in {where}; start without --ckpt_path, point "
        f"--trainer.default_root_dir at the run to continue, or use --ckpt_path {LAST_IF_PRESENT} (requeue scripts)"
    )


def folder_run_id(run_dir: str | Path) -> str:
    """The id of the W&B run of ``run_dir``: the one kept in ``<run_dir>/wandb/run_id``, or a new
    one written there (atomically), so that every command in the folder, wherever it was moved,
    continues one W&B run (delete the file to start another, e.g. in a copy that forks the run)."""
    path = Path(run_dir) / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    write_text(path, run_id + "\n")
    return run_id


def default_loggers(run_dir: str) -> list:
    """CSV (``<run>/logs/metrics.csv``) and W&B (``<run>/wandb/``, offline unless logged in,
    ``WANDB_MODE`` wins; one run per folder, named after it, grouped by ``WANDB_RUN_GROUP``)."""
    from intrada_pl.loggers import CSVLogger, WandbLogger

    return [CSVLogger(save_dir=run_dir), WandbLogger(save_dir=run_dir, project="intrada_pl", name=Path(run_dir).name)]


def default_callbacks(command: str, configured: list, logging: bool) -> list:
    """For ``fit``: the best checkpoint by target ``val/mIoU`` (``best-step=N.ckpt``), the latest
    (``last.ckpt``, also after the final iteration) and, when the run logs, the learning rates
    and the validation panels, each unless the config already has one of its kind."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.callbacks import ModelCheckpoint as AnyModelCheckpoint

    from intrada_pl.callbacks import ModelCheckpoint, SegmentationPanels

    if command != "fit":
        return []
    has = lambda kind: any(isinstance(c, kind) for c in configured)  # noqa: E731
    defaults = []
    if not has(AnyModelCheckpoint):
        defaults += [ModelCheckpoint(monitor="val/mIoU", mode="max", filename="best-{step}"), ModelCheckpoint(save_last="link")]
    if logging and not has(LearningRateMonitor):
        defaults.append(LearningRateMonitor())
    if logging and not has(SegmentationPanels):
        defaults.append(SegmentationPanels())
    return defaults
