"""Callbacks: checkpoints of a run's folder, the exit of a run stopped by a signal, and the
validation image panels and per-class IoU table on the run's dashboards (W&B, TensorBoard)."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import os
import signal
import sys
from types import FrameType
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from intrada_pl.dashboards import Dashboards
from intrada_pl.data.datasets import resize_nearest
from intrada_pl.io import atomic_path
from intrada_pl.losses import normalized_entropy
from intrada_pl.visuals import entropy_heatmap


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ModelCheckpoint in the run's folder, saving the final iteration too.

    ``dirpath`` defaults to ``<trainer.default_root_dir>/checkpoints``, so a config's run lives in
    one stable folder and ``--ckpt_path last`` finds what it continues. Without a ``monitor``
    (the "latest" checkpoint), it also saves when training ends, and when a signal stops it
    (:class:`StopOnSignal`): Lightning saves only after a validation, so with ``max_steps`` not a
    multiple of the validation interval the final iterations were lost and ``last.ckpt`` was
    stale, and a run stopped before its first validation left none. Lightning raises its
    SIGTERMException at the end of a batch, so what is saved then is a whole iteration, which
    ``--ckpt_path last`` continues exactly. (Uses ModelCheckpoint's own save steps, as its
    ``on_validation_end`` does; Lightning is pinned below 2.7.)

    A run folder is movable: resuming a checkpoint of this run (one under its folder) from a
    folder that was moved or copied, the paths that Lightning restores (the best ``k`` checkpoints
    with their scores, the latest) are taken to name the same files in the new folder. Lightning
    drops them when the folder's path changed, so the resume wrote ``last-v1.ckpt`` beside a stale
    ``last.ckpt`` and kept a second, worse ``best-step=N.ckpt`` beside the best. ``last.ckpt`` as a
    link (``save_last="link"``) is replaced atomically: Lightning removes it before linking anew.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.dirpath is None:
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        super().setup(trainer, pl_module, stage)

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Before Lightning hands this callback its state: if the checkpoint is this run's and its
        folder has moved, point the state's paths into the folder as it is now."""
        states = checkpoint.get("callbacks") or {}
        state = states.get(self.state_key)
        saved = (state or {}).get("dirpath")
        if saved and self.dirpath and saved != self.dirpath and self._is_own(trainer.ckpt_path, trainer):
            states[self.state_key] = moved_state(state, str(self.dirpath))

    def _is_own(self, checkpoint: str | None, trainer: Trainer) -> bool:
        """Whether ``checkpoint`` lies in this run's folder or checkpoint folder (a SLURM requeue's
        ``hpc_ckpt_N.ckpt`` lies in the run folder), not in another run's."""
        if not checkpoint:
            return False
        path = os.path.realpath(checkpoint)
        return any(path.startswith(os.path.realpath(folder) + os.sep) for folder in (trainer.default_root_dir, self.dirpath))

    @staticmethod
    def _link_checkpoint(trainer: Trainer, filepath: str, linkpath: str) -> None:
        """Lightning's, with the new link renamed over the old one: Lightning removes ``last.ckpt``
        first, so a kill in between left a run with nothing for ``--ckpt_path last``."""
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            with atomic_path(linkpath) as tmp:
                os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), tmp)
        trainer.strategy.barrier()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._save_latest(trainer)
        super().on_train_end(trainer, pl_module)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            self._save_latest(trainer)
        super().on_exception(trainer, pl_module, exception)

    def _save_latest(self, trainer: Trainer) -> None:
        if self.monitor is None and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            self._save_topk_checkpoint(trainer, candidates)
            self._save_last_checkpoint(trainer, candidates)


def moved_state(state: dict[str, Any], dirpath: str) -> dict[str, Any]:
    """A ModelCheckpoint state with the paths it holds in its old ``dirpath`` moved to ``dirpath``."""
    old = state["dirpath"]

    def moved(path: str) -> str:
        return os.path.join(dirpath, os.path.basename(path)) if path and os.path.dirname(path) == old else path

    paths = {key: moved(state[key]) for key in ("best_model_path", "kth_best_model_path", "last_model_path") if key in state}
    best_k = {moved(path): score for path, score in (state.get("best_k_models") or {}).items()}
    return {**state, **paths, "best_k_models": best_k, "dirpath": dirpath}


