"""Where ``intrada test`` writes (one folder per checkpoint and method set in its run folder, nothing
in the working directory), what its help offers, and that its files come from the evaluator's
callbacks whoever runs it; the prediction files: exact PNG label ids for JPEG inputs, names that are
not UTF-8 refused before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch import Trainer

from helpers import eval_config, trained_segmenter, write_yaml
from intrada_pl.cli import main
from intrada_pl.data import labels as L
from intrada_pl.data import layouts
from intrada_pl.data.datamodules import EvaluationDataModule
from intrada_pl.data.datasets import WildDash2
from intrada_pl.models.deeplabv2 import DeepLabV2
from intrada_pl.evaluation import EvaluationReport, PredictionWriter
from intrada_pl.stages.evaluation import Evaluator, checkpoint_name, output_name

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def checkpoints(deeplab_pth, tmp_path_factory) -> dict[str, Path]:
    """Two different released-style checkpoints, ``a.pth`` and ``b.pth``."""
    folder = tmp_path_factory.mktemp("ckpts")
    paths = {name: folder / f"{name}.pth" for name in ("a", "b")}
    shutil.copy(deeplab_pth, paths["a"])
    torch.save(trained_segmenter(1).state_dict(), paths["b"])
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
def test_test_without_a_config_writes_into_its_run_folder_only(toy_root, checkpoints, tmp_path, offline_wandb):
    """Without --config, Lightning's default logger left lightning_logs/ in the working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "intrada_pl.cli", "test", "--ckpt", str(checkpoints["a"]), "--data.root", str(toy_root / "Cityscapes"),
         "--data.size", "[64,32]", "--data.num_workers", "0", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false"],
        cwd=cwd, env={**os.environ, "WANDB_SILENT": "true"}, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.listdir(cwd) == ["runs"]
    run = cwd / "runs" / "test"
    assert _metrics(run / "a")["checkpoints"] == [str(checkpoints["a"])]
    assert (run / "logs" / "metrics.csv").is_file() and (run / "wandb").is_dir()


def test_sliding_window_inference_with_a_window_as_large_as_the_image_is_whole_image(toy_root, tmp_path):
    """--model.sliding_window: the same metrics as whole-image inference when one window covers the
    image; smaller windows evaluate too."""
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


# ----------------------------------------------------------------------------------- predictions
def test_save_predictions_on_jpeg_input_writes_exact_png_label_ids(tmp_path):
    root = tmp_path / "wd2"
    rng = np.random.default_rng(0)
    names = ["at0000_000001", "at0000_000002"]
    for name in names:
        cats = rng.choice([7, 8, 11, 21, 23, 26, 52, 75], (48, 96)).astype(np.uint8)
        layouts.write_wilddash2(root, name, rng.integers(0, 256, (48, 96, 3), dtype=np.uint8), cats, release="v2.0")
    torch.manual_seed(0)
    model = DeepLabV2(19, depth=18, preprocessing="imagenet").train()
    with torch.no_grad():   # real BN statistics, so the prediction is not one class everywhere
        model(torch.rand(2, 3, 32, 64) * 255)
    torch.save(model.eval().state_dict(), tmp_path / "source.pth")
    config = {"trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False},
              "data": {"dataset": "wilddash2", "root": str(root), "size": [64, 32], "num_workers": 0}}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    main(["test", "--config", str(tmp_path / "t.yaml"), "--ckpt", str(tmp_path / "source.pth"), "--output", str(out),
          "--save_predictions"])

    label_ids = sorted((out / "predictions" / "labelIds").iterdir())
    assert [p.name for p in label_ids] == [f"{n}.png" for n in names]
    assert sorted(p.name for p in (out / "predictions" / "color").iterdir()) == [f"{n}.png" for n in names]
    ds = WildDash2(root)
    confmat = np.zeros((19, 19), np.int64)
    for i, path in enumerate(label_ids):
        ids = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert ids.dtype == np.uint8 and ids.shape == (48, 96)
        assert set(np.unique(ids).tolist()) <= set(L.TRAIN_ID_TO_CITYSCAPES_ID.values())
        pred = L.ID_TO_TRAIN_ID_LUT[ids]
        color = cv2.cvtColor(cv2.imread(str(out / "predictions" / "color" / path.name)), cv2.COLOR_BGR2RGB)
        assert (color == L.colorize(pred)).all()
        gt = ds.read_label(i)
        valid = gt != 255
        confmat += np.bincount(gt[valid].astype(np.int64) * 19 + pred[valid], minlength=19 * 19).reshape(19, 19)
    assert len(np.unique(L.ID_TO_TRAIN_ID_LUT[ids])) > 1
    # the files hold exactly what was scored: their IoUs are metrics.json's
    tp = np.diag(confmat)
    union = confmat.sum(0) + confmat.sum(1) - tp
    metrics = json.loads((out / "metrics.json").read_text())
    for c, name in enumerate(L.CLASS_NAMES):
        expected = None if union[c] == 0 else round(100 * tp[c] / union[c], 2)
        assert metrics["IoU"][name] == pytest.approx(expected), name


@pytest.mark.system
def test_save_predictions_refuses_a_name_that_is_not_utf8_before_writing(toy_root, deeplab_pth, tmp_path):
    """``intrada test --save_predictions`` crashed (exit 139, nothing written): now one line at
    dataset setup, exit 2, and no prediction folder begun."""
    root = Path(shutil.copytree(toy_root / "Cityscapes", tmp_path / "Cityscapes"))
    image = min(root.glob("leftImg8bit/val/*/*.png"))
    label = min(root.glob("gtFine/val/*/*_labelIds.png"))
    bad = image.with_name(os.fsdecode(b"\xff\xfe_leftImg8bit.png"))
    shutil.copy(image, bad)
    shutil.copy(label, label.with_name(os.fsdecode(b"\xff\xfe_gtFine_labelIds.png")))
    config = write_yaml(tmp_path / "test.yaml", eval_config(tmp_path))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "INTRADA_TRACEBACK"}
    done = subprocess.run([sys.executable, "-m", "intrada_pl.cli", "test", "--config", config, "--ckpt", str(deeplab_pth),
                           "--save_predictions", "--output", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("intrada: error: ")]
    assert repr(os.fsencode(bad)) in line and "not valid UTF-8" in line
    assert not (out / "predictions").exists()
