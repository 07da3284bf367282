"""``intrada pipeline`` as one supervised job: it runs its stages, links their outputs and skips the
finished ones; stages die with it, a run folder has one pipeline at a time, a changed stage config
runs the stage (and what reads its outputs) again, and a stage that ended short of its iterations
is not done.

The stages here are a tiny Python script standing in for ``intrada fit|predict|test`` (it logs
its call and writes the outputs, or sleeps): the pipeline starts it exactly as it starts
``intrada`` (``Pipeline.intrada``), so planning, locking and supervision run for real in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import eval_config, fit_config, write_yaml
from intrada_pl.pipeline import LOCK_FILE, RANKING_CLASSES, Pipeline, PipelineError

REPO = Path(__file__).resolve().parents[1]

FAKE_INTRADA = '''
"""intrada COMMAND --config CONFIG [...]: log the call, then sleep (FAKE_SLEEP) or write the outputs
(a fit's checkpoint: FAKE_CKPT, else finished.ckpt beside this file) and exit with FAKE_EXIT."""
import json, os, shutil, signal, sys, time
from pathlib import Path

command, args = sys.argv[1], sys.argv[2:]
config = Path(args[args.index("--config") + 1])
out = Path(args[args.index("--output") + 1]) if command == "test" else config.parent
run_dir = config.parent if command == "test" else out.parent
with open(run_dir / "calls.jsonl", "a") as log:
    log.write(json.dumps([out.name, *sys.argv[1:]]) + "\\n")
if os.environ.get("FAKE_SLEEP"):
    if os.environ.get("FAKE_IGNORE_SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    (out / "pid.tmp").write_text(str(os.getpid()))
    (out / "pid.tmp").rename(out / "child.pid")
    time.sleep(120)
out.mkdir(parents=True, exist_ok=True)
if command == "test":
    (out / "metrics.json").write_text(json.dumps({"mIoU": 50.0}))
else:
    (out / "checkpoints").mkdir(exist_ok=True)
    shutil.copy(os.environ.get("FAKE_CKPT") or Path(__file__).with_name("finished.ckpt"), out / "checkpoints" / "last.ckpt")
    (out / "ranking").mkdir(exist_ok=True)
sys.exit(int(os.environ.get("FAKE_EXIT", "0")))
'''

# A pipeline run in a process of its own, starting the fake instead of `intrada`.
DRIVER = (
    "import sys; from intrada_pl.pipeline import Pipeline; p = Pipeline.from_yaml(sys.argv[1]); "
    "p.intrada = [sys.executable, sys.argv[2]]; p.grace_s = 1.0; p.run()"
)

pytestmark = pytest.mark.system  # every test starts processes: the pipeline's stages, or the pipeline itself

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux-only")


@pytest.fixture
def fake(tmp_path) -> str:
    path = tmp_path / "fake_intrada.py"
    path.write_text(FAKE_INTRADA)
    torch.save({"global_step": 4}, tmp_path / "finished.ckpt")  # stage_yaml's max_steps: a finished fit
    return str(path)


def stage_yaml(tmp_path: Path, name: str, lr: float = 0.01, max_steps: int = 4) -> str:
    return write_yaml(tmp_path / f"{name}.yaml", {"trainer": {"max_steps": max_steps}, "model": {"init_args": {"lr": lr}}})


def pipeline_yaml(tmp_path: Path) -> str:
    """source -> inter (links source's checkpoint) -> rank (predicts with inter's), and an independent ``other``."""
    spec = {
        "run_dir": str(tmp_path / "runs"),
        "stages": [
            {"name": "source", "command": "fit", "config": stage_yaml(tmp_path, "source")},
            {"name": "inter", "command": "fit", "config": stage_yaml(tmp_path, "inter"), "links": {"model.init_args.segmenter.init_args.pretrained": "source.checkpoint"}},
            {"name": "rank", "command": "predict", "config": stage_yaml(tmp_path, "rank"), "checkpoint_from": "inter"},
            {"name": "other", "command": "fit", "config": stage_yaml(tmp_path, "other")},
        ],
        "test": {"config": write_yaml(tmp_path / "test.yaml", {"data": {"root": "x"}}), "stages": ["inter"]},
    }
    return write_yaml(tmp_path / "pipeline.yaml", spec)


def pipeline(tmp_path: Path, fake: str) -> Pipeline:
    p = Pipeline.from_yaml(tmp_path / "pipeline.yaml")
    p.intrada = [sys.executable, fake]
    return p


def calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "runs" / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_changed_config_reruns_the_stage_and_its_dependants(tmp_path, fake, capsys):
    pipeline_yaml(tmp_path)
    runs = tmp_path / "runs"
    pipeline(tmp_path, fake).run()
    assert [c[0] for c in calls(tmp_path)] == ["source", "inter", "rank", "other", "test"]
    rank_config = (runs / "rank" / "stage_config.yaml").read_text()
    assert yaml.safe_load(rank_config)["ckpt_path"] == str(runs / "inter" / "checkpoints" / "last.ckpt")
    assert (runs / "rank" / "DONE").read_text() == f"finished\nsha256 {hashlib.sha256(rank_config.encode()).hexdigest()}\n"

    capsys.readouterr()
    pipeline(tmp_path, fake).run()  # unchanged: every stage skipped, the evaluation kept
    assert len(calls(tmp_path)) == 5
    assert capsys.readouterr().out.count("done, skipped") == 4

    stage_yaml(tmp_path, "source", lr=0.02)
    p = pipeline(tmp_path, fake)
    assert [s.action for s in p.plan()] == ["rerun", "rerun", "rerun", "skip"]
    capsys.readouterr()
    p.run()
    out = capsys.readouterr().out
    assert [c[0] for c in calls(tmp_path)[5:]] == ["source", "inter", "rank", "test"]
    assert "source: config changed (model.init_args.lr: 0.01 -> 0.02)" in out
    assert "inter: runs from scratch, as its input source runs" in out and "rank: runs from scratch, as its input inter runs" in out
    assert (runs / "source.previous" / "DONE").is_file() and (runs / "inter.previous" / "test" / "metrics.json").is_file()
    assert (runs / "inter" / "DONE").is_file() and (runs / "inter" / "test" / "metrics.json").is_file()


def test_a_stale_stage_stays_stale_when_the_pipeline_dies_before_it(tmp_path, fake):
    pipeline_yaml(tmp_path)
    runs = tmp_path / "runs"
    pipeline(tmp_path, fake).run()
    stage_yaml(tmp_path, "source", lr=0.02)
    p = pipeline(tmp_path, fake)
    p.intrada = [sys.executable, "-c", "raise SystemExit(1)"]  # source fails: nothing after it runs
    with pytest.raises(subprocess.CalledProcessError):
        p.run()
    assert not (runs / "inter").exists() and not (runs / "rank").exists()  # moved aside before source started
    assert [s.action for s in pipeline(tmp_path, fake).plan()] == ["run", "rerun", "rerun", "skip"]


def test_interrupted_stage_with_a_changed_config_is_refused(tmp_path, fake):
    pipeline_yaml(tmp_path)
    runs = tmp_path / "runs"
    pipeline(tmp_path, fake).run()
    (runs / "other" / "DONE").unlink()  # interrupted: checkpoints/last.ckpt but no DONE
    stage_yaml(tmp_path, "other", max_steps=8)
    with pytest.raises(PipelineError, match=r"'other'.*trainer\.max_steps: 4 -> 8.*delete .*other to start the stage over, or restore"):
        pipeline(tmp_path, fake).run()
    assert len(calls(tmp_path)) == 5  # refused before anything ran

    stage_yaml(tmp_path, "other", max_steps=4)  # restored: resumes
    pipeline(tmp_path, fake).run()
    assert calls(tmp_path)[5][:2] == ["other", "fit"] and calls(tmp_path)[5][-2:] == ["--ckpt_path", str(runs / "other" / "checkpoints" / "last.ckpt")]
    assert (runs / "other" / "DONE").is_file()


def test_done_without_fingerprint_is_judged_by_its_stage_config(tmp_path, fake, capsys):
    """DONE as earlier versions wrote it: their stage_config.yaml (key order as in the source
    file, a predict stage's checkpoint on the command line) tells what ran."""
    pipeline_yaml(tmp_path)
    runs = tmp_path / "runs"
    p = pipeline(tmp_path, fake)
    p.run()
    for stage in p.stages:
        config = p.resolve(stage)
        config.pop("ckpt_path", None)
        (runs / stage.name / "stage_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        (runs / stage.name / "DONE").write_text("finished\n")
    (runs / "other" / "stage_config.yaml").unlink()  # nothing recorded: trusted
    assert [s.action for s in pipeline(tmp_path, fake).plan()] == ["skip"] * 4
    stage_yaml(tmp_path, "rank", lr=0.5)
    steps = pipeline(tmp_path, fake).plan()
    assert [s.action for s in steps] == ["skip", "skip", "rerun", "skip"]
    assert "model.init_args.lr: 0.01 -> 0.5" in steps[2].reason


def _wait_for_pid(path: Path, driver: subprocess.Popen) -> int:
    for _ in range(600):
        if path.exists():
            return int(path.read_text())
        if driver.poll() is not None:
            pytest.fail(f"pipeline ended early: {driver.communicate()}")
        time.sleep(0.1)
    pytest.fail("the stage never started")


def _gone(pid: int) -> bool:
    """No such process, or a zombie (a killed child that its new parent has not reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def _start(tmp_path: Path, fake: str, **env: str) -> tuple[subprocess.Popen, int]:
    """A pipeline in its own process whose first stage sleeps; returns it and the stage's pid."""
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, pipeline_yaml(tmp_path), fake],
        cwd=REPO, env={**os.environ, "FAKE_SLEEP": "1", **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    return driver, _wait_for_pid(tmp_path / "runs" / "source" / "child.pid", driver)


@linux_only
@pytest.mark.parametrize("signum,child_env", [(signal.SIGTERM, {}), (signal.SIGINT, {"FAKE_IGNORE_SIGTERM": "1"})])
def test_signal_stops_the_running_stage(tmp_path, fake, signum, child_env):
    """The child gets SIGTERM (one that ignores it, SIGKILL after the grace) and the pipeline exits 128 + signal."""
    driver, child = _start(tmp_path, fake, **child_env)
    try:
        driver.send_signal(signum)
        _, stderr = driver.communicate(timeout=30)
        assert driver.returncode == 128 + signum, stderr
        assert _gone(child)
        assert f"stopping pid {child}" in stderr
        assert not (tmp_path / "runs" / "source" / "DONE").exists()
    finally:
        driver.kill()
        if not _gone(child):
            os.kill(child, signal.SIGKILL)


@linux_only
def test_sigkill_of_the_pipeline_kills_its_stage(tmp_path, fake):
    driver, child = _start(tmp_path, fake)
    try:
        driver.kill()
        driver.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child)
    finally:
        if not _gone(child):
            os.kill(child, signal.SIGKILL)


@linux_only
def test_second_pipeline_on_a_locked_run_dir_fails(tmp_path, fake):
    driver, child = _start(tmp_path, fake)
    try:
        second = subprocess.run(
            [sys.executable, "-m", "intrada_pl.cli", "pipeline", "--config", str(tmp_path / "pipeline.yaml")],
            cwd=REPO, capture_output=True, text=True, timeout=300,
        )
        assert second.returncode == 2, second.stderr[-3000:]
        lock = tmp_path / "runs" / LOCK_FILE
        assert second.stderr.strip() == (
            f"intrada: error: {tmp_path / 'runs'} is in use by another intrada pipeline (pid {driver.pid}, holding {lock})"
        )
        assert driver.poll() is None and not _gone(child)  # the first one runs on
    finally:
        driver.terminate()
        driver.communicate(timeout=30)
    assert _gone(child)


# --------------------------------------------------------------------------- a stage that ended short is not done
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
    pipeline_yaml(tmp_path)
    monkeypatch.setenv("FAKE_CKPT", checkpoint(tmp_path, 2))
    last_ckpt = tmp_path / "runs" / "source" / "checkpoints" / "last.ckpt"
    with pytest.raises(PipelineError, match=f"'source': intrada fit exited 0 but {last_ckpt} is at iteration 2 of 4"):
        pipeline(tmp_path, fake).run()
    assert not (tmp_path / "runs" / "source" / "DONE").exists()
    monkeypatch.delenv("FAKE_CKPT")
    assert [s.action for s in pipeline(tmp_path, fake).plan()][0] == "resume"


def test_a_predict_stage_done_without_its_ranking_runs_again(tmp_path, fake):
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


# --------------------------------------------------------------------------- the real `intrada`
def test_pipeline_runs_links_and_skips_finished_stages(toy_root, tmp_path):
    source = fit_config(toy_root, tmp_path / "unused")
    inter = fit_config(toy_root, tmp_path / "unused", stage="intrada_pl.stages.inter.InterDomainModule", schedule_steps=10)
    inter["trainer"]["max_steps"] = 2
    spec = {
        "run_dir": str(tmp_path / "runs"),
        "stages": [
            {"name": "source_only", "command": "fit", "config": write_yaml(tmp_path / "source.yaml", source)},
            {
                "name": "inter",
                "command": "fit",
                "config": write_yaml(tmp_path / "inter.yaml", inter),
                "links": {"model.init_args.segmenter.init_args.pretrained": "source_only.checkpoint"},
            },
        ],
        "test": {"config": write_yaml(tmp_path / "test.yaml", eval_config(toy_root)), "stages": ["source_only", "inter"]},
    }
    pipeline = write_yaml(tmp_path / "pipeline.yaml", spec)
    command = [sys.executable, "-m", "intrada_pl.cli", "pipeline", "--config", pipeline]
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp_path / "runs"
    resolved = yaml.safe_load((runs / "inter" / "stage_config.yaml").read_text())
    assert resolved["model"]["init_args"]["segmenter"]["init_args"]["pretrained"] == str(runs / "source_only" / "checkpoints" / "last.ckpt")
    assert (runs / "inter" / "checkpoints" / "last.ckpt").exists() and (runs / "inter" / "DONE").exists()
    rows = json.loads((runs / "summary.json").read_text())
    assert [r["stage"] for r in rows] == ["source_only", "inter"]
    assert all(0 <= r["mIoU"] <= 100 for r in rows)
    assert "| inter" in (runs / "summary.md").read_text()

    stamp = (runs / "inter" / "checkpoints" / "last.ckpt").resolve().stat().st_mtime_ns
    second = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "source_only: done, skipped" in second.stdout and "inter: done, skipped" in second.stdout
    assert (runs / "inter" / "checkpoints" / "last.ckpt").resolve().stat().st_mtime_ns == stamp
