"""Test-time methods restricted to layer groups / name patterns (intrada_pl/tta/layers.py) and
``intrada calibrate-layers``. AdaBN's statistics and their cache: tests/test_tta_statistics.py."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from intrada_pl.cli import main
from intrada_pl.models.bn_calibration import CalibratedBatchNorm, convert_batchnorm
from intrada_pl.models.deeplabv2 import DeepLabV2
from intrada_pl.tta import AdaBN, CalibrationSwitch, MethodSpec, batchnorm_names, groups_with_batchnorm, select_layers
from helpers import eval_config, write_yaml
from helpers import trained_segmenter as _segmenter

torch.set_num_threads(1)


def test_method_names_take_a_layer_selection():
    assert MethodSpec.parse("bn_adapt[layer1, layer2]") == MethodSpec("bn_adapt[layer1,layer2]", "bn_adapt", layers=("layer1", "layer2"))
    assert MethodSpec.parse("manual@0.30[-stem]") == MethodSpec("manual@0.3[-stem]", "manual", 0.3, layers=("-stem",))
    assert MethodSpec.parse("instcal_u+tent[layer4.*.bn2]").layers == ("layer4.*.bn2",)
    assert MethodSpec.parse("adabn") == MethodSpec("adabn", "adabn")
    for bad in ("none[stem]", "tent[layer1]", "bn_adapt[]", "bn_adapt[stem", "bn_adapt[-]", "adabn@0.5", "adabn+tent"):
        with pytest.raises(ValueError):
            MethodSpec.parse(bad)


def test_groups_and_patterns_select_batchnorm_layers():
    model = _segmenter()
    names = batchnorm_names(model)
    assert len(names) == 20 and names[0] == "bn1"
    assert select_layers(model, ["stem"]) == {"bn1"}
    layer1 = {n for n in names if n.startswith("layer1.")}
    assert select_layers(model, ["layer1"]) == layer1 and len(layer1) == 4
    downsample = select_layers(model, ["*.downsample.*"])
    assert downsample == {f"layer{i}.0.downsample.1" for i in (2, 3, 4)}
    assert select_layers(model, ["-layer1"]) == set(names) - layer1
    assert select_layers(model, ["layer4", "-layer4.*.bn2", "stem"]) == {"bn1", "layer4.0.bn1", "layer4.1.bn1", "layer4.0.downsample.1"}
    with pytest.raises(ValueError, match="layer group 'heads'.*no BatchNorm"):
        select_layers(model, ["heads"])
    with pytest.raises(ValueError, match="pattern 'layer9"):
        select_layers(model, ["layer9.*"])
    with pytest.raises(ValueError, match="leaves no BatchNorm"):
        select_layers(model, ["stem", "-bn1"])


class OtherGroups(DeepLabV2):
    """A network naming its layer groups its own way."""

    def layer_groups(self) -> dict[str, tuple[str, ...]]:
        return {"early": ("bn1", "layer1.*"), "late": ("layer3.*", "layer4.*"), "heads": ("layer5.*", "layer6.*")}


def test_layer_groups_come_from_the_segmenter():
    assert groups_with_batchnorm(_segmenter()) == ["stem", "layer1", "layer2", "layer3", "layer4"]  # DeepLabV2's heads hold none
    model = OtherGroups(19, depth=18)
    names = batchnorm_names(model)
    early = {n for n in names if n == "bn1" or n.startswith("layer1.")}
    assert groups_with_batchnorm(model) == ["early", "late"]
    assert select_layers(model, ["early"]) == early
    assert select_layers(model, ["-late"]) == {n for n in names if not n.startswith(("layer3.", "layer4."))}
    with pytest.raises(ValueError, match="pattern 'stem' matches no BatchNorm layer of this OtherGroups; groups with BatchNorms: early, late"):
        select_layers(model, ["stem"])
    convert_batchnorm(model, "none")  # calibrated layers are selected alike
    assert select_layers(model, ["early"]) == early and groups_with_batchnorm(model) == ["early", "late"]


def _record_bn(model):
    """Forward hooks keeping every calibrated layer's input and output (cloned: in-place ReLUs follow)."""
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: seen.__setitem__(name, (args[0].clone(), out.clone())))
        for name, m in model.named_modules()
        if isinstance(m, CalibratedBatchNorm)
    ]
    return seen, hooks


