import json
import os
import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from intrada_pl.data import labels as L
from intrada_pl.data import layouts
from intrada_pl.data.inspect import inspect_dataset
from intrada_pl.data.datasets import (
    ACDC, BDD100K, DATASETS, GTA5, Cityscapes, DatasetLayoutError, FoggyCityscapes, ImageFileError, LabelFormatError,
    Mapillary, SegmentationDataset, Synscapes, Synthia, WildDash2, build_dataset, get_dataset_class,
)

H, W = 16, 32


def img(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def ids_left_right(left: int, right: int, h: int = H, w: int = W) -> np.ndarray:
    a = np.full((h, w), left, np.uint8)
    a[:, w // 2:] = right
    return a


# ----------------------------------------------------------------------------------- GTA5
@pytest.fixture
def gta(tmp_path):
    root = tmp_path / "gta5"
    # left half road (7), right half ids 0..3 (all black in the palette) -> ignore
    lab1 = ids_left_right(7, 0)
    lab1[0, W // 2:W // 2 + 4] = [0, 1, 2, 3]
    layouts.write_gta5(root, 1, img(1), lab1)
    layouts.write_gta5(root, 2, img(2), ids_left_right(17, 18))          # pole vs polegroup: same grey
    layouts.write_gta5(root, "00003.png", img(3), ids_left_right(26, 33))
    # a size-mismatched pair (like 20801-20860): label at half resolution
    layouts.write_gta5(root, 4, img(4), ids_left_right(21, 23, H // 2, W // 2), allow_size_mismatch=True)
    # DAFormer's converted files and junk beside the originals must be ignored
    cv2.imwrite(str(root / "labels" / "00001_labelTrainIds.png"), np.zeros((H, W), np.uint8))
    cv2.imwrite(str(root / "images" / "00001_labelTrainIds.png"), img(9))
    (root / "images" / "notes.txt").write_text("x")
    return root


def test_gta5_palette_indices_not_colours(gta):
    ds = GTA5(gta)
    assert ds.names == ["00001.png", "00002.png", "00003.png", "00004.png"]
    assert ds.split == "all" and len(ds) == 4
    with Image.open(gta / "labels" / "00001.png") as im:
        assert im.mode == "P"
        pal = np.array(im.getpalette()[: 34 * 3]).reshape(-1, 3)
    assert (pal[0] == pal[1]).all() and (pal[0] == pal[3]).all() and (pal[17] == pal[18]).all()
    lab = ds.read_label(0)
    assert lab.dtype == np.uint8 and lab.shape == (H, W)
    assert (lab[:, : W // 2] == 0).all() and (lab[:, W // 2:] == 255).all()
    lab2 = ds.read_label(1)
    assert (lab2[:, : W // 2] == 5).all() and (lab2[:, W // 2:] == 255).all()
    assert (ds.read_label(2) == L.ID_TO_TRAIN_ID_LUT[ids_left_right(26, 33)]).all()
    np.testing.assert_array_equal(ds.read_image(2), img(3))


def test_gta5_size_mismatch_resized_to_image(gta):
    ds = GTA5(gta)
    assert ds.read_raw_label(3).shape == (H // 2, W // 2)
    item = ds[3]
    assert item["label"].shape == (H, W) and item["image"].shape == (3, H, W)
    expected = L.ID_TO_TRAIN_ID_LUT[ids_left_right(21, 23)]
    assert (item["label"].numpy() == expected).all()


def test_getitem_with_and_without_transform(gta):
    ds = GTA5(gta)
    item = ds[0]
    assert set(item) == {"image", "label", "name"} and item["name"] == "00001.png"
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, H, W)
    assert item["image"].is_contiguous()
    assert (item["image"].permute(1, 2, 0).numpy() == img(1)).all()
    assert item["label"].dtype == torch.int64 and item["label"][0, 0] == 0

    seen = {}

    def transform(image, mask):
        seen.update(image=image, mask=mask)
        return {"image": torch.from_numpy(image).float().mean(-1), "mask": torch.from_numpy(mask) + 1}

    ds.transform = transform            # assignable after construction
    out = ds[0]
    assert seen["image"].shape == (H, W, 3) and seen["image"].dtype == np.uint8
    assert seen["mask"].shape == (H, W) and seen["mask"].dtype == np.uint8
    assert out["name"] == "00001.png" and out["image"].shape == (H, W) and out["label"][0, 0] == 1


def test_without_labels(gta):
    (gta / "labels" / "00002.png").unlink()
    ds = GTA5(gta, with_labels=False)
    assert len(ds) == 4
    item = ds[1]
    assert (item["label"] == 255).all() and item["label"].shape == (H, W)


def test_missing_label_error_and_drop(gta):
    (gta / "labels" / "00002.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"00002\.png") as e:
        GTA5(gta)
    assert "with_labels=False" in str(e.value)
    assert GTA5(gta, missing_labels="drop").names == ["00001.png", "00003.png", "00004.png"]


def test_list_file_selects_and_orders(gta, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("00003.png\n\n00001.png\n")
    ds = GTA5(gta, list_file=lst)
    assert ds.names == ["00003.png", "00001.png"]
    assert ds[0]["name"] == "00003.png"
    lst.write_text("00001.png\n00042.png\n")
    with pytest.raises(DatasetLayoutError, match="00042.png") as e:
        GTA5(gta, list_file=lst)
    assert str(lst) in str(e.value)


def test_entries_that_are_no_image_files_are_refused_at_setup(gta, tmp_path):
    """A directory, a dangling symlink or a symlink loop named like an image: one error at setup
    (not silently skipped), kept with ``unusable_images="keep"`` (inspect), left alone if unselected."""
    images = gta / "images"
    (images / "00005.png").mkdir()
    (images / "00006.png").symlink_to(tmp_path / "gone.png")
    (images / "00007.png").symlink_to("00007.png")
    with pytest.raises(ImageFileError) as e:
        GTA5(gta, missing_labels="drop")
    assert str(e.value) == (f"GTA5: 3 of 7 images under {images} cannot be used; "
                            f"first: {images / '00005.png'} is a directory, not an image file")
    ds = GTA5(gta, missing_labels="keep", unusable_images="keep")
    assert [ds.image_problem(i) for i in range(4, 7)] == [
        "is a directory, not an image file",
        f"is a symbolic link to '{tmp_path / 'gone.png'}', which does not exist",
        "is a symbolic link loop",
    ]
    assert ds.image_problem(0) is None
    for i in range(4, 7):   # reading one says the same, in one line
        with pytest.raises(ImageFileError, match=f"image file {images / ds.names[i]} {ds.image_problem(i)}"):
            ds.read_image(i)
    (tmp_path / "list.txt").write_text("00001.png\n")
    assert len(GTA5(gta, list_file=tmp_path / "list.txt")) == 1
    with pytest.raises(ValueError, match="unusable_images must be 'error' or 'keep'"):
        GTA5(gta, unusable_images="drop")


def test_image_name_that_is_not_utf8_is_refused_at_setup(tmp_path):
    """Names go into the ranking's lists and the prediction files: refused up front, shown as bytes."""
    root = tmp_path / "bdd"
    image, label = layouts.write_bdd100k(root, "val", "a1", img(1), np.zeros((H, W), np.uint8))
    bad = image.with_name(os.fsdecode(b"\xff\xfe.jpg"))
    shutil.copy(image, bad)
    shutil.copy(label, label.with_name(os.fsdecode(b"\xff\xfe.png")))
    with pytest.raises(ImageFileError) as e:
        BDD100K(root)
    message = str(e.value)
    assert message.startswith(f"BDD100K: 1 of 2 images under {image.parent} cannot be used; first: {os.fsencode(bad)!r} ")
    assert "has a file name that is not valid UTF-8" in message and "\n" not in message
    message.encode("utf-8")                             # printable on any terminal
    kept = BDD100K(root, unusable_images="keep")
    assert kept.image_problem(kept.image_paths.index(bad)).startswith("has a file name that is not valid UTF-8")


def test_empty_image_file_is_named(gta):
    (gta / "images" / "00002.png").write_bytes(b"")
    with pytest.raises(ImageFileError, match=r"image file .*00002\.png is empty \(0 bytes\)"):
        GTA5(gta)[1]


def test_missing_root_and_empty_dataset(tmp_path):
    with pytest.raises(DatasetLayoutError) as e:
        GTA5(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    assert "labels/00001.png ... 24966.png" in str(e.value)   # the layout text
    (tmp_path / "gta" / "images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no images found") as e:
        GTA5(tmp_path / "gta")
    assert "palette" in str(e.value)
    with pytest.raises(DatasetLayoutError, match="no image folder"):
        Cityscapes(tmp_path / "gta")
    assert isinstance(e.value, FileNotFoundError)


# ----------------------------------------------------------------------------------- SYNTHIA
def test_synthia_16bit_labels(tmp_path):
    rc = tmp_path / "RAND_CITYSCAPES"
    cls = ids_left_right(3, 8).astype(np.uint16)
    cls[0, :4] = [259, 22, 1, 11]                       # 259 > 255: must not wrap to 3 (road)
    inst = np.full((H, W), 300, np.uint16)
    layouts.write_synthia(rc, 0, img(0), cls, inst)
    layouts.write_synthia(rc, 1, img(1), ids_left_right(21, 10).astype(np.uint16))
    cv2.imwrite(str(rc / "GT" / "LABELS" / "0000000_labelTrainIds.png"), np.zeros((H, W), np.uint8))

    lp = rc / "GT" / "LABELS" / "0000000.png"
    raw16 = cv2.imread(str(lp), cv2.IMREAD_UNCHANGED)
    assert raw16.dtype == np.uint16 and raw16.shape == (H, W, 3)
    # 8-bit readers silently give something else
    assert not np.array_equal(np.array(Image.open(lp).convert("RGB"))[:, :, 0], cls)
    assert not np.array_equal(cv2.imread(str(lp))[:, :, 2], cls)

    for root in (rc, tmp_path):                          # RAND_CITYSCAPES or its parent
        ds = Synthia(root)
        assert ds.names == ["0000000.png", "0000001.png"]
        lab = ds.read_label(0)
        assert lab[0, :4].tolist() == [255, 255, 10, 18]
        assert (lab[1:, : W // 2] == 0).all() and (lab[1:, W // 2:] == 13).all()
        assert (ds.read_raw_label(0) == cls).all()
        assert (ds.read_label(1) == L.synthia_to_train_id(ids_left_right(21, 10))).all()

    cv2.imwrite(str(lp), np.zeros((H, W, 3), np.uint8))  # an 8-bit label
    with pytest.raises(ValueError, match="SYNTHIA labels must be 16-bit RGB PNGs; got uint8") as e:
        Synthia(rc)[0]
    assert isinstance(e.value, LabelFormatError) and "0000000.png" in str(e.value)


# ----------------------------------------------------------------------------------- Synscapes
def test_synscapes_numeric_order_and_2k(tmp_path):
    root = tmp_path / "Synscapes"
    for k in (10, 2, 1):
        layouts.write_synscapes(root, k, img(k), ids_left_right(7, 24), image_2k=img(k, 2 * H, 2 * W))
    ds = Synscapes(tmp_path)                             # parent of Synscapes/ is accepted
    assert ds.names == ["1.png", "2.png", "10.png"]
    assert ds[0]["label"].shape == (H, W)
    ds2k = Synscapes(root, image_dir="rgb-2k")
    item = ds2k[2]
    assert item["image"].shape == (3, 2 * H, 2 * W) and item["label"].shape == (2 * H, 2 * W)
    assert (item["label"].numpy() == L.ID_TO_TRAIN_ID_LUT[ids_left_right(7, 24, 2 * H, 2 * W)]).all()
    with pytest.raises(ValueError):
        Synscapes(root, image_dir="rgb-4k")


# ----------------------------------------------------------------------------------- Cityscapes family
def test_cityscapes_and_foggy(tmp_path):
    root = tmp_path / "cs"
    layouts.write_cityscapes(root, "train", "aachen", 0, 19, img(1), ids_left_right(7, 8))
    layouts.write_cityscapes(root, "train", "bochum", 0, 1, img(2), ids_left_right(11, 4))
    layouts.write_cityscapes(root, "val", "frankfurt", 0, 294, img(3), ids_left_right(26, 23))
    layouts.write_foggy_cityscapes(root, "val", "frankfurt", 0, 294, img(4), ids_left_right(26, 23))
    layouts.write_cityscapes(root, "test", "berlin", 0, 1, img(5), None)
    # a converted file beside the originals does not disturb anything
    cv2.imwrite(str(root / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png"),
                np.zeros((H, W), np.uint8))

    ds = Cityscapes(root)
    assert ds.split == "train"
    assert ds.names == ["aachen/aachen_000000_000019_leftImg8bit.png",
                        "bochum/bochum_000000_000001_leftImg8bit.png"]
    assert (ds.read_label(0)[:, : W // 2] == 0).all() and (ds.read_label(0)[:, W // 2:] == 1).all()
    assert (ds.read_label(1)[:, W // 2:] == 255).all()
    val = Cityscapes(root, split="val")
    assert val.names == ["frankfurt/frankfurt_000000_000294_leftImg8bit.png"]
    assert (val.read_label(0)[:, : W // 2] == 13).all()
    assert len(Cityscapes(root, split="test", with_labels=False)) == 1
    with pytest.raises(DatasetLayoutError, match="no label file"):
        Cityscapes(root, split="test")

    fog = FoggyCityscapes(root, beta=0.02)
    assert fog.split == "val"
    assert fog.names == ["frankfurt/frankfurt_000000_000294_leftImg8bit_foggy_beta_0.02.png"]
    item = fog[0]
    assert (item["image"].permute(1, 2, 0).numpy() == img(4)).all()
    assert (item["label"][:, W // 2:] == 10).all()
    assert len(FoggyCityscapes(root, beta="0.005")) == 1


# ----------------------------------------------------------------------------------- BDD100K
@pytest.mark.parametrize("old", [False, True])
def test_bdd100k_already_train_ids(tmp_path, old):
    root = tmp_path / "bdd"
    t = ids_left_right(13, 255)
    t[0, 0], t[0, 1] = 200, 18                           # stray value -> 255; 18 stays 18
    layouts.write_bdd100k(root, "val", "b1c66a42-6f7d68ca", img(1), t, old_layout=old)
    layouts.write_bdd100k(root, "val", "a00d3a6c-5ab3e6c1.jpg", img(2), ids_left_right(0, 10), old_layout=old)
    ds = BDD100K(root)
    assert ds.names == ["a00d3a6c-5ab3e6c1.jpg", "b1c66a42-6f7d68ca.jpg"]
    lab = ds.read_label(1)
    assert lab[0, 0] == 255 and lab[0, 1] == 18 and lab[5, 0] == 13 and (lab[:, W // 2:] == 255).all()
    assert ds[0]["image"].shape == (3, H, W)


# ----------------------------------------------------------------------------------- Mapillary
def test_mapillary_by_name(tmp_path):
    names = L.MAPILLARY_V12_NAMES
    idx = ids_left_right(names.index("construction--flat--crosswalk-plain"), names.index("object--vehicle--truck"))
    idx[0, 0] = names.index("construction--barrier--guard-rail")
    root = tmp_path / "vistas"
    layouts.write_mapillary(root, "validation", "k1", img(1), idx)
    ds = Mapillary(root)
    assert ds.names == ["k1.jpg"] and ds.version == "v1.2"
    lab = ds.read_label(0)
    assert lab[0, 0] == 255 and lab[1, 0] == 0 and (lab[:, W // 2:] == 14).all()

    # a config with another index order: mapping follows the names, not the indices
    perm = list(reversed(names))
    root2 = tmp_path / "vistas2"
    idx2 = ids_left_right(perm.index("nature--sky"), perm.index("human--rider--bicyclist"))
    layouts.write_mapillary(root2, "validation", "k2", img(2), idx2, names=perm)
    lab2 = Mapillary(root2).read_label(0)
    assert (lab2[:, : W // 2] == 10).all() and (lab2[:, W // 2:] == 12).all()

    # v1.1 archives: <split>/labels + config.json
    root3 = tmp_path / "vistas11"
    layouts.write_mapillary(root3, "training", "k3", img(3), idx, version="v1.1")
    ds3 = Mapillary(root3, split="training")
    assert ds3.version == "v1.1" and (ds3.read_label(0)[:, W // 2:] == 14).all()


# ----------------------------------------------------------------------------------- WildDash2
def test_wilddash2_panoptic(tmp_path):
    root = tmp_path / "wd2"
    cats = ids_left_right(34, 7)                         # pickup -> truck, road
    cats[:4, :4] = 36                                    # billboard -> ignore
    cats[4:8, :4] = 255                                  # void
    cats[8:, 28:] = 38                                   # road-marking -> road
    cats[8:, 16:20] = 26                                 # car
    layouts.write_wilddash2(root, "zz0001", img(1), cats)
    layouts.write_wilddash2(root, "aa0001.jpg", img(2), ids_left_right(35, 0))
    data = json.loads((root / "panoptic.json").read_text())
    assert len(data["annotations"]) == 2
    ds = WildDash2(root)
    assert ds.names == ["aa0001.jpg", "zz0001.jpg"]
    expected = L.WILDDASH2_TO_TRAIN_ID_LUT[cats]
    assert (ds.read_label(1) == expected).all()
    assert ds.read_label(1)[8, 30] == 0 and ds.read_label(1)[8, 0] == 14 and ds.read_label(1)[0, 0] == 255
    assert (ds.read_label(0)[:, : W // 2] == 13).all() and (ds.read_label(0)[:, W // 2:] == 255).all()
    raw = ds.read_raw_label(1)
    assert raw[5, 0] == 255 and raw[0, 0] == 36
    (root / "panoptic.json").unlink()
    with pytest.raises(DatasetLayoutError, match="panoptic.json"):
        WildDash2(root)
    assert len(WildDash2(root, with_labels=False)) == 2


# both releases, decoded by category name
# v2.0 categories the beta's id table scored as ignore, and where the policy puts them
V2_EXPECTED = {
    "curb": 1, "curbcut": 1, "bikelanesidewalk": 1, "manholesidewalk": 1,
    "utilitypole": 5, "trafficsignframe": 5,
    "motorcyclist": 12, "bicyclist": 12, "otherrider": 12,
    "crosswalkzebra": 0, "crosswalkplain": 0, "bikelane": 0, "servicelane": 0, "manhole": 0,
    "pedestrianarea": 0, "tramtrack": 0,
    "otherbarrier": 3, "curbterrain": 9, "autorickshaw": 17,
    # ... and categories the beta already had, under their v2.0 names
    "road": 0, "trafficsign": 7, "onrails": 16, "pickup": 14, "van": 13, "roadmarking": 0,
    "egovehicle": 255, "overlay": 255, "streetlight": 255, "billboard": 255, "polegroup": 255,
    "mountain": 255, "railtrack": 255,
}


def stripes(ids: list[int], h: int = H) -> np.ndarray:
    """One column per category id."""
    return np.tile(np.array(ids, np.uint8), (h, 1))


def test_v2_release_decodes_by_name(tmp_path):
    names = list(V2_EXPECTED)
    ids = [L.WILDDASH2_V2_NAMES.index(n) for n in names]
    root = tmp_path / "wd_public_v2p0"
    layouts.write_wilddash2(root, "at0000_100000", img(0, w=len(ids)), stripes(ids), release="v2.0")
    categories = json.loads((root / "panoptic.json").read_text())["categories"]
    assert len(categories) == 81 and categories[52] == {"id": 52, "name": "curb"}
    ds = WildDash2(root)
    assert ds.read_label(0)[0].tolist() == [V2_EXPECTED[n] for n in names]
    assert (ds.read_raw_label(0)[0] == ids).all() and "0..80" in ds.raw_label_encoding
    # the same categories under other ids: still decoded by name
    shuffled = list(np.random.default_rng(0).permutation(L.WILDDASH2_V2_NAMES))
    root2 = tmp_path / "shuffled"
    layouts.write_wilddash2(root2, "x", img(0, w=len(ids)), stripes([shuffled.index(n) for n in names]), names=shuffled)
    assert WildDash2(root2).read_label(0)[0].tolist() == [V2_EXPECTED[n] for n in names]


def test_beta_release_decodes_as_before(tmp_path):
    names = ["road", "ego vehicle", "rectification border", "train", "pickup", "van", "billboard",
             "street-light", "road-marking", "polegroup", "person", "rider", "unlabeled"]
    ids = [L.WILDDASH2_BETA_NAMES.index(n) for n in names]
    assert ids == [7, 1, 2, 31, 34, 35, 36, 37, 38, 18, 24, 25, 0]   # Cityscapes ids + 34..38
    layouts.write_wilddash2(tmp_path, "cn0000_000000", img(1, w=len(ids)), stripes(ids))
    categories = json.loads((tmp_path / "panoptic.json").read_text())["categories"]
    assert len(categories) == 39 and categories[37]["name"] == "street-light"
    ds = WildDash2(tmp_path)
    assert ds.read_label(0)[0].tolist() == [0, 255, 255, 16, 14, 13, 255, 255, 0, 255, 11, 12, 255]
    assert "0..38" in ds.raw_label_encoding


def test_policy_table_covers_both_releases():
    assert len(L.WILDDASH2_BETA_NAMES) == 39 and len(L.WILDDASH2_V2_NAMES) == 81
    assert L.wilddash2_unknown(L.WILDDASH2_BETA_NAMES) == [] == L.wilddash2_unknown(L.WILDDASH2_V2_NAMES)
    assert set(L.WILDDASH2_TO_CITYSCAPES.values()) <= set(L.CITYSCAPES_ID_NAMES)
    v2 = L.WILDDASH2_V2_TO_TRAIN_ID_LUT
    # ids 0..38 mean the same in both releases; 21 of the new ones belong to one of the 19 classes
    assert (v2[:39] == L.WILDDASH2_TO_TRAIN_ID_LUT[:39]).all()
    assert int((v2[39:81] != 255).sum()) == 21 and (v2[81:] == 255).all()
    assert L.wilddash2_key("Street-Light") == L.wilddash2_key("street light") == "streetlight"


def test_unknown_category_warns_once_and_is_ignored(tmp_path):
    names = [*L.WILDDASH2_V2_NAMES, "hoverboard"]
    layouts.write_wilddash2(tmp_path, "a", img(2, w=3), stripes([7, 81, 52]), names=names)
    layouts.write_wilddash2(tmp_path, "b", img(3, w=3), stripes([81, 81, 81]), names=names)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = WildDash2(tmp_path)
        labels = [ds.read_label(i) for i in range(len(ds))] + [ds[0]["label"].numpy()]
    assert len(caught) == 1 and "'hoverboard'" in str(caught[0].message) and "panoptic.json" in str(caught[0].message)
    assert labels[0][0].tolist() == [0, 255, 1] and (labels[1] == 255).all()
    report = inspect_dataset("wilddash2", tmp_path)
    assert len(report["problems"]) == 1 and "'hoverboard'" in report["problems"][0]
    assert report["ignored_pixels"] == H * 4 and report["class_pixels"][0] == report["class_pixels"][1] == H


def test_panoptic_json_without_categories_is_refused(tmp_path):
    layouts.write_wilddash2(tmp_path, "a", img(4), np.full((H, W), 7, np.uint8))
    data = json.loads((tmp_path / "panoptic.json").read_text())
    del data["categories"]
    (tmp_path / "panoptic.json").write_text(json.dumps(data))
    with pytest.raises(LabelFormatError, match="no categories"):
        WildDash2(tmp_path)


# ----------------------------------------------------------------------------------- ACDC
def test_acdc_conditions_and_ref(tmp_path):
    root = tmp_path / "acdc"
    layouts.write_acdc(root, "fog", "val", "GOPR0475", 41, img(1), ids_left_right(7, 26))
    layouts.write_acdc(root, "night", "val", "GP010376", 3, img(2), ids_left_right(23, 0))
    layouts.write_acdc(root, "fog", "train", "GOPR0476", 1, img(3), ids_left_right(7, 7))
    layouts.write_acdc_ref(root, "fog", "val", "GOPR0475", 41, img(4))
    ds = ACDC(root)
    assert ds.split == "val"
    assert ds.names == ["fog/val/GOPR0475/GOPR0475_frame_000041_rgb_anon.png",
                        "night/val/GP010376/GP010376_frame_000003_rgb_anon.png"]
    assert (ds.read_label(0)[:, W // 2:] == 13).all() and (ds.read_label(1)[:, : W // 2] == 10).all()
    fog = ACDC(root, condition="fog")
    assert len(fog) == 1 and fog[0]["name"].startswith("fog/val/")
    assert len(ACDC(root, split="train", condition="fog")) == 1
    with pytest.raises(ValueError):
        ACDC(root, condition="sand")


# ----------------------------------------------------------------------------------- registry
class MyGTA(GTA5):
    pass


def test_registry_and_build_dataset(gta):
    assert set(DATASETS) == {"gta5", "synthia", "synscapes", "cityscapes", "foggy_cityscapes",
                             "bdd100k", "mapillary", "wilddash2", "acdc"}
    assert all(issubclass(c, SegmentationDataset) and c.layout.strip() for c in DATASETS.values())
    assert type(build_dataset("gta5", gta)) is GTA5
    assert type(build_dataset("GTA5", gta, with_labels=False)) is GTA5
    assert type(build_dataset("intrada_pl.data.datasets.GTA5", gta)) is GTA5
    assert get_dataset_class(f"{__name__}.MyGTA") is MyGTA
    with pytest.raises(ValueError, match="known keys: acdc, bdd100k"):
        build_dataset("gta6", gta)
    with pytest.raises(ValueError, match="cannot import"):
        build_dataset("no_such_pkg.mod.Cls", gta)
    with pytest.raises(TypeError, match="not a SegmentationDataset"):
        build_dataset("collections.OrderedDict", gta)
