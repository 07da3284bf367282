"""Stage 3: intra-domain adaptation (IntraDA), easy target images teach the hard ones."""

from __future__ import annotations

from typing import Any

from intrada_pl.models.segmenter import Segmenter
from intrada_pl.stages.inter import InterDomainModule


class IntraDomainModule(InterDomainModule):
    """IntraDA's second generator (REFERENCE A4): the ADVENT loop of stage 1 with the *easy*
    target images and their pseudo-labels as the labelled side and the *hard* ones as the
    unlabelled side (``SplitDataModule`` feeds ``{"source": easy, "target": hard}``). New
    discriminators, the same losses, weights, optimisers and schedules.

    Initialisation comes from the segmenter's ``pretrained``: the ImageNet init file, as the
    reference (its author found restarting from the inter-domain model no better), or the stage-1
    checkpoint (``pretrained: runs/.../last.ckpt``) as an option.
    """

    def __init__(self, segmenter: Segmenter, **kwargs: Any) -> None:
        if kwargs.get("method", "advent") != "advent":
            raise ValueError("IntraDA aligns hard to easy adversarially: method must be 'advent'")
        super().__init__(segmenter, **kwargs)
