"""Nothing lost, nothing left behind: the CSV log across reruns and resumes, checkpoints written
beside their target, and the ranking folder's swap under crashes."""

from __future__ import annotations

import csv
import errno
import os
import resource
import signal
import subprocess
import tempfile

import pytest
import torch
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from intrada_pl import io
from intrada_pl.checkpoint_io import AtomicCheckpointIO
from intrada_pl.cli import main
from intrada_pl.cli.lightning import TrainingCLI
from intrada_pl.loggers import CSVLogger
from intrada_pl.data.ranking_manifest import atomic_dir
from intrada_pl.stages.segmentation import SegmentationEvalModule
from helpers import fit_config, write_yaml


def read_csv(path):
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    return reader.fieldnames, rows


def shape(rows):
    """What a row says, values aside: its step and its non-empty columns."""
    return [(int(row["step"]), sorted(key for key, value in row.items() if value)) for row in rows]


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """The system temp folder, redirected to an empty folder of this test."""
    folder = tmp_path / "systemp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def forked(child) -> int:
    """Run ``child()`` in a forked process that dies without cleanup; return its wait status."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


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


# --- checkpoints ----------------------------------------------------------------------------


def test_a_checkpoint_io_plugin_given_by_the_user_is_kept(toy_root, tmp_path):
    config = logged_fit_config(toy_root, tmp_path)
    config["trainer"]["plugins"] = [{"class_path": "lightning.pytorch.plugins.io.AsyncCheckpointIO"}]
    cli = TrainingCLI(SegmentationEvalModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                      args=["--config", write_yaml(tmp_path / "fit.yaml", config)])
    assert type(cli.trainer.strategy.checkpoint_io) is AsyncCheckpointIO
    assert cli.trainer.logger in cli.trainer.callbacks  # the CSVLogger's resume hook


@pytest.mark.parametrize("checkpoint_io", [
    pytest.param(TorchCheckpointIO(), marks=pytest.mark.xfail(strict=True, reason="Lightning's temp file lives in the system temp folder")),
    AtomicCheckpointIO(),
], ids=["lightning", "ours"])
def test_process_killed_mid_save_leaves_nothing_behind_after_the_next_save(checkpoint_io, tmp_path, tmpdir_env):
    target = tmp_path / "checkpoints" / "last.ckpt"
    checkpoint_io.save_checkpoint({"step": 1}, target)

    def killed_by_a_full_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it: restore the kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        checkpoint_io.save_checkpoint({"step": 2, "weights": torch.zeros(100_000)}, target)

    status = forked(killed_by_a_full_disk)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXFSZ  # died mid-write
    assert checkpoint_io.load_checkpoint(target) == {"step": 1}
    checkpoint_io.save_checkpoint({"step": 3}, target)  # the next save of a live run
    assert checkpoint_io.load_checkpoint(target) == {"step": 3}
    assert os.listdir(target.parent) == ["last.ckpt"]
    assert not list(tmpdir_env.iterdir())


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    dead, alive = dead_pid(), os.getppid()
    names = [f".last.tmp{dead}.ckpt", f".best-step=2.tmp{dead}.ckpt", f".last.tmp{alive}.ckpt", "last.ckpt", ".notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(p.name for p in io.remove_stale_temps(tmp_path)) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


# --- the ranking folder's swap --------------------------------------------------------------

FILES = ("scores.csv", "easy.txt", "hard.txt")


def write_run(folder, run: str, files=FILES) -> None:
    for name in files:
        (folder / name).write_text(run)


def reader(out) -> str | None:
    """What a reader of ``out`` finds: the run of a complete folder, None if there is none."""
    if not out.is_dir():
        return None
    contents = {(out / name).read_text() if (out / name).is_file() else "missing" for name in FILES}
    assert len(contents) == 1 and "missing" not in contents, f"mixed or partial ranking: {contents}"
    return contents.pop()


def leftovers(out) -> list[str]:
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


@pytest.mark.parametrize("failing", [1, 2], ids=["retire-old", "move-new-in"])
def test_failed_rename_keeps_the_previous_ranking(tmp_path, monkeypatch, failing):
    out = tmp_path / "ranking"
    with atomic_dir(out) as staging:
        write_run(staging, "old")
    calls = []
    rename = os.rename

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == failing:
            raise OSError(errno.EIO, "rename failed")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_dir(out) as staging:
            write_run(staging, "new")
    assert reader(out) == "old"
    assert leftovers(out) == []


@pytest.mark.parametrize("renames_done", [0, 1, 2], ids=["while-writing", "between-renames", "after-swap"])
def test_killed_swap_is_settled_by_the_next_run(tmp_path, renames_done):
    out = tmp_path / "ranking"
    with atomic_dir(out) as staging:
        write_run(staging, "old")

    def killed():
        rename = os.rename
        done = []

        def rename_then_die(src, dst):
            rename(src, dst)
            done.append(dst)
            if len(done) == renames_done:
                os._exit(0)

        os.rename = rename_then_die
        with atomic_dir(out) as staging:
            write_run(staging, "new", FILES[:1])
            if renames_done == 0:
                os._exit(0)
            write_run(staging, "new")

    assert forked(killed) == 0
    assert reader(out) == {0: "old", 1: None, 2: "new"}[renames_done]  # between the renames: hidden as .ranking.old<pid>
    with atomic_dir(out) as staging:
        assert reader(out) == {0: "old", 1: "old", 2: "new"}[renames_done]  # the next run starts from a complete folder
        assert leftovers(out) == [staging.name]  # and nothing of the dead run
        write_run(staging, "next")
    assert reader(out) == "next"
    assert leftovers(out) == []
