"""Released ADVENT / IntraDA weights (a bare DeepLabV2 ``state_dict()`` saved as ``.pth``) work
wherever our Lightning checkpoints do: the entropy ranking (`intrada predict --ckpt_path`, what
`make rank CKPT=...` runs), `intrada fit --model.init_args.pretrained`, the calibration stage's
``init_ckpt`` and `intrada test --ckpt`; a file that is no checkpoint is one clear error."""

from __future__ import annotations

import json

import cv2
import lightning as L
import numpy as np
import pytest
import torch

from helpers import stage_args
from intrada_pl.cli import main, run
from intrada_pl.models import DeepLabV2, load_segmenter
from intrada_pl.optim import Poly
from intrada_pl.models.weights import CheckpointMismatchError, load_pretrained, read_state_dict
from intrada_pl.stages.calibration import CalibrationModule
from intrada_pl.stages.segmentation import SegmentationModule
from helpers import eval_config, fit_config, write_yaml
from test_ranking import rank_args, save_checkpoint

CALIBRATION = "intrada_pl.stages.calibration.CalibrationModule"


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A depth-18, 19-class DeepLabV2 in the released layout, BN statistics non-trivial."""
    torch.manual_seed(0)
    model = DeepLabV2(19, depth=18)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("released") / "GTA2Cityscapes_AdvEnt.pth"
    torch.save(model.state_dict(), path)
    assert "pytorch-lightning_version" not in torch.load(path, weights_only=True)
    return path


@pytest.fixture(scope="module")
def ours(released):
    """The released weights in our Lightning checkpoint format (hyperparameters as `intrada fit` writes them)."""
    module = SegmentationModule(DeepLabV2(depth=18))
    module.model.load_state_dict(torch.load(released, weights_only=True))
    return save_checkpoint(module, released.with_name("inter.ckpt"))


def test_fit_starts_from_the_released_weights(released, toy_root, tmp_path):
    """Two steps at learning rate 0: every parameter, heads included, is still the file's (the BN
    running statistics move with the batches, as in the reference's training)."""
    config = fit_config(toy_root, tmp_path, pretrained=str(released), lr=0.0)
    config["trainer"]["max_steps"] = 2
    main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])
    trained, theirs = read_state_dict(tmp_path / "checkpoints" / "last.ckpt"), read_state_dict(released)
    assert trained.keys() == theirs.keys()
    parameters = [name for name, _ in DeepLabV2(19, depth=18).named_parameters()]
    assert "layer6.conv2d_list.0.weight" in parameters
    assert all(torch.equal(trained[k], theirs[k]) for k in parameters)


def test_ranking_with_the_released_file_equals_ranking_with_our_checkpoint(released, ours, toy_root, tmp_path):
    for name, ckpt in (("pth", released), ("ckpt", ours)):
        main(rank_args(toy_root, ckpt, tmp_path / name))
    pth, ckpt = tmp_path / "pth" / "ranking", tmp_path / "ckpt" / "ranking"
    assert (pth / "easy.txt").read_text().splitlines() and (pth / "hard.txt").read_text().splitlines()
    for name in ("scores.csv", "easy.txt", "hard.txt"):
        assert (pth / name).read_text() == (ckpt / name).read_text(), name
    labels = sorted(p.relative_to(pth) for p in (pth / "pseudo_labels").rglob("*.png"))
    assert len(labels) == len((pth / "easy.txt").read_text().splitlines())
    assert labels == sorted(p.relative_to(ckpt) for p in (ckpt / "pseudo_labels").rglob("*.png"))
    assert all((pth / rel).read_bytes() == (ckpt / rel).read_bytes() for rel in labels)
    assert json.loads((pth / "summary.json").read_text())["checkpoint"] == str(released)
    assert json.loads((ckpt / "summary.json").read_text())["checkpoint"] == str(ours)


def test_test_gives_the_same_miou_for_both_files(released, ours, toy_root, tmp_path):
    config = write_yaml(tmp_path / "test.yaml", eval_config(toy_root))
    metrics = {}
    for name, ckpt in (("pth", released), ("ckpt", ours)):
        main(["test", "--config", config, "--ckpt", str(ckpt), "--output", str(tmp_path / name)])
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["pth"]["mIoU"] == metrics["ckpt"]["mIoU"] and metrics["pth"]["IoU"] == metrics["ckpt"]["IoU"]


