"""``intrada pipeline``: the whole method in one command, resumable stage by stage.

A pipeline YAML lists stages (a stage = an ``intrada fit`` or ``intrada predict`` config) and
how each one takes the previous ones' outputs (``links``), then which checkpoints to evaluate.
Every stage writes under ``<run_dir>/<stage>/``: the pipeline rewrites the stage config so that
its checkpoints, logs and ranking land there, saves the resolved config beside them and runs it
in a fresh process. A finished stage leaves ``DONE`` and is skipped next time; an interrupted
fit stage resumes from its ``last.ckpt``. The last step prints one table, mIoU per stage.

Dataset roots are the only paths a user edits (YAML anchors keep them in one place).
Outputs a link can name: ``<stage>.checkpoint`` (``checkpoints/last.ckpt`` of a fit stage) and
``<stage>.ranking`` (the ``ranking/`` folder of a ranking stage).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from intrada_pl.io import write_json, write_text

CHECKPOINT_CLASS = "lightning.pytorch.callbacks.ModelCheckpoint"
RANKING_CLASS = "intrada_pl.stages.ranking.RankingCallback"


@dataclass
class Stage:
    name: str
    command: str  # "fit" or "predict"
    config: str
    links: dict[str, str] = field(default_factory=dict)  # dotted config key -> "<stage>.<output>"
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted config key -> value
    checkpoint_from: str | None = None  # predict stages: whose checkpoint to run (``--ckpt_path``)


@dataclass
class Evaluation:
    stage: str
    calibration: str | None = None


@dataclass
class Pipeline:
    run_dir: Path
    stages: list[Stage]
    test_config: str
    evaluations: list[Evaluation]

    @classmethod
    def from_yaml(cls, path: str | Path) -> Pipeline:
        spec = yaml.safe_load(Path(path).read_text())
        stages = [Stage(**item) for item in spec["stages"]]
        names = [s.name for s in stages]
        for stage in stages:
            sources = list(stage.links.values()) + ([f"{stage.checkpoint_from}.checkpoint"] if stage.checkpoint_from else [])
            for source in sources:
                if source.split(".")[0] not in names[: names.index(stage.name)]:
                    raise ValueError(f"stage {stage.name!r}: {source} does not name an earlier stage")
        run_dir = Path(spec["run_dir"])
        test = spec["test"]
        evaluations = [Evaluation(**e) if isinstance(e, dict) else Evaluation(e) for e in test["stages"]]
        test_config = _resolved_test_config(test["config"], test.get("overrides", {}), run_dir)
        return cls(run_dir, stages, test_config, evaluations)

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
            if callback.get("class_path") == CHECKPOINT_CLASS:
                callback.setdefault("init_args", {})["dirpath"] = str(out / "checkpoints")
            elif callback.get("class_path") == RANKING_CLASS:
                callback.setdefault("init_args", {})["output_dir"] = str(out)
        for key, source in stage.links.items():
            _set(config, key, self.output(source))
        for key, value in stage.overrides.items():
            _set(config, key, value)
        return config

    def run_stage(self, stage: Stage) -> None:
        out = self.stage_dir(stage.name)
        if (out / "DONE").is_file():
            print(f"[pipeline] {stage.name}: done, skipped ({out})")
            return
        config_path = write_text(out / "stage_config.yaml", yaml.safe_dump(self.resolve(stage), sort_keys=False))
        args = [stage.command, "--config", str(config_path)]
        if stage.checkpoint_from:
            args += ["--ckpt_path", self.output(f"{stage.checkpoint_from}.checkpoint")]
        elif stage.command == "fit" and (out / "checkpoints" / "last.ckpt").exists():
            args += ["--ckpt_path", str(out / "checkpoints" / "last.ckpt")]
            print(f"[pipeline] {stage.name}: resuming from {out / 'checkpoints' / 'last.ckpt'}")
        print(f"[pipeline] {stage.name}: intrada {' '.join(args)}", flush=True)
        subprocess.run([sys.executable, "-m", "intrada_pl.cli", *args], check=True)
        write_text(out / "DONE", "finished\n")

    def evaluate(self, evaluation: Evaluation) -> dict:
        label = evaluation.stage + (f"+{evaluation.calibration}" if evaluation.calibration else "")
        out = self.stage_dir(evaluation.stage) / ("test" if not evaluation.calibration else f"test_{evaluation.calibration}")
        if not (out / "metrics.json").is_file():
            args = ["test", "--config", self.test_config, "--ckpt", self.output(f"{evaluation.stage}.checkpoint"), "--output", str(out)]
            if evaluation.calibration:
                args += ["--calibration", evaluation.calibration]
            print(f"[pipeline] test {label}: intrada {' '.join(args)}", flush=True)
            subprocess.run([sys.executable, "-m", "intrada_pl.cli", *args], check=True)
        metrics = json.loads((out / "metrics.json").read_text())
        return {"stage": label, "mIoU": metrics["mIoU"], "metrics": str(out / "metrics.json")}

    def run(self) -> list[dict]:
        for stage in self.stages:
            self.run_stage(stage)
        rows = [self.evaluate(e) for e in self.evaluations]
        table = format_table(rows)
        print(table)
        write_json(self.run_dir / "summary.json", rows)
        write_text(self.run_dir / "summary.md", table + "\n")
        print(f"[pipeline] summary written to {self.run_dir / 'summary.md'}")
        return rows


def _resolved_test_config(path: str, overrides: dict[str, Any], run_dir: Path) -> str:
    """The test config with the shared test overrides applied, saved in the run directory."""
    config = yaml.safe_load(Path(path).read_text())
    for key, value in overrides.items():
        _set(config, key, value)
    return str(write_text(run_dir / "test_config.yaml", yaml.safe_dump(config, sort_keys=False)))


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
