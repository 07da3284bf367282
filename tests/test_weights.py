"""Weights for a DeepLabV2 (intrada_pl/models/weights.py): reference, torchvision and DeepLab init
files, their architecture read off the keys, mismatches named. Released ADVENT / IntraDA weights (a
bare DeepLabV2 ``state_dict()`` saved as ``.pth``) work wherever our Lightning checkpoints do: the entropy ranking (`intrada predict --ckpt_path`, what
`make rank CKPT=...` runs), `intrada fit --model.init_args.pretrained`, the calibration stage's
``init_ckpt`` and `intrada test --ckpt`; a file that is no checkpoint is one clear error."""

from __future__ import annotations

import json

import cv2
import lightning as L
import numpy as np
import pytest
import torch
import torchvision

from intrada_pl.cli import main, run
from intrada_pl.models import DeepLabV2, infer_architecture, load_reference_checkpoint, load_segmenter
from intrada_pl.optim import Poly
from intrada_pl.models.weights import CheckpointMismatchError, load_pretrained, read_state_dict
from intrada_pl.stages.calibration import CalibrationModule
from helpers import eval_config, fit_config, write_yaml
from test_deeplabv2 import is_head, meta_model
from test_ranking import rank_args

CALIBRATION = "intrada_pl.stages.calibration.CalibrationModule"


# ---------------------------------------------------------------- files of every origin
def save(tmp_path, state, name="w.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def assert_same(model, state):
    own = model.state_dict()
    for key, value in state.items():
        torch.testing.assert_close(own[key], value, msg=key)


def test_reference_state_dict_roundtrip(tmp_path):
    src = DeepLabV2(num_classes=19, depth=18)
    path = save(tmp_path, {"state_dict": src.state_dict()})
    dst = DeepLabV2(num_classes=19, depth=18)
    assert load_reference_checkpoint(dst, path).startswith("all 136 tensors of a DeepLabV2(num_classes=19, depth=18")
    assert_same(dst, src.state_dict())
    assert load_pretrained(DeepLabV2(num_classes=19, depth=18), path).startswith("all 136 tensors")


def test_class_count_mismatch(tmp_path):
    path = save(tmp_path, DeepLabV2(num_classes=16, depth=18).state_dict())
    with pytest.raises(CheckpointMismatchError, match=r"16 classes \(layer6.conv2d_list.0.weight: 16x512x3x3\), model has 19"):
        load_reference_checkpoint(DeepLabV2(num_classes=19, depth=18), path)


def test_depth_mismatch_names_missing_keys(tmp_path):
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in meta_model(depth=50).state_dict().items()}
    path = save(tmp_path, state)
    with pytest.raises(CheckpointMismatchError, match=r"depth 50.*missing keys: layer3\.6\.conv1\.weight"):
        load_reference_checkpoint(meta_model(depth=101), path)


def test_shape_and_head_mismatches(tmp_path):
    state = DeepLabV2(num_classes=4, depth=18).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    with pytest.raises(CheckpointMismatchError, match=r"layer2.0.conv1.weight: checkpoint 128x64x1x1 vs model 128x64x3x3"):
        load_reference_checkpoint(DeepLabV2(num_classes=4, depth=18), save(tmp_path, state))
    single = DeepLabV2(num_classes=4, depth=18, multi_level=False).state_dict()
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: layer5\.conv2d_list"):
        load_reference_checkpoint(DeepLabV2(num_classes=4, depth=18), save(tmp_path, single, "s.pth"))


def test_torchvision_backbone(tmp_path):
    tv = torchvision.models.resnet50(weights=None).state_dict()
    path = save(tmp_path, tv)
    model = DeepLabV2(depth=50, preprocessing="imagenet")
    heads = {k: v.clone() for k, v in model.state_dict().items() if is_head(k)}
    assert "skipped fc" in load_pretrained(model, path)
    assert_same(model, {k: v for k, v in tv.items() if not k.startswith("fc.")})
    assert_same(model, heads)


