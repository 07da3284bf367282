"""The console of ``intrada fit / validate / predict / test``: progress in iterations with an ETA and the
main losses, and after every validation the per-class IoU table, the mIoU and the best so far.

On a terminal this is a tqdm bar; without one (SLURM logs, ``| tee``) a bar would fill the log
with carriage returns, so progress becomes one plain line every few iterations instead.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf

from intrada_pl.metrics import format_iou_table

#: What the bar shows besides the stage's ``prog_bar`` metrics: the supervised main term, the
#: adversarial (ADVENT / IntraDA) or entropy (MinEnt) main term, the main discriminator's loss.
MAIN_LOSSES = ("train/loss_seg_main", "train/loss_adv_main", "train/loss_ent_main", "train/loss_d_main")


class Meter:
    """Average rate and remaining time of a loop since it (re)started at ``first`` of ``total``."""

    def __init__(self, first: int, total: int | None) -> None:
        self.first, self.total, self.start = first, total, time.monotonic()

    def line(self, label: str, n: int) -> str:
        """``label n/total (p%) r it/s ETA h:mm:ss``; without a total, ``label n r it/s``."""
        elapsed = time.monotonic() - self.start
        rate = (n - self.first) / elapsed if elapsed > 0 else 0.0
        text = f"{label} {n}" + (f"/{self.total} ({100 * n / self.total:.1f}%)" if self.total else "")
        text += f" {rate:.3g} it/s"
        if self.total and rate > 0:
            text += f" ETA {Tqdm.format_interval((self.total - n) / rate)}"
        return text


class ConsoleProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar counting iterations (``trainer.global_step``, one optimiser step in
    every stage) up to ``max_steps`` across epochs, with an ETA and, by short name, the losses in
    ``metrics`` and whatever the stage logs with ``prog_bar``.

    ``plain``: print progress as lines instead of a bar (default: when stdout is no terminal),
    one every ``print_every_n_steps`` iterations (default: the trainer's ``log_every_n_steps``);
    standalone validate / predict print one every as many batches.

    After every validation but the sanity check, rank 0 prints the per-class IoU table, the
    mIoU(s) and, in fit, the best mIoU so far with its iteration (kept in checkpoints, so a
    resumed run still knows it). The intrada CLI uses this bar unless the config names another
    one or sets ``enable_progress_bar: false``.
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        metrics: Sequence[str] = MAIN_LOSSES,
        plain: bool | None = None,
        print_every_n_steps: int | None = None,
        process_position: int = 0,
    ) -> None:
        if print_every_n_steps is not None and print_every_n_steps < 1:
            raise ValueError(f"print_every_n_steps must be >= 1, got {print_every_n_steps}")
        super().__init__(refresh_rate, process_position)
        self.metrics = tuple(metrics)
        self.plain = plain
        self.print_every_n_steps = print_every_n_steps
        self.best: tuple[float, int] | None = None  # (mIoU, iteration)
        self._plain = False
        self._every = 50  # resolved in setup
        self._meter: Meter | None = None
        self._printed = -1

    # --- mode -----------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._plain = not sys.stdout.isatty() if self.plain is None else self.plain
        self._every = self.print_every_n_steps or trainer.log_every_n_steps or 50

    @property
    def is_enabled(self) -> bool:
        """Whether tqdm bars are drawn (not in plain mode)."""
        return super().is_enabled and not self._plain

    @property
    def prints_lines(self) -> bool:
        return self._plain and self._enabled and self.refresh_rate > 0

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        """Above the bars when there are any (tqdm redraws them), always flushed: a log file gets
        each line when it happens."""
        Tqdm.write(sep.join(map(str, args)), file=sys.stdout, **kwargs)
        sys.stdout.flush()

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, str]:
        """The latest values of ``metrics`` and of the ``prog_bar`` metrics, by short name."""
        chosen = {name: trainer.callback_metrics[name] for name in self.metrics if name in trainer.callback_metrics}
        values = {**chosen, **trainer.progress_bar_metrics}
        return {name.removeprefix("train/"): f"{float(value):.4g}" for name, value in values.items()}

    # --- training: iterations, not batches of an epoch ------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        total = convert_inf(trainer.estimated_stepping_batches)
        self._meter = Meter(trainer.global_step, total)
        bar = self.train_progress_bar
        bar.total = total
        bar.initial = bar.n = bar.last_print_n = trainer.global_step  # a resumed run's rate counts its own steps
        bar.refresh()

    def on_train_epoch_start(self, trainer: Trainer, *_: Any) -> None:
        """Nothing to reset: the count runs across epochs."""

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        step, total = trainer.global_step, self._meter.total
        due = step not in (0, self._printed) and (step == total or step % self._every == 0)
        if self.prints_lines and due:
            self._printed = step
            losses = " ".join(f"{name} {value}" for name, value in self.get_metrics(trainer, pl_module).items())
            self.print(f"{self._meter.line('iteration', step)} {losses}".rstrip())
        elif self.is_enabled and (step % self.refresh_rate == 0 or step == total):
            bar = self.train_progress_bar
            bar.n = step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes

    # --- validation results ---------------------------------------------------------------------
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        report = getattr(pl_module, "last_report", None)
        if trainer.sanity_checking or report is None:
            return
        fitting = trainer.state.fn == "fit"
        if fitting and report["mIoU"] is not None and (self.best is None or report["mIoU"] > self.best[0]):
            self.best = (report["mIoU"], trainer.global_step)
        if not trainer.is_global_zero:
            return
        lines = [f"validation at iteration {trainer.global_step}" if fitting else "validation", format_iou_table(report)]
        if fitting and self.best is not None:
            lines.append(f"best mIoU {self.best[0]:.2f} at iteration {self.best[1]}")
        self.print("\n" + "\n".join(lines))

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict.get("best")

    # --- standalone validate / predict / test in plain mode: one line every few batches ----------
    def on_validation_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self._start_batches(trainer, batch_idx, self.total_val_batches_current_dataloader)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_validation_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._batch_line(trainer, "validation batch", batch_idx)

    def on_predict_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_predict_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self._start_batches(trainer, batch_idx, self.total_predict_batches_current_dataloader)

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_predict_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._batch_line(trainer, "predict batch", batch_idx)

    def on_test_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_test_batch_start(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self._start_batches(trainer, batch_idx, self.total_test_batches_current_dataloader)

    def on_test_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().on_test_batch_end(trainer, pl_module, outputs, batch, batch_idx, dataloader_idx)
        self._batch_line(trainer, "test batch", batch_idx)

    def _start_batches(self, trainer: Trainer, batch_idx: int, total: float) -> None:
        if batch_idx == 0 and trainer.state.fn != "fit":  # in fit, the iteration lines and the results say enough
            self._meter = Meter(0, convert_inf(total))

    def _batch_line(self, trainer: Trainer, label: str, batch_idx: int) -> None:
        n = batch_idx + 1
        if self.prints_lines and trainer.state.fn != "fit" and (n % self._every == 0 or n == self._meter.total):
            self.print(self._meter.line(label, n))
