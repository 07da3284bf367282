"""Stage 3 (IntraDA) on a generated easy/hard split, and the resumable one-command pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers import eval_config, fit_config, write_yaml
from intrada_pl.cli import main
from intrada_pl.models import DeepLabV2
from intrada_pl.data.datasets import Cityscapes
from intrada_pl.io import write_png, write_text
from intrada_pl.stages.intra import IntraDomainModule

REPO = Path(__file__).resolve().parents[1]


def generated_split(toy_root: Path, out: Path, num_easy: int) -> Path:
    """A ranking folder as stage 2 writes it: easy/hard lists and easy pseudo-labels (here the GT)."""
    train = Cityscapes(toy_root / "Cityscapes", split="train")
    ranking = out / "ranking"
    write_text(ranking / "easy.txt", "".join(f"{n}\n" for n in train.names[:num_easy]))
    write_text(ranking / "hard.txt", "".join(f"{n}\n" for n in train.names[num_easy:]))
    for i, name in enumerate(train.names[:num_easy]):
        write_png(ranking / "pseudo_labels" / name, train.read_label(i))
    return ranking


def intra_config(toy_root: Path, run_dir: Path, ranking: Path) -> dict:
    config = fit_config(toy_root, run_dir, stage="intrada_pl.stages.intra.IntraDomainModule", schedule_steps=10)
    config["trainer"]["max_steps"] = 2
    config["data"] = {
        "class_path": "intrada_pl.data.datamodules.SplitDataModule",
        "init_args": {
            "ranking_dir": str(ranking),
            "root": str(toy_root / "Cityscapes"),
            "size": [64, 32],
            "val_size": [64, 32],
            "batch_size": 2,
            "val_batch_size": 2,
            "num_workers": 0,
        },
    }
    return config


def test_intra_stage_trains_on_a_generated_split(toy_root, tmp_path):
    ranking = generated_split(toy_root, tmp_path, num_easy=4)
    main(["fit", "--config", write_yaml(tmp_path / "intra.yaml", intra_config(toy_root, tmp_path, ranking))])
    blob = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert blob["global_step"] == 2  # iterations: G, D_aux and D_main step as one
    assert any(k.startswith("d_main.") for k in blob["state_dict"])
    assert len(blob["optimizer_states"][0]["optimizers"]) == 3


def test_intra_with_nothing_hard_self_trains(toy_root, tmp_path):
    ranking = generated_split(toy_root, tmp_path, num_easy=6)  # lambda 1.0: hard.txt empty
    config = intra_config(toy_root, tmp_path, ranking)
    config["trainer"]["max_steps"] = 2  # iterations, whatever steps (the discriminators get no gradient)
    main(["fit", "--config", write_yaml(tmp_path / "intra.yaml", config)])
    blob = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert blob["global_step"] == 2


def test_intra_refuses_minent():
    with pytest.raises(ValueError, match="advent"):
        IntraDomainModule(DeepLabV2(depth=18), method="minent")


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


def test_pipeline_refuses_links_to_later_stages(tmp_path):
    from intrada_pl.pipeline import Pipeline

    spec = {
        "run_dir": str(tmp_path),
        "stages": [{"name": "a", "command": "fit", "config": "x.yaml", "links": {"model.init_args.segmenter.init_args.pretrained": "b.checkpoint"}}],
        "test": {"config": str(REPO / "configs" / "test_cityscapes.yaml"), "stages": ["a"]},
    }
    with pytest.raises(ValueError, match="earlier stage"):
        Pipeline.from_yaml(write_yaml(tmp_path / "p.yaml", spec))

