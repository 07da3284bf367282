"""Dashboards everywhere, same defaults: a config that names no logger or checkpoint gets CSV and
W&B in its run folder, with the resolved config, the git commit, the seed and the best mIoU."""

from __future__ import annotations

import yaml

from helpers import fit_config, write_yaml
from intrada_pl.cli import main


def test_a_config_without_loggers_gets_csv_and_wandb_with_the_run_record(toy_root, tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    config = fit_config(toy_root, run_dir)
    del config["trainer"]["logger"], config["trainer"]["callbacks"]  # the run's defaults
    config["trainer"].update(max_steps=2, val_check_interval=2, log_every_n_steps=1)
    main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])
    wandb = __import__("wandb")
    assert wandb.run.name == "run"  # after the run folder, not W&B's random words
    wandb.finish()
    wandb.teardown()

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
