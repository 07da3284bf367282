"""``intrada pipeline --seeds``: every stage once per seed, and a summary of mean +- sample std
over seeds with a rule that says whether a difference between stages exceeds the seed spread.

The end-to-end runs start a tiny Python script instead of ``intrada fit|predict|test`` (as
tests/test_pipeline_supervision.py does): its "checkpoint" (``trained.json`` beside a finished
``last.ckpt``) records the stage and the ``seed_everything`` it was trained with, and its "evaluation" turns them into a known mIoU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import write_yaml
from intrada_pl.pipeline import LOCK_FILE, Pipeline, PipelineError, aggregate, compare, format_seeds, parse_seeds

FAKE_INTRADA = '''
"""intrada fit|predict --config C: a finished checkpoint (finished.ckpt beside this file) and
trained.json beside it, naming the stage and seed; intrada test: mIoU from them."""
import json, shutil, sys
from pathlib import Path
import yaml

command, args = sys.argv[1], sys.argv[2:]
if command == "test":
    trained = json.loads(Path(args[args.index("--ckpt") + 1]).with_name("trained.json").read_text())
    out = Path(args[args.index("--output") + 1])
    out.mkdir(parents=True)
    miou = 40.0 + 2.0 * trained["seed"] + {"source_only": 0.0, "inter": 5.0}[trained["stage"]]
    (out / "metrics.json").write_text(json.dumps({"mIoU": miou}))
else:
    config_path = Path(args[args.index("--config") + 1])
    config = yaml.safe_load(config_path.read_text())
    (config_path.parent / "checkpoints").mkdir()
    trained = {"stage": config_path.parent.name, "seed": config["seed_everything"]}
    shutil.copy(Path(__file__).with_name("finished.ckpt"), config_path.parent / "checkpoints" / "last.ckpt")
    (config_path.parent / "checkpoints" / "trained.json").write_text(json.dumps(trained))
'''


def stage_rows(values: dict[str, list[float]], seed_index: int) -> list[dict]:
    return [{"stage": name, "mIoU": per_seed[seed_index], "metrics": f"{name}/{seed_index}"} for name, per_seed in values.items()]


def test_aggregate_gives_mean_sample_std_and_per_seed_values():
    values = {"a": [40.0, 42.0, 44.0], "b": [45.0, 46.0, 47.0], "c": [41.0, 43.0, 45.0]}
    summary = aggregate({seed: stage_rows(values, i) for i, seed in enumerate([7, 8, 9])})
    assert summary["seeds"] == [7, 8, 9]
    assert "ddof=1" in summary["statistics"]
    stages = summary["stages"]
    assert [s["stage"] for s in stages] == ["a", "b", "c"]
    # a: mean 42, sum of squares 4 + 0 + 4 = 8 over n - 1 = 2 -> std 2 (ddof=0 would give 1.633)
    assert [(s["mean"], s["std"], s["n"]) for s in stages] == [(42.0, 2.0, 3), (46.0, 1.0, 3), (43.0, 2.0, 3)]
    assert stages[1]["per_seed"] == [
        {"seed": 7, "mIoU": 45.0, "metrics": "b/0"}, {"seed": 8, "mIoU": 46.0, "metrics": "b/1"}, {"seed": 9, "mIoU": 47.0, "metrics": "b/2"},
    ]
    # Each stage vs the first, then vs the previous one (b's previous is the first: listed once).
    comparisons = summary["comparisons"]
    assert [(c["stage"], c["baseline"]) for c in comparisons] == [("b", "a"), ("c", "a"), ("c", "b")]
    assert [c["diff"] for c in comparisons] == [4.0, 1.0, -3.0]
    # 2 * sqrt(std_a^2/3 + std_b^2/3): sqrt(4/3 + 1/3) = 1.2910, sqrt(4/3 + 4/3) = 1.6330
    assert [c["two_se"] for c in comparisons] == pytest.approx([2.5820, 3.2660, 2.5820], abs=1e-4)
    assert [c["exceeds"] for c in comparisons] == [True, False, True]  # |-3| counts too


def test_spread_rule_is_strict_and_weighs_each_side_by_its_own_n():
    base = {"stage": "a", "mean": 10.0, "std": 3.0, "n": 9}  # std^2 / n = 1
    assert compare(base, {"stage": "b", "mean": 12.0, "std": 0.0, "n": 9}) == {
        "stage": "b", "baseline": "a", "diff": 2.0, "two_se": 2.0, "exceeds": False,  # |diff| == 2 SE: not beyond
    }
    assert compare(base, {"stage": "b", "mean": 7.9, "std": 0.0, "n": 9})["exceeds"] is True
    two_sided = compare({"stage": "a", "mean": 0.0, "std": 2.0, "n": 4}, {"stage": "b", "mean": 2.9, "std": 3.0, "n": 9})
    assert two_sided["two_se"] == pytest.approx(2 * 2**0.5) and two_sided["exceeds"] is True  # 2.9 > 2.83
    assert compare(base, {"stage": "b", "mean": 10.0, "std": 0.0, "n": 9})["exceeds"] is False


def test_summary_markdown():
    summary = aggregate({seed: stage_rows({"source_only": [40.0, 42.0], "inter": [45.0, 47.5]}, i) for i, seed in enumerate([0, 1])})
    text = format_seeds(summary)
    assert text.startswith("mIoU (%) over 2 seeds (0, 1): mean ± sample std (ddof=1), then each seed\n\n")
    assert (
        "| stage       |   mean ± std | seed 0 | seed 1 |\n"
        "|-------------|--------------|--------|--------|\n"
        "| source_only | 41.00 ± 1.41 |  40.00 |  42.00 |\n"
        "| inter       | 46.25 ± 1.77 |  45.00 |  47.50 |\n"
    ) in text
    assert "|diff| > 2 * SE, SE = sqrt(std_a^2/n_a + std_b^2/n_b)" in text and "With n = 2 seeds this is a rough screen" in text
    assert text.endswith(
        "| stage | vs          |  diff | 2 SE | exceeds the seed spread |\n"
        "|-------|-------------|-------|------|-------------------------|\n"
        "| inter | source_only | +5.25 | 3.20 | yes                     |"
    )


def test_seeds_are_checked():
    assert parse_seeds("0, 1,2") == [0, 1, 2] and parse_seeds("-3") == [-3]
    for bad in ("0,x", "0,,1", ""):
        with pytest.raises(PipelineError, match="--seeds takes comma-separated integers"):
            parse_seeds(bad)
    with pytest.raises(PipelineError, match=r"--seeds must be a non-empty list of distinct integers, got \[1, 1\]"):
        parse_seeds("1,1")


@pytest.fixture
def fake(tmp_path) -> str:
    path = tmp_path / "fake_intrada.py"
    path.write_text(FAKE_INTRADA)
    torch.save({"global_step": 4}, tmp_path / "finished.ckpt")  # the stages' max_steps: a finished fit
    return str(path)


def pipeline_yaml(tmp_path: Path, **extra) -> Path:
    """source_only -> inter (starts from source_only's checkpoint), both evaluated."""
    stage = write_yaml(tmp_path / "stage.yaml", {"seed_everything": 1234, "trainer": {"max_steps": 4}})
    spec = {
        "run_dir": str(tmp_path / "runs"),
        **extra,
        "stages": [
            {"name": "source_only", "command": "fit", "config": stage},
            {"name": "inter", "command": "fit", "config": stage, "links": {"model.init_args.segmenter.init_args.pretrained": "source_only.checkpoint"}},
        ],
        "test": {"config": write_yaml(tmp_path / "test.yaml", {"data": {"root": "x"}}), "stages": ["source_only", "inter"]},
    }
    return Path(write_yaml(tmp_path / "pipeline.yaml", spec))


@pytest.mark.system
def test_two_seeds_run_every_stage_per_seed_and_summarise(tmp_path, fake, capsys, offline_wandb):
    p = Pipeline.from_yaml(pipeline_yaml(tmp_path, seeds=[3, 5]))
    p.intrada = [sys.executable, fake]
    summary = p.run()
    runs = tmp_path / "runs"
    for seed in (3, 5):
        for name in ("source_only", "inter"):
            resolved = yaml.safe_load((runs / f"seed_{seed}" / name / "stage_config.yaml").read_text())
            assert resolved["seed_everything"] == seed  # the seed wins over the stage config's 1234
            assert resolved["trainer"]["default_root_dir"] == str(runs / f"seed_{seed}" / name)
            assert (runs / f"seed_{seed}" / name / "DONE").is_file()
        inter = yaml.safe_load((runs / f"seed_{seed}" / "inter" / "stage_config.yaml").read_text())
        assert inter["model"]["init_args"]["segmenter"]["init_args"]["pretrained"] == str(runs / f"seed_{seed}" / "source_only" / "checkpoints" / "last.ckpt")
        assert [r["stage"] for r in json.loads((runs / f"seed_{seed}" / "summary.json").read_text())] == ["source_only", "inter"]
    assert not (runs / "source_only").exists() and sorted(runs.glob(f"**/{LOCK_FILE}")) == [runs / LOCK_FILE]

    # The fake's mIoU: 40 + 2 * seed (+ 5 for inter): source_only 46, 50; inter 51, 55.
    on_disk = json.loads((runs / "summary.json").read_text())
    assert on_disk == summary and on_disk["seeds"] == [3, 5]
    std = pytest.approx(8**0.5)  # sqrt((2^2 + 2^2) / (2 - 1))
    assert [(s["stage"], s["mean"], s["std"]) for s in on_disk["stages"]] == [("source_only", 48.0, std), ("inter", 53.0, std)]
    assert [(r["seed"], r["mIoU"], r["metrics"]) for r in on_disk["stages"][1]["per_seed"]] == [
        (3, 51.0, str(runs / "seed_3" / "inter" / "test" / "metrics.json")), (5, 55.0, str(runs / "seed_5" / "inter" / "test" / "metrics.json")),
    ]
    # diff 5 vs 2 * sqrt(8/2 + 8/2) = 5.66: within the spread
    assert on_disk["comparisons"] == [{"stage": "inter", "baseline": "source_only", "diff": 5.0, "two_se": pytest.approx(32**0.5), "exceeds": False}]
    assert (runs / "summary.md").read_text() == format_seeds(summary) + "\n"
    out = capsys.readouterr().out
    assert "| inter       | 53.00 ± 2.83 |  51.00 |  55.00 |" in out and "[pipeline] seed_5/inter: intrada fit" in out
    assert len(list((runs / "wandb").glob("offline-run-*"))) == 1

    p.run()  # everything done: skipped per seed, evaluations kept
    assert capsys.readouterr().out.count("done, skipped") == 4
    run_id = (runs / "wandb" / "run_id").read_text().strip()  # one summary run, continued (offline: a folder per pipeline)
    assert [path.name.split("-")[3] for path in (runs / "wandb").glob("offline-run-*")] == [run_id, run_id]  # offline-run-<time>-<id>[-n]


@pytest.mark.system
def test_one_seed_keeps_the_plain_layout(tmp_path, fake):
    p = Pipeline.from_yaml(pipeline_yaml(tmp_path, seeds=[3]))
    p.intrada = [sys.executable, fake]
    rows = p.run()
    runs = tmp_path / "runs"
    assert yaml.safe_load((runs / "inter" / "stage_config.yaml").read_text())["seed_everything"] == 3
    assert json.loads((runs / "summary.json").read_text()) == rows and [r["mIoU"] for r in rows] == [46.0, 51.0]
    assert not list(runs.glob("seed_*")) and not (runs / "wandb").exists()


def test_command_line_seeds_win_and_bad_seeds_are_one_error(tmp_path, monkeypatch, capsys):
    from intrada_pl.cli import dispatch as cli

    config = str(pipeline_yaml(tmp_path, seeds=[0, 1]))
    ran = []
    monkeypatch.setattr(Pipeline, "run", lambda self: ran.append(self.seeds))
    cli.main(["pipeline", "--config", config])
    cli.main(["pipeline", "--config", config, "--seeds", "4,5,6"])
    assert ran == [[0, 1], [4, 5, 6]]

    monkeypatch.setattr(sys, "argv", ["intrada", "pipeline", "--config", config, "--seeds", "2,2"])
    with pytest.raises(SystemExit) as exit_:
        cli.run()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "intrada: error: --seeds must be a non-empty list of distinct integers, got [2, 2]\n"
    bad = pipeline_yaml(tmp_path, seeds="0,1")
    with pytest.raises(PipelineError, match=rf"{bad}: seeds must be a non-empty list of distinct integers, got '0,1'"):
        Pipeline.from_yaml(bad)


def test_demo_seeds_config_is_the_demo_over_three_seeds(monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])  # the demo configs name their files from the repository root
    demo, seeds = (Pipeline.from_yaml(f"configs/demo/{name}") for name in ("pipeline.yaml", "pipeline_seeds.yaml"))
    assert seeds.seeds == [0, 1, 2] and demo.seeds == []
    assert (seeds.stages, seeds.evaluations, seeds.test_config) == (demo.stages, demo.evaluations, demo.test_config)
    assert seeds.run_dir == Path("runs/demo_seeds") != demo.run_dir