class StopOnSignal(Callback):
    """SIGTERM (a scheduler's pre-emption or time limit) or SIGINT (Ctrl+C) ends a run at the end
    of the current batch with exit status 128 + the signal's number (143, 130), where Lightning
    exits 0 as if the run had finished; a fit saves ``last.ckpt`` first (:class:`ModelCheckpoint`).

    Lightning's own SIGTERM handling does the stopping: its loops raise SIGTERMException at the
    end of a batch (its prediction loop never does; here it does too). While a loop runs, SIGINT
    is handed to it instead of raising a KeyboardInterrupt, which can land mid-step and leave a
    half-stepped model to save; a second Ctrl+C kills the process at once, saving nothing. Data
    loader workers started meanwhile inherit these handlers (and ignore the signals), so a signal
    to the whole process group (a terminal's Ctrl+C, a scheduler) does not kill them under the
    run. ``intrada`` adds this callback to every trainer.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.ctrl_c = False
        self.pid = os.getpid()

    def _catch_ctrl_c(self) -> None:
        """Take SIGINT from a loop's start hook: these run after Lightning set its signal handlers,
        so its teardown puts back the SIGINT handler that was there before the run."""
        signal.signal(signal.SIGINT, self._on_ctrl_c)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._catch_ctrl_c()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._catch_ctrl_c()

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._catch_ctrl_c()

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._catch_ctrl_c()

    def _on_ctrl_c(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.pid:  # a data loader worker: the run stops it
            return
        if self.ctrl_c:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.raise_signal(signal.SIGINT)
        self.ctrl_c = True
        # os.write: a print here could interrupt one to stderr (a progress bar's), which Python refuses
        os.write(2, b"\nintrada: Ctrl+C: stopping at the end of this batch (press it again to stop at once, saving nothing)\n")
        signal.getsignal(signal.SIGTERM)(signal.SIGTERM, frame)  # Lightning's handler

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.received_sigterm:
            raise SIGTERMException

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        signum = signal.SIGINT if self.ctrl_c else signal.SIGTERM
        exception.code = 128 + signum  # Lightning raises it again: the process's exit status
        if trainer.is_global_zero:
            fn = trainer.state.fn.value
            where = f"at iteration {trainer.global_step}" if fn == "fit" else "before its end"
            print(f"intrada: {fn} stopped by {signum.name} {where}; exit status {exception.code}", file=sys.stderr)


class SegmentationPanels(Callback):
    """Every ``every_n_validations`` validations, log for the first ``num_images`` validation
    images a panel of input, ground truth and prediction (masks with class names; on TensorBoard
    side by side with a legend, :class:`~intrada_pl.dashboards.Dashboards`), the normalised
    entropy map (with its colour bar), and the per-class IoU table of that validation.
    """

    def __init__(self, every_n_validations: int = 1, num_images: int = 4) -> None:
        if every_n_validations < 1 or num_images < 1:
            raise ValueError("every_n_validations and num_images must be >= 1")
        self.every_n_validations = every_n_validations
        self.num_images = num_images
        self.validations = 0
        self.rows: list[dict[str, np.ndarray]] = []

    def _active(self, trainer: Trainer) -> bool:
        return (not trainer.sanity_checking and self.validations % self.every_n_validations == 0
                and Dashboards.of(trainer).shows_pictures)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.rows = []

    @torch.inference_mode()
    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not self._active(trainer) or len(self.rows) >= self.num_images or not isinstance(outputs, dict):
            return
        logits = outputs["logits"]
        predictions = logits.argmax(1).byte().cpu().numpy()
        entropy = normalized_entropy(logits).cpu().numpy()
        for i in range(min(len(predictions), self.num_images - len(self.rows))):
            image = batch["image"][i].permute(1, 2, 0).cpu().numpy().astype(np.uint8)
            hw = image.shape[:2]
            self.rows.append(
                {
                    "image": image,
                    "label": resize_nearest(batch["label"][i].cpu().numpy().astype(np.uint8), hw),
                    "prediction": resize_nearest(predictions[i], hw),
                    "entropy": cv2.resize(entropy[i], hw[::-1], interpolation=cv2.INTER_AREA),
                    "name": batch["name"][i],
                }
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        active = self._active(trainer)
        self.validations += 1
        if not active:
            return
        dashboards, step = Dashboards.of(trainer), trainer.global_step
        captions = [row["name"] for row in self.rows]
        masks = [{"ground_truth": row["label"], "predictions": row["prediction"]} for row in self.rows]
        dashboards.images("val/panels", [row["image"] for row in self.rows], step, captions, masks)
        dashboards.images("val/entropy", [entropy_heatmap(row["entropy"]) for row in self.rows], step, captions)
        report = getattr(pl_module, "last_report", None)
        if report is not None:
            dashboards.table("val/iou_table", ["class", "IoU"], [[name, value] for name, value in report["IoU"].items()], step)
        self.rows = []
