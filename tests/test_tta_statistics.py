"""AdaBN's target statistics (intrada_pl/tta/statistics.py): PyTorch's cumulative averages, estimated
once and cached per checkpoint and target, and, as ``intrada test --method adabn`` computes them (the
evaluator's path: the factory's segmenter, the method built on it, the data module's images), equal
to an independent few-line implementation (issue 18, item 10)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import eval_config, trained_segmenter, write_yaml
from intrada_pl.cli import main
from intrada_pl.data.datamodules import EvaluationDataModule, TargetDataModule
from intrada_pl.models.bn_calibration import convert_batchnorm
from intrada_pl.models.deeplabv2 import DeepLabV2
from intrada_pl.models.factory import load_segmenter
from intrada_pl.tta import MethodSpec, batchnorm_names, build_test_methods, statistics, target_statistics

torch.set_num_threads(1)


def _target(toy_root) -> dict:
    return {"dataset": "cityscapes", "root": str(toy_root / "Cityscapes"), "size": [64, 32], "num_workers": 0}


def _train_images(toy_root, batch_size: int, max_images: int | None = None):
    """What intrada test's AdaBN reads for the toy Cityscapes: its train split, from the data module."""
    return EvaluationDataModule(**_target(toy_root)).adabn_images("cityscapes", "train", max_images, batch_size)


def test_adabn_statistics_are_pytorch_cumulative_averages(toy_root, tmp_path):
    """momentum=None: running stats = plain average over batches of each batch's mean and unbiased
    variance (over N x H x W), so a short last batch weighs as much as a full one."""
    model = trained_segmenter()
    convert_batchnorm(model, "none")
    source = {k: v.clone() for k, v in model.state_dict().items()}
    ckpt = tmp_path / "m.pth"
    torch.save(source, ckpt)
    stats = statistics.target_statistics(model, ckpt, _train_images(toy_root, batch_size=4), cache_dir=None)
    assert list(stats) == batchnorm_names(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.items())  # the model keeps its statistics

    data = TargetDataModule(**_target(toy_root), split="train", with_labels=False, batch_size=4)
    data.setup("test")
    means, variances, pooled = [], [], []
    with torch.no_grad():
        for batch in data.test_dataloader():  # 6 train images: batches of 4 and 2
            x = model.conv1(model.normalize(batch["image"]))  # the stem BN's input
            means.append(x.mean((0, 2, 3)))
            variances.append(x.var((0, 2, 3), correction=1))
            pooled.append(x)
    assert [len(p) for p in pooled] == [4, 2]
    torch.testing.assert_close(stats["bn1"]["mean"], torch.stack(means).mean(0))
    torch.testing.assert_close(stats["bn1"]["var"], torch.stack(variances).mean(0))
    assert not torch.allclose(stats["bn1"]["var"], torch.cat(pooled).var((0, 2, 3)), rtol=1e-3)  # not the pooled variance

    first = statistics.target_statistics(model, ckpt, _train_images(toy_root, batch_size=4, max_images=4), cache_dir=None)
    torch.testing.assert_close(first["bn1"]["var"], variances[0])


def test_adabn_statistics_are_cached_per_checkpoint_and_target(toy_root, tmp_path, monkeypatch):
    calls = []
    estimate = statistics.estimate_statistics
    monkeypatch.setattr(statistics, "estimate_statistics", lambda *a, **k: calls.append(1) or estimate(*a, **k))
    ckpt, cache, out = tmp_path / "m.pth", tmp_path / "cache", tmp_path / "out"
    torch.save(trained_segmenter().state_dict(), ckpt)
    config = write_yaml(tmp_path / "t.yaml", eval_config(toy_root))
    args = ["test", "--config", config, "--ckpt", str(ckpt), "--output", str(out), "--method", "none",
            "--method", "adabn", "--method", "adabn[stem]", "--model.adabn_cache", str(cache), "--model.adabn_batch_size", "4"]

    def run() -> dict:
        main(args)
        return json.loads((out / "metrics.json").read_text())["results"]["cityscapes"]

    first = run()
    assert len(calls) == 1 and len(list(cache.glob("adabn_*.pt"))) == 1
    ece = {name: r["ECE"] for name, r in first.items()}
    assert len(set(ece.values())) == 3, ece  # AdaBN on all layers, on the stem only, and plain BN differ
    again = run()  # no forward pass over the train split this time
    assert len(calls) == 1 and {name: r["ECE"] for name, r in again.items()} == ece

    model = trained_segmenter()
    convert_batchnorm(model, "none")
    images = _train_images(toy_root, batch_size=4)
    cached = statistics.target_statistics(model, ckpt, images, cache_dir=cache)
    assert len(calls) == 1  # the same checkpoint, target and settings as intrada test's
    statistics.target_statistics(model, ckpt, images, cache_dir=cache, recompute=True)
    statistics.target_statistics(model, ckpt, _train_images(toy_root, batch_size=4, max_images=3), cache_dir=cache)
    assert len(calls) == 3 and len(list(cache.glob("adabn_*.pt"))) == 2
    torch.save(trained_segmenter(seed=1).state_dict(), ckpt)  # another checkpoint in the same file
    other = statistics.target_statistics(trained_segmenter(seed=1), ckpt, images, cache_dir=cache)
    assert len(calls) == 4 and not torch.equal(other["bn1"]["mean"], cached["bn1"]["mean"])


