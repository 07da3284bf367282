"""Interrupted is not finished: a fit, test or pipeline stopped by a signal (a scheduler's SIGTERM,
a Ctrl+C) exits 128 + the signal's number, a fit first saves ``last.ckpt`` at the iteration it
reached (and continues exactly from it), an evaluation reports nothing, and the pipeline marks a
stage done only when its checkpoint holds the stage's ``max_steps`` iterations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import eval_config, fit_config, trained_segmenter, write_yaml
from test_pipeline_supervision import calls, fake, pipeline, pipeline_yaml  # noqa: F401 (fake: a fixture)

REPO = Path(__file__).resolve().parents[1]
MAX_STEPS = 6


def env(tmp_path: Path, **extra: str) -> dict:
    """Offline, one thread, and ``tests/`` importable (``probes.SignalAt`` in a config)."""
    wandb = {var: str(tmp_path / var.lower()) for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR")}
    path = os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, **wandb, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def intrada(*args: str, tmp_path: Path, **kwargs) -> subprocess.CompletedProcess:
    """The console script in a process of its own session, so that a process-group signal stays in it."""
    return subprocess.run([sys.executable, "-m", "intrada_pl.cli", *args], env=kwargs.pop("env", None) or env(tmp_path),
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
    done = intrada("fit", "--config", fit_yaml(toy_root, straight), tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]

    run = intrada("fit", "--config", fit_yaml(toy_root, stopped, {3: "SIGTERM"}), tmp_path=tmp_path)
    assert run.returncode == 128 + signal.SIGTERM, run.stderr[-3000:]
    assert last(stopped)["global_step"] == 3
    assert "stopped by SIGTERM at iteration 3" in run.stderr and "Traceback" not in run.stderr

    resumed = intrada("fit", "--config", fit_yaml(toy_root, stopped), "--ckpt_path", "last", tmp_path=tmp_path)
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
    run = intrada("fit", "--config", fit_yaml(toy_root, run_dir, {3: "SIGINT"}, group=True, workers=1), tmp_path=tmp_path)
    assert run.returncode == 128 + signal.SIGINT, run.stderr[-3000:]
    assert last(run_dir)["global_step"] == 3
    assert "stopped by SIGINT at iteration 3" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.system
def test_sigterm_during_test_exits_143_and_reports_nothing(toy_root, tmp_path):
    """Before: exit 0, half the predictions and no metrics.json; a metrics.json of an earlier run in
    the same folder would have stood for this one."""
    weights, out = tmp_path / "model.pth", tmp_path / "out"
    torch.save(trained_segmenter().state_dict(), weights)
    config = eval_config(toy_root)
    config["trainer"]["callbacks"] = [{"class_path": "probes.SignalAt", "init_args": {"signals": {2: "SIGTERM"}}}]
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"mIoU": 99.0}))  # an earlier run's
    run = intrada("test", "--config", write_yaml(tmp_path / "test.yaml", config), "--ckpt", str(weights), "--output", str(out),
                  "--save_predictions", tmp_path=tmp_path)
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
    run = intrada("fit", "--config", fit_yaml(toy_root, run_dir, {2: "SIGUSR1", 4: "SIGTERM"}), tmp_path=tmp_path,
                  env=env(tmp_path, **slurm))
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
    first = intrada("pipeline", "--config", config, tmp_path=tmp_path)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    assert not (stage_dir / "DONE").exists() and last(stage_dir)["global_step"] == 3
    assert "ended with exit status 143" in first.stderr

    second = intrada("pipeline", "--config", config, tmp_path=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"source: resumes from {stage_dir / 'checkpoints' / 'last.ckpt'}" in second.stdout
    assert (stage_dir / "DONE").is_file() and last(stage_dir)["global_step"] == MAX_STEPS
    assert (stage_dir / "test" / "metrics.json").is_file()


# --------------------------------------------------------------------------- the pipeline's rules, with a fake `intrada`
def checkpoint(tmp_path: Path, step: int) -> str:
    path = tmp_path / f"step_{step}.ckpt"
    torch.save({"global_step": step}, path)
    return str(path)


def test_a_stage_that_fails_is_not_done_and_resumes(tmp_path, fake, monkeypatch):
    pipeline_yaml(tmp_path)
    monkeypatch.setenv("FAKE_EXIT", "143")
    monkeypatch.setenv("FAKE_CKPT", checkpoint(tmp_path, 2))
    with pytest.raises(subprocess.CalledProcessError) as failed:
        pipeline(tmp_path, fake).run()
    assert failed.value.returncode == 143
    assert [c[0] for c in calls(tmp_path)] == ["source"] and not (tmp_path / "runs" / "source" / "DONE").exists()
    assert [s.action for s in pipeline(tmp_path, fake).plan()] == ["resume", "rerun", "rerun", "run"]


def test_a_stage_that_exits_0_short_of_max_steps_is_not_done(tmp_path, fake, monkeypatch):
    """What Lightning's exit status 0 after SIGTERM gave: the stage is refused, not marked done."""
    from intrada_pl.pipeline import PipelineError

    pipeline_yaml(tmp_path)
    monkeypatch.setenv("FAKE_CKPT", checkpoint(tmp_path, 2))
    last_ckpt = tmp_path / "runs" / "source" / "checkpoints" / "last.ckpt"
    with pytest.raises(PipelineError, match=f"'source': intrada fit exited 0 but {last_ckpt} is at iteration 2 of 4"):
        pipeline(tmp_path, fake).run()
    assert not (tmp_path / "runs" / "source" / "DONE").exists()
    monkeypatch.delenv("FAKE_CKPT")
    assert [s.action for s in pipeline(tmp_path, fake).plan()][0] == "resume"