def test_torchvision_weights_warn_on_caffe_preprocessing(tmp_path):
    path = save(tmp_path, torchvision.models.resnet18(weights=None).state_dict())
    with pytest.warns(UserWarning, match="preprocessing='imagenet'"):
        load_pretrained(DeepLabV2(depth=18), path)


def test_deeplab_init_file(tmp_path):
    """'Scale.'-prefixed keys, its own layer5 classifier, and no num_batches_tracked (PyTorch <= 0.4)."""
    src = DeepLabV2(depth=18)
    backbone = {k: v for k, v in src.state_dict().items() if not is_head(k) and "num_batches" not in k}
    state = {f"Scale.{k}": v for k, v in backbone.items()}
    state |= {f"Scale.layer5.conv2d_list.{i}.weight": torch.ones(1000, 256, 3, 3) for i in range(4)}
    model = DeepLabV2(depth=18)
    heads = {k: v.clone() for k, v in model.state_dict().items() if is_head(k)}
    assert "skipped layer5" in load_pretrained(model, save(tmp_path, state))
    assert_same(model, backbone)
    assert_same(model, heads)


def test_no_pretrained_warns():
    with pytest.warns(UserWarning, match="random init"):
        assert load_pretrained(meta_model(depth=18), None) == "random"


@pytest.mark.parametrize("kwargs", [{}, dict(num_classes=7, depth=18, multi_level=False), dict(num_classes=16, depth=50)])
def test_infer_architecture(kwargs):
    model = meta_model(**kwargs)
    arch = infer_architecture(model.state_dict())
    assert arch == dict(num_classes=model.num_classes, depth=model.depth, multi_level=model.multi_level)


# ---------------------------------------------------------------- released weights wherever our checkpoints go
def test_fit_starts_from_the_released_weights(deeplab_pth, toy_root, tmp_path):
    """Two steps at learning rate 0: every parameter, heads included, is still the file's (the BN
    running statistics move with the batches, as in the reference's training)."""
    config = fit_config(toy_root, tmp_path, pretrained=str(deeplab_pth), lr=0.0)
    config["trainer"]["max_steps"] = 2
    main(["fit", "--config", write_yaml(tmp_path / "fit.yaml", config)])
    trained, theirs = read_state_dict(tmp_path / "checkpoints" / "last.ckpt"), read_state_dict(deeplab_pth)
    assert trained.keys() == theirs.keys()
    parameters = [name for name, _ in DeepLabV2(19, depth=18).named_parameters()]
    assert "layer6.conv2d_list.0.weight" in parameters
    assert all(torch.equal(trained[k], theirs[k]) for k in parameters)


def test_ranking_with_the_released_file_equals_ranking_with_our_checkpoint(deeplab_pth, deeplab_ckpt, toy_root, tmp_path):
    assert "pytorch-lightning_version" not in torch.load(deeplab_pth, weights_only=True)  # a bare state dict
    for name, ckpt in (("pth", deeplab_pth), ("ckpt", deeplab_ckpt)):
        main(rank_args(toy_root, ckpt, tmp_path / name))
    pth, ckpt = tmp_path / "pth" / "ranking", tmp_path / "ckpt" / "ranking"
    assert (pth / "easy.txt").read_text().splitlines() and (pth / "hard.txt").read_text().splitlines()
    for name in ("scores.csv", "easy.txt", "hard.txt"):
        assert (pth / name).read_text() == (ckpt / name).read_text(), name
    labels = sorted(p.relative_to(pth) for p in (pth / "pseudo_labels").rglob("*.png"))
    assert len(labels) == len((pth / "easy.txt").read_text().splitlines())
    assert labels == sorted(p.relative_to(ckpt) for p in (ckpt / "pseudo_labels").rglob("*.png"))
    assert all((pth / rel).read_bytes() == (ckpt / rel).read_bytes() for rel in labels)
    assert json.loads((pth / "summary.json").read_text())["checkpoint"] == str(deeplab_pth)
    assert json.loads((ckpt / "summary.json").read_text())["checkpoint"] == str(deeplab_ckpt)


