"""The run's loggers (intrada_pl/loggers.py): a config that names no logger or checkpoint gets CSV and
W&B in its run folder, with the resolved config, the git commit, the seed and the best mIoU; the CSV
log keeps what it holds across reruns and resumes; one W&B run per run folder, opened only once the
inputs are checked; one step axis everywhere."""

from __future__ import annotations

import csv
import os
import re
from types import SimpleNamespace

import pytest
import torch
import yaml

from intrada_pl.checkpoint_io import AtomicCheckpointIO
from intrada_pl.cli import main
from intrada_pl.loggers import CSVLogger
from helpers import fit_config, write_yaml


def read_csv(path):
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    return reader.fieldnames, rows


def shape(rows):
    """What a row says, values aside: its step and its non-empty columns."""
    return [(int(row["step"]), sorted(key for key, value in row.items() if value)) for row in rows]


# --- the CSV log ----------------------------------------------------------------------------


def test_rerun_appends_to_the_log_under_the_union_of_columns(tmp_path):
    first = CSVLogger(tmp_path, name="fit", version="logs")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.log_metrics({"val/mIoU": 5.0}, step=1)
    path = tmp_path / "fit" / "logs" / "metrics.csv"
    first.after_save_checkpoint(None)
    assert len(read_csv(path)[1]) == 2  # flushed with every checkpoint, so a killed run keeps what its checkpoint covers
    first.finalize("success")
    before = path.read_text()

    rerun = CSVLogger(tmp_path, name="fit", version="logs")
    rerun.log_hyperparams({"lr": 0.1})  # Lightning's writer deletes metrics.csv when it is created
    rerun.save()
    assert path.read_text() == before  # nothing rewritten before the run logs
    rerun.log_metrics({"train/loss": 0.5, "train/lr": 0.01}, step=0)
    rerun.finalize("success")

    keys, rows = read_csv(path)
    assert keys == ["step", "train/loss", "train/lr", "val/mIoU"]
    assert shape(rows) == [(0, ["step", "train/loss"]), (1, ["step", "val/mIoU"]), (0, ["step", "train/loss", "train/lr"])]
    assert not list(path.parent.glob(".*"))  # no temporary file left


def test_resume_drops_only_the_rows_logged_after_the_checkpoint(tmp_path):
    """The trailing rows at or beyond the resume step go; an earlier run's rows stay."""
    logger = CSVLogger(tmp_path, name="fit", version="logs")
    for step in (0, 1, 2, 0, 1, 2, 3):  # a complete run, then one killed after step 3
        logger.log_metrics({"loss": float(step)}, step=step)
    logger.finalize("failed")

    resumed = CSVLogger(tmp_path, name="fit", version="logs")
    resumed.experiment.resume()  # what on_train_start does in a resumed fit
    resumed.log_metrics({"loss": 2.5}, step=2)
    resumed.finalize("success")
    _, rows = read_csv(tmp_path / "fit" / "logs" / "metrics.csv")
    assert [(row["step"], row["loss"]) for row in rows] == [("0", "0.0"), ("1", "1.0"), ("2", "2.0"), ("0", "0.0"), ("1", "1.0"), ("2", "2.5")]


def logged_fit_config(toy_root, run_dir) -> dict:
    """fit_config with our CSV logger (fixed version) logging every step and a checkpoint every 2 steps."""
    config = fit_config(toy_root, run_dir)
    config["trainer"]["logger"] = {"class_path": "intrada_pl.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir), "name": "fit", "version": "logs"}}
    config["trainer"]["log_every_n_steps"] = 1
    config["trainer"]["callbacks"].append({
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(run_dir / "checkpoints"), "every_n_train_steps": 2, "save_top_k": -1, "filename": "{step}"},
    })
    return config


def test_fit_rerun_and_resume_keep_one_log_and_checkpoints_beside_their_target(toy_root, tmp_path, tmpdir_env, monkeypatch):
    run_dir = tmp_path / "run"
    saved = []
    save = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, **kwargs):
        saved.append(os.path.basename(path))
        save(self, checkpoint, path, **kwargs)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    cfg = write_yaml(tmp_path / "fit.yaml", logged_fit_config(toy_root, run_dir))
    main(["fit", "--config", cfg])
    log = run_dir / "fit" / "logs" / "metrics.csv"
    _, uninterrupted = read_csv(log)
    steps = [step for step, _ in shape(uninterrupted)]  # train (and learning-rate) rows per iteration, val rows after the 2nd and 4th
    assert steps == sorted(steps) and set(steps) == {1, 2, 3, 4}  # the iterations, as in the checkpoint names below
    assert [int(row["step"]) for row in uninterrupted if row["val/mIoU"]] == [2, 4]

    checkpoints = run_dir / "checkpoints"
    assert {"step=2.ckpt", "step=4.ckpt"} <= set(saved)  # every checkpoint is written by AtomicCheckpointIO (last.ckpt links to one)
    assert (checkpoints / "last.ckpt").is_symlink() and torch.load(checkpoints / "last.ckpt", weights_only=False)["global_step"] == 4
    assert not list(checkpoints.glob(".*")) and not list(tmpdir_env.iterdir())  # no temporary file anywhere

    with pytest.raises(FileNotFoundError):
        main(["fit", "--config", cfg, "--data.init_args.source_root", str(tmp_path / "nowhere")])
    assert read_csv(log)[1] == uninterrupted  # a rerun that fails at once keeps the log

    main(["fit", "--config", cfg, "--ckpt_path", str(checkpoints / "step=2.ckpt")])  # as if killed after step 3
    _, resumed = read_csv(log)
    assert shape(resumed) == shape(uninterrupted)  # reads like the uninterrupted run: steps 2, 3 logged once
    before = sum(step < 2 for step in steps)
    assert resumed[:before] == uninterrupted[:before]  # the rows before the checkpoint, untouched


# --- W&B and the defaults ------------------------------------------------------------------
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


def test_a_run_id_still_held_by_a_killed_process_falls_back_to_a_new_run(tmp_path, monkeypatch):
    """After a kill -9 the folder's W&B run can still be held (wandb: "run ID ... is in use"): the
    resumed command warns and logs to a new run instead of failing."""
    from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger

    from intrada_pl.loggers import WandbLogger

    tries = []

    def held_once(self):
        tries.append(self._wandb_init["id"])
        if len(tries) == 1:
            raise RuntimeError(f"ServerResponseError: run ID {self._wandb_init['id']} is in use")
        self._experiment = SimpleNamespace(define_metric=lambda *a, **k: None)
        return self._experiment

    monkeypatch.setattr(LightningWandbLogger, "experiment", property(held_once))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    with pytest.warns(UserWarning, match="still held by a process that was killed"):
        logger.experiment.define_metric
    folder_id = (tmp_path / "wandb" / "run_id").read_text().strip()
    assert tries[0] == folder_id and tries[1] != folder_id and len(tries) == 2
