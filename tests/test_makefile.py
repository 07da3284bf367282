"""Data that is not what it claims, and shell-safe make targets (issue 18, items 4 and 6).

The rest of item 4 is in the bad-input table (tests/test_bad_input.py), the dataset tests and
the inspect tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import eval_config, write_yaml
from intrada_pl.models.deeplabv2 import DeepLabV2

REPO = Path(__file__).resolve().parents[1]
NOT_UTF8 = os.fsdecode(b"\xff\xfe.png")   # what Python makes of a Latin-1 name on Linux: surrogate escapes


@pytest.mark.system
def test_write_png_to_a_name_that_is_not_utf8(tmp_path):
    """OpenCV's path-taking imwrite kills the process (SIGSEGV) on such a name; write_png must not.
    Run in a child process so that a crash fails this test instead of ending the test session."""
    code = ("import sys, numpy as np; from pathlib import Path; from intrada_pl.io import write_png; "
            f"folder = Path(sys.argv[1]); write_png(folder / {NOT_UTF8!r}, np.arange(12, dtype=np.uint8).reshape(3, 4)); "
            f"write_png(folder / 'rgb' / {NOT_UTF8!r}, np.full((3, 4, 3), (255, 0, 0), np.uint8))")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(["rgb", NOT_UTF8])
    with Image.open(tmp_path / NOT_UTF8) as grey, Image.open(tmp_path / "rgb" / NOT_UTF8) as rgb:
        assert grey.mode == "L" and (np.array(grey) == np.arange(12).reshape(3, 4)).all()
        assert rgb.mode == "RGB" and (np.array(rgb) == (255, 0, 0)).all()   # RGB in, RGB on disk
    assert os.listdir(tmp_path / "rgb") == [NOT_UTF8]                      # no temporary file left


@pytest.mark.system
def test_save_predictions_refuses_a_name_that_is_not_utf8_before_writing(toy_root, tmp_path):
    """``intrada test --save_predictions`` crashed (exit 139, nothing written): now one line at
    dataset setup, exit 2, and no prediction folder begun."""
    root = Path(shutil.copytree(toy_root / "Cityscapes", tmp_path / "Cityscapes"))
    image = min(root.glob("leftImg8bit/val/*/*.png"))
    label = min(root.glob("gtFine/val/*/*_labelIds.png"))
    bad = image.with_name(os.fsdecode(b"\xff\xfe_leftImg8bit.png"))
    shutil.copy(image, bad)
    shutil.copy(label, label.with_name(os.fsdecode(b"\xff\xfe_gtFine_labelIds.png")))
    weights = tmp_path / "model.pth"
    torch.save(DeepLabV2(19, depth=18).state_dict(), weights)
    config = write_yaml(tmp_path / "test.yaml", eval_config(tmp_path))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "INTRADA_TRACEBACK"}
    done = subprocess.run([sys.executable, "-m", "intrada_pl.cli", "test", "--config", config, "--ckpt", str(weights),
                           "--save_predictions", "--output", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("intrada: error: ")]
    assert repr(os.fsencode(bad)) in line and "not valid UTF-8" in line
    assert not (out / "predictions").exists()


# ------------------------------------------------------------------------------------------ Makefile
HOSTILE = {   # each would run `touch pwned` (or split into several words) if the shell parsed it
    "CKPT": "a b`touch pwned`.ckpt",
    "DATA": "x;touch pwned;y",
    "OUT": "it's, \"here\"",
    "CONFIG": "c|touch pwned.yaml",
    "LAMBDA": "0.5 & touch pwned",
}


@pytest.fixture
def stub_venv(tmp_path) -> Path:
    """A folder to run ``make -f Makefile`` in, whose "venv" is installed already and whose
    ``intrada`` only appends its argv to ``argv.jsonl``: nothing heavy runs."""
    (tmp_path / "pyproject.toml").write_text("")
    stub = tmp_path / "venv" / "bin" / "intrada"
    stub.parent.mkdir(parents=True)
    stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"with open({str(tmp_path / 'argv.jsonl')!r}, 'a') as f:\n    f.write(json.dumps(sys.argv[1:]) + '\\n')\n")
    stub.chmod(0o755)
    (tmp_path / "venv" / ".installed").touch()
    os.utime(tmp_path / "pyproject.toml", (os.path.getmtime(tmp_path / "venv" / ".installed") - 100,) * 2)
    return tmp_path


def make(folder: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "VENV=venv", *args],
                          cwd=folder, capture_output=True, text=True, timeout=60)


def calls(folder: Path) -> list[list[str]]:
    return [json.loads(line) for line in (folder / "argv.jsonl").read_text().splitlines()]


@pytest.mark.system
def test_make_rank_passes_each_value_as_one_argument(stub_venv):
    done = make(stub_venv, "rank", *(f"{k}={v}" for k, v in HOSTILE.items()))
    assert done.returncode == 0, done.stderr
    assert calls(stub_venv) == [[
        "predict", "--config", HOSTILE["CONFIG"], "--ckpt_path", HOSTILE["CKPT"],
        "--trainer.callbacks.init_args.lambda_", HOSTILE["LAMBDA"],
        "--data.init_args.root", HOSTILE["DATA"],
        "--trainer.callbacks.init_args.output_dir", HOSTILE["OUT"], "--trainer.default_root_dir", HOSTILE["OUT"],
    ]]
    assert not (stub_venv / "pwned").exists() and not (REPO / "pwned").exists()


@pytest.mark.system
def test_make_rank_dry_run_shows_quoted_values_and_runs_nothing(stub_venv):
    done = make(stub_venv, "-n", "rank", "CKPT=a b", "DATA=x`touch pwned`y")
    assert done.returncode == 0, done.stderr
    assert "--ckpt_path 'a b'" in done.stdout and "--data.init_args.root 'x`touch pwned`y'" in done.stdout
    assert "--config 'configs/rank_gta5.yaml'" in done.stdout
    assert not (stub_venv / "pwned").exists() and not (stub_venv / "argv.jsonl").exists()


@pytest.mark.system
def test_make_rank_without_ckpt_prints_its_usage(stub_venv):
    done = make(stub_venv, "rank", "DATA=x`touch pwned`y")
    assert done.returncode == 2 and "usage: make rank CKPT=INTER_CKPT" in done.stdout
    assert not (stub_venv / "pwned").exists()


@pytest.mark.system
def test_make_demo_targets_quote_their_folders(stub_venv):
    data, runs, seeds = "d`>pwned`", "r;touch pwned", "s `touch pwned` d"    # a target name: no spaces
    ranking = stub_venv / seeds / "seed_0" / "rank" / "ranking"
    ranking.mkdir(parents=True)
    folders = [f"DEMO_DATA={data}", f"DEMO_RUNS={runs}", f"DEMO_SEEDS_RUNS={seeds}", "CONFIG=p q.yaml"]
    for target in ("demo", "demo-seeds", "pipeline"):
        done = make(stub_venv, target, *folders)
        assert done.returncode == 0, done.stderr
    assert calls(stub_venv) == [
        ["toy-data", data],
        ["pipeline", "--config", "configs/demo/pipeline.yaml"],
        ["toy-data", data, "--check-ranking", f"{runs}/rank/ranking"],
        ["toy-data", data],                                   # the stub writes no toy_meta.json
        ["pipeline", "--config", "configs/demo/pipeline_seeds.yaml"],
        ["toy-data", data, "--check-ranking", f"{seeds}/seed_0/rank/ranking"],
        ["pipeline", "--config", "p q.yaml"],
    ]
    (stub_venv / runs).mkdir()
    assert make(stub_venv, "clean-demo", f"DEMO_RUNS={runs}").returncode == 0
    assert not (stub_venv / runs).exists() and not (stub_venv / "pwned").exists()
    done = make(stub_venv, "demo", "DEMO_DATA=my data")
    assert done.returncode == 2 and "DEMO_DATA must not contain spaces (it names a make target): 'my data'" in done.stderr
