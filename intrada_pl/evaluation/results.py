"""What one evaluation scored: the evaluator's output, the report's input."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class EvaluationResults:
    """Everything an evaluation of ``checkpoints`` (one, or a logit ensemble) under ``methods`` on
    ``targets`` scored, per target and method (``scores[target][method]``): the IoU report with
    ``ECE`` (%, None without a labelled pixel), ``seconds_per_image`` and ``num_images``; the
    confusion matrix (``confusion``: pixel counts, ground truth x prediction, on the CPU) and the
    reliability bins (``reliability``: :func:`intrada_pl.visuals.reliability_bins`)."""

    checkpoints: list[str]
    methods: list[str]
    targets: list[str]
    scores: dict[str, dict[str, dict]]
    confusion: dict[str, dict[str, Tensor]]
    reliability: dict[str, dict[str, dict]]

    @property
    def single(self) -> bool:
        """One target under one method: its numbers stand alone (``test/mIoU``, top-level keys)."""
        return len(self.targets) == 1 and len(self.methods) == 1

    def key(self, target: str, method: str) -> str:
        """The prefix of what is logged for (target, method): ``test/``, or ``test/<target>/<method>/``."""
        return "test/" if self.single else f"test/{target}/{method}/"
