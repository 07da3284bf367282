"""The transforms (intrada_pl/data/transforms.py): sizes, crops and the labels they keep, and every
resize the reference does gives the reference's pixels: dataset -> data module -> batch.

The expected values are computed as ADVENT's ``base_dataset._load_img`` does: PIL opens the file,
``convert('RGB')`` for images, then ``Image.resize(size, BICUBIC)`` for images and ``NEAREST``
for labels, straight from the file's own size (labels are mapped to train IDs afterwards, as the
reference does; a nearest resize commutes with that lookup).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from intrada_pl.cli.lightning import TrainingCLI
from intrada_pl.data import labels as L
from intrada_pl.data import layouts
from intrada_pl.data.datamodules import EvaluationDataModule, SourceTargetDataModule, SplitDataModule, TargetDataModule
from intrada_pl.data.datasets import GTA5, read_rgb, resize_nearest
from intrada_pl.data.transforms import SegmentationTransform, resize_image
from intrada_pl.io import write_png, write_text
from intrada_pl.stages.segmentation import SegmentationEvalModule
from helpers import write_yaml

GTA_HW, GTA_SIZE = (105, 191), (128, 72)        # 1914x1052 -> 1280x720, shrunk: odd sizes, ratio not integer
CITY_HW, CITY_SIZE = (128, 256), (128, 64)      # 2048x1024 -> 1024x512, shrunk: the real ratio
MISMATCHED_LABEL_HW = (99, 180)                 # like GTA5 20801-20860: label and image sizes differ


def assert_reference_image(image: np.ndarray, path, size) -> None:
    """``image`` is the file as ADVENT loads it: PIL, ``convert('RGB')``, bicubic to ``size``."""
    with Image.open(path) as im:
        np.testing.assert_array_equal(image, np.asarray(im.convert("RGB").resize(size, Image.BICUBIC)))


def assert_reference_label(label: np.ndarray, path, size) -> None:
    """``label`` is the file's ids, PIL NEAREST to ``size``, then mapped to train IDs."""
    with Image.open(path) as im:
        np.testing.assert_array_equal(label, L.ID_TO_TRAIN_ID_LUT[np.asarray(im.resize(size, Image.NEAREST))])


def gta5_files(root, name):
    return root / "GTA5" / "images" / name, root / "GTA5" / "labels" / name


def cityscapes_files(root, split, name):
    gt = root / "gtFine" / split / name.replace("leftImg8bit", "gtFine_labelIds")
    return root / "leftImg8bit" / split / name, gt


def noise(rng, hw, high=256) -> np.ndarray:
    """Random values in [0, high) of shape ``hw`` (HxW or HxWx3): every resampling difference shows."""
    return rng.integers(0, high, hw, dtype=np.uint8)


def noise_image(rng, hw) -> np.ndarray:
    return noise(rng, (*hw, 3))


def write_cityscapes(root, split, hw, rng) -> list[str]:
    """Two noise images with noise label ids; returns their names."""
    for frame in (1, 2):
        layouts.write_cityscapes(root, split, "aachen", 0, frame, noise_image(rng, hw), noise(rng, hw, 34))
    return [f"aachen/{layouts.cityscapes_stem('aachen', 0, f)}_leftImg8bit.png" for f in (1, 2)]


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pixels")
    rng = np.random.default_rng(0)
    for n, label_hw in ((1, GTA_HW), (2, GTA_HW), (3, MISMATCHED_LABEL_HW)):
        layouts.write_gta5(tmp / "GTA5", n, noise_image(rng, GTA_HW), noise(rng, label_hw, 34), allow_size_mismatch=True)
    for split in ("train", "val"):
        write_cityscapes(tmp / "Cityscapes", split, CITY_HW, rng)
    return tmp


def batch_items(loader):
    """name -> (HxWx3 uint8 image, HxW label) over a loader's batches."""
    out = {}
    for batch in loader:
        for j, name in enumerate(batch["name"]):
            out[name] = (batch["image"][j].permute(1, 2, 0).numpy(), batch["label"][j].numpy())
    return out


def source_target(roots, **kwargs) -> SourceTargetDataModule:
    data = SourceTargetDataModule(
        source_root=str(roots / "GTA5"), source_size=GTA_SIZE, target_root=str(roots / "Cityscapes"),
        target_size=CITY_SIZE, val_size=CITY_SIZE, num_workers=0, **kwargs,
    )
    data.setup("fit")
    return data


