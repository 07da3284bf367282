"""The dataset inspector (intrada_pl/data/inspect.py, ``intrada inspect``): counts, problems and notes,
dataset options and exit codes."""

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from intrada_pl.cli import main as cli_main
from intrada_pl.cli import run
from intrada_pl.data import layouts
from intrada_pl.data.inspect import format_report, inspect_dataset, main

H, W = 16, 32


def img(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_counts_on_known_tree(tmp_path):
    root = tmp_path / "gta5"
    lab1 = np.full((H, W), 7, np.uint8)                 # 512 road
    lab2 = np.full((H, W), 26, np.uint8)                # 256 car + 128 unlabeled(0) + 128 polegroup(18)
    lab2[:, W // 2:] = 0
    lab2[H // 2:, W // 2:] = 18
    layouts.write_gta5(root, 1, img(1), lab1)
    layouts.write_gta5(root, 2, img(2), lab2)
    layouts.write_gta5(root, 3, img(3, 8, 20), np.full((8, 20), 24, np.uint8))   # 160 person
    rep = inspect_dataset("gta5", root)
    expected = [0] * 19
    expected[0], expected[13], expected[11] = 512, 256, 160
    assert rep["class_pixels"] == expected
    assert rep["ignored_pixels"] == 256
    assert rep["num_images"] == 3 and rep["split"] == "all" and rep["dataset"] == "gta5"
    assert rep["image_sizes"] == {"32x16": 2, "20x8": 1} == rep["label_sizes"]
    assert rep["problems"] == []
    assert inspect_dataset("gta5", root, decode_images=False)["image_sizes"] == rep["image_sizes"]
    assert inspect_dataset("gta5", root, limit=1)["class_pixels"][0] == 512

    text = format_report(rep)
    assert "road" in text and "512" in text and "person" in text and "problems: none" in text


def test_each_problem_kind_is_reported(tmp_path):
    root = tmp_path / "gta5"
    good = np.full((H, W), 7, np.uint8)
    layouts.write_gta5(root, 1, img(1), good)
    layouts.write_gta5(root, 2, img(2), np.full((8, 8), 7, np.uint8), allow_size_mismatch=True)
    bad_ids = good.copy()
    bad_ids[0, :3] = 40
    layouts.write_gta5(root, 3, img(3), bad_ids)
    layouts.write_gta5(root, 4, img(4), good)
    (root / "images" / "00004.png").write_bytes(b"not a png")          # unreadable image
    layouts.write_gta5(root, 5, img(5), good)
    (root / "labels" / "00005.png").write_bytes(b"\x89PNG garbage")    # unreadable label
    layouts.write_gta5(root, 6, img(6), good)
    (root / "labels" / "00006.png").unlink()                           # missing label
    layouts.write_gta5(root, 7, img(7), good)
    cv2.imwrite(str(root / "labels" / "00007.png"), img(8))            # RGB label, not palette

    rep = inspect_dataset("gta5", root)
    probs = rep["problems"]
    assert len(probs) == 5, probs

    def one(fname, text):
        hits = [p for p in probs if fname in p and text in p]
        assert len(hits) == 1, (fname, text, probs)

    assert not [p for p in probs if "00002" in p]             # a GTA5 label of its own size: a note
    assert len(rep["notes"]) == 1 and "1 of 4 labels differ in size from their image" in rep["notes"][0]
    one("labels/00003.png", "outside the encoding")
    assert "[40]" in next(p for p in probs if "00003" in p) and "3 pixels" in next(p for p in probs if "00003" in p)
    one("images/00004.png", "unreadable image")
    one("labels/00005.png", "unreadable label")
    one("labels/00006.png", "missing label file")
    one("labels/00007.png", "wrong label encoding")
    assert rep["num_images"] == 7
    assert rep["class_pixels"][0] == 512 + 64 + 509 + 512     # 00001, 00002 (on-disk 8x8), 00003, 00004
    text = format_report(rep)
    assert "problems: 5" in text and "00005.png" in text
    assert main([str("gta5"), str(root), "--headers-only"]) == 1


def test_synthia_problems(tmp_path):
    rc = tmp_path / "RAND_CITYSCAPES"
    cls = np.full((H, W), 3, np.uint16)
    layouts.write_synthia(rc, 0, img(0), cls)
    cls[0, 0] = 30                                                     # not a SYNTHIA class
    cls[0, 1] = 300
    layouts.write_synthia(rc, 1, img(1), cls)
    layouts.write_synthia(rc, 2, img(2), cls)
    cv2.imwrite(str(rc / "GT" / "LABELS" / "0000002.png"), np.zeros((H, W, 3), np.uint8))   # 8-bit
    rep = inspect_dataset("synthia", tmp_path)
    probs = rep["problems"]
    assert len(probs) == 2, probs
    assert "0000001.png" in probs[0] and "[30, 300]" in probs[0] and "SYNTHIA" in probs[0]
    assert "0000002.png" in probs[1] and "16-bit" in probs[1]
    assert rep["class_pixels"][0] == 2 * H * W - 2 and rep["ignored_pixels"] == 2


def test_gta5_labels_of_their_own_size_are_a_note(tmp_path, capsys):
    """GTA5's 20801-20860 have labels whose size differs from their image; training resizes each
    from its own size as the reference does, so inspect notes them and exits 0."""
    root = tmp_path / "gta5"
    layouts.write_gta5(root, 20800, img(0), np.full((H, W), 7, np.uint8))
    for k in range(20801, 20808):
        layouts.write_gta5(root, k, img(k), np.full((8, 16), 7, np.uint8), allow_size_mismatch=True)
    rep = inspect_dataset("gta5", root)
    assert rep["problems"] == []
    (note,) = rep["notes"]
    assert "7 of 8 labels differ in size from their image" in note and "training resizes each from its own size" in note
    assert "20801.png, 20802.png, 20803.png, 20804.png, 20805.png ..." in note and "20806" not in note
    assert main(["gta5", str(root)]) == 0
    out = capsys.readouterr().out
    assert "problems: none" in out and "notes: 1" in out and "20801.png" in out


def test_cityscapes_label_of_another_size_is_a_problem(tmp_path):
    root = tmp_path / "Cityscapes"
    layouts.write_cityscapes(root, "val", "frankfurt", 0, 19, img(0), np.full((H, W), 7, np.uint8))
    label = next(root.glob("gtFine/val/*/*_labelIds.png"))
    cv2.imwrite(str(label), np.full((8, 16), 7, np.uint8))
    rep = inspect_dataset("cityscapes", root, "val")
    assert rep["notes"] == []
    assert rep["problems"] == [f"{label}: label size 16x8 differs from image size 32x16 "
                               f"({next(root.glob('leftImg8bit/val/*/*.png'))})"]
    assert main(["cityscapes", str(root), "--split", "val"]) == 1


def test_entries_that_are_no_image_files_are_problems(tmp_path, capsys):
    """A directory, a dangling symlink and a symlink loop where an image should be: listed, exit 1."""
    root = tmp_path / "gta5"
    for k in range(1, 5):
        layouts.write_gta5(root, k, img(k), np.full((H, W), 7, np.uint8))
    images = root / "images"
    (images / "00002.png").unlink()
    (images / "00002.png").mkdir()
    (images / "00003.png").unlink()
    (images / "00003.png").symlink_to(tmp_path / "gone.png")
    (images / "00004.png").unlink()
    (images / "00004.png").symlink_to("00004.png")
    rep = inspect_dataset("gta5", root)
    assert rep["num_images"] == 4 and rep["class_pixels"][0] == H * W     # 00001 only
    assert rep["problems"] == [
        f"{images / '00002.png'}: is a directory, not an image file",
        f"{images / '00003.png'}: is a symbolic link to '{tmp_path / 'gone.png'}', which does not exist",
        f"{images / '00004.png'}: is a symbolic link loop",
    ]
    assert main(["gta5", str(root), "--headers-only"]) == 1
    assert "problems: 3" in capsys.readouterr().out


def test_image_name_that_is_not_utf8_is_a_problem(tmp_path, capsys):
    root = tmp_path / "BDD"
    image, label = layouts.write_bdd100k(root, "val", "a1", img(1), np.zeros((H, W), np.uint8))
    shutil.copy(image, image.with_name(os.fsdecode(b"\xff\xfe.jpg")))
    shutil.copy(label, label.with_name(os.fsdecode(b"\xff\xfe.png")))
    rep = inspect_dataset("bdd100k", root)
    (problem,) = rep["problems"]
    assert problem.startswith(repr(os.fsencode(image.with_name(os.fsdecode(b"\xff\xfe.jpg")))) + ": ")
    assert "has a file name that is not valid UTF-8" in problem
    assert main(["bdd100k", str(root)]) == 1
    assert "b'" in capsys.readouterr().out          # printed as bytes: no UnicodeEncodeError on a strict stdout


# ----------------------------------------------------------------------------------- `intrada inspect` with dataset options
def test_inspect_selects_acdc_condition(tmp_path, capsys):
    layouts.write_acdc(tmp_path, "fog", "val", "GOPR0475", 1, img(5), np.full((H, W), 7, np.uint8))     # road
    layouts.write_acdc(tmp_path, "night", "val", "GP010376", 2, img(6), np.full((H, W), 23, np.uint8))  # sky
    layouts.write_acdc(tmp_path, "night", "val", "GP010376", 3, img(7), np.full((H, W), 26, np.uint8))  # car
    cli_main(["inspect", "acdc", str(tmp_path), "--option", "condition=night", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 2 and report["class_pixels"][10] == report["class_pixels"][13] == H * W
    assert report["class_pixels"][0] == 0
    cli_main(["inspect", "acdc", str(tmp_path), "--options", "{condition: fog}", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 1 and report["class_pixels"][0] == H * W


def test_inspect_selects_foggy_beta(tmp_path, capsys):
    layouts.write_foggy_cityscapes(tmp_path, "val", "lindau", 0, 1, img(8), np.full((H, W), 7, np.uint8), betas=(0.02,))
    layouts.write_foggy_cityscapes(tmp_path, "val", "lindau", 0, 2, img(9), np.full((H, W), 26, np.uint8), betas=(0.005, 0.01))
    cli_main(["inspect", "foggy_cityscapes", str(tmp_path), "--option", "beta=0.02", "--json"])   # 0.02 is read as a number
    report = json.loads(capsys.readouterr().out)
    assert report["num_images"] == 1 and report["class_pixels"][0] == H * W and report["class_pixels"][13] == 0
    cli_main(["inspect", "foggy_cityscapes", str(tmp_path), "--options", '{"beta": 0.01}', "--json"])
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
        cli_main(["inspect", "acdc", str(tmp_path), *args])
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
