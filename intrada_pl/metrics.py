"""IoU from a dataset-level confusion matrix, the reference's evaluation protocol."""

from __future__ import annotations

import torch
from torch import Tensor

from intrada_pl.data.labels import CLASS_NAMES, EVAL_SUBSETS
from intrada_pl.tables import number, text_table


def iou_per_class(confmat: Tensor) -> Tensor:
    """TP / (TP + FP + FN) per class; NaN for a class absent from both prediction and truth.

    torchmetrics' Jaccard index reports such classes as 0.0, which would drag the mean down;
    the reference skips them (nan-mean), so we compute IoU from the confusion matrix ourselves.
    """
    confmat = confmat.double()
    tp = confmat.diag()
    union = confmat.sum(0) + confmat.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def iou_report(confmat: Tensor, subsets: tuple[str, ...] = ("19",)) -> dict:
    """``{"mIoU": %, "IoU": {class: %}, "mIoU16": %, ...}``, percentages rounded to 2 decimals.

    ``mIoU`` is the mean over the first subset; every further subset adds ``mIoU<k>``
    (SYNTHIA: 16 and 13 classes, taken from the same 19-class matrix).
    """
    iou = iou_per_class(confmat) * 100
    report: dict = {"IoU": {name: _round(v) for name, v in zip(CLASS_NAMES, iou.tolist())}}
    for i, subset in enumerate(subsets):
        value = _round(iou[list(EVAL_SUBSETS[subset])].nanmean().item())
        report["mIoU" if i == 0 else f"mIoU{subset}"] = value
    return report


def _round(value: float) -> float | None:
    return None if value != value else round(value, 2)


def format_iou_table(report: dict) -> str:
    """A per-class table for the terminal."""
    rows = [[name, number(value, "6.2f")] for name, value in report["IoU"].items()]
    rows += [[key, number(value, "6.2f")] for key, value in report.items() if key.startswith("mIoU")]
    return text_table(["class", "IoU (%)"], rows)