def test_training_and_validation_batches_have_the_reference_pixels(roots):
    data = source_target(roots)
    source = batch_items(data.train_dataloader()["source"])
    assert sorted(source) == ["00001.png", "00002.png", "00003.png"]
    for name, (image, label) in source.items():
        assert image.shape == (72, 128, 3) and label.shape == (72, 128)
        image_file, label_file = gta5_files(roots, name)
        assert_reference_image(image, image_file, GTA_SIZE)
        assert_reference_label(label, label_file, GTA_SIZE)
    target = batch_items(data.train_dataloader()["target"])
    assert len(target) == 2
    for name, (image, label) in target.items():
        assert_reference_image(image, cityscapes_files(roots / "Cityscapes", "train", name)[0], CITY_SIZE)
        assert (label == 255).all()
    val = batch_items(data.val_dataloader())
    assert len(val) == 2
    for name, (image, label) in val.items():
        image_file, label_file = cityscapes_files(roots / "Cityscapes", "val", name)
        assert_reference_image(image, image_file, CITY_SIZE)
        assert_reference_label(label, label_file, CITY_HW[::-1])  # full resolution


def test_mismatched_gta5_label_is_resized_once_from_its_own_size(roots):
    ds = GTA5(roots / "GTA5")
    raw = ds.read_label(2, align=False)
    assert raw.shape == MISMATCHED_LABEL_HW and ds.read_label(2).shape == GTA_HW
    ds.transform = SegmentationTransform(GTA_SIZE)
    label = ds[2]["label"].numpy()
    assert_reference_label(label, gta5_files(roots, "00003.png")[1], GTA_SIZE)
    two_steps = resize_nearest(resize_nearest(raw, GTA_HW), GTA_SIZE[::-1])   # the former path
    assert (two_steps != label).any()
    # without a resize the label is aligned to the image, so crops and flips move both together
    ds.transform = SegmentationTransform(crop_size=(32, 32))
    assert ds[2]["label"].shape == (32, 32)


def test_real_size_gta5_image_and_label(tmp_path):
    rng = np.random.default_rng(1)
    layouts.write_gta5(tmp_path / "GTA5", 1, noise_image(rng, (1052, 1914)), noise(rng, (1052, 1914), 34))
    item = GTA5(tmp_path / "GTA5", transform=SegmentationTransform((1280, 720)))[0]
    image_file, label_file = gta5_files(tmp_path, "00001.png")
    assert_reference_image(item["image"].permute(1, 2, 0).numpy(), image_file, (1280, 720))
    assert_reference_label(item["label"].numpy(), label_file, (1280, 720))


def test_evaluation_and_ranking_inputs_have_the_reference_pixels(roots):
    for stage in ("test", "predict"):
        data = TargetDataModule(dataset="gta5", root=str(roots / "GTA5"), size=GTA_SIZE, num_workers=0)
        data.setup(stage)
        items = batch_items(data.test_dataloader())
        assert len(items) == 3
        for name, (image, label) in items.items():
            image_file, label_file = gta5_files(roots, name)
            assert_reference_image(image, image_file, GTA_SIZE)
            if stage == "predict":
                assert (label == 255).all()
            else:  # full resolution; the mismatched label is aligned to its image (PIL NEAREST)
                assert_reference_label(label, label_file, GTA_HW[::-1])
    targets = {"city": {"dataset": "cityscapes", "root": str(roots / "Cityscapes")}}
    evaluation = EvaluationDataModule(targets=targets, size=CITY_SIZE, num_workers=0)
    evaluation.setup("test")
    items = batch_items(evaluation.test_dataloader()[0])
    assert len(items) == 2
    for name, (image, _) in items.items():
        assert_reference_image(image, cityscapes_files(roots / "Cityscapes", "val", name)[0], CITY_SIZE)


@pytest.mark.parametrize("image_hw,size", [(CITY_HW, CITY_SIZE), (GTA_HW, GTA_SIZE)])
def test_pseudo_labels_reach_the_batch_unchanged(tmp_path, image_hw, size):
    """Written at the ranking size and trained at that size: a no-op, as the reference's load."""
    rng = np.random.default_rng(2)
    root = tmp_path / "Cityscapes"
    names = write_cityscapes(root, "train", image_hw, rng)
    write_cityscapes(root, "val", image_hw, rng)
    ranking = tmp_path / "ranking"
    write_text(ranking / "easy.txt", "".join(f"{n}\n" for n in names))
    write_text(ranking / "hard.txt", "")
    pseudo = {n: noise(rng, size[::-1], 19) for n in names}
    for name, label in pseudo.items():
        write_png(ranking / "pseudo_labels" / name, label)
    data = SplitDataModule(ranking_dir=str(ranking), root=str(root), size=size, val_size=size, num_workers=0)
    data.setup("fit")
    items = batch_items(data.train_dataloader()["source"])
    assert sorted(items) == names
    for name, (image, label) in items.items():
        np.testing.assert_array_equal(label, pseudo[name])
        assert_reference_image(image, cityscapes_files(root, "train", name)[0], size)


