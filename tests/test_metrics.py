"""IoU from a confusion matrix (intrada_pl/metrics.py)."""

from __future__ import annotations

import pytest
import torch

from intrada_pl.metrics import iou_per_class, iou_report


def test_iou_from_confusion_matrix_skips_absent_classes():
    confmat = torch.zeros(19, 19, dtype=torch.long)
    confmat[0, 0], confmat[0, 1], confmat[1, 1] = 6, 2, 2  # road: 6/(6+2); sidewalk: 2/(2+2)
    iou = iou_per_class(confmat)
    assert iou[0].item() == pytest.approx(0.75)
    assert iou[1].item() == pytest.approx(0.5)
    assert torch.isnan(iou[2:]).all()
    report = iou_report(confmat, ("19", "16", "13"))
    assert report["mIoU"] == pytest.approx(62.5)
    assert report["mIoU16"] == pytest.approx(62.5)
    assert report["IoU"]["road"] == 75.0 and report["IoU"]["wall"] is None
