"""Checkpoints written before the segmenter and the optimiser became components (commit e3058b0,
flat ``depth``/``lr``/``sgd_mode`` hyper-parameters) still resume and evaluate, with the same numbers.

The old code is taken from git history and run in a subprocess, so the checkpoints are genuinely
today's-main files rather than imitations of their layout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from io import BytesIO
from pathlib import Path

import pytest
import torch

from helpers import eval_config, fit_config, write_yaml

REPO = Path(__file__).resolve().parents[1]
OLD = "e3058b0"  # the last commit with flat stage hyper-parameters
INTER = "intrada_pl.stages.inter.InterDomainModule"
pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> Path:
    """The package as it was at ``OLD``, unpacked beside the tests."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD, "intrada_pl"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {OLD} is not in this checkout's history (a shallow clone): {archive.stderr.decode().strip()}")
    root = tmp_path_factory.mktemp("old_code")
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(root, filter="data")
    return root


def run(args: list[str], tmp_path: Path, code: Path | None = None, status: int = 0) -> subprocess.CompletedProcess:
    """``intrada ARGS`` with the old package (``code``) or today's (run outside the repository, whose package
    would come first on the path)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if code is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(code), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "intrada_pl.cli", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == status, done.stderr[-3000:]
    return done


def old_config(toy_root: Path, run_dir: Path, max_steps: int) -> dict:
    """A fit config in the old flat layout."""
    config = fit_config(toy_root, run_dir, stage=INTER)
    config["model"]["init_args"] = {"depth": 18, "lr": 0.01, "schedule_steps": 8, "sgd_mode": "reference"}
    config["trainer"].update(max_steps=max_steps, val_check_interval=2)
    return config


def test_an_old_checkpoint_resumes_and_evaluates_as_before(old_code, toy_root, tmp_path):
    first = tmp_path / "first"
    run(["fit", "--config", write_yaml(tmp_path / "old2.yaml", old_config(toy_root, first, 2))], tmp_path, old_code)
    old_ckpt = first / "checkpoints" / "last.ckpt"
    assert "depth" in torch.load(old_ckpt, weights_only=True)["hyper_parameters"]  # the flat layout indeed

    # Two more iterations: the old code on one copy of the run, today's on another.
    continued = {}
    for name, code in (("old", old_code), ("new", None)):
        run_dir = tmp_path / name
        config = old_config(toy_root, run_dir, 4) if code else fit_config(toy_root, run_dir, stage=INTER, schedule_steps=8, adam_d="torch")
        config["trainer"].update(max_steps=4, val_check_interval=2)
        run(["fit", "--config", write_yaml(tmp_path / f"{name}.yaml", config), "--ckpt_path", str(old_ckpt)], tmp_path, code)
        continued[name] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert continued["old"]["global_step"] == continued["new"]["global_step"] == 4
    for key, value in continued["old"]["state_dict"].items():
        assert torch.equal(continued["new"]["state_dict"][key], value), key

    # Resuming it under today's default discriminator optimiser is refused, naming the difference.
    config = fit_config(toy_root, tmp_path / "refused", stage=INTER, schedule_steps=8)
    refused = run(["fit", "--config", write_yaml(tmp_path / "refused.yaml", config), "--ckpt_path", str(old_ckpt)], tmp_path, status=2)
    assert "adam_d: 'torch' -> 'reference'" in refused.stderr and refused.stderr.count("\n") == 1

    # The old checkpoint evaluated by both versions: the same metrics.
    test_yaml = write_yaml(tmp_path / "test.yaml", eval_config(toy_root))
    metrics = {}
    for name, code in (("old", old_code), ("new", None)):
        run(["test", "--config", test_yaml, "--ckpt", str(old_ckpt), "--output", str(tmp_path / f"test_{name}")], tmp_path, code)
        metrics[name] = json.loads((tmp_path / f"test_{name}" / "metrics.json").read_text())
    assert metrics["new"]["IoU"] == metrics["old"]["IoU"] and metrics["new"]["mIoU"] == metrics["old"]["mIoU"]
