"""Where ``intrada test`` writes (one folder per checkpoint and method set in its run folder, nothing
in the working directory), what its help offers, and that its files come from the evaluator's
callbacks whoever runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from helpers import eval_config, trained_segmenter, write_yaml
from intrada_pl.cli import main
from intrada_pl.data.datamodules import EvaluationDataModule
from intrada_pl.evaluation import EvaluationReport, PredictionWriter
from intrada_pl.stages.evaluation import Evaluator, checkpoint_name, output_name

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Two different released-style checkpoints, ``a.pth`` and ``b.pth``."""
    folder = tmp_path_factory.mktemp("ckpts")
    paths = {name: folder / f"{name}.pth" for name in ("a", "b")}
    for seed, path in enumerate(paths.values()):
        torch.save(trained_segmenter(seed).state_dict(), path)
    return paths


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_folder_names_say_which_checkpoint_and_methods():
    assert checkpoint_name("runs/inter_gta5/checkpoints/last.ckpt") == "inter_gta5-last"
    assert checkpoint_name("runs/inter_gta5/checkpoints/best-step=8000.ckpt") == "inter_gta5-best-step=8000"
    assert checkpoint_name("checkpoints/last.ckpt") == "last"
    assert checkpoint_name("/weights/GTA2Cityscapes_AdvEnt.pth") == "GTA2Cityscapes_AdvEnt"
    assert output_name(["runs/inter_gta5/checkpoints/last.ckpt"], ["none"]) == "inter_gta5-last"
    assert output_name(["w/advent.pth", "w/minent.pth"], ["none"]) == "advent+minent"
    assert output_name(["w/advent.pth"], ["none", "manual@0.3", "bn_adapt[layer1,-stem]"]) == "advent_none,manual@0.3,bn_adapt[layer1,-stem]"
    # a pattern's '*' or a long list: the count and a hash of the names, the same every time
    pattern = output_name(["w/advent.pth"], ["bn_adapt[*.downsample.*]"])
    assert pattern.startswith("advent_1-methods-") and len(pattern) == len("advent_1-methods-") + 8
    assert pattern == output_name(["w/advent.pth"], ["bn_adapt[*.downsample.*]"]) != output_name(["w/advent.pth"], ["bn_adapt[*.bn1]"])
    grid = [f"manual@{m / 10:g}" for m in range(11)]
    assert output_name(["w/advent.pth"], grid).startswith("advent_11-methods-")


def test_each_checkpoint_and_method_set_gets_its_own_folder(toy_root, checkpoints, tmp_path):
    """Issue 18.12: every evaluation wrote into the run's one folder, so a second checkpoint's
    metrics.json replaced the first's and old predictions stayed beside new ones."""
    config = eval_config(toy_root)
    config["trainer"]["default_root_dir"] = str(tmp_path / "run")
    test = ["test", "--config", write_yaml(tmp_path / "t.yaml", config)]
    main([*test, "--ckpt", str(checkpoints["a"])])
    main([*test, "--ckpt", str(checkpoints["b"]), "--save_predictions"])
    main([*test, "--ckpt", str(checkpoints["a"]), "--method", "none", "--calibration", "bn_adapt"])  # --calibration: the older name
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["a", "a_none,bn_adapt", "b"]
    assert _metrics(run / "a")["checkpoints"] == [str(checkpoints["a"])] and _metrics(run / "a")["methods"] == ["none"]
    assert _metrics(run / "b")["checkpoints"] == [str(checkpoints["b"])] and _metrics(run / "b")["mIoU"] != _metrics(run / "a")["mIoU"]
    assert _metrics(run / "a_none,bn_adapt")["methods"] == ["none", "bn_adapt"]
    assert len(list((run / "b" / "predictions" / "labelIds").rglob("*.png"))) == 4
    assert not (run / "a" / "predictions").exists()


def test_a_config_may_name_the_methods_by_the_older_key(toy_root, checkpoints, tmp_path):
    config = {**eval_config(toy_root), "calibration": ["none", "manual@0.5"], "output": str(tmp_path / "out")}  # configs/demo/calib_test.yaml
    main(["test", "--config", write_yaml(tmp_path / "t.yaml", config), "--ckpt", str(checkpoints["a"])])
    assert _metrics(tmp_path / "out")["methods"] == ["none", "manual@0.5"]


def test_help_offers_method_and_no_fit_checkpoint_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["test", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "--method" in out and "--ckpt" in out
    for absent in ("--calibration", "--ckpt_path", '"best"', '"last"', "--optimizer"):
        assert absent not in out, absent
    with pytest.raises(SystemExit):
        main(["calibrate-layers", "--help"])
    assert "--method" in capsys.readouterr().out


def test_a_plain_trainer_gets_the_files_too(toy_root, checkpoints, tmp_path):
    """The report and the prediction writer come with the evaluator (configure_callbacks)."""
    evaluator = Evaluator([str(checkpoints["a"])], save_predictions=True, methods=["none", "bn_adapt"])
    data = EvaluationDataModule(dataset="cityscapes", root=str(toy_root / "Cityscapes"), size=(64, 32), num_workers=0)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))
    trainer.test(evaluator, datamodule=data)
    assert {PredictionWriter, EvaluationReport} <= {type(c) for c in trainer.callbacks}
    folder = tmp_path / "a_none,bn_adapt"
    assert evaluator.output_folder() == folder
    assert _metrics(folder)["results"]["cityscapes"]["bn_adapt"]["num_images"] == 4
    assert (folder / "confusion.json").is_file() and (folder / "reliability_cityscapes_bn_adapt.png").is_file()
    assert len(list((folder / "predictions" / "bn_adapt" / "labelIds").rglob("*.png"))) == 4


@pytest.mark.system
def test_test_without_a_config_writes_into_its_run_folder_only(toy_root, checkpoints, tmp_path):
    """Without --config, Lightning's default logger left lightning_logs/ in the working directory."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "intrada_pl.cli", "test", "--ckpt", str(checkpoints["a"]), "--data.root", str(toy_root / "Cityscapes"),
         "--data.size", "[64,32]", "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.listdir(tmp_path) == ["runs"]
    run = tmp_path / "runs" / "test"
    assert _metrics(run / "a")["checkpoints"] == [str(checkpoints["a"])]
    assert (run / "logs" / "metrics.csv").is_file() and (run / "wandb").is_dir()


def test_sliding_window_inference_with_a_window_as_large_as_the_image_is_whole_image(toy_root, tmp_path):
    """--model.sliding_window: the same metrics as whole-image inference when one window covers the
    image; smaller windows evaluate too."""
    from intrada_pl.models import DeepLabV2

    ckpt = tmp_path / "model.pth"
    torch.manual_seed(0)
    torch.save(DeepLabV2(19, depth=18).state_dict(), ckpt)
    config = write_yaml(tmp_path / "test.yaml", eval_config(toy_root))
    runs = {}
    for name, extra in (("whole", []), ("one_window", ["--model.sliding_window", "[32, 64]"]), ("windows", ["--model.sliding_window", "[24, 24]"])):
        main(["test", "--config", config, "--ckpt", str(ckpt), "--output", str(tmp_path / name), *extra])
        runs[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert runs["one_window"]["IoU"] == runs["whole"]["IoU"]
    assert 0 <= runs["windows"]["mIoU"] <= 100
