"""The target datasets as released: both WildDash2 releases decoded by category name, PNG
predictions for JPEG inputs, and ``intrada inspect`` with dataset options and exit codes."""

import json
import warnings

import cv2
import numpy as np
import pytest
import torch
import yaml

from intrada_pl.cli import main, run
from intrada_pl.data import labels as L
from intrada_pl.data import layouts
from intrada_pl.data.datasets import LabelFormatError, WildDash2
from intrada_pl.data.inspect import inspect_dataset
from intrada_pl.models.deeplabv2 import DeepLabV2

H, W = 16, 32

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


def img(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def stripes(ids: list[int], h: int = H) -> np.ndarray:
    """One column per category id."""
    return np.tile(np.array(ids, np.uint8), (h, 1))


# ----------------------------------------------------------------------------------- WildDash2
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


# ----------------------------------------------------------------------------------- inspect
def test_inspect_selects_acdc_condition(tmp_path, capsys):
    layouts.write_acdc(tmp_path, "fog", "val", "GOPR0475", 1, img(5), np.full((H, W), 7, np.uint8))     # road
    layouts.write_acdc(tmp_path, "night", "val", "GP010376", 2, img(6), np.full((H, W), 23, np.uint8))  # sky
    layouts.write_acdc(tmp_path, "night", "val", "GP010376", 3, img(7), np.full((H, W), 26, np.uint8))  # car
    main(["inspect", "acdc", str(tmp_path), "--option", "condition=night", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 2 and report["class_pixels"][10] == report["class_pixels"][13] == H * W
    assert report["class_pixels"][0] == 0
    main(["inspect", "acdc", str(tmp_path), "--options", "{condition: fog}", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 1 and report["class_pixels"][0] == H * W


def test_inspect_selects_foggy_beta(tmp_path, capsys):
    layouts.write_foggy_cityscapes(tmp_path, "val", "lindau", 0, 1, img(8), np.full((H, W), 7, np.uint8), betas=(0.02,))
    layouts.write_foggy_cityscapes(tmp_path, "val", "lindau", 0, 2, img(9), np.full((H, W), 26, np.uint8), betas=(0.005, 0.01))
    main(["inspect", "foggy_cityscapes", str(tmp_path), "--option", "beta=0.02", "--json"])   # 0.02 is read as a number
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 1 and report["class_pixels"][0] == H * W and report["class_pixels"][13] == 0
    main(["inspect", "foggy_cityscapes", str(tmp_path), "--options", '{"beta": 0.01}', "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 1 and report["class_pixels"][13] == H * W


@pytest.mark.parametrize("args, message", [
    (["--option", "weather=night"], "ACDC has no option 'weather'; its options: condition"),
    (["--option", "night"], "--option takes KEY=VALUE"),
    (["--options", "[1, 2]"], "--options must be a mapping"),
    (["--option", "condition=sand"], "ACDC condition must be one of"),
])
def test_inspect_bad_option_is_one_error(tmp_path, capsys, args, message):
    layouts.write_acdc(tmp_path, "fog", "val", "GOPR0475", 1, img(5), np.full((H, W), 7, np.uint8))
    with pytest.raises(SystemExit) as exit_info:
        main(["inspect", "acdc", str(tmp_path), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"intrada inspect: error: {message}" in err and "Traceback" not in err


def test_inspect_exit_status(tmp_path, monkeypatch, capsys):
    root = tmp_path / "gta5"
    layouts.write_gta5(root, 1, img(1), np.full((H, W), 7, np.uint8))
    monkeypatch.setattr("sys.argv", ["intrada", "inspect", "gta5", str(root)])
    run()                                                   # clean: returns, exit status 0
    assert "problems: none" in capsys.readouterr().out
    layouts.write_gta5(root, 2, img(2), np.full((H, W), 40, np.uint8))    # not a Cityscapes id
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 1
    assert "problems: 1" in capsys.readouterr().out