SEEDING_INTRADA = '''
"""A stage or test whose config names no seed, seeded as LightningCLI seeds it (seed_everything()):
records the seed and Lightning's warnings in seeding.jsonl beside this file, then writes a finished
fit's checkpoint or a test's metrics."""
import json, shutil, sys, warnings
from pathlib import Path
from lightning.fabric.utilities.seed import seed_everything

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    seed = seed_everything(workers=True)
here, command, args = Path(sys.argv[0]).parent, sys.argv[1], sys.argv[2:]
with open(here / "seeding.jsonl", "a") as log:
    log.write(json.dumps({"command": command, "seed": seed, "warnings": [str(w.message) for w in caught]}) + "\\n")
if command == "test":
    out = Path(args[args.index("--output") + 1])
    out.mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps({"mIoU": 50.0}))
else:
    checkpoints = Path(args[args.index("--config") + 1]).parent / "checkpoints"
    checkpoints.mkdir()
    shutil.copy(here / "finished.ckpt", checkpoints / "last.ckpt")
'''


@pytest.mark.system
def test_children_without_a_seed_run_with_seed_0_without_a_warning(tmp_path, fake, monkeypatch):
    """Before: every stage or test whose config names no seed warned "No seed found" (11 times in a pipeline)."""
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    stage = write_yaml(tmp_path / "stage.yaml", {"trainer": {"max_steps": 4}})
    spec = {"run_dir": str(tmp_path / "runs"), "stages": [{"name": "source_only", "command": "fit", "config": stage}],
            "test": {"config": write_yaml(tmp_path / "test.yaml", {"data": {"root": "x"}}), "stages": ["source_only"]}}
    (tmp_path / "seeding_intrada.py").write_text(SEEDING_INTRADA)
    p = Pipeline.from_yaml(write_yaml(tmp_path / "pipeline.yaml", spec))
    p.intrada = [sys.executable, str(tmp_path / "seeding_intrada.py")]
    p.run()
    children = [json.loads(line) for line in (tmp_path / "seeding.jsonl").read_text().splitlines()]
    assert children == [{"command": "fit", "seed": 0, "warnings": []}, {"command": "test", "seed": 0, "warnings": []}]
