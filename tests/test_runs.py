"""Resume that resumes: a shipped config's run folder is stable, ``--ckpt_path last`` continues it
exactly after a kill -9, and never silently starts from scratch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def shipped_inter_command(toy_root: Path, run_dir: Path, *extra: str) -> list[str]:
    """README's command on configs/inter_gta5.yaml, shrunk to the toy data (depth 18, tiny sizes)."""
    return [
        sys.executable, "-m", "intrada_pl.cli", "fit", "--config", str(REPO / "configs" / "inter_gta5.yaml"),
        "--trainer.default_root_dir", str(run_dir), "--trainer.accelerator", "cpu", "--trainer.max_steps", "12",
        "--trainer.val_check_interval", "3", "--trainer.enable_progress_bar", "false",
        "--model.init_args.segmenter.init_args.depth", "18", "--model.init_args.segmenter.init_args.pretrained", "null",
        "--model.init_args.lr_scheduler.init_args.total_steps", "30",
        "--data.init_args.source_root", str(toy_root / "GTA5"), "--data.init_args.target_root", str(toy_root / "Cityscapes"),
        "--data.init_args.source_size", "[64, 36]", "--data.init_args.target_size", "[64, 32]",
        "--data.init_args.val_size", "[64, 32]", "--data.init_args.num_workers", "0",
        *extra,
    ]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)


