import ast
from pathlib import Path

import numpy as np
import pytest

from intrada_pl.data import labels as L

cs_labels = pytest.importorskip("cityscapesscripts.helpers.labels")


def test_19_pairs_match_cityscapesscripts():
    ref = {lab.id: lab.trainId for lab in cs_labels.labels if lab.trainId not in (255, -1)}
    assert L.CITYSCAPES_ID_TO_TRAIN_ID == ref
    assert len(L.CITYSCAPES_ID_TO_TRAIN_ID) == L.NUM_CLASSES == 19
    assert L.TRAIN_ID_TO_CITYSCAPES_ID == {t: i for i, t in ref.items()}
    assert L.CLASS_NAMES == tuple(cs_labels.trainId2label[t].name for t in range(19))
    assert [tuple(c) for c in L.PALETTE] == [cs_labels.trainId2label[t].color for t in range(19)]
    for lab in cs_labels.labels:
        if lab.id >= 0:
            assert tuple(L.ID_PALETTE[lab.id]) == lab.color
            assert L.CITYSCAPES_ID_NAMES[lab.id] == lab.name


def test_id_lut_and_inverse():
    lut = L.ID_TO_TRAIN_ID_LUT
    assert lut.dtype == np.uint8 and lut.shape == (256,)
    for lab in cs_labels.labels:
        if lab.id >= 0:
            assert lut[lab.id] == (255 if lab.trainId in (255, -1) else lab.trainId)
    assert (lut[34:] == 255).all()
    inv = L.TRAIN_ID_TO_ID_LUT
    assert inv.dtype == np.uint8 and inv.shape == (256,)
    assert inv[255] == 0                      # "unlabeled": valid for the official evaluator
    assert (inv[19:] == 0).all()
    assert all(cs_labels.id2label[int(inv[t])].trainId == t for t in range(19))
    assert (lut[inv[:19]] == np.arange(19)).all()
    with pytest.raises(ValueError):
        lut[0] = 1                            # shared tables are read-only


def test_labels_module_does_not_import_cityscapesscripts():
    tree = ast.parse(Path(L.__file__).read_text())
    mods = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    mods |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any("cityscapes" in m for m in mods)


def test_synthia_mapping():
    m = L.SYNTHIA_TO_TRAIN_ID
    assert len(m) == 19 and sorted(m.values()) == list(range(19))
    assert {0, 13, 14, 22}.isdisjoint(m)
    alias = {"pedestrian": "person"}
    for s, t in m.items():
        assert alias.get(L.SYNTHIA_CLASS_NAMES[s], L.SYNTHIA_CLASS_NAMES[s]) == L.CLASS_NAMES[t]
    arr = np.array([[3, 8, 22, 259], [65535, 0, 1, 11]], np.uint16)
    out = L.synthia_to_train_id(arr)
    assert out.dtype == np.uint8
    assert out.tolist() == [[0, 13, 255, 255], [255, 255, 10, 18]]


def test_map_ids_and_colorize():
    lut = L.ID_TO_TRAIN_ID_LUT
    assert L.map_ids(np.array([-1, 7, 300, 33], np.int32), lut).tolist() == [255, 0, 255, 18]
    img = L.colorize(np.array([[0, 255], [18, 100]], np.uint8))
    assert img.shape == (2, 2, 3) and img.dtype == np.uint8
    assert img[0, 0].tolist() == [128, 64, 128] and img[0, 1].tolist() == [0, 0, 0]
    assert img[1, 0].tolist() == [119, 11, 32] and img[1, 1].tolist() == [0, 0, 0]
    assert L.colorize(np.array([[13, 255]], np.int64)).tolist() == [[[0, 0, 142], [0, 0, 0]]]


def test_eval_subsets():
    s = L.EVAL_SUBSETS
    assert s["19"] == tuple(range(19))
    assert s["16"] == (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    assert s["13"] == (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18)
    assert set(s["13"]) <= set(s["16"]) <= set(s["19"])
    # the 16-class subset is exactly the classes SYNTHIA has pixels for
    assert set(range(19)) - set(s["16"]) == {9, 14, 16}


def test_mapillary_table_by_name():
    names = L.MAPILLARY_V12_NAMES
    assert len(names) == 66 == len(L.MAPILLARY_V12_COLORS) and names[65] == "void--unlabeled"
    lut = L.MAPILLARY_V12_TO_TRAIN_ID_LUT
    documented = {2: 1, 3: 4, 6: 3, 7: 0, 8: 0, 9: 1, 11: 1, 13: 0, 14: 0, 15: 1, 17: 2, 19: 11,
                  20: 12, 21: 12, 22: 12, 23: 0, 24: 0, 25: 9, 26: 9, 27: 10, 29: 9, 30: 8, 41: 0,
                  43: 0, 44: 5, 45: 5, 46: 5, 47: 5, 48: 6, 50: 7, 52: 18, 54: 15, 55: 13, 57: 17,
                  58: 16, 61: 14}
    assert {i: int(lut[i]) for i in range(256) if lut[i] != 255} == documented
    assert set(L.MAPILLARY_NAME_TO_TRAIN_ID) <= set(names)
    assert sorted(set(documented.values())) == list(range(19))
    # robust to index order: a permuted config maps the same names to the same classes
    perm = list(reversed(names))
    lut2 = L.mapillary_lut(perm)
    assert all(lut2[i] == lut[names.index(n)] for i, n in enumerate(perm))


def test_wilddash2_policy():
    lut = L.WILDDASH2_TO_TRAIN_ID_LUT
    assert (lut[:34] == L.ID_TO_TRAIN_ID_LUT[:34]).all()
    assert [int(lut[c]) for c in (34, 35, 36, 37, 38)] == [14, 13, 255, 255, 0]
    assert (lut[39:] == 255).all()
