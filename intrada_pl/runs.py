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


def yaml_kind(value: Any) -> str:
    """What a parsed YAML value is, for a message: ``nothing``, ``a list``, ``a str``."""
    if value is None:
        return "nothing"
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else f"a {type(value).__name__}"


def logger_classes(trainer: Any) -> list[str]:
    """The class paths of a parsed ``trainer`` config's loggers."""
    return [str(entry.get("class_path", "")) for entry in _entries(trainer.get("logger")) if hasattr(entry, "get")]


def check_trainer_settings(trainer: Any) -> None:
    """Trainer settings Lightning would fail on deep inside (a ``ZeroDivisionError`` for a zero
    validation interval): one line naming the option."""
    interval = trainer.get("val_check_interval")
    if interval is not None and interval <= 0:
        raise ConfigValueError(f"--trainer.val_check_interval must be positive (iterations, or a fraction of an epoch), got {interval}")


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


def name_wandb_runs(trainer: Any) -> None:
    """W&B loggers whose ``name`` is unset name their run after the run folder (``inter_gta5``),
    not with W&B's random words."""
    for logger in _entries(trainer.get("logger")):
        init_args = logger.get("init_args") if hasattr(logger, "get") else None
        if str(logger.get("class_path", "")).endswith("WandbLogger") and init_args is not None and init_args.get("name") is None:
            init_args["name"] = Path(run_folder(trainer)).name


def default_loggers() -> list[dict]:
    """Every command's ``trainer.logger``: CSV (``<run>/logs/metrics.csv``) and W&B (``<run>/wandb/``,
    offline unless logged in, ``WANDB_MODE`` wins; the run is named after the folder, grouped by
    ``WANDB_RUN_GROUP``). Config entries, not loggers: the CLI's parser defaults, which
    ``--print_config`` shows and a config replaces (``save_dir: null``: the run folder)."""
    return [
        {"class_path": "intrada_pl.loggers.CSVLogger"},
        {"class_path": "intrada_pl.loggers.WandbLogger", "init_args": {"project": "intrada_pl"}},
    ]


def default_callbacks(command: str) -> list[dict]:
    """``fit``'s ``trainer.callbacks``: the best checkpoint by target ``val/mIoU`` (``best-step=N.ckpt``),
    the latest (``last.ckpt``, also after the final iteration), the learning rates and the
    validation panels (``dirpath: null``: the run's ``checkpoints/``); none for ``validate`` and
    ``predict`` (a ranking is no training run). Config entries, as :func:`default_loggers`."""
    if command != "fit":
        return []
    checkpoint = "intrada_pl.callbacks.ModelCheckpoint"
    return [
        {"class_path": checkpoint, "init_args": {"monitor": "val/mIoU", "mode": "max", "filename": "best-{step}"}},
        {"class_path": checkpoint, "init_args": {"save_last": "link"}},
        {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor"},
        {"class_path": "intrada_pl.callbacks.SegmentationPanels"},
    ]
