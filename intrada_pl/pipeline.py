"""``intrada pipeline``: the whole method in one command, resumable stage by stage.

A pipeline YAML lists stages (a stage = an ``intrada fit`` or ``intrada predict`` config) and
how each one takes the previous ones' outputs (``links``, ``checkpoint_from``), then which
checkpoints to evaluate. Every stage writes under ``<run_dir>/<stage>/``: the pipeline rewrites
the stage config so that its checkpoints, logs and ranking land there (a predict stage's
``checkpoint_from`` becomes its ``ckpt_path``), saves this resolved config as
``stage_config.yaml`` (keys sorted) and runs it in a child process. The last step prints one
table, mIoU per stage.

Dataset roots are the only paths a user sets: the YAML names them once, ``roots: {gta5:
data/GTA5, ...}``, stages and the test take them as links (``roots.gta5``), and ``intrada pipeline
--root gta5=/data/GTA5`` (repeatable) sets one without editing the YAML. Before anything runs,
the roots that a stage to run or a test to run reads must be folders. Outputs a link can name:
``<stage>.checkpoint`` (``checkpoints/last.ckpt`` of a fit stage) and ``<stage>.ranking`` (the
``ranking/`` folder of a predict stage with a ranking callback).

The YAML is checked as it is read, so that a mistake stops the pipeline before its first stage
trains, not when its turn comes (:class:`PipelineError`, one line): its shape, each stage's keys,
name (a folder name in ``run_dir``, used once), command (``fit`` or ``predict``) and links (to an
earlier stage's output, or a root), the tested stages (fit stages of the pipeline); a stage's
config file is checked when the pipeline is planned.

What runs again. A stage's fingerprint is the sha256 of its ``stage_config.yaml`` text. That
file is written just before the stage starts, so it records the config its checkpoints were
made under; a stage that finishes leaves ``DONE`` holding the fingerprint too. Before starting
anything the pipeline plans every stage, in order (:meth:`Pipeline.plan`):

- a stage that links to a stage that will run (the reason is named) runs again from scratch;
- ``DONE`` with the current fingerprint: skipped, unless the stage's outputs say it did not
  finish (:meth:`Pipeline.unfinished`: a fit stage's ``checkpoints/last.ckpt`` gone, or short of
  its ``trainer.max_steps`` as earlier versions left a stage stopped by SIGTERM; a ranking
  stage's ``ranking/`` gone): then it runs again from scratch;
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

A stage is marked ``DONE`` when its child exits 0 and its outputs show it finished; a child
that exits 0 without them is refused (:class:`PipelineError`, not marked done), and one that
fails stops the pipeline, which exits with its status (``intrada fit`` stopped by SIGTERM:
143, having saved ``last.ckpt``, which the next run resumes).

Supervision. ``run_dir/pipeline.lock`` is held (``flock``) while a pipeline runs: a second one
on the same folder fails at once, naming the holder's pid; the kernel drops the lock when its
holder dies, so it is never stale. SIGTERM or SIGINT stop the running child, a stage or an
``intrada test`` (SIGTERM, then SIGKILL after ``grace_s``), and end the pipeline with status
128 + the signal's number. On Linux a child also gets SIGKILL when the pipeline dies without
cleaning up (SIGKILL, ``PR_SET_PDEATHSIG``); other systems lack that, so there a child
outlives a killed pipeline (the lock needs POSIX ``fcntl``: no Windows).

Seeds. A stage or test whose config names no seed runs with seed 0, Lightning's own default,
given to it as ``PL_GLOBAL_SEED`` (otherwise each such child warns "No seed found").
``seeds: [0, 1, 2]`` in the pipeline YAML (or ``intrada pipeline --seeds 0,1,2``, which
wins) runs every stage once per seed, in ``<run_dir>/seed_<s>/<stage>/``: each seed is a
single-seed pipeline of its own (links resolve within it; its own ``summary.md``), whose
stages get ``seed_everything: <s>`` in their resolved config (after ``overrides``), so each
seed has its own fingerprints. All seeds are planned before anything runs, under the one
``<run_dir>/pipeline.lock``. ``<run_dir>/summary.md`` and ``summary.json`` then give, per
evaluated stage, the mean and the sample std (ddof=1) over seeds and every seed's mIoU, and
compare each stage with the first and with the previous one (:func:`compare`); a W&B run
gets the same tables (:func:`log_to_wandb`). One seed keeps the plain layout (``<run_dir>/<stage>/``,
one table) and only sets ``seed_everything``; no seeds leaves the stage configs' own.
"""

