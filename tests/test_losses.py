"""Losses, metrics, schedule, transforms, atomic writes and the toy data generator."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from intrada_pl.data.datasets import Cityscapes, GTA5
from intrada_pl.data.transforms import SegmentationTransform
from intrada_pl.io import atomic_path, write_json
from intrada_pl.losses import adversarial_loss, entropy_loss, normalized_entropy, segmentation_loss, self_information
from intrada_pl.metrics import iou_per_class, iou_report
from intrada_pl.optim import PolyDecay


def test_self_information_channels_sum_to_normalized_entropy():
    logits = torch.randn(2, 19, 5, 7) * 3
    info = self_information(logits)
    assert info.shape == logits.shape
    p = logits.softmax(1)
    expected = -(p * torch.log2(p)).sum(1) / math.log2(19)
    torch.testing.assert_close(info.sum(1), expected, rtol=1e-5, atol=1e-6)
    assert info.sum(1).min() >= 0 and info.sum(1).max() <= 1
    uniform = self_information(torch.zeros(1, 19, 2, 2)).sum(1)
    torch.testing.assert_close(uniform, torch.ones(1, 2, 2))
    torch.testing.assert_close(entropy_loss(logits), normalized_entropy(logits).mean())


def test_segmentation_loss_ignores_255_and_survives_all_ignored():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    labels = torch.full((1, 4, 4), 255)
    loss = segmentation_loss(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    labels[0, 0, 0] = 2
    expected = torch.nn.functional.cross_entropy(logits[:, :, 0, 0], torch.tensor([2]))
    torch.testing.assert_close(segmentation_loss(logits, labels), expected)


def test_segmentation_loss_upsamples_logits_to_label_size():
    logits = torch.zeros(1, 2, 3, 3)
    logits[:, 1] = 5.0
    loss = segmentation_loss(logits, torch.ones(1, 9, 9, dtype=torch.long))
    assert loss.item() < 0.01


def test_adversarial_loss_domain_labels():
    d = torch.zeros(1, 1, 2, 2)
    assert adversarial_loss(d, 0.0).item() == pytest.approx(math.log(2))
    assert adversarial_loss(torch.full((1, 1, 2, 2), 10.0), 1.0).item() < 1e-4


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


def test_poly_decay_values():
    poly = PolyDecay(250_000, 0.9)
    assert poly(0) == 1.0
    assert poly(120_000) == pytest.approx((1 - 120_000 / 250_000) ** 0.9)
    assert poly(120_000) == pytest.approx(0.555, abs=1e-3)  # ADVENT never decays to 0
    assert poly(300_000) == 0.0
    with pytest.raises(ValueError):
        PolyDecay(0)


def test_transform_resizes_image_bicubic_and_label_nearest():
    image = np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8)
    label = np.zeros((40, 80), np.uint8)
    label[:, 40:] = 7
    out = SegmentationTransform((20, 10))(image, label)
    assert out["image"].shape == (3, 10, 20) and out["image"].dtype == torch.uint8
    assert out["mask"].shape == (10, 20) and set(out["mask"].unique().tolist()) == {0, 7}


def test_eval_transform_keeps_label_resolution():
    out = SegmentationTransform((20, 10), resize_label=False)(np.zeros((40, 80, 3), np.uint8), np.zeros((40, 80), np.uint8))
    assert out["image"].shape == (3, 10, 20)
    assert out["mask"].shape == (40, 80)


def test_crop_pads_label_with_ignore():
    out = SegmentationTransform(crop_size=(30, 30))(np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8))
    assert out["mask"].shape == (30, 30)
    assert (out["mask"] == 255).sum() == 30 * 30 - 20 * 20


def test_random_ops_refuse_fixed_label():
    with pytest.raises(ValueError, match="resize_label"):
        SegmentationTransform((20, 10), resize_label=False, hflip=True)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "manifest.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"a": 2, "trunc')
            raise RuntimeError("crash while writing")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_toy_data_in_real_layouts(toy_root):
    meta = json.loads((toy_root / "toy_meta.json").read_text())
    source = GTA5(toy_root / "GTA5")
    assert len(source) == 8 and source.names[0] == "00001.png"
    item = source[0]
    assert item["image"].shape == (3, 72, 128)
    assert set(item["label"].unique().tolist()) <= set(range(19))  # every toy pixel is labelled
    train = Cityscapes(toy_root / "Cityscapes", split="train")
    val = Cityscapes(toy_root / "Cityscapes", split="val")
    assert (len(train), len(val)) == (6, 4)
    assert set(meta["hard_train_images"]) <= set(train.names) and len(meta["hard_train_images"]) == 2


def test_toy_domains_differ_in_appearance(toy_root):
    source = GTA5(toy_root / "GTA5")[0]["image"].float()
    target = Cityscapes(toy_root / "Cityscapes", split="train")[5]["image"].float()  # an easy image
    # the target camera is less saturated: mean channel spread is smaller
    spread = lambda img: (img.max(0).values - img.min(0).values).mean()  # noqa: E731
    assert spread(target) < spread(source)