@pytest.mark.parametrize("method", ["manual@0.5", "bn_adapt", "instcal_u", "adabn"])
def test_a_selection_calibrates_its_layers_and_leaves_the_others_plain_bn(method):
    model = _segmenter()
    convert_batchnorm(model, "instcal_u")
    for m in model.modules():
        if isinstance(m, CalibratedBatchNorm):
            m.momentum_mean.data.fill_(0.6)
    spec = MethodSpec.parse(f"{method}[layer2,*.downsample.*]")
    layers = select_layers(model, spec.layers)
    assert len(layers) == 7  # layer2's 5 BNs and the downsample BNs of layers 3 and 4
    target = {name: {"mean": torch.randn(m.num_features), "var": torch.rand(m.num_features) + 0.5}
              for name, m in model.named_modules() if isinstance(m, CalibratedBatchNorm)}
    if method == "adabn":
        run = AdaBN(model, layers)
        run.use_statistics(target)
    else:
        run = CalibrationSwitch(model, spec.calibration, spec.strength, layers)
    seen, hooks = _record_bn(model)
    with torch.no_grad():
        run(torch.randint(0, 255, (2, 3, 32, 64)).float())
    for hook in hooks:
        hook.remove()
    for name, layer in model.named_modules():
        if not isinstance(layer, CalibratedBatchNorm):
            continue
        x, y = seen[name]
        plain = F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)
        if name not in layers:
            assert torch.equal(y, plain), name
            assert layer.mode == "none"
        elif method == "adabn":
            stats = target[name]
            torch.testing.assert_close(y, F.batch_norm(x, stats["mean"], stats["var"], layer.weight, layer.bias, False, 0.0, layer.eps))
        else:
            assert not torch.allclose(y, plain, atol=1e-3), name
            assert layer.mode == spec.calibration


def test_calibrate_layers_writes_every_variant(toy_root, deeplab_pth, tmp_path, capsys):
    out = tmp_path / "layers"
    config = write_yaml(tmp_path / "t.yaml", eval_config(toy_root))
    main(["calibrate-layers", "--config", config, "--ckpt", str(deeplab_pth), "--output", str(out)])
    groups = ["stem", "layer1", "layer2", "layer3", "layer4"]  # by default, the checkpoint's segmenter's groups with BatchNorms
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["methods"] == ["none", "bn_adapt", *(f"bn_adapt[{s}{g}]" for g in groups for s in ("", "-"))]
    study = json.loads((out / "layers.json").read_text())["cityscapes"]
    assert study["method"] == "bn_adapt" and list(study["alone"]) == list(study["all_but"]) == groups
    results = metrics["results"]["cityscapes"]
    assert study["all"] == {"mIoU": results["bn_adapt"]["mIoU"], "ECE": results["bn_adapt"]["ECE"]}
    assert study["alone"]["stem"]["ECE"] == results["bn_adapt[stem]"]["ECE"]
    values = [study["none"], study["all"], *study["alone"].values(), *study["all_but"].values()]
    assert all(0 <= v["mIoU"] <= 100 and 0 <= v["ECE"] <= 100 for v in values)
    assert (out / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "all but" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # refused before anything is loaded
        main(["calibrate-layers", "--config", config, "--ckpt", str(deeplab_pth), "--method", "tent"])
    with pytest.raises(Exception) as error:  # the model has no BatchNorm in its heads
        main(["calibrate-layers", "--config", config, "--ckpt", str(deeplab_pth), "--groups", "heads", "--output", str(out)])
    chain = [error.value]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    assert any("layer group 'heads'" in str(e) for e in chain)
