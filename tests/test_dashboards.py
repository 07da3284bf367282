"""Dashboards everywhere, same defaults: a config that names no logger or checkpoint gets CSV and
W&B in its run folder, with the resolved config, the git commit, the seed and the best mIoU; one
W&B run per run folder, opened only once the inputs are checked; one step axis everywhere. And
the one facade for pictures, tables and figures (intrada_pl.dashboards): W&B, TensorBoard or nothing."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from helpers import fit_config, write_yaml
from intrada_pl import visuals
from intrada_pl.callbacks import SegmentationPanels
from intrada_pl.cli import main
from intrada_pl.dashboards import Dashboards


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline, its files under the test's folder; every run finished afterwards."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb = pytest.importorskip("wandb")
    yield wandb
    wandb.finish()
    wandb.teardown()


def default_logging_config(toy_root, run_dir, **trainer) -> dict:
    """fit_config with the run's default loggers and checkpoints."""
    config = fit_config(toy_root, run_dir)
    del config["trainer"]["logger"], config["trainer"]["callbacks"]
    config["trainer"].update(trainer)
    return config


def test_a_config_without_loggers_gets_csv_and_wandb_with_the_run_record(toy_root, tmp_path, offline_wandb):
    run_dir = tmp_path / "run"
    config = default_logging_config(toy_root, run_dir, max_steps=2, val_check_interval=2, log_every_n_steps=1)
    main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])

    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {"best-step=2.ckpt", "last.ckpt"}
    metrics = (run_dir / "logs" / "metrics.csv").read_text()
    assert "train/loss_seg_main" in metrics and "val/mIoU" in metrics
    hparams = yaml.safe_load((run_dir / "logs" / "hparams.yaml").read_text())
    assert hparams["seed"] == 0 and "git_commit" in hparams
    assert (run_dir / "logs" / "config.yaml").is_file()

    run = next((run_dir / "wandb").glob("offline-run-*"))
    records = next(run.glob("run-*.wandb")).read_bytes()
    for key in ("train/loss_seg_main", "val/mIoU", "val/IoU/road", "val/panels", "lr-SGD041/heads", "git_commit", "seed", "max_steps"):
        assert key.encode() in records, key


# --------------------------------------------------------------------------- the facade
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


def test_a_wandb_offline_run_holds_the_masks_the_tables_and_the_figures(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    wandb = __import__("wandb")
    wandb.finish()  # a run another test left open would be reused
    figure = visuals.write_figure(tmp_path / "fig.png", visuals.reliability_figure(
        {"edges": [0, 0.5, 1], "count": [1, 1], "confidence": [0.25, 0.75], "accuracy": [0.0, 1.0], "ECE": 25.0}, "t"))
    logger = WandbLogger(save_dir=str(tmp_path), project="t", offline=True)
    show_everything(Dashboards([logger]), figure)
    wandb.finish()
    wandb.teardown()  # wait for the W&B service to flush the run

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


def test_one_step_axis_in_the_console_checkpoint_names_csv_and_wandb(toy_root, tmp_path, offline_wandb, monkeypatch, capsys):
    """Before: the CSV and W&B put the losses of iteration 2 and the validation after it at step 1."""
    logged = []
    log = offline_wandb.sdk.wandb_run.Run.log
    monkeypatch.setattr(offline_wandb.sdk.wandb_run.Run, "log", lambda run, data, *a, **k: logged.append(data) or log(run, data, *a, **k))
    run_dir = tmp_path / "run"
    config = default_logging_config(toy_root, run_dir, max_steps=4, val_check_interval=2, log_every_n_steps=2, enable_progress_bar=True)
    main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])
    out = capsys.readouterr().out

    assert re.findall(r"^iteration (\d+)/4", out, re.MULTILINE) == ["2", "4"]
    assert re.findall(r"^validation at iteration (\d+)$", out, re.MULTILINE) == ["2", "4"]
    best = [int(m) for m in re.findall(r"best-step=(\d+)\.ckpt", " ".join(p.name for p in (run_dir / "checkpoints").iterdir()))]
    assert len(best) == 1 and best[0] in (2, 4)
    with open(run_dir / "logs" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    for column in ("val/mIoU", "train/loss_seg_main", "lr-SGD041/heads"):
        assert [int(row["step"]) for row in rows if row[column]] == [2, 4], column
    for key in ("val/mIoU", "train/loss_seg_main", "lr-SGD041/heads", "val/panels"):
        assert [entry["trainer/global_step"] for entry in logged if key in entry] == [2, 4], key


def offline_run_ids(run_dir) -> list[str]:
    return sorted(path.name.split("-")[3] for path in (run_dir / "wandb").glob("offline-run-*"))  # offline-run-<time>-<id>[-n]


def test_one_run_folder_is_one_wandb_run_across_resumes_and_validation(toy_root, tmp_path, offline_wandb):
    """Before: every command opened a new W&B run (8 for one run split by resumes)."""
    run_dir = tmp_path / "run"
    config = write_yaml(tmp_path / "fit.yaml", default_logging_config(toy_root, run_dir, max_steps=2, val_check_interval=2, log_every_n_steps=1))
    main(["fit", "--config", config])
    main(["fit", "--config", config, "--ckpt_path", "last", "--trainer.max_steps", "3"])
    main(["validate", "--config", config, "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    run_id = (run_dir / "wandb" / "run_id").read_text().strip()
    assert offline_run_ids(run_dir) == [run_id] * 3  # offline: one folder per command, all of the one run


def test_a_command_that_fails_on_its_inputs_opens_no_wandb_run(toy_root, tmp_path, offline_wandb, capsys):
    """Before: Lightning opened the W&B run when it set up the trainer, before the data module
    found the dataset folder missing; and wandb warned of a missing git root and of 'anonymous'."""
    run_dir = tmp_path / "run"
    config = default_logging_config(toy_root, run_dir, max_steps=1)
    config["data"]["init_args"]["source_root"] = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])
    assert not (run_dir / "wandb").exists()

    fresh = tmp_path / "fresh"
    config = default_logging_config(toy_root, fresh, max_steps=1, log_every_n_steps=1)
    main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])
    err = capsys.readouterr().err
    assert len(offline_run_ids(fresh)) == 1  # opened at the first log
    assert "git root" not in err and "anonymous" not in err