def test_a_corrupt_adabn_cache_file_is_named_and_recomputed(toy_root, tmp_path, monkeypatch):
    calls = []
    estimate = statistics.estimate_statistics
    monkeypatch.setattr(statistics, "estimate_statistics", lambda *a, **k: calls.append(1) or estimate(*a, **k))
    ckpt, cache = tmp_path / "m.pth", tmp_path / "cache"
    torch.save(trained_segmenter().state_dict(), ckpt)
    model = trained_segmenter()
    convert_batchnorm(model, "none")
    images = _train_images(toy_root, batch_size=4)
    first = statistics.target_statistics(model, ckpt, images, cache_dir=cache)
    (path,) = cache.glob("adabn_*.pt")
    path.write_bytes(path.read_bytes()[:100])  # a truncated copy (a full disk, a killed job)
    with pytest.warns(UserWarning, match=f"AdaBN cache {path} is unreadable"):
        again = statistics.target_statistics(model, ckpt, images, cache_dir=cache)
    assert len(calls) == 2 and torch.equal(again["bn1"]["mean"], first["bn1"]["mean"])
    assert torch.load(path, weights_only=True)["statistics"]["bn1"]["mean"].equal(first["bn1"]["mean"])  # rewritten whole


def independent_adabn(checkpoint, image_files, size, batch_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """AdaBN as it is commonly written: a fresh network with the checkpoint's weights, every
    BatchNorm's running statistics reset with ``momentum=None`` (a cumulative average), one
    train-mode pass without gradients over the images, resized bicubically by PIL, in order. A
    bare state dict is a released ADVENT / IntraDA file: its network takes Caffe's BGR input."""
    model = DeepLabV2(19, depth=18, preprocessing="caffe_bgr")
    model.load_state_dict(torch.load(checkpoint, weights_only=True))
    layers = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    for layer in layers.values():
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    images = [torch.from_numpy(np.array(Image.open(f).convert("RGB").resize(size, Image.BICUBIC))).permute(2, 0, 1).float() for f in image_files]
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            model(torch.stack(images[start : start + batch_size]))
    return {name: {"mean": m.running_mean, "var": m.running_var} for name, m in layers.items()}


def test_adabn_statistics_equal_an_independent_implementation(toy_root, deeplab_pth):
    checkpoint = deeplab_pth
    model, info = load_segmenter(checkpoint, 19)
    (adabn,) = build_test_methods(model, info, [MethodSpec.parse("adabn")])
    data = EvaluationDataModule(dataset="cityscapes", root=str(toy_root / "Cityscapes"), size=(64, 32), num_workers=0)
    ours = target_statistics(adabn.model, checkpoint, data.adabn_images("cityscapes", "train", None, 4), cache_dir=None)

    train = toy_root / "Cityscapes" / "leftImg8bit" / "train"
    files = sorted(train.glob("*/*.png"), key=lambda f: f.relative_to(train).as_posix())
    assert len(files) == 6  # batches of 4 and 2: the short one weighs as much as the full one
    theirs = independent_adabn(checkpoint, files, (64, 32), batch_size=4)
    assert list(ours) == list(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name]["mean"], theirs[name]["mean"], msg=name)
        torch.testing.assert_close(ours[name]["var"], theirs[name]["var"], msg=name)
    source = torch.load(checkpoint, weights_only=True)
    assert not torch.allclose(ours["layer4.1.bn2"]["var"], source["layer4.1.bn2.running_var"])  # the target's, not the source's
