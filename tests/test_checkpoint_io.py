"""Checkpoints written beside their target (intrada_pl/checkpoint_io.py): a full disk or a file-size
limit is one line naming the file, the previous checkpoint stays intact, a process killed mid-save
leaves nothing behind after the next save, and a checkpoint plugin the user gives is kept."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
import sys

import pytest
import torch
from lightning.pytorch.plugins.io import AsyncCheckpointIO, TorchCheckpointIO

from helpers import forked, write_yaml
from intrada_pl.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError
from intrada_pl.cli.lightning import TrainingCLI
from intrada_pl.stages.segmentation import SegmentationEvalModule
from test_loggers import logged_fit_config


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0: No space left on device")])
def test_a_full_disk_is_one_line_naming_the_file_and_the_previous_checkpoint_survives(tmp_path, monkeypatch, failure):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, target)

    def full_disk(obj, file):
        file.write(b"partial")
        raise failure

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match=f"cannot write checkpoint {target}: No space left on device; the previous one is intact"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, target)
    assert torch.load(target, weights_only=True) == {"step": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_other_failures_are_not_reported_as_storage(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda obj, path: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        AtomicCheckpointIO().save_checkpoint({"step": 2}, tmp_path / "last.ckpt")


PROBE = """
import resource, signal, sys, torch
from intrada_pl.checkpoint_io import AtomicCheckpointIO
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write over the limit fails with EFBIG instead of killing us
AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(16)}, sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(1 << 20)}, sys.argv[1])
"""


@pytest.mark.system
def test_a_file_size_limit_is_reported_too(tmp_path):
    target = tmp_path / "last.ckpt"
    done = subprocess.run([sys.executable, "-c", PROBE, str(target)], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and f"cannot write checkpoint {target}: File too large" in done.stderr
    assert torch.load(target, weights_only=True)["w"].numel() == 16


def test_a_checkpoint_io_plugin_given_by_the_user_is_kept(toy_root, tmp_path):
    config = logged_fit_config(toy_root, tmp_path)
    config["trainer"]["plugins"] = [{"class_path": "lightning.pytorch.plugins.io.AsyncCheckpointIO"}]
    cli = TrainingCLI(SegmentationEvalModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                      args=["--config", write_yaml(tmp_path / "fit.yaml", config)])
    assert type(cli.trainer.strategy.checkpoint_io) is AsyncCheckpointIO
    assert cli.trainer.logger in cli.trainer.callbacks  # the CSVLogger's resume hook


@pytest.mark.system
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
