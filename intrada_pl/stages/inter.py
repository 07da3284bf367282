"""Stage 1: inter-domain adaptation, ADVENT (adversarial entropy alignment) or MinEnt."""

from __future__ import annotations

from typing import Any, Literal

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor

from intrada_pl.losses import adversarial_loss, entropy_loss, self_information, upsample
from intrada_pl.models.discriminator import FCDiscriminator
from intrada_pl.stages.segmentation import SegmentationModule

SOURCE, TARGET = 0.0, 1.0  # domain labels of the reference
LEVELS = ("aux", "main")


class InterDomainModule(SegmentationModule):
    """ADVENT (REFERENCE A3) with manual adversarial optimisation.

    One step: the generator learns from the labelled side (CE main + 0.1 aux) and, through
    frozen discriminators, makes the unlabelled side's weighted self-information maps look like
    the labelled side's (``advent``) or minimises its entropy (``minent``); then each
    discriminator learns to tell the two domains apart from detached maps. Batches are
    ``{"source": labelled, "target": unlabelled}``, so IntraDA reuses this loop with easy/hard
    splits. Defaults are the paper's: adversarial weights 0.001 (main) / 0.0002 (aux), Adam 1e-4
    with betas (0.9, 0.99) for the discriminators, the generator's poly schedule for both.
    """

    def __init__(
        self,
        method: Literal["advent", "minent"] = "advent",
        lambda_adv_main: float = 0.001,
        lambda_adv_aux: float = 0.0002,
        lambda_ent_main: float = 0.001,
        lambda_ent_aux: float = 0.0002,
        lr_d: float = 1e-4,
        betas_d: tuple[float, float] = (0.9, 0.99),
        ndf: int = 64,
        check_finite: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False
        if method not in ("advent", "minent"):
            raise ValueError(f"method must be 'advent' or 'minent', got {method!r}")
        self.levels = LEVELS if self.hparams.multi_level else ("main",)
        if method == "advent":
            num_classes = self.hparams.num_classes
            self.d_main = FCDiscriminator(num_classes, ndf)
            if self.hparams.multi_level:
                self.d_aux = FCDiscriminator(num_classes, ndf)

    def setup(self, stage: str) -> None:
        """Under DDP, the generator's backward leaves the frozen discriminators without gradients
        and the discriminators' backward leaves the generator without any, so DDP must expect
        unused parameters: we switch that on for plain ``--trainer.strategy ddp`` too (Lightning
        2.6 has no multi-model DDP strategy). Everything stays one DDP module, so gradients of G
        and D are all-reduced with DDP's overlapped buckets."""
        super().setup(stage)
        strategy = self.trainer.strategy
        if isinstance(strategy, DDPStrategy) and not strategy._ddp_kwargs.get("find_unused_parameters"):
            strategy._ddp_kwargs["find_unused_parameters"] = True

    # --- losses ---------------------------------------------------------------------------
    def discriminator(self, level: str) -> FCDiscriminator:
        return self.d_main if level == "main" else self.d_aux

    def generator_losses(self, source: dict, target: dict | None) -> tuple[dict[str, Tensor], dict, dict]:
        """The generator's loss terms, and both sides' logits per level upsampled (bilinear,
        align_corners) to their input sizes, which the discriminator step reuses detached.
        Without a target batch (IntraDA with lambda 1: nothing is hard) only the supervised terms remain."""
        aux, main = self.model(source["image"])
        _, terms = self.supervised_terms(aux, main, source["label"], "train")
        source_logits = self.upsampled_levels(aux, main, source["image"])
        if target is None:
            return terms, source_logits, {}
        target_logits = self.upsampled_levels(*self.model(target["image"]), target["image"])
        for level in self.levels:
            if self.hparams.method == "advent":
                d_out = self.discriminator(level)(self_information(target_logits[level]))
                terms[f"train/loss_adv_{level}"] = adversarial_loss(d_out, SOURCE)
            else:
                terms[f"train/loss_ent_{level}"] = entropy_loss(target_logits[level])
        return terms, source_logits, target_logits

    def upsampled_levels(self, aux: Tensor | None, main: Tensor, images: Tensor) -> dict[str, Tensor]:
        size = tuple(images.shape[-2:])
        return {level: upsample(logits, size) for level, logits in zip(LEVELS, (aux, main)) if level in self.levels}

    def generator_objective(self, terms: dict[str, Tensor]) -> Tensor:
        """Weighted sum of the generator's terms (weights are hyperparameters)."""
        hp = self.hparams
        weights = {
            "train/loss_seg_main": hp.lambda_seg_main,
            "train/loss_seg_aux": hp.lambda_seg_aux,
            "train/loss_adv_main": hp.lambda_adv_main,
            "train/loss_adv_aux": hp.lambda_adv_aux,
            "train/loss_ent_main": hp.lambda_ent_main,
            "train/loss_ent_aux": hp.lambda_ent_aux,
        }
        return sum(weights[name] * value for name, value in terms.items())

    def discriminator_losses(self, source_logits: dict[str, Tensor], target_logits: dict[str, Tensor]) -> dict[str, Tensor]:
        """Per level: BCE of detached source maps against 0 and target maps against 1, each halved;
        plus the discriminators' accuracy on each domain (logged, not optimised)."""
        terms = {}
        for level in self.levels:
            d = self.discriminator(level)
            d_source = d(self_information(source_logits[level].detach()))
            d_target = d(self_information(target_logits[level].detach()))
            terms[f"train/loss_d_{level}"] = adversarial_loss(d_source, SOURCE) / 2 + adversarial_loss(d_target, TARGET) / 2
            terms[f"train/d_acc_source_{level}"] = (d_source.detach() < 0).float().mean()
            terms[f"train/d_acc_target_{level}"] = (d_target.detach() > 0).float().mean()
        return terms

    # --- the manual optimisation step ------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        source, target = batch["source"], batch.get("target")
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        opt_g, opt_ds = optimizers[0], optimizers[1:]

        self.toggle_optimizer(opt_g)  # discriminators frozen: their grads stay untouched
        opt_g.zero_grad()
        terms, source_logits, target_logits = self.generator_losses(source, target)
        self.guard_finite(terms)
        self.manual_backward(self.generator_objective(terms))
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        if self.hparams.method == "advent" and target is not None:
            terms.update(self.discriminator_step(opt_ds, source_logits, target_logits))

        for scheduler in self._schedulers():
            scheduler.step()
        self.log_dict(terms, prog_bar=False)
        self.log("train/lr", opt_g.param_groups[0]["lr"], prog_bar=True)
        if opt_ds:
            self.log("train/lr_d", opt_ds[0].param_groups[0]["lr"])

    def discriminator_step(self, opt_ds: list, source_logits: dict[str, Tensor], target_logits: dict[str, Tensor]) -> dict[str, Tensor]:
        """Update D_aux and D_main from detached maps; the generator receives no gradient."""
        for opt in opt_ds:
            opt.zero_grad()
        terms = self.discriminator_losses(source_logits, target_logits)
        self.guard_finite({k: v for k, v in terms.items() if "loss" in k})
        self.manual_backward(sum(terms[f"train/loss_d_{level}"] for level in self.levels))
        for opt in opt_ds:
            opt.step()
        return terms

    def _schedulers(self) -> list:
        schedulers = self.lr_schedulers()
        return schedulers if isinstance(schedulers, list) else [schedulers]

    def guard_finite(self, terms: dict[str, Tensor]) -> None:
        """Stop before any optimiser step when a loss term is NaN/inf, naming the step and term,
        so no checkpoint is ever written from poisoned weights. Agreed across ranks."""
        if not self.hparams.check_finite:
            return
        finite = torch.stack([value.detach().float() for value in terms.values()]).isfinite()
        all_finite = self.trainer.strategy.reduce_boolean_decision(bool(finite.all()), all=True)
        if not all_finite:
            bad = [name for name, ok in zip(terms, finite.tolist()) if not ok] or ["(another rank)"]
            raise FloatingPointError(
                f"non-finite loss at step {self.global_step // max(1, len(self._schedulers()))}: {', '.join(bad)} "
                f"= {[terms[b].item() for b in bad if b in terms]}; training stopped, checkpoints untouched"
            )

    def configure_optimizers(self) -> tuple[list, list]:
        hp = self.hparams
        generator = super().configure_optimizers()
        optimizers, schedulers = [generator["optimizer"]], [generator["lr_scheduler"]]
        if hp.method == "advent":
            for level in self.levels:
                opt = torch.optim.Adam(self.discriminator(level).parameters(), lr=hp.lr_d, betas=tuple(hp.betas_d))
                optimizers.append(opt)
                schedulers.append(self.poly(opt))
        return optimizers, schedulers