def test_calibration_starts_from_the_released_weights(released, toy_root, tmp_path):
    config = fit_config(toy_root, tmp_path, stage=CALIBRATION, init_ckpt=str(released), hidden_dim=16, warmup_steps=0)
    config["trainer"]["max_steps"] = 2
    main(["fit", "--config", write_yaml(tmp_path / "calib.yaml", config)])
    model, info = load_segmenter(tmp_path / "checkpoints" / "last.ckpt")
    assert info.calibration == "instcal_u" and model.depth == 18 and info.preprocessing == "caffe_bgr"  # read off the weights
    calibrated, theirs = model.state_dict(), read_state_dict(released)
    assert any("strength" in k for k in set(calibrated) - set(theirs))  # the learned strengths come on top
    kept = [k for k in theirs if not k.endswith("num_batches_tracked")]  # not a CalibratedBatchNorm buffer
    assert all(torch.equal(calibrated[k], theirs[k]) for k in kept)  # everything else frozen, BN statistics too


def test_validate_takes_the_released_file_too(released, ours, toy_root, tmp_path, capsys):
    config = write_yaml(tmp_path / "fit.yaml", fit_config(toy_root, tmp_path))
    tables = []
    for ckpt in (released, ours):
        main(["validate", "--config", config, "--ckpt_path", str(ckpt)])
        tables.append([line for line in capsys.readouterr().out.splitlines() if "val/" in line])
    assert any("val/mIoU" in line for line in tables[0]) and tables[0] == tables[1]


def test_pretrained_warns_about_other_preprocessing_and_refuses_a_calibrated_checkpoint(released, tmp_path):
    with pytest.warns(UserWarning, match="preprocessing='caffe_bgr'"):
        load_pretrained(DeepLabV2(19, depth=18, preprocessing="imagenet"), released)
    module = CalibrationModule(str(released), lr_scheduler=Poly(1))
    path = tmp_path / "calibrated.ckpt"
    torch.save({"pytorch-lightning_version": L.__version__, "state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    with pytest.raises(CheckpointMismatchError, match="instcal_u calibration checkpoint"):
        load_pretrained(DeepLabV2(19, depth=18), path)


# ------------------------------------------------------------------------------ bad files
def _bad_file(kind: str, directory, released) -> str:
    path = directory / {"text": "notes.pth", "random": "random.pth", "png": "image.png",
                        "truncated": "truncated.pth", "not_deeplab": "other.pth"}[kind]
    if kind == "text":
        path.write_text("model_120000.pth\n")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "png":
        cv2.imwrite(str(path), np.zeros((8, 8, 3), np.uint8))
    elif kind == "truncated":
        data = released.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"conv.weight": torch.zeros(4, 3, 1, 1)}, path)
    return str(path)


def _commands(path: str, toy_root, tmp_path) -> dict[str, list[str]]:
    fit = fit_config(toy_root, tmp_path, pretrained=path)
    calib = fit_config(toy_root, tmp_path, stage=CALIBRATION, init_ckpt=path)
    return {
        "rank": rank_args(toy_root, path, tmp_path / "rank"),
        "test": ["test", "--config", write_yaml(tmp_path / "test.yaml", eval_config(toy_root)), "--ckpt", path],
        "fit": ["fit", "--config", write_yaml(tmp_path / "fit.yaml", fit)],
        "calibrate": ["fit", "--config", write_yaml(tmp_path / "calib.yaml", calib)],
    }


def _console(monkeypatch, capsys, args: list[str]) -> str:
    """Run the console script; return its error message after checking exit status 2."""
    monkeypatch.delenv("INTRADA_TRACEBACK", raising=False)
    monkeypatch.setattr("sys.argv", ["intrada", *args])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "weights_only=False" not in err
    (message,) = [line for line in err.splitlines() if line.startswith("intrada: error: ")]
    return message


@pytest.mark.parametrize("kind", ["text", "random", "png", "truncated", "not_deeplab"])
def test_ranking_refuses_a_file_that_is_no_checkpoint(kind, released, toy_root, tmp_path, monkeypatch, capsys):
    path = _bad_file(kind, tmp_path, released)
    err = _console(monkeypatch, capsys, _commands(path, toy_root, tmp_path)["rank"])
    assert path in err and "expected a Lightning checkpoint (.ckpt)" in err and "DeepLabV2 state dict (.pth)" in err
    assert not (tmp_path / "rank" / "ranking").exists()


@pytest.mark.parametrize("command", ["test", "fit", "calibrate"])
def test_every_command_refuses_a_file_that_is_no_checkpoint(command, released, toy_root, tmp_path, monkeypatch, capsys):
    path = _bad_file("random", tmp_path, released)
    err = _console(monkeypatch, capsys, _commands(path, toy_root, tmp_path)[command])
    assert path in err and "not a readable PyTorch checkpoint" in err


def test_fit_ckpt_path_points_a_state_dict_to_pretrained(released, toy_root, tmp_path, monkeypatch, capsys):
    config = write_yaml(tmp_path / "fit.yaml", fit_config(toy_root, tmp_path))
    err = _console(monkeypatch, capsys, ["fit", "--config", config, "--ckpt_path", str(released)])
    assert str(released) in err and f"--model.init_args.segmenter.init_args.pretrained {released}" in err
