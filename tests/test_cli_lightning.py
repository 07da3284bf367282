"""The Lightning commands (intrada_pl/cli/lightning.py): the run's default loggers and callbacks
are settings like any other (issue 16 item 5): ``--print_config`` shows them, a config replaces
or switches them off, ``callbacks+:`` adds to them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from helpers import fit_config, write_yaml
from intrada_pl.callbacks import SegmentationPanels, StopOnSignal
from intrada_pl.cli import main
from intrada_pl.cli.lightning import TrainingCLI
from intrada_pl.loggers import CSVLogger

REPO = Path(__file__).resolve().parents[1]


def printed_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_shows_the_run_defaults_with_their_settings(capsys):
    trainer = printed_config(capsys, "fit", "--config", str(REPO / "configs" / "inter_gta5.yaml"))["trainer"]

    csv, wandb = trainer["logger"]
    assert csv["class_path"] == "intrada_pl.loggers.CSVLogger"
    assert csv["init_args"]["save_dir"] is None and csv["init_args"]["version"] == "logs"  # <run>/logs/metrics.csv
    assert wandb["class_path"] == "intrada_pl.loggers.WandbLogger"
    assert wandb["init_args"]["save_dir"] is None and wandb["init_args"]["project"] == "intrada_pl" and wandb["init_args"]["name"] is None
    assert [c["class_path"] for c in trainer["callbacks"]] == [
        "intrada_pl.callbacks.ModelCheckpoint",
        "intrada_pl.callbacks.ModelCheckpoint",
        "lightning.pytorch.callbacks.LearningRateMonitor",
        "intrada_pl.callbacks.SegmentationPanels",
    ]
    best, last, monitor, panels = (c["init_args"] for c in trainer["callbacks"])
    assert (best["monitor"], best["mode"], best["filename"], best["dirpath"]) == ("val/mIoU", "max", "best-{step}", None)
    assert (last["monitor"], last["save_last"], last["dirpath"]) == (None, "link", None)
    assert monitor["logging_interval"] is None
    assert (panels["every_n_validations"], panels["num_images"]) == (1, 4)


def test_ranking_and_validation_get_the_loggers_but_no_training_checkpoints(capsys):
    rank = printed_config(capsys, "predict", "--config", str(REPO / "configs" / "rank_gta5.yaml"))["trainer"]
    assert [c["class_path"] for c in rank["callbacks"]] == ["intrada_pl.stages.ranking.RankingCallback"]
    assert [logger["class_path"] for logger in rank["logger"]] == ["intrada_pl.loggers.CSVLogger", "intrada_pl.loggers.WandbLogger"]
    validate = printed_config(capsys, "validate", "--config", str(REPO / "configs" / "inter_gta5.yaml"))["trainer"]
    assert not validate["callbacks"]


@pytest.fixture
def trainers(monkeypatch) -> list:
    """The Trainers the CLI builds, as they run."""
    built = []
    original = TrainingCLI.instantiate_trainer

    def recording(self, **kwargs):
        built.append(original(self, **kwargs))
        return built[-1]

    monkeypatch.setattr(TrainingCLI, "instantiate_trainer", recording)
    return built


def fit(toy_root, run_dir: Path, *args: str, **trainer) -> None:
    """Two iterations of a config that names no loggers or callbacks (the run's defaults), with ``trainer`` on top."""
    config = fit_config(toy_root, run_dir)
    del config["trainer"]["logger"], config["trainer"]["callbacks"]
    config["trainer"].update(max_steps=2, val_check_interval=2, **trainer)
    main(["fit", "--config", write_yaml(run_dir.parent / f"{run_dir.name}.yaml", config), *args])


def kinds(trainer) -> list[type]:
    return [type(c) for c in trainer.callbacks]


def test_logger_false_runs_without_loggers_and_keeps_the_checkpoints(toy_root, tmp_path, trainers):
    run_dir = tmp_path / "run"
    fit(toy_root, run_dir, logger=False)  # Lightning refuses a LearningRateMonitor without a logger

    (trainer,) = trainers
    assert trainer.loggers == []
    assert LearningRateMonitor not in kinds(trainer) and SegmentationPanels not in kinds(trainer)
    assert StopOnSignal in kinds(trainer)
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {"best-step=2.ckpt", "last.ckpt"}
    assert not (run_dir / "logs").exists() and not (run_dir / "wandb").exists()


def test_a_config_without_the_wandb_logger_logs_to_csv_only(toy_root, tmp_path, trainers):
    run_dir = tmp_path / "run"
    fit(toy_root, run_dir, logger=[{"class_path": "intrada_pl.loggers.CSVLogger"}])

    (trainer,) = trainers
    assert [type(logger) for logger in trainer.loggers] == [CSVLogger]
    assert "val/mIoU" in (run_dir / "logs" / "metrics.csv").read_text()  # save_dir null: the run folder
    assert not (run_dir / "wandb").exists()
    assert LearningRateMonitor in kinds(trainer) and SegmentationPanels in kinds(trainer)  # the run logs: they stay
    assert sum(isinstance(c, ModelCheckpoint) for c in trainer.callbacks) == 2


EXTRA = {"class_path": "intrada_pl.callbacks.ModelCheckpoint", "init_args": {"filename": "extra-{step}", "every_n_train_steps": 1, "save_top_k": -1}}


@pytest.mark.parametrize("where", ["config", "command line"])
def test_callbacks_plus_adds_a_callback_and_keeps_the_defaults(where, toy_root, tmp_path, trainers):
    run_dir = tmp_path / "run"
    extra = {**EXTRA, "init_args": {**EXTRA["init_args"], "dirpath": str(tmp_path / "extra")}}
    if where == "config":
        fit(toy_root, run_dir, logger=False, **{"callbacks+": [extra]})
    else:
        fit(toy_root, run_dir, f"--trainer.callbacks+={yaml.safe_dump(extra, default_flow_style=True).strip()}", logger=False)

    (trainer,) = trainers
    assert sum(isinstance(c, ModelCheckpoint) for c in trainer.callbacks) == 3
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} >= {"best-step=2.ckpt", "last.ckpt"}
    assert {p.name for p in (tmp_path / "extra").iterdir()} == {"extra-step=1.ckpt", "extra-step=2.ckpt"}


def test_a_config_list_of_callbacks_replaces_the_defaults(toy_root, tmp_path, trainers):
    run_dir = tmp_path / "run"
    fit(toy_root, run_dir, logger=False, callbacks=[{**EXTRA, "init_args": {**EXTRA["init_args"], "dirpath": str(tmp_path / "extra")}}])

    (trainer,) = trainers
    assert sum(isinstance(c, ModelCheckpoint) for c in trainer.callbacks) == 1 and StopOnSignal in kinds(trainer)
    assert not (run_dir / "checkpoints").exists()
    assert {p.name for p in (tmp_path / "extra").iterdir()} == {"extra-step=1.ckpt", "extra-step=2.ckpt"}


def test_enable_checkpointing_false_leaves_out_the_checkpoints(toy_root, tmp_path, trainers):
    run_dir = tmp_path / "run"
    fit(toy_root, run_dir, logger=False, enable_checkpointing=False)  # Lightning refuses a ModelCheckpoint then

    (trainer,) = trainers
    assert not any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks) and StopOnSignal in kinds(trainer)
    assert not (run_dir / "checkpoints").exists()
