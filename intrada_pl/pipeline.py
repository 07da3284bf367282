"""``intrada pipeline``: the whole method in one command, resumable stage by stage.

A pipeline YAML lists stages (a stage = an ``intrada fit`` or ``intrada predict`` config) and
how each one takes the previous ones' outputs (``links``, ``checkpoint_from``), then which
checkpoints to evaluate. Every stage writes under ``<run_dir>/<stage>/``: the pipeline rewrites
the stage config so that its checkpoints, logs and ranking land there (a predict stage's
``checkpoint_from`` becomes its ``ckpt_path``), saves this resolved config as
``stage_config.yaml`` (keys sorted) and runs it in a child process. The last step prints one
table, mIoU per stage.

Dataset roots are the only paths a user edits (YAML anchors keep them in one place).
Outputs a link can name: ``<stage>.checkpoint`` (``checkpoints/last.ckpt`` of a fit stage) and
``<stage>.ranking`` (the ``ranking/`` folder of a ranking stage).

What runs again. A stage's fingerprint is the sha256 of its ``stage_config.yaml`` text. That
file is written just before the stage starts, so it records the config its checkpoints were
made under; a stage that finishes leaves ``DONE`` holding the fingerprint too. Before starting
anything the pipeline plans every stage, in order (:meth:`Pipeline.plan`):

- a stage that links to a stage that will run (the reason is named) runs again from scratch;
- ``DONE`` with the current fingerprint: skipped;
- ``DONE`` with another fingerprint: runs again from scratch (the changed keys are printed);
- no ``DONE``, a fit stage with ``checkpoints/last.ckpt``: resumes from it if
  ``stage_config.yaml`` has the current fingerprint, otherwise the pipeline refuses to start
  (:class:`PipelineError` naming the changed keys): delete the stage folder to start it over,
  or restore its config to resume;
- otherwise the stage runs (an interrupted predict stage starts over).

"From scratch" moves the old folder to ``<stage>.previous`` (replacing an older one), for all
such stages before the first one starts, so that a pipeline killed halfway still knows next
time which stages are stale (their evaluations, kept in the stage folder, go with them). A
``DONE`` written by earlier versions (``finished`` and no fingerprint) is judged by the
``stage_config.yaml`` beside it, which they also wrote before the stage started (they passed a
predict stage's checkpoint on the command line, so that one counts as unchanged); without
``stage_config.yaml`` the stage is trusted and skipped.

Supervision. ``run_dir/pipeline.lock`` is held (``flock``) while a pipeline runs: a second one
on the same folder fails at once, naming the holder's pid; the kernel drops the lock when its
holder dies, so it is never stale. SIGTERM or SIGINT stop the running child, a stage or an
``intrada test`` (SIGTERM, then SIGKILL after ``grace_s``), and end the pipeline with status
128 + the signal's number. On Linux a child also gets SIGKILL when the pipeline dies without
cleaning up (SIGKILL, ``PR_SET_PDEATHSIG``); other systems lack that, so there a child
outlives a killed pipeline (the lock needs POSIX ``fcntl``: no Windows).
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from intrada_pl.io import write_json, write_text

CHECKPOINT_CLASSES = ("lightning.pytorch.callbacks.ModelCheckpoint", "intrada_pl.callbacks.ModelCheckpoint")
RANKING_CLASS = "intrada_pl.stages.ranking.RankingCallback"
LOCK_FILE = "pipeline.lock"
GRACE_S = 10.0  # how long a stopped child may take to exit after SIGTERM
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class PipelineError(Exception):
    """A run the pipeline refuses to start (the console script prints it as ``intrada: error: ...``)."""


@dataclass
class Stage:
    name: str
    command: str  # "fit" or "predict"
    config: str
    links: dict[str, str] = field(default_factory=dict)  # dotted config key -> "<stage>.<output>"
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted config key -> value
    checkpoint_from: str | None = None  # predict stages: whose checkpoint to run (``ckpt_path``)

    @property
    def inputs(self) -> set[str]:
        """The stages whose outputs this one reads."""
        sources = [*self.links.values(), *([f"{self.checkpoint_from}.checkpoint"] if self.checkpoint_from else [])]
        return {source.split(".")[0] for source in sources}


@dataclass
class Step:
    """What :meth:`Pipeline.run` does with one stage: skip, run, resume, rerun (from scratch)
    or refuse (:meth:`Pipeline.plan` raises), and why."""

    stage: Stage
    config: dict
    action: str
    reason: str


@dataclass
class Evaluation:
    stage: str
    calibration: str | None = None


@dataclass
class Pipeline:
    run_dir: Path
    stages: list[Stage]
    test_config: dict
    evaluations: list[Evaluation]
    intrada: list[str] = field(default_factory=lambda: [sys.executable, "-m", "intrada_pl.cli"])  # runs a stage
    grace_s: float = GRACE_S

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        spec = yaml.safe_load(Path(path).read_text())
        stages = [Stage(**item) for item in spec["stages"]]
        names = [s.name for s in stages]
        for stage in stages:
            for source in stage.inputs:
                if source not in names[: names.index(stage.name)]:
                    raise ValueError(f"stage {stage.name!r}: {source} does not name an earlier stage")
        test = spec["test"]
        evaluations = [Evaluation(**e) if isinstance(e, dict) else Evaluation(e) for e in test["stages"]]
        test_config = yaml.safe_load(Path(test["config"]).read_text())
        for key, value in test.get("overrides", {}).items():
            _set(test_config, key, value)
        return cls(Path(spec["run_dir"]), stages, test_config, evaluations)

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def output(self, link: str) -> str:
        name, kind = link.split(".", 1)
        outputs = {"checkpoint": self.stage_dir(name) / "checkpoints" / "last.ckpt", "ranking": self.stage_dir(name) / "ranking"}
        if kind not in outputs:
            raise ValueError(f"unknown output {kind!r} in link {link!r}; known: {sorted(outputs)}")
        return str(outputs[kind])

    def resolve(self, stage: Stage) -> dict:
        """The stage's config with its outputs under ``<run_dir>/<stage>`` and its links filled in."""
        config = yaml.safe_load(Path(stage.config).read_text())
        out = self.stage_dir(stage.name)
        trainer = config.setdefault("trainer", {})
        trainer["default_root_dir"] = str(out)
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers] if isinstance(loggers, dict) else []:
            logger.setdefault("init_args", {})["save_dir"] = str(out / "logs")
        for callback in trainer.get("callbacks") or []:
            if callback.get("class_path") in CHECKPOINT_CLASSES:
                callback.setdefault("init_args", {})["dirpath"] = str(out / "checkpoints")
            elif callback.get("class_path") == RANKING_CLASS:
                callback.setdefault("init_args", {})["output_dir"] = str(out)
        for key, source in stage.links.items():
            _set(config, key, self.output(source))
        if stage.checkpoint_from:
            config["ckpt_path"] = self.output(f"{stage.checkpoint_from}.checkpoint")
        for key, value in stage.overrides.items():
            _set(config, key, value)
        return config

    def plan(self) -> list[Step]:
        """One :class:`Step` per stage (the rules are in the module docstring); raises
        :class:`PipelineError` for every interrupted stage whose config changed."""
        steps: list[Step] = []
        for stage in self.stages:
            config = self.resolve(stage)
            running = sorted(stage.inputs & {s.stage.name for s in steps if s.action != "skip"})
            if running:
                steps.append(Step(stage, config, "rerun", f"runs from scratch, as its input {', '.join(running)} runs"))
            else:
                steps.append(self._step(stage, config))
        refused = [s.reason for s in steps if s.action == "refuse"]
        if refused:
            raise PipelineError("\n".join(refused))
        return steps

    def _step(self, stage: Stage, config: dict) -> Step:
        out = self.stage_dir(stage.name)
        saved = _read_yaml(out / "stage_config.yaml")
        done = _done_fingerprint(out / "DONE")
        if done == "":  # written by an earlier version: judged by its stage_config.yaml
            if saved is None:
                return Step(stage, config, "skip", "done (no config recorded), skipped")
            if "ckpt_path" in config:
                saved.setdefault("ckpt_path", config["ckpt_path"])
            done = fingerprint(saved)
        if done is not None:
            if done == fingerprint(config):
                return Step(stage, config, "skip", "done, skipped")
            return Step(stage, config, "rerun", f"config changed ({_changes(saved, config)}), runs from scratch")
        last = out / "checkpoints" / "last.ckpt"
        if stage.command == "fit" and last.exists():
            if saved is not None and fingerprint(saved) == fingerprint(config):
                return Step(stage, config, "resume", f"resumes from {last}")
            return Step(stage, config, "refuse", (
                f"stage {stage.name!r}: {last} was made under another config ({_changes(saved, config)}); "
                f"delete {out} to start the stage over, or restore its config to resume"))
        return Step(stage, config, "run", "runs")

    def prepare(self, step: Step) -> None:
        """Say what happens to the stage; move a stale stage folder aside."""
        name, out = step.stage.name, self.stage_dir(step.stage.name)
        print(f"[pipeline] {name}: {step.reason}" + (f" ({out})" if step.action == "skip" else ""))
        if step.action == "rerun" and out.exists():
            previous = out.with_name(f"{out.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            out.rename(previous)
            print(f"[pipeline] {name}: previous outputs moved to {previous}")

    def run_step(self, step: Step) -> None:
        name, out = step.stage.name, self.stage_dir(step.stage.name)
        config_path = write_text(out / "stage_config.yaml", _dump(step.config))
        args = [step.stage.command, "--config", str(config_path)]
        if step.action == "resume":
            args += ["--ckpt_path", str(out / "checkpoints" / "last.ckpt")]
        print(f"[pipeline] {name}: intrada {' '.join(args)}", flush=True)
        self._intrada(args)
        write_text(out / "DONE", f"finished\nsha256 {fingerprint(step.config)}\n")

    def evaluate(self, evaluation: Evaluation, test_config: Path) -> dict:
        label = evaluation.stage + (f"+{evaluation.calibration}" if evaluation.calibration else "")
        out = self.stage_dir(evaluation.stage) / ("test" if not evaluation.calibration else f"test_{evaluation.calibration}")
        if not (out / "metrics.json").is_file():
            args = ["test", "--config", str(test_config), "--ckpt", self.output(f"{evaluation.stage}.checkpoint"), "--output", str(out)]
            if evaluation.calibration:
                args += ["--calibration", evaluation.calibration]
            print(f"[pipeline] test {label}: intrada {' '.join(args)}", flush=True)
            self._intrada(args)
        metrics = json.loads((out / "metrics.json").read_text())
        return {"stage": label, "mIoU": metrics["mIoU"], "metrics": str(out / "metrics.json")}

    def run(self) -> list[dict]:
        with _locked(self.run_dir), _exit_on_signals():
            steps = self.plan()
            for step in steps:  # all stale folders go before anything runs (see the module docstring)
                self.prepare(step)
            for step in steps:
                if step.action != "skip":
                    self.run_step(step)
            test_config = write_text(self.run_dir / "test_config.yaml", yaml.safe_dump(self.test_config, sort_keys=False))
            rows = [self.evaluate(e, test_config) for e in self.evaluations]
            table = format_table(rows)
            print(table)
            write_json(self.run_dir / "summary.json", rows)
            write_text(self.run_dir / "summary.md", table + "\n")
            print(f"[pipeline] summary written to {self.run_dir / 'summary.md'}")
            return rows

    def _intrada(self, args: list[str]) -> None:
        run_supervised([*self.intrada, *args], self.grace_s)


def run_supervised(argv: list[str], grace_s: float = GRACE_S) -> None:
    """Run ``argv`` to its end as a child that does not outlive this process: any exception
    while waiting (the SystemExit of :func:`_exit_on_signals`, KeyboardInterrupt) stops it
    first. A failing child raises CalledProcessError."""
    child = subprocess.Popen(argv, preexec_fn=_die_with_parent())
    try:
        code = child.wait()
    except BaseException:
        print(f"[pipeline] stopping pid {child.pid}: {' '.join(argv)}", file=sys.stderr, flush=True)
        try:
            child.terminate()
            child.wait(grace_s)
        except subprocess.TimeoutExpired:
            pass
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        raise
    if code:
        raise subprocess.CalledProcessError(code, argv)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when this process dies (Linux
    only: elsewhere None, and a child outlives a killed pipeline)."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGKILL))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


@contextmanager
def _exit_on_signals() -> Iterator[None]:
    """SIGTERM and SIGINT raise SystemExit(128 + signal), the status a shell reports for a
    signal, so that the running child is stopped on the way out."""

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/pipeline.lock`` (``flock``, dropped by the kernel when its holder dies),
    with the holder's pid in it; :class:`PipelineError` if another process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise PipelineError(f"{run_dir} is in use by another intrada pipeline (pid {holder}, holding {path})") from None
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield


def fingerprint(config: dict) -> str:
    """sha256 of the config as ``stage_config.yaml`` holds it (keys sorted: only values count)."""
    return hashlib.sha256(_dump(config).encode()).hexdigest()


def _dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=True)