def test_test_gives_the_same_miou_for_both_files(deeplab_pth, deeplab_ckpt, toy_root, tmp_path):
    config = write_yaml(tmp_path / "test.yaml", eval_config(toy_root))
    metrics = {}
    for name, ckpt in (("pth", deeplab_pth), ("ckpt", deeplab_ckpt)):
        main(["test", "--config", config, "--ckpt", str(ckpt), "--output", str(tmp_path / name)])
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["pth"]["mIoU"] == metrics["ckpt"]["mIoU"] and metrics["pth"]["IoU"] == metrics["ckpt"]["IoU"]


def test_calibration_starts_from_the_released_weights(deeplab_pth, toy_root, tmp_path):
    config = fit_config(toy_root, tmp_path, stage=CALIBRATION, init_ckpt=str(deeplab_pth), hidden_dim=16, warmup_steps=0)
    config["trainer"]["max_steps"] = 2
    main(["fit", "--config", write_yaml(tmp_path / "calib.yaml", config)])
    model, info = load_segmenter(tmp_path / "checkpoints" / "last.ckpt")
    assert info.calibration == "instcal_u" and model.depth == 18 and info.preprocessing == "caffe_bgr"  # read off the weights
    calibrated, theirs = model.state_dict(), read_state_dict(deeplab_pth)
    assert any("strength" in k for k in set(calibrated) - set(theirs))  # the learned strengths come on top
    kept = [k for k in theirs if not k.endswith("num_batches_tracked")]  # not a CalibratedBatchNorm buffer
    assert all(torch.equal(calibrated[k], theirs[k]) for k in kept)  # everything else frozen, BN statistics too


def test_validate_takes_the_released_file_too(deeplab_pth, deeplab_ckpt, toy_root, tmp_path, capsys):
    config = write_yaml(tmp_path / "fit.yaml", fit_config(toy_root, tmp_path))
    tables = []
    for ckpt in (deeplab_pth, deeplab_ckpt):
        main(["validate", "--config", config, "--ckpt_path", str(ckpt)])
        tables.append([line for line in capsys.readouterr().out.splitlines() if "val/" in line])
    assert any("val/mIoU" in line for line in tables[0]) and tables[0] == tables[1]


def test_pretrained_warns_about_other_preprocessing_and_refuses_a_calibrated_checkpoint(deeplab_pth, tmp_path):
    with pytest.warns(UserWarning, match="preprocessing='caffe_bgr'"):
        load_pretrained(DeepLabV2(19, depth=18, preprocessing="imagenet"), deeplab_pth)
    module = CalibrationModule(str(deeplab_pth), lr_scheduler=Poly(1))
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
def test_ranking_refuses_a_file_that_is_no_checkpoint(kind, deeplab_pth, toy_root, tmp_path, monkeypatch, capsys):
    path = _bad_file(kind, tmp_path, deeplab_pth)
    err = _console(monkeypatch, capsys, _commands(path, toy_root, tmp_path)["rank"])
    assert path in err and "expected a Lightning checkpoint (.ckpt)" in err and "DeepLabV2 state dict (.pth)" in err
    assert not (tmp_path / "rank" / "ranking").exists()


@pytest.mark.parametrize("command", ["test", "fit", "calibrate"])
def test_every_command_refuses_a_file_that_is_no_checkpoint(command, deeplab_pth, toy_root, tmp_path, monkeypatch, capsys):
    path = _bad_file("random", tmp_path, deeplab_pth)
    err = _console(monkeypatch, capsys, _commands(path, toy_root, tmp_path)[command])
    assert path in err and "not a readable PyTorch checkpoint" in err


def test_fit_ckpt_path_points_a_state_dict_to_pretrained(deeplab_pth, toy_root, tmp_path, monkeypatch, capsys):
    config = write_yaml(tmp_path / "fit.yaml", fit_config(toy_root, tmp_path))
    err = _console(monkeypatch, capsys, ["fit", "--config", config, "--ckpt_path", str(deeplab_pth)])
    assert str(deeplab_pth) in err and f"--model.init_args.segmenter.init_args.pretrained {deeplab_pth}" in err