def test_a_predict_stage_done_without_its_ranking_runs_again(tmp_path, fake):
    from intrada_pl.pipeline import RANKING_CLASSES

    pipeline_yaml(tmp_path)
    write_yaml(tmp_path / "rank.yaml", {"trainer": {"callbacks": [{"class_path": RANKING_CLASSES[0]}]}})
    pipeline(tmp_path, fake).run()
    (tmp_path / "runs" / "rank" / "ranking").rmdir()
    steps = pipeline(tmp_path, fake).plan()
    assert [s.action for s in steps] == ["skip", "skip", "rerun", "skip"]
    assert f"({tmp_path / 'runs' / 'rank' / 'ranking'} is missing)" in steps[2].reason


@pytest.mark.parametrize("damage", ["deleted", "short"])
def test_done_whose_checkpoint_is_gone_or_short_runs_again(tmp_path, fake, damage):
    pipeline_yaml(tmp_path)
    pipeline(tmp_path, fake).run()
    last_ckpt = tmp_path / "runs" / "source" / "checkpoints" / "last.ckpt"
    if damage == "deleted":
        last_ckpt.unlink()
        reason = f"{last_ckpt} is missing"
    else:
        torch.save({"global_step": 3}, last_ckpt)  # a DONE written after a SIGTERM at iteration 3 of 4
        reason = f"{last_ckpt} is at iteration 3 of 4"
    steps = pipeline(tmp_path, fake).plan()
    assert [s.action for s in steps] == ["rerun", "rerun", "rerun", "skip"]  # its dependants too, as for a changed config
    assert steps[0].reason == f"not finished although marked done ({reason}), runs from scratch"
    pipeline(tmp_path, fake).run()
    assert [c[0] for c in calls(tmp_path)[5:]] == ["source", "inter", "rank", "test"]
    assert torch.load(last_ckpt)["global_step"] == 4


@pytest.mark.parametrize("returncode,status", [(143, 143), (-signal.SIGKILL, 128 + signal.SIGKILL)])
def test_the_console_script_exits_with_the_failed_stage_status(monkeypatch, capsys, returncode, status):
    """A stage's status is the pipeline's (one killed by a signal: 128 + its number, as a shell says)."""
    from intrada_pl.cli import dispatch as cli

    def stage_fails(args=None):
        raise subprocess.CalledProcessError(returncode, [sys.executable, "-m", "intrada_pl.cli", "fit", "--config", "x.yaml"])

    monkeypatch.setattr(cli, "main", stage_fails)
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    assert exit_info.value.code == status
    assert capsys.readouterr().err.strip().endswith(f"fit --config x.yaml ended with exit status {status}")


def test_a_ctrl_c_that_lightning_caught_exits_130(monkeypatch):
    """Before the run's loops start, a Ctrl+C is Lightning's KeyboardInterrupt, after which it exits 1."""
    from intrada_pl.cli import dispatch as cli

    def lightning_caught_ctrl_c(args=None):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            sys.exit(1)

    monkeypatch.setattr(cli, "main", lightning_caught_ctrl_c)
    with pytest.raises(SystemExit) as exit_info:
        cli.run()
    assert exit_info.value.code == 128 + signal.SIGINT
