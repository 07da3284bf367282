"""Stage 1: inter-domain adaptation, ADVENT (adversarial entropy alignment) or MinEnt."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor

from intrada_pl.losses import adversarial_loss, entropy_loss, self_information, upsample
from intrada_pl.models.discriminator import FCDiscriminator
from intrada_pl.models.segmenter import Segmenter
from intrada_pl.optim import Adam041, JointOptimizer
from intrada_pl.stages.segmentation import SegmentationModule

SOURCE, TARGET = 0.0, 1.0  # domain labels of the reference
LEVELS = ("aux", "main")


class InterDomainModule(SegmentationModule):
    """ADVENT (REFERENCE A3) with manual adversarial optimisation.

    One iteration, one optimiser step (so ``max_steps``, checkpoint names and log x-axes count
    iterations): the generator learns from the labelled side (CE main + 0.1 aux) and, through
    frozen discriminators, makes the unlabelled side's weighted self-information maps look like
    the labelled side's (``advent``) or minimises its entropy (``minent``); each discriminator
    learns to tell the two domains apart from detached maps; then G and the discriminators step. Batches are
    ``{"source": labelled, "target": unlabelled}``, so IntraDA reuses this loop with easy/hard
    splits. Defaults are the paper's: adversarial weights 0.001 (main) / 0.0002 (aux), Adam 1e-4
    with betas (0.9, 0.99) for the discriminators, the generator's poly schedule for both.

    ``adam_d``: ``reference`` steps the discriminators as PyTorch 0.4.1's Adam did (eps added to
    ``sqrt(v)`` before the bias correction: :class:`~intrada_pl.optim.Adam041`), as ADVENT and
    IntraDA ran; ``torch`` is today's ``torch.optim.Adam`` (what checkpoints of earlier versions
    of this package were trained with).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        method: Literal["advent", "minent"] = "advent",
        lambda_adv_main: float = 0.001,
        lambda_adv_aux: float = 0.0002,
        lambda_ent_main: float = 0.001,
        lambda_ent_aux: float = 0.0002,
        lr_d: float = 1e-4,
        betas_d: tuple[float, float] = (0.9, 0.99),
        adam_d: Literal["reference", "torch"] = "reference",
        ndf: int = 64,
        **kwargs: Any,
    ) -> None:
        super().__init__(segmenter, **kwargs)
        self.automatic_optimization = False
        if method not in ("advent", "minent"):
            raise ValueError(f"method must be 'advent' or 'minent', got {method!r}")
        if adam_d not in ("reference", "torch"):
            raise ValueError(f"adam_d must be 'reference' or 'torch', got {adam_d!r}")
        self.levels = LEVELS if self.model.multi_level else ("main",)
        if method == "advent":
            num_classes = self.model.num_classes
            self.d_main = FCDiscriminator(num_classes, ndf)
            if self.model.multi_level:
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

    def discriminators(self) -> list[FCDiscriminator]:
        return [self.discriminator(level) for level in self.levels] if self.hparams.method == "advent" else []

    def source_terms(self, source: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The supervised terms on the labelled side, and its logits per level upsampled (bilinear,
        align_corners) to the input size, which the discriminator step reuses detached."""
        aux, main = self.model(source["image"])
        _, terms = self.supervised_terms(aux, main, source["label"], "train")
        return terms, self.upsampled_levels(aux, main, source["image"])

    def target_terms(self, target: dict) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The unlabelled side's terms: per level, BCE of the discriminator's verdict on its weighted
        self-information map against the *source* label (``advent``), or its mean entropy
        (``minent``); and its upsampled logits."""
        target_logits = self.upsampled_levels(*self.model(target["image"]), target["image"])
        terms = {}
        for level in self.levels:
            if self.hparams.method == "advent":
                d_out = self.discriminator(level)(self_information(target_logits[level]))
                terms[f"train/loss_adv_{level}"] = adversarial_loss(d_out, SOURCE)
            else:
                terms[f"train/loss_ent_{level}"] = entropy_loss(target_logits[level])
        return terms, target_logits

    def upsampled_levels(self, aux: Tensor | None, main: Tensor, images: Tensor) -> dict[str, Tensor]:
        size = tuple(images.shape[-2:])
        return {level: upsample(logits, size) for level, logits in zip(LEVELS, (aux, main)) if level in self.levels}

    def generator_objective(self, terms: dict[str, Tensor]) -> Tensor:
        """Weighted sum of (some of) the generator's terms (weights are hyperparameters)."""
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
        """One reference iteration (REFERENCE A3), in the reference's order: the source loss is
        back-propagated before the target's forward pass (the two graphs never coexist: the
        reference's memory profile), then the target's terms through frozen discriminators, then
        the discriminators' loss on detached maps; finally one joint step of G, D_aux and D_main.
        Without a target batch (IntraDA with nothing hard) only the supervised part runs."""
        source, target = batch["source"], batch.get("target")
        optimizer = self.optimizers()
        optimizer.zero_grad()
        with self.discriminators_frozen():
            terms, source_logits = self.source_terms(source)
            self.backward_checked(terms, self.generator_objective)
            if target is not None:
                target_terms, target_logits = self.target_terms(target)
                self.backward_checked(target_terms, self.generator_objective)
                terms.update(target_terms)
        if self.hparams.method == "advent" and target is not None:
            d_terms = self.discriminator_losses(source_logits, target_logits)
            self.backward_checked({name: value for name, value in d_terms.items() if "loss" in name}, lambda losses: sum(losses.values()))
            terms.update(d_terms)
        optimizer.step()
        self.lr_schedulers().step()
        self.log_dict(terms, prog_bar=False)
        self.log("train/lr", optimizer.param_groups[0]["lr"], prog_bar=True)
        if len(optimizer.optimizers) > 1:
            self.log("train/lr_d", optimizer.optimizers[1].param_groups[0]["lr"])

    def backward_checked(self, terms: dict[str, Tensor], objective: Callable[[dict[str, Tensor]], Tensor]) -> None:
        """Back-propagate ``objective(terms)`` once every term is known to be finite."""
        self.guard_finite(terms)
        self.manual_backward(objective(terms))

    @contextmanager
    def discriminators_frozen(self) -> Iterator[None]:
        """The reference's ``requires_grad = False`` on the discriminators while the generator
        back-propagates through them: their gradients stay untouched."""
        params = [p for d in self.discriminators() for p in d.parameters()]
        for p in params:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in params:
                p.requires_grad_(True)

    def configure_optimizers(self) -> dict:
        """The generator's SGD and (ADVENT) one Adam per discriminator, stepped as one
        :class:`JointOptimizer` on one poly schedule, so that one iteration is one step."""
        hp = self.hparams
        members = [self.optimizer_factory.build(self.model)]
        for level, d in zip(self.levels, self.discriminators()):
            adam = Adam041 if hp.adam_d == "reference" else torch.optim.Adam
            members.append(adam([{"params": d.parameters(), "name": f"d_{level}"}], lr=hp.lr_d, betas=tuple(hp.betas_d)))
        optimizer = JointOptimizer(members)
        return {"optimizer": optimizer, "lr_scheduler": self.lr_schedule.build(optimizer)}
