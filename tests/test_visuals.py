"""Pictures (overlays, error maps, legends, colour bars, reliability diagram) and what ``intrada test``
writes and logs with them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import eval_config, write_yaml
from intrada_pl import visuals
from intrada_pl.cli import main
from intrada_pl.data.datasets import Cityscapes
from intrada_pl.data.labels import CLASS_NAMES, PALETTE
from intrada_pl.evaluation import format_results_table
from intrada_pl.stages.evaluation import PixelCalibrationError

RED, BLACK = visuals.ERROR_COLORS["wrong"], visuals.ERROR_COLORS["ignore"]


def test_legend_lists_the_present_classes_only():
    prediction = np.full((40, 80), 13, np.uint8)
    prediction[:10, :20] = 2
    label = np.full((40, 80), 255, np.uint8)
    label[5:, 5:] = 0
    assert visuals.present_classes(prediction) == [2, 13]
    assert visuals.present_classes(label, prediction) == [0, 2, 13]  # 255 is no class
    assert visuals.present_classes(np.array([[17, 18]], np.uint8), num_classes=16) == []  # the 16-class space
    assert visuals.class_entries([2, 13]) == [("building", tuple(PALETTE[2].tolist())), ("car", (0, 0, 142))]

    image = np.full((20, 40, 3), 200, np.uint8)  # resized to the prediction's 40x80
    plain = visuals.overlay(image, prediction, legend=False)
    assert plain.shape == (40, 80, 3)
    assert (plain[20, 40] == (0.5 * 200 + 0.5 * np.array([0, 0, 142]) + 0.5).astype(int)).all()  # half car colour
    changed = (visuals.overlay(image, prediction) != plain).any(-1)
    box_w, box_h = visuals.legend_size(visuals.class_entries([2, 13]), visuals.row_height(40), 40)
    assert changed.any() and not changed[box_h:].any() and not changed[:, box_w:].any()  # the box of two rows


def test_error_map_marks_exactly_the_wrong_pixels():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 19, (32, 48)).astype(np.uint8)
    label[:4] = 255
    prediction = label.copy()
    wrong = rng.random(label.shape) < 0.3
    prediction[wrong] = (prediction[wrong] + 1) % 19
    prediction[:4] = 3  # unlabelled pixels are neither right nor wrong
    wrong &= label != 255
    for image in (None, np.zeros((16, 24, 3), np.uint8), rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)):
        out = visuals.error_map(prediction, label, image, legend=False)
        assert out.shape == (32, 48, 3)
        assert ((out == RED).all(-1) == wrong).all()
        assert ((out == BLACK).all(-1) == (label == 255)).all()  # correct pixels are grey, never black
        correct = ~wrong & (label != 255)
        assert (out[correct][:, 0] == out[correct][:, 1]).all()
    with_legend = visuals.error_map(prediction, label)
    assert with_legend.shape == out.shape and (with_legend != visuals.error_map(prediction, label, legend=False)).any()


def test_reliability_bins_equal_a_hand_computation():
    confidence = torch.tensor([0.1, 0.2, 0.6, 0.7, 0.8, 1.0, 1.0])
    correct = torch.tensor([False, True, True, False, True, True, True])
    metric = PixelCalibrationError(n_bins=4)
    metric.update(confidence, correct)
    bins = visuals.reliability_bins(metric.count.numpy(), metric.confidence.numpy(), metric.correct.numpy())
    assert bins["edges"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert bins["count"] == [2, 0, 2, 3]  # confidence 1.0 (the metric's extra bin) joins the last bin
    assert bins["confidence"] == pytest.approx([0.15, None, 0.65, 2.8 / 3]) and bins["confidence"][1] is None
    assert bins["accuracy"] == pytest.approx([0.5, None, 0.5, 1.0])
    # ECE over the metric's own bins: (|1 - 0.3| + |1 - 1.3| + |1 - 0.8| + |2 - 2|) / 7
    assert bins["ECE"] == pytest.approx(100 * 1.2 / 7) == pytest.approx(100 * float(metric.compute()))
    figure = visuals.figure_array(visuals.reliability_figure(bins, "toy / none"))
    assert figure.ndim == 3 and figure.shape[2] == 3


def test_entropy_colour_bar_and_titled_panel():
    entropy = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (32, 1))
    heat = visuals.entropy_heatmap(entropy)
    bar = visuals.colorbar(32)
    assert heat.shape == (32, 64 + bar.shape[1], 3) and (heat[:, :64] == visuals.heatmap(entropy)).all()
    column = bar[:, bar.shape[1] // 4]  # through the bar: 1 (bright) at the top, 0 at the bottom
    row = visuals.row_height(32)
    assert (column[row // 2] == visuals.heatmap(np.ones((1, 1)))[0, 0]).all()
    assert (column[32 - row // 2 - 1] == visuals.heatmap(np.zeros((1, 1)))[0, 0]).all()

    label = np.zeros((32, 64), np.uint8)
    prediction = np.full((32, 64), 10, np.uint8)
    panel = visuals.mask_panel(np.zeros((16, 32, 3), np.uint8), {"ground_truth": label, "predictions": prediction})
    legend = visuals.legend_size(visuals.class_entries([0, 10]), row, 32 + row)[0]
    assert panel.shape == (32 + row, 3 * 64 + legend, 3)  # the image resized to the masks' size
    assert (panel[row:, 64:128] == PALETTE[0]).all() and (panel[row:, 128:192] == PALETTE[10]).all()
    assert panel[:row, :64].any() and panel[:row, 64:128].any()  # titles above the image and the masks


def test_unlabelled_ece_prints_na():
    table = format_results_table({"cityscapes": {"none": {"mIoU": None, "ECE": None, "seconds_per_image": 0.01}}})
    assert "n/a / n/a / 0.010" in table


# --------------------------------------------------------------------------- through the CLI
def test_test_writes_pictures_and_fills_a_wandb_run(toy_root, deeplab_pth, tmp_path, monkeypatch, caplog, offline_wandb):
    """A labelled and an unlabelled target: overlays for both, error maps, confusion counts and a
    reliability diagram for the labelled one, "n/a" ECE for the other, all of it in W&B."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = eval_config(toy_root)
    config["trainer"]["logger"] = {"class_path": "intrada_pl.loggers.WandbLogger", "init_args": {"save_dir": str(tmp_path), "project": "t"}}
    config["data"]["targets"] = {"cityscapes": {}, "unlabelled": {"with_labels": False}}
    config["model"] = {"dashboard_images": 2}
    out = tmp_path / "out"
    main(["test", "--config", write_yaml(tmp_path / "t.yaml", config), "--ckpt", str(deeplab_pth), "--output", str(out), "--save_predictions"])
    offline_wandb.finish()  # a CLI process finishes the run at exit; in-process we do it here,
    offline_wandb.teardown()  # and wait for the W&B service to flush it

    dataset = Cityscapes(toy_root / "Cityscapes", split="val")
    pngs = sorted(Path(name).with_suffix(".png").as_posix() for name in dataset.names)
    for target, kinds in (("cityscapes", ("labelIds", "color", "overlay", "error")), ("unlabelled", ("labelIds", "color", "overlay"))):
        for kind in kinds:
            files = sorted((out / "predictions" / target / kind).rglob("*.png"))
            assert [f.relative_to(out / "predictions" / target / kind).as_posix() for f in files] == pngs, (target, kind)
            assert all(cv2.imread(str(f), cv2.IMREAD_UNCHANGED).shape[:2] == (64, 128) for f in files)  # label size
    assert not (out / "predictions" / "unlabelled" / "error").exists()

    metrics = json.loads((out / "metrics.json").read_text())["results"]
    assert metrics["unlabelled"]["none"]["ECE"] is None and metrics["cityscapes"]["none"]["ECE"] > 0
    assert re.search(r"unlabelled +n/a / n/a /", caplog.text)  # the unlabelled row of the table
    confusion = json.loads((out / "confusion.json").read_text())
    assert confusion["classes"] == list(CLASS_NAMES)
    labelled = sum(int((dataset.read_label(i) != 255).sum()) for i in range(len(dataset)))
    assert np.asarray(confusion["counts"]["cityscapes"]["none"]).sum() == labelled
    assert np.asarray(confusion["counts"]["unlabelled"]["none"]).sum() == 0
    assert (out / "reliability_cityscapes_none.png").is_file() and not (out / "reliability_unlabelled_none.png").exists()

    run = next((tmp_path / "wandb").glob("offline-run-*"))
    records = next(run.glob("run-*.wandb")).read_bytes()
    for key in ("iou_table", "confusion", "confusion_counts", "reliability", "reliability_bins", "overlays"):
        assert f"test/cityscapes/none/{key}".encode() in records, key
    assert b"test/unlabelled/none/overlays" in records and b"test/unlabelled/none/iou_table" not in records
    media = run / "files" / "media"
    assert len(list((media / "images" / "test" / "cityscapes" / "none").glob("overlays_*.png"))) == 2
    table = json.loads(next((media / "table" / "test" / "cityscapes" / "none").glob("confusion_counts_*.table.json")).read_text())
    assert table["columns"] == ["ground truth", *CLASS_NAMES] and sum(sum(row[1:]) for row in table["data"]) == labelled
