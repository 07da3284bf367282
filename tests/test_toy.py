"""The toy data generator (intrada_pl/data/toy.py): the real layouts, two domains that look different."""

from __future__ import annotations

import json

from intrada_pl.data.datasets import Cityscapes, GTA5


def test_toy_data_in_real_layouts(toy_root):
    meta = json.loads((toy_root / "toy_meta.json").read_text())
    source = GTA5(toy_root / "GTA5")
    assert len(source) == 8 and source.names[0] == "00001.png"
    item = source[0]
    assert item["image"].shape == (3, 72, 128)
    assert set(item["label"].unique().tolist()) <= set(range(19))  # every toy pixel is labelled
    train = Cityscapes(toy_root / "Cityscapes", split="train")
    val = Cityscapes(toy_root / "Cityscapes", split="val")
    assert (len(train), len(val)) == (6, 4)
    assert set(meta["hard_train_images"]) <= set(train.names) and len(meta["hard_train_images"]) == 2


def test_toy_domains_differ_in_appearance(toy_root):
    source = GTA5(toy_root / "GTA5")[0]["image"].float()
    target = Cityscapes(toy_root / "Cityscapes", split="train")[5]["image"].float()  # an easy image
    # the target camera is less saturated: mean channel spread is smaller
    spread = lambda img: (img.max(0).values - img.min(0).values).mean()  # noqa: E731
    assert spread(target) < spread(source)