def training_cli(config_path: str, *args: str) -> TrainingCLI:
    """``intrada fit``'s parser and instantiation, without training."""
    return TrainingCLI(SegmentationEvalModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                       args=["--config", config_path, *args])


def test_opencv_option_differs_and_is_selectable_from_the_cli(roots, tmp_path):
    init_args = {"source_root": str(roots / "GTA5"), "source_size": list(GTA_SIZE), "target_root": str(roots / "Cityscapes"),
                 "target_size": list(CITY_SIZE), "val_size": list(CITY_SIZE), "num_workers": 0}
    config = {
        "model": {"class_path": "SegmentationModule", "init_args": {"segmenter": {"class_path": "DeepLabV2", "init_args": {"depth": 18}}}},
        "data": {"class_path": "SourceTargetDataModule", "init_args": init_args},
    }
    path = write_yaml(tmp_path / "fit.yaml", config)
    assert training_cli(path).datamodule.hparams.resize == "pil"
    data = training_cli(path, "--data.init_args.resize", "opencv").datamodule
    assert data.hparams.resize == "opencv"
    data.setup("fit")
    for name, (image, label) in batch_items(data.train_dataloader()["source"]).items():
        image_file, label_file = gta5_files(roots, name)
        np.testing.assert_array_equal(image, cv2.resize(read_rgb(image_file), GTA_SIZE, interpolation=cv2.INTER_CUBIC))
        with pytest.raises(AssertionError):
            assert_reference_image(image, image_file, GTA_SIZE)
        assert_reference_label(label, label_file, GTA_SIZE)  # labels: the reference's resize in both modes
    evaluation = EvaluationDataModule(dataset="cityscapes", root=str(roots / "Cityscapes"), size=CITY_SIZE,
                                      resize="opencv", num_workers=0)
    evaluation.setup("test")
    assert [part.dataset.transform.resize for part in evaluation.parts.values()] == ["opencv"]
    with pytest.raises(SystemExit):
        training_cli(path, "--data.init_args.resize", "bicubic")
    with pytest.raises(ValueError, match="resize must be one of"):
        SegmentationTransform(GTA_SIZE, resize="bicubic")


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA"])
def test_png_decoding_matches_pil_convert_rgb(tmp_path, mode):
    """We decode with cv2 (faster); for PNG it gives PIL's ``convert('RGB')`` pixels exactly."""
    rgb = Image.fromarray(noise_image(np.random.default_rng(3), (21, 37)))
    image = {"RGB": rgb, "L": rgb.convert("L"), "P": rgb.quantize(64), "RGBA": rgb.convert("RGBA")}[mode]
    if mode == "RGBA":
        image.putalpha(Image.fromarray(noise(np.random.default_rng(4), (21, 37))))
    path = tmp_path / "x.png"
    image.save(path)
    with Image.open(path) as im:
        np.testing.assert_array_equal(read_rgb(path), np.asarray(im.convert("RGB")))
    assert_reference_image(resize_image(read_rgb(path), (20, 11)), path, (20, 11))


# ----------------------------------------------------------------------------------- SegmentationTransform
def test_transform_resizes_image_bicubic_and_label_nearest():
    image = np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8)
    label = np.zeros((40, 80), np.uint8)
    label[:, 40:] = 7
    out = SegmentationTransform((20, 10))(image, label)
    assert out["image"].shape == (3, 10, 20) and out["image"].dtype == torch.uint8
    assert out["mask"].shape == (10, 20) and set(out["mask"].unique().tolist()) == {0, 7}


def test_eval_transform_keeps_label_resolution():
    out = SegmentationTransform((20, 10), resize_label=False)(np.zeros((40, 80, 3), np.uint8), np.zeros((40, 80), np.uint8))
    assert out["image"].shape == (3, 10, 20)
    assert out["mask"].shape == (40, 80)


def test_crop_pads_label_with_ignore():
    out = SegmentationTransform(crop_size=(30, 30))(np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8))
    assert out["mask"].shape == (30, 30)
    assert (out["mask"] == 255).sum() == 30 * 30 - 20 * 20


def test_random_ops_refuse_fixed_label():
    with pytest.raises(ValueError, match="resize_label"):
        SegmentationTransform((20, 10), resize_label=False, hflip=True)
