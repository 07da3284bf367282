"""Dashboards everywhere, same defaults: a config that names no logger or checkpoint gets CSV and
W&B in its run folder, with the resolved config, the git commit, the seed and the best mIoU; one
W&B run per run folder, opened only once the inputs are checked; one step axis everywhere."""

from __future__ import annotations

import csv
import re

import pytest
import yaml

from helpers import fit_config, write_yaml
from intrada_pl.cli import main


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
