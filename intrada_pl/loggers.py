"""Loggers that work out of the box: W&B offline unless the user is logged in, one W&B run per
run folder; a CSV log that survives reruns and resumes; in fit, both on the iteration axis of the
console and of checkpoint names."""

from __future__ import annotations

import csv
import netrc
import os
import secrets
import subprocess
import warnings
from argparse import Namespace
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

import lightning as L
import yaml
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from intrada_pl.errors import ConfigValueError
from intrada_pl.io import atomic_path
from intrada_pl.runs import folder_run_id


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


class IterationSteps(Callback):
    """Our loggers' step in fit: the iteration a row belongs to, the count that the console prints
    (``iteration 100``) and checkpoint names carry (``best-step=100``).

    Lightning logs a training step's metrics and the validation after it at the number of
    iterations *before* that step (99 after the 100th iteration), and the learning rate of the
    coming iteration at its start; here all of them are logged at that iteration's number (100),
    whatever step the caller passed (image panels pass ``global_step``, already 100). Outside fit
    (validate, test, predict) the given step stands. The logger learns that it is in fit as a
    callback: ``intrada`` registers it; with a bare Trainer, pass it in ``callbacks`` too.
    """

    _fit_loop: Any = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._fit_loop = trainer.fit_loop if stage == "fit" else None

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._fit_loop = None

    def iteration(self, step: int | None) -> int | None:
        """``step`` as this logger logs it (see the class docstring)."""
        if self._fit_loop is None:
            return step
        return self._fit_loop.epoch_loop._batches_that_stepped + 1  # Lightning's count of iterations before this one


class OnFirstUse:
    """What :attr:`WandbLogger.experiment` gives before the run exists: anything done with it
    opens the run first (Lightning asks every logger for its experiment when it sets up the
    trainer, before the data module has checked its folders)."""

    def __init__(self, open_run: Callable[[], Any]) -> None:
        self._open_run = open_run

    def __getattr__(self, name: str) -> Any:
        return getattr(self._open_run(), name)


def check_wandb_login(logger_classes: list[str]) -> None:
    """``WANDB_MODE=online`` with a W&B logger among ``logger_classes`` (class paths) but no login:
    refused before anything starts (W&B would fail on the first log, deep inside the run)."""
    if os.environ.get("WANDB_MODE") == "online" and any(c.endswith("WandbLogger") for c in logger_classes) and not wandb_logged_in():
        raise ConfigValueError(
            "WANDB_MODE=online but no W&B login was found (WANDB_API_KEY or ~/.netrc): run `wandb login`, "
            "or unset WANDB_MODE to log offline (upload later with `wandb sync`)")


