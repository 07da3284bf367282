"""Test-time methods (TENT, BN calibration), pixel ECE, and ``intrada test`` / ``calibrate-grid`` over
several methods and targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torchmetrics.classification import MulticlassCalibrationError

from intrada_pl.cli import main
from intrada_pl.data import layouts
from intrada_pl.models.bn_calibration import CalibratedBatchNorm, convert_batchnorm
from intrada_pl.stages.evaluation import PixelCalibrationError
from intrada_pl.models import SegmenterInfo
from intrada_pl.tta import MethodSpec, Tent, build_test_methods, restore_batchnorm


def released(path: str) -> SegmenterInfo:
    """What the factory says of an uncalibrated released file."""
    return SegmenterInfo(path, "release", {"class_path": "DeepLabV2", "init_args": {}}, None, ("19",), None)

from helpers import trained_segmenter as _segmenter

torch.set_num_threads(1)


def _images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 255, (n, 3, 32, 64), generator=torch.Generator().manual_seed(seed)).float()


def _bn_affine_names(model: nn.Module) -> set[str]:
    return {
        f"{name}.{key}"
        for name, m in model.named_modules()
        if isinstance(m, (nn.BatchNorm2d, CalibratedBatchNorm))
        for key in ("weight", "bias")
    }


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_method_names_parse():
    assert MethodSpec.parse("manual@0.30") == MethodSpec("manual@0.3", "manual", 0.3, "")
    assert MethodSpec.parse("manual", default_strength=0.2).name == "manual@0.2"
    assert MethodSpec.parse("tent") == MethodSpec("tent", "none", None, "tent")
    assert MethodSpec.parse("instcal_c+tent") == MethodSpec("instcal_c+tent", "instcal_c", None, "tent")
    assert MethodSpec.parse("chancal_manual@0.5") == MethodSpec("chancal_manual@0.5", "chancal_manual", 0.5, "")
    assert MethodSpec.parse("tent_ln") == MethodSpec("tent_ln", "none", None, "tent_ln")
    assert MethodSpec.parse("test_stats[stage1]").layers == ("stage1",)
    for bad in ("tent@0.1", "manual@2", "instcal", "chancal_u@0.3", "chancal_manual@1.5"):
        with pytest.raises(ValueError):
            MethodSpec.parse(bad)


@pytest.mark.parametrize("episodic", [True, False])
def test_tent_updates_only_bn_affine_and_episodic_restores_them(episodic):
    model = _segmenter()
    initial = _snapshot(model)
    tent = Tent(model, lr=1e-2, episodic=episodic)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == _bn_affine_names(model)
    for image in _images(2):
        with torch.inference_mode():  # as in Lightning's test loop
            aux, main = tent(image[None])
        assert main.shape == (1, 19, 5, 9) and not main.requires_grad
        params = dict(model.named_parameters())
        changed = {k for k, p in params.items() if not torch.equal(p, initial[k])}
        if episodic:
            assert not changed
        else:
            assert changed == _bn_affine_names(model)
    tent.reset()
    assert all(torch.equal(p, initial[k]) for k, p in model.named_parameters())


def test_tent_after_instcal_keeps_the_learned_strengths():
    model = _segmenter()
    convert_batchnorm(model, "instcal_u")
    initial = _snapshot(model)
    tent = Tent(model, lr=1e-2)
    tent(_images(1))
    state = model.state_dict()
    changed = {k for k in state if not torch.equal(state[k], initial[k])}
    assert changed == _bn_affine_names(model)  # gamma/beta adapted; strengths and statistics untouched


def test_restore_batchnorm_inverts_the_conversion():
    model = _segmenter()
    x = _images(2)
    with torch.no_grad():
        expected = model(x)[1]
        convert_batchnorm(model, "instcal_u")
        assert restore_batchnorm(model) == 20
        assert torch.equal(model(x)[1], expected)


def test_manual_zero_is_plain_bn_and_per_image_methods_ignore_the_batch():
    model = _segmenter()
    x = _images(3)
    with torch.no_grad():
        plain = model(x)[1]
        methods = [MethodSpec.parse(s) for s in ("none", "manual@0", "bn_adapt")]
        none, manual0, adapt = build_test_methods(model, released("m.pth"), methods)
        assert torch.equal(none(x)[1], plain) and torch.equal(manual0(x)[1], plain)
        # equal up to float32 rounding: oneDNN picks other convolution kernels for another batch
        # size, and 18 per-image normalisations carry their last-bit differences (~1e-5 here on AMD)
        torch.testing.assert_close(adapt(x)[1][1:2], adapt(x[1:2])[1], rtol=1e-4, atol=1e-4)


def test_learned_method_needs_a_calibration_checkpoint():
    with pytest.raises(ValueError, match="calibrated with instcal_u"):
        build_test_methods(_segmenter(), released("src.pth"), [MethodSpec.parse("instcal_u")])


def test_pixel_ece_matches_torchmetrics():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 19, 8, 12, generator=g) * 3
    labels = torch.randint(0, 19, (2, 8, 12), generator=g)
    labels[0, :2] = 255
    reference = MulticlassCalibrationError(19, n_bins=15, norm="l1", ignore_index=255)(logits, labels)
    probs = logits.softmax(1)
    confidence, pred = probs.max(1)
    valid = labels != 255
    ours = PixelCalibrationError(15)
    ours.update(confidence[valid], pred[valid] == labels[valid])
    assert torch.isclose(ours.compute().float(), reference, atol=1e-6)


# --------------------------------------------------------------------------- through the CLI
def _test_config(path, data: dict) -> str:
    path.write_text(yaml.safe_dump({"trainer": {"accelerator": "cpu", "logger": False, "enable_progress_bar": False}, "data": data}, sort_keys=False))
    return str(path)


def _toy_target(toy_root) -> dict:
    return {"dataset": "cityscapes", "root": str(toy_root / "Cityscapes"), "size": [64, 32], "num_workers": 0}


def test_several_methods_and_targets_in_one_table(toy_root, deeplab_pth, tmp_path, capsys):
    acdc = tmp_path / "acdc"
    rng = np.random.default_rng(0)
    for frame in range(2):
        image = rng.integers(0, 255, (48, 96, 3), dtype=np.uint8)
        layouts.write_acdc(acdc, "fog", "val", "GOPR0475", frame, image, rng.integers(0, 19, (48, 96)))
    data = {
        **_toy_target(toy_root),
        "targets": {"cityscapes": {}, "acdc_fog": {"dataset": "acdc", "root": str(acdc), "options": {"condition": "fog"}}},
    }
    out = tmp_path / "out"
    args = ["test", "--config", _test_config(tmp_path / "t.yaml", data), "--ckpt", str(deeplab_pth), "--output", str(out)]
    main([*args, "--method", "none", "--method", "manual@0", "--calibration", "tent", "--save_predictions"])  # --calibration: the older name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["targets"] == ["cityscapes", "acdc_fog"] and metrics["methods"] == ["none", "manual@0", "tent"]
    assert "mIoU" not in metrics  # several results: no single top-level number
    for target, n in (("cityscapes", 4), ("acdc_fog", 2)):
        results = metrics["results"][target]
        assert results["manual@0"]["mIoU"] == results["none"]["mIoU"] and results["manual@0"]["ECE"] == results["none"]["ECE"]
        assert all(r["num_images"] == n and r["seconds_per_image"] > 0 for r in results.values())
    assert len(list((out / "predictions" / "acdc_fog" / "tent" / "labelIds").rglob("*.png"))) == 2
    captured = capsys.readouterr()
    assert "acdc_fog" in captured.out + captured.err


def test_calibrate_grid_writes_results_per_strength(toy_root, deeplab_pth, tmp_path):
    out = tmp_path / "grid"
    config = _test_config(tmp_path / "t.yaml", _toy_target(toy_root))
    main(["calibrate-grid", "--config", config, "--ckpt", str(deeplab_pth), "--strengths", "0,0.5,1", "--output", str(out)])
    grid = json.loads((out / "grid.json").read_text())["cityscapes"]
    assert list(grid["mIoU"]) == ["0", "0.5", "1"] and grid["best_strength"] in (0.0, 0.5, 1.0)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["methods"] == ["manual@0", "manual@0.5", "manual@1"]


@pytest.mark.parametrize("channels_last", [False, True])
def test_test_time_fast_path_matches_the_training_path(channels_last):
    """Inference applies calibrated statistics with the eval-BN kernel; training keeps them differentiable."""
    model = _segmenter()
    convert_batchnorm(model, "instcal_u")
    x = _images(2)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    differentiable = model(x)[1].detach()  # strengths require grad: the addcmul path
    with torch.inference_mode():
        assert torch.allclose(model(x)[1], differentiable, atol=1e-4)
        assert torch.allclose(model(x[1:])[1], differentiable[1:], atol=1e-4)
