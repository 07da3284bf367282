"""AdaBN's statistics, as ``intrada test --method adabn`` computes them (the evaluator's path: the
factory's segmenter, the method built on it, the data module's images), against an independent
few-line implementation (issue 18, item 10)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from helpers import trained_segmenter
from intrada_pl.data.datamodules import EvaluationDataModule
from intrada_pl.models.deeplabv2 import DeepLabV2
from intrada_pl.models.factory import load_segmenter
from intrada_pl.tta import MethodSpec, build_test_methods, target_statistics

torch.set_num_threads(1)


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


def test_adabn_statistics_equal_an_independent_implementation(toy_root, tmp_path):
    checkpoint = tmp_path / "m.pth"
    torch.save(trained_segmenter().state_dict(), checkpoint)
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