def _read_yaml(path: Path) -> dict | None:
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def _done_fingerprint(path: Path) -> str | None:
    """The fingerprint in ``DONE``; "" for an earlier version's ``DONE``, None without one."""
    if not path.is_file():
        return None
    words = path.read_text().split()
    return words[words.index("sha256") + 1] if "sha256" in words[:-1] else ""


def _changes(old: dict | None, new: dict) -> str:
    """The dotted keys whose values differ, with both values."""
    if old is None:
        return "stage_config.yaml is missing, so which keys changed is unknown"
    before, after = _flatten(old), _flatten(new)
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k, _ABSENT) != after.get(k, _ABSENT))
    if not keys:
        return "stage_config.yaml was edited after the stage ran, so which keys changed is unknown"
    return ", ".join(f"{k}: {_short(before.get(k, _ABSENT))} -> {_short(after.get(k, _ABSENT))}" for k in keys)


_ABSENT = object()


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _short(value: Any, limit: int = 60) -> str:
    text = "(absent)" if value is _ABSENT else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _set(config: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested config, creating levels as needed."""
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def format_table(rows: list[dict]) -> str:
    """A Markdown table, mIoU per evaluated stage."""
    width = max(len("stage"), *(len(r["stage"]) for r in rows))
    lines = [f"| {'stage':<{width}} | mIoU (%) |", f"|{'-' * (width + 2)}|----------|"]
    lines += [f"| {r['stage']:<{width}} | {r['mIoU']:8.2f} |" for r in rows]
    return "\n".join(lines)