class WandbLogger(LightningWandbLogger, IterationSteps):
    """Lightning's WandbLogger with ``offline`` decided for the user when not given, writing into
    the run folder (``trainer.default_root_dir``, :mod:`intrada_pl.runs`) when ``save_dir`` is unset.

    ``WANDB_MODE`` wins when set (``offline``, ``online``, ``disabled``); otherwise runs are
    synced only if the user is logged in, and written to ``<save_dir>/wandb/offline-run-*``
    (upload later with ``wandb sync``) if not, instead of failing for want of an API key.

    - One run folder, one W&B run: unless ``id`` (or ``version``) is given, the run's id is kept in
      ``<save_dir>/wandb/run_id`` (:func:`~intrada_pl.runs.folder_run_id`), so a resume or a validate in the folder continues the run
      (``resume="allow"``) instead of opening another one.
    - The run is opened at the first thing logged, not when the trainer is set up: a command that
      fails on its inputs opens none, and one that logs nothing (a ranking without W&B panels)
      leaves no empty run. Hyperparameters given before are sent when it opens; it is finished
      when the trainer finalises its loggers (a later use in the same process opens it again).
    - In fit, everything is logged at its iteration (:class:`IterationSteps`), the run's summary
      keeps the best ``val/mIoU``.
    """

    def __init__(self, *args: Any, save_dir: str | None = None, offline: bool | None = None, **kwargs: Any) -> None:
        if offline is None:
            mode = os.environ.get("WANDB_MODE")
            offline = mode in ("offline", "dryrun") if mode else not wandb_logged_in()
        super().__init__(*args, save_dir=save_dir or ".", offline=offline, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            del self._wandb_init["anonymous"]  # wandb warns about any value given, None included
        self._pending: list[dict[str, Any] | Namespace] = []

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        return self._experiment if self._experiment is not None else OnFirstUse(self._open)

    def _open(self) -> Any:
        """Open (or continue) the folder's run, with the hyperparameters given so far."""
        if self._experiment is None:
            self._id = self._wandb_init["id"] = self._id or folder_run_id(self.save_dir)
            os.makedirs(self.save_dir, exist_ok=True)  # wandb warns of a missing git root otherwise
            try:
                run = LightningWandbLogger.experiment.fget(self)
            except Exception as error:  # the folder's run still held by a killed process (kill -9)
                if "in use" not in str(error):
                    raise
                warnings.warn(f"W&B run {self._id} of {self.save_dir} is still held by a process that was killed; "
                              "logging this command to a new W&B run", UserWarning, stacklevel=2)
                self._id = self._wandb_init["id"] = secrets.token_hex(4)
                run = LightningWandbLogger.experiment.fget(self)
            run.define_metric("val/mIoU", summary="max")
            pending, self._pending = self._pending, []
            for params in pending:
                super().log_hyperparams(params)
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        if self._experiment is None:
            self._pending.append(params)
        else:
            super().log_hyperparams(params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, self.iteration(step))

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:
            self._experiment.finish(exit_code=0 if status == "success" else 1)
            self._experiment = None


class AppendingWriter(ExperimentWriter):
    """Lightning's ``metrics.csv`` writer, keeping the file a previous run left (Lightning deletes it
    as soon as the writer exists, even for a run that fails at once).

    At this run's first write, the previous rows are rewritten once under a header with the union of
    the old and new columns, less those a resumed fit logs again (:meth:`resume`); then rows are
    appended. Every rewrite is atomic.
    """

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self._resuming = False
        self._merged = False

    def _check_log_dir_exists(self) -> None:
        """Lightning deletes ``metrics.csv`` here: keep it."""

    def resume(self) -> None:
        """At the next write, drop the previous run's last rows logged at or after the first step
        this run logs: a resumed fit logs the same steps again from its checkpoint on."""
        self._resuming, self._merged = True, False

    def save(self) -> None:
        if self.metrics and not self._merged:
            self._merge()
        super().save()

    def _merge(self) -> None:
        keys, rows = self._read()
        if self._resuming:
            while rows and not _logged_before(rows[-1], self.metrics[0]["step"]):
                rows.pop()
        self.metrics_keys = sorted(set(keys).union(*self.metrics))
        if os.path.isfile(self.metrics_file_path):
            self._write(self.metrics_keys, rows)
        self._merged = True

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """Lightning's, atomic: a crash mid-rewrite would lose the whole log."""
        self._write(fieldnames, self._read()[1])

    def _read(self) -> tuple[list[str], list[dict[str, str]]]:
        if not os.path.isfile(self.metrics_file_path):
            return [], []
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            rows = list(reader)
        return list(reader.fieldnames or []), rows

    def _write(self, fieldnames: list[str], rows: list[dict[str, str]]) -> None:
        with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)


def _logged_before(row: dict[str, str], step: int) -> bool:
    """False for a row at ``step`` or later, and for a row cut short by a crash (no step)."""
    try:
        return int(row["step"]) < step
    except (KeyError, TypeError, ValueError):
        return False


class CSVLogger(LightningCSVLogger, IterationSteps):
    """Lightning's CSVLogger, but one ``metrics.csv`` per run folder that reads like one run, its
    ``step`` column in fit the iteration of each row (:class:`IterationSteps`).

    - A rerun with the same ``version`` appends to ``metrics.csv`` instead of deleting it (new
      metric keys widen the header); nothing is rewritten before the run logs.
    - A resumed fit (``--ckpt_path``) first drops the rows the killed run logged after its
      checkpoint: the trailing rows from the first step it logs itself on, which it logs again
      (same logging cadence). It learns that it resumes as a callback (``on_train_start``):
      ``intrada fit`` registers it; with a bare Trainer, pass it in ``callbacks`` too.
    - Logged rows are flushed whenever a checkpoint is saved, so a killed run loses none of the
      rows its checkpoint covers (Lightning otherwise flushes every ``flush_logs_every_n_steps``).
    """

    def __init__(self, save_dir: str | None = None, name: str | None = "", version: int | str | None = "logs", **kwargs: Any) -> None:
        """``save_dir`` unset: the run folder (``trainer.default_root_dir``, :mod:`intrada_pl.runs`), so the
        log is ``<run>/logs/metrics.csv``."""
        super().__init__(save_dir if save_dir is not None else ".", name=name, version=version, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            self.experiment.resume()

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        super().log_metrics(metrics, self.iteration(step))

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.save()


def git_commit() -> str | None:
    """The commit of the code that runs (``+dirty`` with uncommitted changes), if it is a git checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        sha = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if sha.returncode != 0:
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


class RunRecord(SaveConfigCallback):
    """Lightning's config.yaml in the log folder, plus what makes a run reproducible in every logger:
    the git commit and the seed (CSV: ``hparams.yaml``); W&B also gets the whole resolved config
    and keeps the best ``val/mIoU`` in the run summary (ours: :class:`WandbLogger`, when its run
    opens)."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        record = {"git_commit": git_commit(), "seed": self.config.get("seed_everything")}
        for logger in trainer.loggers:
            if isinstance(logger, LightningWandbLogger):
                config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
                logger.log_hyperparams({**record, "config": config})
                if not isinstance(logger, WandbLogger):
                    logger.experiment.define_metric("val/mIoU", summary="max")
            else:
                logger.log_hyperparams(record)
