import cv2
import numpy as np

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
    assert len(probs) == 6, probs

    def one(fname, text):
        hits = [p for p in probs if fname in p and text in p]
        assert len(hits) == 1, (fname, text, probs)

    one("labels/00002.png", "label size 8x8 differs from image size 32x16")
    one("labels/00003.png", "outside the encoding")
    assert "[40]" in next(p for p in probs if "00003" in p) and "3 pixels" in next(p for p in probs if "00003" in p)
    one("images/00004.png", "unreadable image")
    one("labels/00005.png", "unreadable label")
    one("labels/00006.png", "missing label file")
    one("labels/00007.png", "wrong label encoding")
    assert rep["num_images"] == 7
    assert rep["class_pixels"][0] == 512 + 64 + 509 + 512     # 00001, 00002 (on-disk 8x8), 00003, 00004
    text = format_report(rep)
    assert "problems: 6" in text and "00005.png" in text
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
