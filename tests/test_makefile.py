"""Shell-safe make targets (issue 18, item 6): every value a recipe passes on is one argument, and
nothing in it runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

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