from __future__ import annotations

import copy
import ctypes
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from intrada_pl.errors import BadInputError
from intrada_pl.io import write_json, write_text
from intrada_pl.runs import folder_run_id, yaml_kind

CHECKPOINT_CLASSES = ("lightning.pytorch.callbacks.ModelCheckpoint", "intrada_pl.callbacks.ModelCheckpoint")
COMMANDS = ("fit", "predict")
OUTPUTS = {"checkpoint": "fit", "ranking": "predict"}  # what a link can name -> the command of the stages that write it
ROOTS = "roots"  # links to a dataset root: roots.<name>
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # a folder name: no "..", no "/", no "." (links split at it)
STAGE_KEYS = ("name", "command", "config", "links", "overrides", "checkpoint_from")
RANKING_CLASSES = ("intrada_pl.stages.ranking.RankingCallback", "intrada_pl.ranking.RankingCallback", "intrada_pl.ranking.callback.RankingCallback")
LOCK_FILE = "pipeline.lock"
GRACE_S = 30.0  # how long a stopped child may take to exit after SIGTERM: to end its batch and save last.ckpt
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class PipelineError(BadInputError, ValueError):
    """A pipeline YAML, or a run, that the pipeline refuses (the console script prints it as
    ``intrada: error: ...``)."""


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
        return {source.split(".")[0] for source in sources} - {ROOTS}

    @property
    def roots(self) -> list[str]:
        """The dataset roots this one reads."""
        return _roots_of(self.links)


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
    seeds: list[int] = field(default_factory=list)  # one run per seed (module docstring); empty: the configs' own
    roots: dict[str, str] = field(default_factory=dict)  # dataset root name -> folder
    test_links: dict[str, str] = field(default_factory=dict)  # test config key -> roots.<name>
    intrada: list[str] = field(default_factory=lambda: [sys.executable, "-m", "intrada_pl.cli"])  # runs a stage
    grace_s: float = GRACE_S
    label: str = ""  # printed before stage names: "seed_1/" for one seed of a multi-seed run

    @classmethod
    def from_yaml(cls, path: str | Path, roots: Mapping[str, str] | None = None) -> Pipeline:
        """The pipeline of a YAML, checked (module docstring); ``roots`` (``--root``) replace
        roots that the YAML names."""
        where = str(path)
        spec = yaml.safe_load(Path(path).read_text())
        if spec is None:
            raise PipelineError(f"{where} is empty: a pipeline needs run_dir, stages and test")
        if not isinstance(spec, dict):
            raise PipelineError(f"{where} must be a mapping with run_dir, stages and test, got {yaml_kind(spec)}")
        missing = [key for key in ("run_dir", "stages", "test") if key not in spec]
        if missing:
            raise PipelineError(f"{where}: run_dir, stages and test are needed, {', '.join(missing)} missing")
        seeds = check_seeds(spec["seeds"], f"{where}: seeds") if "seeds" in spec else []
        all_roots = {str(name): str(folder) for name, folder in (spec.get(ROOTS) or {}).items()}
        for name in roots or {}:
            if name not in all_roots:
                raise PipelineError(f"{where}: --root {name}: no such root; roots: {', '.join(sorted(all_roots)) or '(none)'}")
        all_roots.update(roots or {})
        stages = check_stages(spec["stages"], all_roots, where)
        test = spec["test"]
        if not isinstance(test, dict) or not {"config", "stages"} <= set(test) or not isinstance(test["stages"], list):
            raise PipelineError(f"{where}: test must be a mapping with config (an intrada test config) and stages (a list), got {test!r}")
        evaluations = check_evaluations(test["stages"], stages, where)
        test_links = test.get("links", {})
        for link in test_links.values():
            _check_root_link(link, all_roots, f"{where}: test")
        test_config = yaml.safe_load(Path(test["config"]).read_text())
        for key, value in test.get("overrides", {}).items():
            _set(test_config, key, value)
        return cls(Path(spec["run_dir"]), stages, test_config, evaluations, seeds, all_roots, test_links)

    def per_seed(self) -> list[Pipeline]:
        """The single-seed pipelines this one runs: itself with fewer than two seeds, otherwise
        one per seed in ``<run_dir>/seed_<s>``."""
        if len(self.seeds) < 2:
            return [self]
        return [replace(self, run_dir=self.run_dir / f"seed_{s}", seeds=[s], label=f"seed_{s}/") for s in self.seeds]

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def output(self, link: str) -> str:
        """What a (checked) link names: a dataset root, or a stage's output."""
        name, kind = link.split(".", 1)
        if name == ROOTS:
            return self.roots[kind]
        return str(self.stage_dir(name) / ("checkpoints/last.ckpt" if kind == "checkpoint" else kind))

    def resolve(self, stage: Stage) -> dict:
        """The stage's config with its outputs under ``<run_dir>/<stage>`` and its links filled in."""
        if not Path(stage.config).is_file():
            raise PipelineError(f"stage {stage.name!r}: its config {stage.config} does not exist")
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
            elif callback.get("class_path") in RANKING_CLASSES:
                callback.setdefault("init_args", {})["output_dir"] = str(out)
        for key, source in stage.links.items():
            _set(config, key, self.output(source))
        if stage.checkpoint_from:
            config["ckpt_path"] = self.output(f"{stage.checkpoint_from}.checkpoint")
        for key, value in stage.overrides.items():
            _set(config, key, value)
        if len(self.seeds) == 1:
            config["seed_everything"] = self.seeds[0]
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
                return self._done(stage, config, "done (no config recorded), skipped")
            if "ckpt_path" in config:
                saved.setdefault("ckpt_path", config["ckpt_path"])
            done = fingerprint(saved)
        if done is not None:
            if done == fingerprint(config):
                return self._done(stage, config, "done, skipped")
            return Step(stage, config, "rerun", f"config changed ({_changes(saved, config)}), runs from scratch")
        last = out / "checkpoints" / "last.ckpt"
        if stage.command == "fit" and last.exists():
            if saved is not None and fingerprint(saved) == fingerprint(config):
                return Step(stage, config, "resume", f"resumes from {last}")
            return Step(stage, config, "refuse", (
                f"stage {stage.name!r}: {last} was made under another config ({_changes(saved, config)}); "
                f"delete {out} to start the stage over, or restore its config to resume"))
        return Step(stage, config, "run", "runs")

    def _done(self, stage: Stage, config: dict, reason: str) -> Step:
        """Skip a stage marked done, unless it did not finish: then it runs again from scratch
        (its evaluations, of what it had reached, go with its folder)."""
        unfinished = self.unfinished(stage, config)
        if unfinished is None:
            return Step(stage, config, "skip", reason)
        return Step(stage, config, "rerun", f"not finished although marked done ({unfinished}), runs from scratch")

    def unfinished(self, stage: Stage, config: dict) -> str | None:
        """Why the stage's outputs say it has not finished, or None: a fit stage's ``last.ckpt``
        must exist and hold the config's ``trainer.max_steps`` iterations (if it sets them), a
        predict stage with a ranking callback must have written ``ranking/``."""
        out = self.stage_dir(stage.name)
        trainer = config.get("trainer") or {}
        if stage.command == "fit":
            last = out / "checkpoints" / "last.ckpt"
            if not last.is_file():
                return f"{last} is missing"
            step, max_steps = _global_step(last), trainer.get("max_steps") or -1
            if step is None:
                return f"{last} is no readable Lightning checkpoint"
            return f"{last} is at iteration {step} of {max_steps}" if step < max_steps else None
        ranking = out / "ranking"
        if any(c.get("class_path") in RANKING_CLASSES for c in trainer.get("callbacks") or []) and not ranking.is_dir():
            return f"{ranking} is missing"
        return None

    def prepare(self, step: Step) -> None:
        """Say what happens to the stage; move a stale stage folder aside."""
        name, out = self.label + step.stage.name, self.stage_dir(step.stage.name)
        print(f"[pipeline] {name}: {step.reason}" + (f" ({out})" if step.action == "skip" else ""))
        if step.action == "rerun" and out.exists():
            previous = out.with_name(f"{out.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            out.rename(previous)
            print(f"[pipeline] {name}: previous outputs moved to {previous}")

    def run_step(self, step: Step) -> None:
        name, out = self.label + step.stage.name, self.stage_dir(step.stage.name)
        config_path = write_text(out / "stage_config.yaml", _dump(step.config))
        args = [step.stage.command, "--config", str(config_path)]
        if step.action == "resume":
            args += ["--ckpt_path", str(out / "checkpoints" / "last.ckpt")]
        print(f"[pipeline] {name}: intrada {' '.join(args)}", flush=True)
        self._intrada(args)
        unfinished = self.unfinished(step.stage, step.config)
        if unfinished is not None:
            raise PipelineError(f"stage {name!r}: intrada {step.stage.command} exited 0 but {unfinished}; not marked done")
        write_text(out / "DONE", f"finished\nsha256 {fingerprint(step.config)}\n")

    def resolved_test_config(self) -> dict:
        """The test config with its links (dataset roots) filled in."""
        config = copy.deepcopy(self.test_config)
        for key, link in self.test_links.items():
            _set(config, key, self.output(link))
        return config

    def check_roots(self, plans: Iterable[tuple[Pipeline, list[Step]]]) -> None:
        """Every dataset root that a stage to run or a test to run reads is a folder: a missing
        one is refused before anything starts, not when its stage's turn comes."""
        readers: dict[str, list[str]] = {}
        for run, steps in plans:
            for step in steps:
                for name in step.stage.roots if step.action != "skip" else ():
                    readers.setdefault(name, []).append(run.label + step.stage.name)
            if any(not (run.evaluation_dir(e) / "metrics.json").is_file() for e in run.evaluations):
                for name in _roots_of(run.test_links):
                    readers.setdefault(name, []).append(f"{run.label}test")
        missing = [name for name in self.roots if name in readers and not Path(self.roots[name]).is_dir()]
        if missing:
            folders = "; ".join(f"{name}: {self.roots[name]} (read by {', '.join(dict.fromkeys(readers[name]))})" for name in missing)
            raise PipelineError(f"dataset roots that are no folders: {folders}; set them under roots: in the pipeline YAML "
                                f"or with {' '.join(f'--root {name}=DIR' for name in missing)}")

    def evaluation_dir(self, evaluation: Evaluation) -> Path:
        return self.stage_dir(evaluation.stage) / ("test" if not evaluation.calibration else f"test_{evaluation.calibration}")

    def evaluate(self, evaluation: Evaluation, test_config: Path) -> dict:
        label = evaluation.stage + (f"+{evaluation.calibration}" if evaluation.calibration else "")
        out = self.evaluation_dir(evaluation)
        if not (out / "metrics.json").is_file():
            args = ["test", "--config", str(test_config), "--ckpt", self.output(f"{evaluation.stage}.checkpoint"), "--output", str(out)]
            if evaluation.calibration:
                args += ["--calibration", evaluation.calibration]
            print(f"[pipeline] test {self.label}{label}: intrada {' '.join(args)}", flush=True)
            self._intrada(args)
        metrics = json.loads((out / "metrics.json").read_text())
        return {"stage": label, "mIoU": metrics["mIoU"], "metrics": str(out / "metrics.json")}

    def evaluate_all(self, test_config: Path) -> list[dict]:
        """Every evaluation, as a table in ``summary.md`` and ``summary.json``."""
        rows = [self.evaluate(e, test_config) for e in self.evaluations]
        write_json(self.run_dir / "summary.json", rows)
        write_text(self.run_dir / "summary.md", format_table(rows) + "\n")
        return rows

    def run(self) -> list[dict] | dict:
        """Every stage of every seed, then the evaluations; returns the summary (the rows of the
        table with fewer than two seeds, :func:`aggregate`'s dict otherwise)."""
        os.environ.setdefault("WANDB_RUN_GROUP", self.run_dir.name)  # the stages' W&B runs as one group
        os.environ.setdefault("PL_GLOBAL_SEED", "0")  # the seed of a child whose config names none (module docstring)
        with _locked(self.run_dir), _exit_on_signals():
            plans = [(run, run.plan()) for run in self.per_seed()]
            self.check_roots(plans)
            for run, steps in plans:  # all stale folders go before anything runs (see the module docstring)
                for step in steps:
                    run.prepare(step)
            for run, steps in plans:
                for step in steps:
                    if step.action != "skip":
                        run.run_step(step)
            test_config = write_text(self.run_dir / "test_config.yaml", yaml.safe_dump(self.resolved_test_config(), sort_keys=False))
            results = [run.evaluate_all(test_config) for run, _ in plans]
            if len(results) == 1:
                summary: list[dict] | dict = results[0]
                table = format_table(summary)
            else:
                summary = aggregate(dict(zip(self.seeds, results)))
                table = format_seeds(summary)
                write_json(self.run_dir / "summary.json", summary)
                write_text(self.run_dir / "summary.md", table + "\n")
            print(table)
            print(f"[pipeline] summary written to {self.run_dir / 'summary.md'}")
            if len(results) > 1:
                log_to_wandb(summary, self.run_dir)
            return summary

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


def _global_step(checkpoint: Path) -> int | None:
    """The iteration a Lightning checkpoint holds (None: unreadable); memory-mapped, so its
    tensors are not read."""
    try:
        return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:  # whatever torch.load trips over (a truncated file, another format): no iteration to read
        return None


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


def check_stages(items: Any, roots: Mapping[str, str], where: str) -> list[Stage]:
    """The stages of a pipeline YAML (``stages:``), each checked against those before it."""
    if not isinstance(items, list) or not items:
        raise PipelineError(f"{where}: stages must be a non-empty list of stages, got {yaml_kind(items)}")
    stages: dict[str, Stage] = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "name" not in item:
            raise PipelineError(f"{where}: stages[{i}] needs a name")
        context = f"{where}: stage {item['name']!r}"
        stage = _stage(item, context)
        if stage.name in stages:
            raise PipelineError(f"{context} is named twice: stage names are folder names, one per stage")
        for link in stage.links.values():
            _check_link(link, stages, roots, context, f"link {link!r}")
        if stage.checkpoint_from is not None:
            _check_link(f"{stage.checkpoint_from}.checkpoint", stages, roots, context, "checkpoint_from")
        stages[stage.name] = stage
    return list(stages.values())


def _stage(item: dict, context: str) -> Stage:
    unknown = [key for key in item if key not in STAGE_KEYS]
    if unknown:
        raise PipelineError(f"{context}: unknown key {', '.join(map(str, unknown))}; a stage has {', '.join(STAGE_KEYS)}")
    missing = [key for key in ("command", "config") if key not in item]
    if missing:
        raise PipelineError(f"{context}: {' and '.join(missing)} missing")
    if not isinstance(item["name"], str) or not STAGE_NAME.fullmatch(item["name"]) or item["name"] == ROOTS:
        raise PipelineError(f"{context}: a stage name is a folder name in run_dir: letters, digits, _ and -, not {ROOTS!r}")
    if item["command"] not in COMMANDS:
        raise PipelineError(f"{context}: command must be {' or '.join(COMMANDS)}, got {item['command']!r}")
    return Stage(**item)


def _check_link(link: Any, earlier: Mapping[str, Stage], roots: Mapping[str, str], context: str, what: str) -> None:
    """A link (``what``, for messages) names a root, or an output of an earlier stage that such a stage writes."""
    name, _, kind = str(link).partition(".")
    if name == ROOTS:
        return _check_root_link(link, roots, context)
    if name not in earlier:
        raise PipelineError(f"{context}: {name} does not name an earlier stage")
    if kind not in OUTPUTS:
        raise PipelineError(f"{context}: unknown output {kind!r} in {what}; known: {', '.join(OUTPUTS)}")
    if earlier[name].command != OUTPUTS[kind]:
        raise PipelineError(f"{context}: {what}: only a {OUTPUTS[kind]} stage writes a {kind}, {name} is a {earlier[name].command} stage")


def _check_root_link(link: Any, roots: Mapping[str, str], context: str) -> None:
    name, _, root = str(link).partition(".")
    if name != ROOTS or root not in roots:
        raise PipelineError(f"{context}: link {link!r}: no such root; roots: {', '.join(sorted(roots)) or '(none)'}")


def _roots_of(links: Mapping[str, str]) -> list[str]:
    """The dataset roots that ``links`` name."""
    return [link.partition(".")[2] for link in links.values() if link.partition(".")[0] == ROOTS]


def check_evaluations(items: list, stages: list[Stage], where: str) -> list[Evaluation]:
    """The evaluations of ``test: stages:`` (a stage, or ``{stage, calibration}``), of fit stages of
    the pipeline: a test reads a stage's checkpoint."""
    commands = {stage.name: stage.command for stage in stages}
    evaluations = []
    for item in items:
        if isinstance(item, dict) and not ("stage" in item and set(item) <= {"stage", "calibration"}):
            raise PipelineError(f"{where}: test: {item!r}: an evaluation is a stage, or stage: and calibration:")
        evaluation = Evaluation(**item) if isinstance(item, dict) else Evaluation(item)
        if evaluation.stage not in commands:
            raise PipelineError(f"{where}: test: stage {evaluation.stage!r} is no stage of this pipeline")
        if commands[evaluation.stage] != "fit":
            raise PipelineError(f"{where}: test: stage {evaluation.stage!r} is a {commands[evaluation.stage]} stage: only fit stages have a checkpoint to test")
        evaluations.append(evaluation)
    return evaluations


def parse_roots(items: Iterable[str]) -> dict[str, str]:
    """``--root NAME=DIR`` (repeatable), as a mapping."""
    roots = {}
    for item in items:
        name, eq, folder = item.partition("=")
        if not (eq and name and folder):
            raise PipelineError(f"--root takes NAME=DIR, such as gta5=/data/GTA5, got {item!r}")
        roots[name] = folder
    return roots


def check_seeds(seeds: Any, where: str) -> list[int]:
    """``seeds`` if it is a non-empty list of distinct integers; else :class:`PipelineError` naming ``where``."""
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise PipelineError(f"{where} must be a non-empty list of distinct integers, got {seeds!r}")
    return seeds


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2``."""
    words = text.split(",")
    if not all(re.fullmatch(r"\s*-?\d+\s*", w) for w in words):
        raise PipelineError(f"--seeds takes comma-separated integers such as 0,1,2, got {text!r}")
    return check_seeds([int(w) for w in words], "--seeds")


SPREAD_RULE = ("a difference of means exceeds the seed-to-seed spread when |diff| > 2 * SE, "
               "SE = sqrt(std_a^2/n_a + std_b^2/n_b) (Welch's standard error of the difference)")


def aggregate(results: dict[int, list[dict]]) -> dict:
    """Per evaluated stage, the mean, sample std (ddof=1) and per-seed mIoU over the seeds of
    ``results`` (seed -> the table rows of that seed, the same stages in the same order), and
    each stage compared with the first one and with the previous one (:func:`compare`)."""
    seeds = list(results)
    names = [row["stage"] for row in results[seeds[0]]]
    stages = []
    for i, name in enumerate(names):
        per_seed = [{"seed": seed, "mIoU": results[seed][i]["mIoU"], "metrics": results[seed][i].get("metrics")} for seed in seeds]
        values = [r["mIoU"] for r in per_seed]
        stages.append({"stage": name, "mean": statistics.mean(values), "std": statistics.stdev(values), "n": len(values), "per_seed": per_seed})
    pairs = [(0, i) for i in range(1, len(stages))] + [(i - 1, i) for i in range(2, len(stages))]
    comparisons = [compare(stages[a], stages[b]) for a, b in sorted(pairs, key=lambda p: (p[1], p[0]))]
    return {"seeds": seeds, "statistics": "mean and sample standard deviation (ddof=1) over seeds", "rule": SPREAD_RULE,
            "stages": stages, "comparisons": comparisons}


def compare(baseline: dict, stage: dict) -> dict:
    """``stage``'s mean minus ``baseline``'s, and whether it exceeds the seed spread (:data:`SPREAD_RULE`).
    With a handful of seeds this is a screen, not a test: their std is itself rough."""
    se = (baseline["std"] ** 2 / baseline["n"] + stage["std"] ** 2 / stage["n"]) ** 0.5
    diff = stage["mean"] - baseline["mean"]
    return {"stage": stage["stage"], "baseline": baseline["stage"], "diff": diff, "two_se": 2 * se, "exceeds": abs(diff) > 2 * se}


def format_table(rows: list[dict]) -> str:
    """A Markdown table, mIoU per evaluated stage."""
    return _markdown(["stage", "mIoU (%)"], [[r["stage"], f"{r['mIoU']:.2f}"] for r in rows], "lr")


def format_seeds(summary: dict) -> str:
    """:func:`aggregate`'s summary as Markdown: mean +- std and each seed's mIoU per stage, then the comparisons."""
    seeds = summary["seeds"]
    n = len(seeds)
    stages = _markdown(
        ["stage", "mean ± std", *(f"seed {s}" for s in seeds)],
        [[r["stage"], f"{r['mean']:.2f} ± {r['std']:.2f}", *(f"{p['mIoU']:.2f}" for p in r["per_seed"])] for r in summary["stages"]],
        "l" + "r" * (n + 1),
    )
    comparisons = _markdown(
        ["stage", "vs", "diff", "2 SE", "exceeds the seed spread"],
        [[c["stage"], c["baseline"], f"{c['diff']:+.2f}", f"{c['two_se']:.2f}", "yes" if c["exceeds"] else "no"] for c in summary["comparisons"]],
        "llrrl",
    )
    return (f"mIoU (%) over {n} seeds ({', '.join(map(str, seeds))}): mean ± sample std (ddof=1), then each seed\n\n{stages}\n\n"
            f"Each stage vs the first and vs the previous one: {SPREAD_RULE}. With n = {n} seeds this is a rough "
            f"screen, not a significance test.\n\n{comparisons}")


def _markdown(header: list[str], rows: list[list[str]], align: str) -> str:
    """A Markdown table padded to fit, column i left-aligned if ``align[i]`` is "l", else right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(cells, widths, align)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def log_to_wandb(summary: dict, run_dir: Path) -> None:
    """The multi-seed summary as a W&B run in ``<run_dir>/wandb``, the run folder's one
    (:func:`~intrada_pl.runs.folder_run_id`): offline unless logged in, ``WANDB_MODE`` wins (as
    :class:`intrada_pl.loggers.WandbLogger`); skipped without wandb."""
    try:
        import wandb
    except ImportError:
        print("[pipeline] wandb is not installed: no W&B summary run")
        return
    mode = os.environ.get("WANDB_MODE")
    if not mode:
        from intrada_pl.loggers import wandb_logged_in  # imports Lightning: only when needed

        mode = "online" if wandb_logged_in() else "offline"
    config = {"run_dir": str(run_dir), **{key: summary[key] for key in ("seeds", "statistics", "rule")}}
    run = wandb.init(project=os.environ.get("WANDB_PROJECT", "intrada_pl"), name=f"{run_dir.name} seeds", id=folder_run_id(run_dir),
                     resume="allow", job_type="pipeline-summary", dir=str(run_dir), mode=mode, config=config)
    seeds = summary["seeds"]
    stages = wandb.Table(columns=["stage", "mean", "std", "n", *(f"seed_{s}" for s in seeds)],
                         data=[[r["stage"], r["mean"], r["std"], r["n"], *(p["mIoU"] for p in r["per_seed"])] for r in summary["stages"]])
    comparisons = wandb.Table(columns=["stage", "vs", "diff", "two_se", "exceeds"],
                              data=[[c["stage"], c["baseline"], c["diff"], c["two_se"], c["exceeds"]] for c in summary["comparisons"]])
    run.log({"mIoU_over_seeds": stages, "comparisons": comparisons})
    for r in summary["stages"]:
        run.summary[f"{r['stage']}/mIoU_mean"] = r["mean"]
        run.summary[f"{r['stage']}/mIoU_std"] = r["std"]
    run.finish()