@pytest.mark.system
def test_kill_9_then_the_readme_resume_command_equals_an_uninterrupted_run(toy_root, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(shipped_inter_command(toy_root, straight), env=env(), check=True, capture_output=True, timeout=300)

    process = subprocess.Popen(shipped_inter_command(toy_root, killed), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert torch.load(last, weights_only=False)["global_step"] < 12

    resumed = subprocess.run(shipped_inter_command(toy_root, killed, "--ckpt_path", "last"), env=env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(straight), weights(killed)
    assert a["global_step"] == b["global_step"] == 12
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)
    assert sorted(p.name for p in killed.iterdir()) == sorted(p.name for p in straight.iterdir())  # one run folder, no version_N
    steps = [int(line.split(",")[0]) for line in (killed / "logs" / "metrics.csv").read_text().splitlines()[1:] if line[:1].isdigit()]
    assert steps == sorted(steps)  # the log reads like one run


def console(args: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """The console script in-process: exit status and stderr."""
    from intrada_pl.cli import run

    monkeypatch.setattr(sys, "argv", ["intrada", *args])
    with pytest.raises(SystemExit) as exit_info:
        run()
    return exit_info.value.code, capsys.readouterr().err


def test_ckpt_path_last_without_a_checkpoint_is_an_error(toy_root, tmp_path, monkeypatch, capsys):
    """Before: a warning, training from step 0, exit 0."""
    status, err = console(shipped_inter_command(toy_root, tmp_path / "run", "--ckpt_path", "last")[3:], monkeypatch, capsys)
    assert status == 2
    assert "intrada: error: --ckpt_path last: no last.ckpt to resume in" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "checkpoints").exists()


def test_a_last_link_to_a_missing_file_is_an_error(toy_root, tmp_path, monkeypatch, capsys):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").symlink_to("epoch=0-step=6.ckpt")
    status, err = console(shipped_inter_command(toy_root, tmp_path / "run", "--ckpt_path", "last_if_present")[3:], monkeypatch, capsys)
    assert status == 2 and "links to epoch=0-step=6.ckpt, which does not exist" in err


@pytest.mark.parametrize("present", [False, True])
def test_last_if_present_resumes_or_starts(tmp_path, present):
    from intrada_pl.runs import resolve_resume

    trainer = {"default_root_dir": str(tmp_path), "callbacks": [{"class_path": "intrada_pl.callbacks.ModelCheckpoint", "init_args": {"save_last": "link"}}]}
    if present:
        (tmp_path / "checkpoints").mkdir()
        (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    expected = str(tmp_path / "checkpoints" / "last.ckpt") if present else None
    assert resolve_resume("last_if_present", trainer) == expected
    assert resolve_resume("some/file.ckpt", trainer) == "some/file.ckpt"
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # what Lightning's SLURM auto-requeue saves on its signal
    hpc.write_bytes(b"x")
    os.utime(hpc, (time.time() + 10, time.time() + 10))
    assert resolve_resume("last", trainer) == resolve_resume("last_if_present", trainer) == str(hpc)  # the newest


# --- a data loader setting is free to change on resume ------------------------------------------


def remaining(loader) -> list[list[int]]:
    return [batch.tolist() for batch in loader]


@pytest.mark.parametrize("before,after", [(0, 2), (2, 0), (2, 1)])
def test_a_loader_resumes_its_position_under_another_number_of_workers(before, after):
    """The sampler's position and shuffle carry over; the workers' own state (none for our map-style
    datasets) is dropped. Before: an AssertionError deep in torchdata (a 118-line traceback)."""
    from intrada_pl.data.datamodules import make_loader

    dataset = list(range(20))
    torch.manual_seed(0)
    straight = make_loader(dataset, batch_size=2, num_workers=before, train=True)
    batches = iter(straight)
    seen = [next(batches).tolist() for _ in range(3)]
    state = straight.state_dict()
    rest = [batch.tolist() for batch in batches]
    assert len(seen + rest) == 10 and sorted(sum(seen + rest, [])) == dataset

    resumed = make_loader(dataset, batch_size=2, num_workers=after, train=True)
    resumed.load_state_dict(state)
    assert remaining(resumed) == rest
    assert len(remaining(resumed)) == 10  # the next epoch is whole


def test_a_resume_may_change_the_number_of_data_loader_workers(toy_root, tmp_path, monkeypatch, capsys):
    from helpers import fit_config, write_yaml
    from intrada_pl.cli import main

    config = fit_config(toy_root, tmp_path / "run")
    config["trainer"]["max_steps"] = 2
    path = write_yaml(tmp_path / "fit.yaml", config)
    main(["fit", "--config", path])
    main(["fit", "--config", path, "--ckpt_path", "last", "--trainer.max_steps", "3", "--data.init_args.num_workers", "1"])
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3


# --- a run folder is movable --------------------------------------------------------------------


def validation_scores(run_dir: Path) -> dict[int, float]:
    import csv

    with open(run_dir / "logs" / "metrics.csv", newline="") as file:
        return {int(row["step"]): float(row["val/mIoU"]) for row in csv.DictReader(file) if row.get("val/mIoU")}


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.lstat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.system
@pytest.mark.parametrize("how", ["move", "copy"])
def test_a_moved_or_copied_run_folder_resumes_into_last_ckpt_and_keeps_its_best(toy_root, tmp_path, how):
    """Before: the restored ModelCheckpoint state named the old folder, so the resume wrote
    last-v1.ckpt beside a stale last.ckpt (which the next --ckpt_path last took) and a second,
    worse best-step=N.ckpt beside the best."""
    import shutil

    from helpers import fit_config, write_yaml
    from intrada_pl.cli import main

    config = fit_config(toy_root, tmp_path / "unused")
    del config["trainer"]["callbacks"]  # the run's default checkpoints: best-step=N.ckpt and last.ckpt
    config["trainer"].update(logger={"class_path": "intrada_pl.loggers.CSVLogger"}, max_steps=3, val_check_interval=1)
    path = write_yaml(tmp_path / "fit.yaml", config)
    old, new = tmp_path / "old", tmp_path / "new"
    main(["fit", "--config", path, "--trainer.default_root_dir", str(old)])
    (shutil.move if how == "move" else shutil.copytree)(old, new)
    before = snapshot(old) if how == "copy" else {}

    main(["fit", "--config", path, "--trainer.default_root_dir", str(new), "--ckpt_path", "last", "--trainer.max_steps", "6"])
    scores = validation_scores(new)
    assert sorted(scores) == [1, 2, 3, 4, 5, 6]
    best = max(scores, key=lambda step: (scores[step], -step))  # the first of equal scores stays the best
    names = sorted(p.name for p in (new / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("best")] == [f"best-step={best}.ckpt"]
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"]
    last = torch.load(new / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 6
    tracked = [state for key, state in last["callbacks"].items() if "val/mIoU" in key][0]
    assert tracked["best_model_path"] == str(new / "checkpoints" / f"best-step={best}.ckpt")
    assert list(tracked["best_k_models"]) == [tracked["best_model_path"]]
    if how == "copy":
        assert snapshot(old) == before  # the original run is untouched
