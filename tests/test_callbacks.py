"""Interrupted is not finished (StopOnSignal, intrada_pl/callbacks.py): a fit, test or pipeline
stopped by a signal (a scheduler's SIGTERM, a Ctrl+C) exits 128 + the signal's number, a fit first
saves ``last.ckpt`` at the iteration it reached (and continues exactly from it), an evaluation
reports nothing, and the pipeline's stage is not done. The pipeline's rules for a stage that ended
short: tests/test_pipeline_supervision.py; the console script's exit status: tests/test_cli_dispatch.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import eval_config, fit_config, write_yaml

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 6


def env(**extra: str) -> dict:
    """One thread, and ``tests/`` importable (``probes.SignalAt`` in a config)."""
    path = os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def intrada(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The console script in a process of its own session, so that a process-group signal stays in it."""
    return subprocess.run([sys.executable, "-m", "intrada_pl.cli", *args], env=kwargs.pop("env", None) or env(),
                          capture_output=True, text=True, timeout=300, start_new_session=True, **kwargs)


def fit_yaml(toy_root: Path, run_dir: Path, signals: dict[int, str] | None = None, group: bool = False, workers: int = 0) -> str:
    """A source-only fit of MAX_STEPS iterations validating every 4 (none before iteration 3), with
    ``probes.SignalAt`` sending ``signals``."""
    config = fit_config(toy_root, run_dir)
    config["trainer"].update(max_steps=MAX_STEPS, val_check_interval=4)
    config["model"]["init_args"]["lr_scheduler"]["init_args"]["total_steps"] = MAX_STEPS
    config["data"]["init_args"]["num_workers"] = workers
    if signals:
        config["trainer"]["callbacks"].append({"class_path": "probes.SignalAt", "init_args": {"signals": signals, "group": group}})
    name = "signalled" if signals else "plain"
    return write_yaml(run_dir.parent / f"{run_dir.name}_{name}.yaml", config)


def last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.system
def test_sigterm_saves_the_iteration_reached_exits_143_and_resumes_exactly(toy_root, tmp_path):
    """Before: exit 0 and no last.ckpt at all (no validation had run yet)."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    done = intrada("fit", "--config", fit_yaml(toy_root, straight))
    assert done.returncode == 0, done.stderr[-3000:]

    run = intrada("fit", "--config", fit_yaml(toy_root, stopped, {3: "SIGTERM"}))
    assert run.returncode == 128 + signal.SIGTERM, run.stderr[-3000:]
    assert last(stopped)["global_step"] == 3
    assert "stopped by SIGTERM at iteration 3" in run.stderr and "Traceback" not in run.stderr

    resumed = intrada("fit", "--config", fit_yaml(toy_root, stopped), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = last(straight), last(stopped)
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.system
def test_ctrl_c_to_the_process_group_saves_and_exits_130(toy_root, tmp_path):
    """SIGINT to the fit and its data loader worker, as a terminal sends it: stopped at the end of
    the batch (a KeyboardInterrupt mid-step would leave a half-stepped model to save)."""
    run_dir = tmp_path / "run"
    run = intrada("fit", "--config", fit_yaml(toy_root, run_dir, {3: "SIGINT"}, group=True, workers=1))
    assert run.returncode == 128 + signal.SIGINT, run.stderr[-3000:]
    assert last(run_dir)["global_step"] == 3
    assert "stopped by SIGINT at iteration 3" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.system
def test_sigterm_during_test_exits_143_and_reports_nothing(toy_root, deeplab_pth, tmp_path):
    """Before: exit 0, half the predictions and no metrics.json; a metrics.json of an earlier run in
    the same folder would have stood for this one."""
    out = tmp_path / "out"
    config = eval_config(toy_root)
    config["trainer"]["callbacks"] = [{"class_path": "probes.SignalAt", "init_args": {"signals": {2: "SIGTERM"}}}]
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"mIoU": 99.0}))  # an earlier run's
    run = intrada("test", "--config", write_yaml(tmp_path / "test.yaml", config), "--ckpt", str(deeplab_pth), "--output", str(out),
                  "--save_predictions")
    assert run.returncode == 128 + signal.SIGTERM, run.stderr[-3000:]
    assert not (out / "metrics.json").exists()
    assert len(list((out / "predictions" / "labelIds").rglob("*.png"))) == 2  # of the split's 4: stopped midway
    assert "test stopped by SIGTERM" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.system
def test_slurm_auto_requeue_keeps_working(toy_root, tmp_path):
    """Lightning's requeue signal (SIGUSR1) saves hpc_ckpt_1.ckpt and calls ``scontrol requeue``; the
    SIGTERM with which Slurm then ends the job saves last.ckpt later on and exits 143 (Lightning: 0);
    ``--ckpt_path last`` takes the newer of the two."""
    from intrada_pl.runs import resolve_resume

    bin_dir, run_dir = tmp_path / "bin", tmp_path / "run"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "inter", "SLURM_JOB_ID": "42", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
             "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run = intrada("fit", "--config", fit_yaml(toy_root, run_dir, {2: "SIGUSR1", 4: "SIGTERM"}), env=env(**slurm))
    assert run.returncode == 128 + signal.SIGTERM, run.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "42"]
    assert torch.load(run_dir / "hpc_ckpt_1.ckpt", weights_only=False)["global_step"] == 2
    assert last(run_dir)["global_step"] == 4
    assert Path(resolve_resume("last", {"default_root_dir": str(run_dir)})).resolve() == (run_dir / "checkpoints" / "last.ckpt").resolve()


@pytest.mark.system
def test_pipeline_stage_stopped_by_sigterm_is_not_done_and_resumes(toy_root, tmp_path):
    """Before: DONE at iteration 3 of 6, exit 0, skipped on every rerun."""
    stage_dir = tmp_path / "runs" / "source"
    spec = {
        "run_dir": str(tmp_path / "runs"),
        "stages": [{"name": "source", "command": "fit", "config": fit_yaml(toy_root, tmp_path / "source", {3: "SIGTERM"})}],
        "test": {"config": write_yaml(tmp_path / "test.yaml", eval_config(toy_root)), "stages": ["source"]},
    }
    config = write_yaml(tmp_path / "pipeline.yaml", spec)
    first = intrada("pipeline", "--config", config)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    assert not (stage_dir / "DONE").exists() and last(stage_dir)["global_step"] == 3
    assert "ended with exit status 143" in first.stderr

    second = intrada("pipeline", "--config", config)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"source: resumes from {stage_dir / 'checkpoints' / 'last.ckpt'}" in second.stdout
    assert (stage_dir / "DONE").is_file() and last(stage_dir)["global_step"] == MAX_STEPS
    assert (stage_dir / "test" / "metrics.json").is_file()
