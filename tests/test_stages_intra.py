"""Stage 3 (IntraDA, intrada_pl/stages/intra.py) on a generated easy/hard split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import fit_config, write_yaml
from intrada_pl.cli import main
from intrada_pl.models import DeepLabV2
from intrada_pl.data.datasets import Cityscapes
from intrada_pl.io import write_png, write_text
from intrada_pl.stages.intra import IntraDomainModule


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
