"""The segmentation base: evaluation shared by every stage, and source-only training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassConfusionMatrix

from intrada_pl.data.labels import EVAL_SUBSETS, IGNORE_INDEX
from intrada_pl.losses import segmentation_loss, upsample
from intrada_pl.metrics import iou_report
from intrada_pl.models.segmenter import Segmenter
from intrada_pl.optim import OptimizerFactory, Poly, ReferenceSGD

BNMode = Literal["reference", "frozen", "trainable"]


class SegmentationEvalModule(L.LightningModule):
    """Validation as in the reference: main head, logits upsampled (bilinear, align_corners) to
    the label's full resolution, one confusion matrix over the whole split, IoU per class.

    Subclasses provide ``segment(images) -> main-head logits``.
    """

    def __init__(self, num_classes: int = 19, eval_subsets: Sequence[str] = ("19",)) -> None:
        super().__init__()
        unknown = set(eval_subsets) - set(EVAL_SUBSETS)
        if unknown:
            raise ValueError(f"unknown eval subsets {sorted(unknown)}; choose from {sorted(EVAL_SUBSETS)}")
        self.eval_subsets = tuple(eval_subsets)
        self.confmat = MulticlassConfusionMatrix(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)

    @property
    def initial_weights(self) -> str | None:
        """The weight file the network started from, if any (what a ranking names when no checkpoint was given)."""
        return None

    def score_batch(self, batch: dict) -> Tensor:
        """Accumulate one batch into the confusion matrix and return its full-resolution logits."""
        labels = batch["label"]
        logits = upsample(self.segment(batch["image"]), tuple(labels.shape[-2:]))
        self.confmat.update(logits.argmax(1), labels)
        return logits

    def compute_report(self) -> dict:
        """IoU report over everything scored since the last call (synchronised across ranks)."""
        report = iou_report(self.confmat.compute().cpu(), self.eval_subsets)
        self.confmat.reset()
        return report

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return {"logits": self.score_batch(batch)}

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """Main-head logits upsampled to the input size, with the image names (what the entropy
        ranking consumes; callbacks turn them into compact per-image results)."""
        images = batch["image"]
        return {"name": batch["name"], "logits": upsample(self.segment(images), tuple(images.shape[-2:]))}

    def on_validation_epoch_end(self) -> None:
        report = self.last_report = self.compute_report()
        metrics = {f"val/IoU/{name}": value for name, value in report["IoU"].items() if value is not None}
        metrics.update({f"val/{key}": value for key, value in report.items() if key.startswith("mIoU") and value is not None})
        self.log_dict(metrics, sync_dist=True)


class SegmentationModule(SegmentationEvalModule):
    """Source-only training of any segmenter; every adaptation stage extends it, so they share the
    supervised objective, the optimiser and the evaluation.

    Args:
        segmenter: the network (``segmenter: {class_path: intrada_pl.models.DeepLabV2, init_args: ...}``);
            its ``pretrained`` weights are loaded when training starts.
        optimizer: the generator's optimiser (:mod:`intrada_pl.optim`): ``ReferenceSGD`` (default: SGD
            as PyTorch 0.4.1 ran it over the reference's parameter list), ``SGD`` or ``AdamW``; the
            learning-rate and weight-decay multipliers come from the segmenter's parameter groups.
        lr_scheduler: the schedule (:class:`~intrada_pl.optim.Poly`: ADVENT's poly law against 250k
            steps by default, optional warm-up).
        bn: ``reference`` freezes the BN affine parameters but keeps batch statistics in training,
            as the reference code does; ``frozen`` also uses the running statistics while training;
            ``trainable`` trains everything.
        lambda_seg_main, lambda_seg_aux: weights of the main and auxiliary cross-entropy.
        sync_bn_stats: under DDP, BN running statistics (updated from each rank's own batch) are
            averaged across ranks after every step, so every rank holds, and checkpoints store, the
            same model. One all-reduce of ~0.1M floats per step.
        check_finite: a non-finite loss term stops training before its optimiser step, and a
            checkpoint whose weights or buffers are not all finite is never written (a step can blow
            the weights up while its loss is still finite): training stops with an error instead.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        optimizer: OptimizerFactory = ReferenceSGD(),
        lr_scheduler: Poly = Poly(),
        bn: BNMode = "reference",
        lambda_seg_main: float = 1.0,
        lambda_seg_aux: float = 0.1,
        eval_subsets: Sequence[str] = ("19",),
        channels_last: bool = False,
        sync_bn_stats: bool = True,
        check_finite: bool = True,
    ) -> None:
        super().__init__(segmenter.num_classes, eval_subsets)
        self.save_hyperparameters(ignore=["segmenter", "optimizer", "lr_scheduler"])
        # The components as config blocks (a checkpoint rebuilds its network from them alone) and this
        # class's settings, which a subclass's recorded arguments (LightningCLI records only its own) lack.
        self.hparams.update(
            segmenter=segmenter.spec(), optimizer=optimizer.spec(), lr_scheduler=lr_scheduler.spec(), bn=bn,
            lambda_seg_main=lambda_seg_main, lambda_seg_aux=lambda_seg_aux, eval_subsets=list(self.eval_subsets),
            channels_last=channels_last, sync_bn_stats=sync_bn_stats, check_finite=check_finite,
        )
        self.model = segmenter
        self.optimizer_factory = optimizer
        self.lr_schedule = lr_scheduler
        if bn != "trainable":
            segmenter.freeze_norm_affine()
        if channels_last:
            segmenter.to(memory_format=torch.channels_last)

    @property
    def initial_weights(self) -> str | None:
        return self.model.pretrained

    def setup(self, stage: str) -> None:
        """The segmenter's initial weights, unless a checkpoint (resumed or evaluated) replaces them."""
        if self.trainer.ckpt_path is None and not getattr(self, "_pretrained_loaded", False):
            rank_zero_info(f"pretrained weights: {self.model.load_pretrained()}")
            self._pretrained_loaded = True

    def on_train_start(self) -> None:
        self.train()  # Lightning 2.6 restores each submodule's mode at fit start instead of calling train()

    def train(self, mode: bool = True) -> SegmentationModule:
        super().train(mode)
        if mode and self.hparams.bn == "frozen":
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def segment(self, images: Tensor) -> Tensor:
        return self.model(images)[1]

    def supervised_loss(self, batch: dict, prefix: str) -> tuple[Tensor, dict[str, Tensor]]:
        """``lambda_main * CE(main) + lambda_aux * CE(aux)`` on a labelled batch, with its parts."""
        return self.supervised_terms(*self.model(batch["image"]), batch["label"], prefix)

    def supervised_terms(self, aux: Tensor | None, main: Tensor, labels: Tensor, prefix: str) -> tuple[Tensor, dict[str, Tensor]]:
        """The supervised objective from already computed logits (adaptation stages reuse the forward)."""
        parts = {f"{prefix}/loss_seg_main": segmentation_loss(main, labels)}
        loss = self.hparams.lambda_seg_main * parts[f"{prefix}/loss_seg_main"]
        if aux is not None:
            parts[f"{prefix}/loss_seg_aux"] = segmentation_loss(aux, labels)
            loss = loss + self.hparams.lambda_seg_aux * parts[f"{prefix}/loss_seg_aux"]
        return loss, parts

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, parts = self.supervised_loss(batch["source"], "train")
        self.guard_finite(parts)
        self.log_dict(parts, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def guard_finite(self, terms: dict[str, Tensor]) -> None:
        """Stop before any optimiser step when a loss term is NaN/inf, naming the iteration and
        the term. Agreed across ranks."""
        if not self.hparams.check_finite:
            return
        finite = torch.stack([value.detach().float() for value in terms.values()]).isfinite()
        if not self.trainer.strategy.reduce_boolean_decision(bool(finite.all()), all=True):
            bad = [name for name, ok in zip(terms, finite.tolist()) if not ok] or ["(another rank)"]
            raise FloatingPointError(
                f"non-finite loss at iteration {self.global_step}: {', '.join(bad)} "
                f"= {[terms[b].item() for b in bad if b in terms]}; training stopped, checkpoints untouched"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to write a checkpoint of non-finite weights or statistics (every stage, every
        checkpoint: best, last, end of training), before the file is opened."""
        if not self.hparams.check_finite:
            return
        for name, value in checkpoint["state_dict"].items():
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise FloatingPointError(
                    f"non-finite weights after iteration {self.global_step} ({name}); checkpoint not written, "
                    "training stopped: lower the learning rate or resume from the last good checkpoint"
                )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.hparams.sync_bn_stats and self.trainer.world_size > 1:
            average_bn_statistics(self.model, self.trainer.strategy)

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory.build(self.model)
        return {"optimizer": optimizer, "lr_scheduler": self.lr_schedule.build(optimizer)}


def average_bn_statistics(module: nn.Module, strategy: Any) -> None:
    """Average BatchNorm running statistics across ranks in one collective."""
    buffers = [
        buf
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        for buf in (m.running_mean, m.running_var)
    ]
    if not buffers:
        return
    flat = strategy.reduce(torch.cat([b.detach().flatten().float() for b in buffers]), reduce_op="mean")
    offset = 0
    for buf in buffers:
        buf.copy_(flat[offset : offset + buf.numel()].view_as(buf))
        offset += buf.numel()
