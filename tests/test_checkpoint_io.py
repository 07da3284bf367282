"""Checkpoints written beside their target (intrada_pl/checkpoint_io.py): a full disk or a file-size
limit is one line naming the file, and the previous checkpoint stays intact."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest
import torch

from intrada_pl.checkpoint_io import AtomicCheckpointIO, CheckpointWriteError


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
