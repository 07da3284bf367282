"""InstCal: learn instance-specific BatchNorm calibration on strongly augmented source images.

Any segmentation checkpoint (a stage of ours or a released reference ``.pth``) is loaded, its
BatchNorms are converted to :class:`~intrada_pl.models.bn_calibration.CalibratedBatchNorm`
(InstCal-U or InstCal-C), everything but the calibration parameters is frozen, and those are
trained with the ordinary supervised loss of the base stage on source images that get a strong
photometric augmentation on the device (REFERENCE B1.4, B2). The checkpoint records the mode in
its hyperparameters, so ``intrada test --calibration instcal_u --ckpt`` rebuilds the calibrated
model from it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, Subset
from torch import Tensor

from intrada_pl.dashboards import Dashboards
from intrada_pl.data.strong_augment import StrongAugment
from intrada_pl.io import write_json
from intrada_pl.models.bn_calibration import (
    freeze_all_but_calibration,
    learned_strengths,
    record_strengths,
    strength_table,
)
from intrada_pl.models.channel_calibration import (
    DEFAULT_SITES,
    collect_source_moments,
    convert_for_calibration,
    load_source_moments,
    sites_without_source,
)
from intrada_pl.models.factory import load_segmenter
from intrada_pl.models.weights import CheckpointMismatchError
from intrada_pl.optim import Adam, OptimizerFactory, Poly
from intrada_pl.stages.segmentation import SegmentationModule
from intrada_pl.visuals import strength_figure, write_figure


class CalibrationModule(SegmentationModule):
    """Trains only the InstCal strengths of a converted segmenter (Adam, warm-up then poly decay, weight decay 0).

    Args:
        init_ckpt: the segmentation checkpoint to calibrate (any stage's ``.ckpt`` or a reference ``.pth``).
        calibration: ``instcal_u`` (per-channel strengths) or ``instcal_c`` (strengths predicted
            per image from K basis strengths) on the BatchNorms; ``chancal_u`` / ``chancal_c``: the
            same at channel calibration sites (:mod:`intrada_pl.models.channel_calibration`: after
            LayerNorms, at block entries, stage outputs; on BatchNorms it is InstCal), which is
            what calibrates transformer segmenters; ``init_strength``, ``num_basis``, ``hidden_dim``
            and ``condition`` are the layer options (:class:`CalibratedBatchNorm`).
        sites, select: channel calibration only: the kinds of sites (``norm``, ``batchnorm``,
            ``block``, ``stage``) and the layer groups or name patterns they are restricted to.
        source_images: channel calibration only: clean source images the source moments are
            averaged over (once, before the first step).
        augmentations: what each source image may get, one drawn per image
            (``randaugment``, ``augmix``, ``deepaugment``, ``noise2net``, ``cae``);
            ``p_clean`` keeps an image clean; ``deepaugment_weights`` is a local CAE weight
            file (without it ``deepaugment`` is the weight-free Noise2Net).
        optimizer: over the calibration parameters only (the reference: Adam 2.5e-3, no weight decay).
        lr_scheduler: the reference's Detectron2 WarmupPolyLR (poly 0.9 against 90k steps, 1000
            warm-up steps from 0.001 x lr; :class:`~intrada_pl.optim.Poly`); ``warmup_steps: 0``: plain poly.
        lambda_seg_main, lambda_seg_aux: the supervised objective of the base stage (main + 0.1 aux).
    """

    def __init__(
        self,
        init_ckpt: str,
        calibration: Literal["instcal_u", "instcal_c", "chancal_u", "chancal_c"] = "instcal_u",
        sites: Sequence[str] = DEFAULT_SITES,
        select: Sequence[str] | None = None,
        source_images: int = 256,
        init_strength: float = 0.1,
        num_basis: int = 8,
        hidden_dim: int = 256,
        condition: Literal["raw", "normalized"] = "raw",
        augmentations: Sequence[str] = ("randaugment", "augmix", "deepaugment"),
        p_clean: float = 0.0,
        deepaugment_weights: str | None = None,
        optimizer: OptimizerFactory = Adam(lr=2.5e-3, weight_decay=0.0),
        lr_scheduler: Poly = Poly(total_steps=90_000, power=0.9, warmup_steps=1000, warmup_factor=0.001),
        lambda_seg_main: float = 1.0,
        lambda_seg_aux: float = 0.1,
        num_classes: int = 19,
        eval_subsets: Sequence[str] | None = None,
        channels_last: bool = False,
    ) -> None:
        segmenter, info = load_segmenter(init_ckpt, num_classes)
        if info.calibration is not None:
            raise CheckpointMismatchError(
                f"init_ckpt {init_ckpt} is already calibrated ({info.calibration}); start from the segmentation checkpoint it calibrated")
        rank_zero_info(str(convert_for_calibration(
            segmenter, calibration, sites=sites, select=select, init_strength=init_strength, num_basis=num_basis,
            hidden_dim=hidden_dim, condition=condition,
        )))
        freeze_all_but_calibration(segmenter)
        super().__init__(
            segmenter, optimizer, lr_scheduler, lambda_seg_main=lambda_seg_main, lambda_seg_aux=lambda_seg_aux,
            eval_subsets=eval_subsets or info.eval_subsets, channels_last=channels_last,
        )
        self.augment = StrongAugment(augmentations, p_clean=p_clean, deepaugment_weights=deepaugment_weights)
        self._strength_sums: dict[str, dict[str, Tensor]] = {}
        self._strength_count = 0

    def setup(self, stage: str) -> None:
        """Nothing to load: the weights came from ``init_ckpt`` in ``__init__`` (``pretrained`` is unused)."""

    def on_fit_start(self) -> None:
        """Channel calibration sites need the source's per-image moments: collected once, before the
        first step, from the first ``source_images`` clean (unaugmented) source training images,
        averaged over the ranks of a DDP run, with the random state left untouched (the training
        draws the same crops and augmentations with or without it). A resumed run brings them."""
        if not sites_without_source(self.model):
            return
        source_set = self.trainer.datamodule.source_set
        count = min(self.hparams.source_images, len(source_set))
        loader = DataLoader(Subset(source_set, range(count)), batch_size=self.trainer.datamodule.hparams.batch_size)
        with isolate_rng():
            moments = collect_source_moments(self.model, (batch["image"] for batch in loader), device=self.device)
        strategy = self.trainer.strategy
        for entry in moments.values():
            for key in ("mean", "var"):
                entry[key] = strategy.reduce(entry[key].to(self.device), reduce_op="mean").cpu()
        rank_zero_info(f"source moments of {len(moments)} calibration sites from {count} clean source images")
        load_source_moments(self.model, moments)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        source = batch["source"]
        images = self.augment(source["image"])  # photometric only: the labels stay valid
        loss, parts = self.supervised_loss({**source, "image": images}, "train")
        self.guard_finite(parts)
        self.log_dict(parts, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        counts = self.augment.choice_counts()
        self.log_dict({f"train/augment/{op}": float(n) / len(images) for op, n in counts.items()})
        return loss

    # --------------------------------------------------------------------- strength analysis
    def on_validation_epoch_start(self) -> None:
        # InstCal-C strengths depend on the image: average what the validation images got.
        record_strengths(self.model, self.hparams.calibration in ("instcal_c", "chancal_c"))
        self._strength_sums, self._strength_count = {}, 0

    def on_validation_batch_end(self, outputs: object, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.hparams.calibration not in ("instcal_c", "chancal_c"):
            return
        n = len(batch["name"])
        for layer, values in learned_strengths(self.model, from_last_forward=True).items():
            sums = self._strength_sums.setdefault(layer, {k: torch.zeros_like(v) for k, v in values.items()})
            for key, value in values.items():
                sums[key] += value * n
        self._strength_count += n

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        record_strengths(self.model, False)
        if self._strength_count:
            strengths = {
                layer: {k: v / self._strength_count for k, v in sums.items()} for layer, sums in self._strength_sums.items()
            }
        else:
            strengths = learned_strengths(self.model)
        log_dir = self.trainer.log_dir  # a collective under DDP: read it on every rank
        if self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        self.write_strength_plot(strengths, Path(log_dir or self.trainer.default_root_dir))

    def write_strength_plot(self, strengths: dict[str, dict[str, Tensor]], run_dir: Path) -> Path:
        """``run_dir/strengths.png`` (per-layer channel mean +- std of the mean and variance
        strengths, layer names on the axis) and the numbers in ``run_dir/strengths.json``; both
        also go to the run's dashboards (figure and table)."""
        mode = self.hparams.calibration
        what = "validation-image average" if mode in ("instcal_c", "chancal_c") else "learned"
        path = write_figure(run_dir / "strengths.png", strength_figure(strengths, title=f"{mode} {what} strengths, step {self.global_step}"))
        columns, rows = ["layer", "mean_m", "mean_m_std", "var_m", "var_m_std"], strength_table(strengths)
        write_json(run_dir / "strengths.json", {"step": self.global_step, "columns": columns, "rows": rows})
        dashboards = Dashboards.of(self.trainer)
        dashboards.figure("calibration/strengths", path, self.global_step)
        dashboards.table("calibration/strengths_table", columns, rows, self.global_step)
        rank_zero_info(f"calibration strengths plotted to {path}")
        return path
