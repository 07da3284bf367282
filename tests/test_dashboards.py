"""The one facade for pictures, tables and figures (intrada_pl/dashboards.py): W&B, TensorBoard or
nothing, and the validation panels through it. The loggers themselves: tests/test_loggers.py."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from intrada_pl import visuals
from intrada_pl.callbacks import SegmentationPanels
from intrada_pl.dashboards import Dashboards


def picture(h: int = 32, w: int = 64, value: int = 90) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def masks(h: int = 32, w: int = 64) -> dict[str, np.ndarray]:
    prediction = np.full((h, w), 13, np.uint8)
    prediction[:, : w // 2] = 0
    return {"ground_truth": np.zeros((h, w), np.uint8), "predictions": prediction}


def show_everything(dashboards: Dashboards, figure: Path) -> None:
    """One call of each kind, as the ranking, the panels and the calibration stage make them."""
    dashboards.images("val/panels", [picture()], 3, ["a.png"], [masks()])
    dashboards.images("val/entropy", [visuals.entropy_heatmap(np.full((32, 64), 0.5, np.float32))], 3, ["a.png"])
    dashboards.table("ranking/examples", ["rank", "name", "a | b"], [[1, "a.png", picture(8, 16)], [2, "b.png", picture(8, 16, 200)]])
    dashboards.figure("ranking/histogram", figure)
    dashboards.scalars({"ranking/quality/num_images": 2.0})


def test_without_wandb_or_tensorboard_every_call_is_a_no_op(tmp_path):
    csv = CSVLogger(save_dir=str(tmp_path), name="csv", version="0")
    for dashboards in (Dashboards([]), Dashboards([csv])):
        assert not dashboards.shows_pictures and not dashboards.shows_tables
        show_everything(dashboards, tmp_path / "missing.png")  # not even read
    csv.save()
    assert not (tmp_path / "csv" / "0" / "metrics.csv").exists()


def test_tensorboard_gets_the_pictures_the_masks_beside_them_and_tables(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    figure = visuals.write_figure(tmp_path / "fig.png", visuals.reliability_figure(
        {"edges": [0, 0.5, 1], "count": [1, 1], "confidence": [0.25, 0.75], "accuracy": [0.0, 1.0], "ECE": 25.0}, "t"))
    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb", version="0")
    dashboards = Dashboards([logger])
    assert dashboards.shows_pictures
    show_everything(dashboards, figure)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb" / "0"), size_guidance={"images": 0, "tensors": 0}).Reload()
    sizes = {tag: (events.Images(tag)[0].height, events.Images(tag)[0].width) for tag in events.Tags()["images"]}
    panel = visuals.mask_panel(picture(), masks())
    assert sizes == {"val/panels/0": panel.shape[:2], "val/entropy/0": (32, 64 + visuals.colorbar(32).shape[1]),
                     "ranking/examples/0_2": (8, 16), "ranking/examples/1_2": (8, 16), "ranking/histogram/0": (550, 500)}
    assert events.Images("val/panels/0")[0].step == 3
    text = events.Tensors("ranking/examples/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.splitlines() == ["| rank | name | a \\| b |", "|---|---|---|",
                                 "| 1 | a.png | (image ranking/examples/0_2) |", "| 2 | b.png | (image ranking/examples/1_2) |"]
    assert [e.value for e in events.Scalars("ranking/quality/num_images")] == [2.0]


def test_a_wandb_offline_run_holds_the_masks_the_tables_and_the_figures(tmp_path, monkeypatch, offline_wandb):
    monkeypatch.setenv("WANDB_SILENT", "true")
    figure = visuals.write_figure(tmp_path / "fig.png", visuals.reliability_figure(
        {"edges": [0, 0.5, 1], "count": [1, 1], "confidence": [0.25, 0.75], "accuracy": [0.0, 1.0], "ECE": 25.0}, "t"))
    logger = WandbLogger(save_dir=str(tmp_path), project="t", offline=True)
    show_everything(Dashboards([logger]), figure)
    offline_wandb.finish()
    offline_wandb.teardown()  # wait for the W&B service to flush the run

    run = next((tmp_path / "wandb").glob("offline-run-*"))
    records = next(run.glob("run-*.wandb")).read_bytes()
    for key in ("val/panels", "val/entropy", "ranking/examples", "ranking/histogram", "ranking/quality/num_images"):
        assert key.encode() in records, key
    media = run / "files" / "media"
    overlays = sorted(p.name.split("_")[0] for p in (media / "images" / "mask" / "val").glob("*.mask.png"))
    assert overlays == ["panels", "panels"]  # ground truth and predictions, with class names (the records)
    assert b'"ignore"' in records and b'"car"' in records
    table = json.loads(next((media / "table" / "ranking").glob("examples_*.table.json")).read_text())
    assert table["columns"] == ["rank", "name", "a | b"] and [row[:2] for row in table["data"]] == [[1, "a.png"], [2, "b.png"]]
    assert [row[2] for row in table["data"]] == ["Image", "Image"]  # W&B images (offline, their pixels go to an artifact)
    assert len(list((media / "images" / "ranking").glob("histogram_*.png"))) == 1


def test_validation_panels_go_through_the_dashboards(tmp_path):
    """SegmentationPanels with TensorBoard: the panel with its masks, the entropy map, the IoU table."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(save_dir=str(tmp_path), name="tb", version="0")
    trainer = SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[logger], global_step=7)
    module = SimpleNamespace(last_report={"IoU": {"road": 50.0, "sidewalk": None}})
    panels = SegmentationPanels(num_images=1)
    logits = torch.zeros(2, 19, 16, 32)
    logits[:, 13] = 5.0  # car everywhere
    batch = {"image": torch.zeros(2, 3, 16, 32, dtype=torch.uint8), "label": torch.zeros(2, 32, 64, dtype=torch.long),
             "name": ["a.png", "b.png"]}
    panels.on_validation_epoch_start(trainer, module)
    panels.on_validation_batch_end(trainer, module, {"logits": logits}, batch, 0)
    (row,) = panels.rows
    assert row["label"].shape == row["prediction"].shape == row["entropy"].shape == (16, 32)  # at the image's size
    panels.on_validation_end(trainer, module)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb" / "0"), size_guidance={"images": 0, "tensors": 0}).Reload()
    panel = visuals.mask_panel(row["image"], {"ground_truth": row["label"], "predictions": row["prediction"]})
    assert {tag: (events.Images(tag)[0].height, events.Images(tag)[0].width) for tag in events.Tags()["images"]} == {
        "val/panels/0": panel.shape[:2], "val/entropy/0": (16, 32 + visuals.colorbar(16).shape[1])}
    text = events.Tensors("val/iou_table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.splitlines()[2:] == ["| road | 50.0 |", "| sidewalk | None |"]
    assert panels.rows == [] and panels.validations == 1
