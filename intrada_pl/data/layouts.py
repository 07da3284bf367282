"""Writers for the real on-disk layouts read by :mod:`intrada_pl.data.datasets`.

This is the single place that knows how to *write* each dataset the way its official archive
ships it (same folders, names, bit depths and label encodings), so tests and the toy-data
generator exercise exactly the code paths real data takes. Each writer takes an RGB image
(HxWx3 uint8) plus the label in the dataset's *native* encoding and returns the paths written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from . import labels as L

__all__ = [
    "write_gta5", "write_synthia", "write_synscapes", "write_cityscapes", "write_foggy_cityscapes",
    "write_bdd100k", "write_mapillary", "write_wilddash2", "write_acdc", "write_acdc_ref",
    "cityscapes_stem", "wilddash2_segment_id", "WILDDASH2_RELEASES",
]


# ------------------------------------------------------------------------------ primitives
def _prep(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _imwrite(path: Path, arr: np.ndarray, params: Sequence[int] = ()) -> Path:
    if not cv2.imwrite(str(_prep(path)), arr, list(params)):
        raise OSError(f"cv2 failed to write {path}")
    return path


def _write_rgb(path: Path, image: np.ndarray) -> Path:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 uint8, got {image.dtype} {image.shape}")
    params = (cv2.IMWRITE_JPEG_QUALITY, 95) if path.suffix.lower() in (".jpg", ".jpeg") else ()
    return _imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)


def _as_u8_2d(label: np.ndarray, what: str) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 2 or label.min(initial=0) < 0 or label.max(initial=0) > 255:
        raise ValueError(f"{what} must be a 2-D array of values 0..255, got shape {label.shape}")
    return label.astype(np.uint8)


def _write_gray(path: Path, label: np.ndarray) -> Path:
    """8-bit single-channel PNG (PIL mode L)."""
    return _imwrite(path, _as_u8_2d(label, "label"))


def _write_palette(path: Path, indices: np.ndarray, colors: np.ndarray) -> Path:
    """8-bit palette PNG (PIL mode P): pixel = index, palette = ``colors`` (Nx3, N <= 256)."""
    im = Image.fromarray(_as_u8_2d(indices, "label"))
    pal = np.zeros((256, 3), np.uint8)
    pal[: len(colors)] = colors
    im.putpalette(pal.ravel().tolist())   # L + palette -> mode P, indices kept verbatim
    im.save(_prep(path))
    return path


def _write_rgba(path: Path, rgb: np.ndarray) -> Path:
    bgra = np.concatenate([rgb[..., ::-1], np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return _imwrite(path, bgra)


def _check_hw(image: np.ndarray, label: np.ndarray, allow_mismatch: bool) -> None:
    if not allow_mismatch and np.asarray(image).shape[:2] != np.asarray(label).shape[:2]:
        raise ValueError(f"image {np.asarray(image).shape[:2]} and label {np.asarray(label).shape[:2]} sizes differ")


# ------------------------------------------------------------------------------ sources
def write_gta5(root: str | Path, name: str | int, image: np.ndarray, label_ids: np.ndarray,
               allow_size_mismatch: bool = False) -> tuple[Path, Path]:
    """``images/<name>`` + ``labels/<name>``: palette PNG, index = Cityscapes id, Cityscapes colours.

    ``name`` is ``"00001.png"`` or an int. ``allow_size_mismatch`` mimics files 20801-20860.
    """
    root = Path(root)
    name = f"{name:05d}.png" if isinstance(name, int) else name
    _check_hw(image, label_ids, allow_size_mismatch)
    return (_write_rgb(root / "images" / name, image),
            _write_palette(root / "labels" / name, label_ids, L.ID_PALETTE))


def write_synthia(root: str | Path, name: str | int, image: np.ndarray, synthia_ids: np.ndarray,
                  instance_ids: np.ndarray | None = None) -> tuple[Path, Path]:
    """``RGB/<name>`` + ``GT/LABELS/<name>``: 16-bit 3-channel PNG, R = class, G = instance.

    ``root`` is the ``RAND_CITYSCAPES`` folder. ``name`` is ``"0000000.png"`` or an int.
    """
    root = Path(root)
    name = f"{name:07d}.png" if isinstance(name, int) else name
    synthia_ids = np.asarray(synthia_ids)
    _check_hw(image, synthia_ids, False)
    lab = np.zeros(synthia_ids.shape + (3,), np.uint16)
    lab[:, :, 2] = synthia_ids                      # cv2 writes BGR: channel 2 is R
    if instance_ids is not None:
        lab[:, :, 1] = instance_ids
    return (_write_rgb(root / "RGB" / name, image), _imwrite(root / "GT" / "LABELS" / name, lab))


def write_synscapes(root: str | Path, index: int, image: np.ndarray, label_ids: np.ndarray,
                    image_2k: np.ndarray | None = None) -> list[Path]:
    """``img/rgb/<index>.png`` (+ ``img/rgb-2k``) + ``img/class/<index>.png`` (8-bit Cityscapes ids).

    ``root`` is the ``Synscapes`` folder. Real class maps exist only at the rgb size.
    """
    root = Path(root)
    _check_hw(image, label_ids, False)
    paths = [_write_rgb(root / "img" / "rgb" / f"{index}.png", image),
             _write_gray(root / "img" / "class" / f"{index}.png", label_ids)]
    if image_2k is not None:
        paths.append(_write_rgb(root / "img" / "rgb-2k" / f"{index}.png", image_2k))
    meta = {"camera": {"intrinsic": {"resx": int(image.shape[1]), "resy": int(image.shape[0])}}}
    paths.append(_prep(root / "meta" / f"{index}.json"))
    paths[-1].write_text(json.dumps(meta))
    return paths


def cityscapes_stem(city: str, seq: int, frame: int) -> str:
    return f"{city}_{seq:06d}_{frame:06d}"


def _write_gtfine(root: Path, split: str, city: str, stem: str, label_ids: np.ndarray) -> list[Path]:
    d = root / "gtFine" / split / city
    ids = _as_u8_2d(label_ids, "label_ids")
    return [
        _write_gray(d / f"{stem}_gtFine_labelIds.png", ids),
        # 16-bit; stuff pixels hold the id (things would be id*1000+k; the evaluator accepts plain ids)
        _imwrite(d / f"{stem}_gtFine_instanceIds.png", ids.astype(np.uint16)),
        _write_rgba(d / f"{stem}_gtFine_color.png", L.ID_PALETTE[ids]),
    ]


def write_cityscapes(root: str | Path, split: str, city: str, seq: int, frame: int,
                     image: np.ndarray, label_ids: np.ndarray | None) -> list[Path]:
    """``leftImg8bit/...`` + ``gtFine/..._{labelIds,instanceIds,color}.png`` (no gt if ``label_ids`` is None)."""
    root, stem = Path(root), cityscapes_stem(city, seq, frame)
    paths = [_write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)]
    if label_ids is not None:
        _check_hw(image, label_ids, False)
        paths += _write_gtfine(root, split, city, stem, label_ids)
    return paths


def write_foggy_cityscapes(root: str | Path, split: str, city: str, seq: int, frame: int,
                           image: np.ndarray, label_ids: np.ndarray | None,
                           betas: Sequence[float | str] = (0.005, 0.01, 0.02)) -> list[Path]:
    """``leftImg8bit_foggy/..._leftImg8bit_foggy_beta_<beta>.png`` per beta + Cityscapes ``gtFine``."""
    root, stem = Path(root), cityscapes_stem(city, seq, frame)
    d = root / "leftImg8bit_foggy" / split / city
    paths = [_write_rgb(d / f"{stem}_leftImg8bit_foggy_beta_{b}.png", image) for b in betas]
    if label_ids is not None:
        _check_hw(image, label_ids, False)
        paths += _write_gtfine(root, split, city, stem, label_ids)
    return paths


# ------------------------------------------------------------------------------ targets
def write_bdd100k(root: str | Path, split: str, name: str, image: np.ndarray, train_ids: np.ndarray | None,
                  old_layout: bool = False) -> list[Path]:
    """10K sem-seg: ``images/10k/<split>/<name>.jpg`` + ``labels/sem_seg/masks/<split>/<name>.png``
    (8-bit train IDs), or with ``old_layout`` ``seg/images/...`` + ``seg/labels/<split>/<name>_train_id.png``."""
    root, stem = Path(root), Path(name).stem
    if old_layout:
        img, lab = root / "seg" / "images" / split / f"{stem}.jpg", root / "seg" / "labels" / split / f"{stem}_train_id.png"
    else:
        img, lab = root / "images" / "10k" / split / f"{stem}.jpg", root / "labels" / "sem_seg" / "masks" / split / f"{stem}.png"
    paths = [_write_rgb(img, image)]
    if train_ids is not None:
        _check_hw(image, train_ids, False)
        paths.append(_write_gray(lab, train_ids))
    return paths


def write_mapillary(root: str | Path, split: str, key: str, image: np.ndarray, class_indices: np.ndarray | None,
                    names: Sequence[str] | None = None, version: str = "v1.2") -> list[Path]:
    """``<split>/images/<key>.jpg`` + ``<split>/v1.2/labels/<key>.png`` (palette, index = class in the
    config) and ``config_v1.2.json`` (written once; ``names`` overrides the stock v1.2 order).
    ``version="v1.1"`` writes ``<split>/labels/`` and ``config.json`` instead."""
    if version not in ("v1.1", "v1.2"):
        raise ValueError(f"version must be 'v1.1' or 'v1.2', got {version!r}")
    root = Path(root)
    names = list(L.MAPILLARY_V12_NAMES if names is None else names)
    stock = dict(zip(L.MAPILLARY_V12_NAMES, L.MAPILLARY_V12_COLORS))
    colors = np.array([stock.get(n, (128, 128, 128)) for n in names], np.uint8)
    config = root / ("config_v1.2.json" if version == "v1.2" else "config.json")
    if config.is_file():
        existing = [c["name"] for c in json.loads(config.read_text())["labels"]]
        if existing != names:
            raise ValueError(f"{config} already lists different class names")
    else:
        labels = [{"name": n, "readable": n.rsplit("--", 1)[-1].replace("-", " ").title(),
                   "color": [int(c) for c in col], "instances": False, "evaluate": n != "void--unlabeled"}
                  for n, col in zip(names, colors)]
        _prep(config).write_text(json.dumps({"labels": labels, "version": version[1:]}, indent=1))
    key = Path(key).stem
    paths = [_write_rgb(root / split / "images" / f"{key}.jpg", image), config]
    if class_indices is not None:
        _check_hw(image, class_indices, False)
        label_dir = root / split / ("v1.2" if version == "v1.2" else "") / "labels"
        paths.append(_write_palette(label_dir / f"{key}.png", class_indices, colors))
    return paths


def wilddash2_segment_id(category: int) -> int:
    """Segment id used by :func:`write_wilddash2` for a category: spans R, G and B so a decoder
    that swaps channels or drops G/B is caught."""
    return 1 + 256 * int(category) + 65536 * (int(category) % 3 + 1)


#: The category names of the two public WildDash2 releases (index = category id).
WILDDASH2_RELEASES: dict[str, tuple[str, ...]] = {"beta": L.WILDDASH2_BETA_NAMES, "v2.0": L.WILDDASH2_V2_NAMES}


def write_wilddash2(root: str | Path, name: str, image: np.ndarray, category_ids: np.ndarray | None,
                    release: str = "beta", names: Sequence[str] | None = None) -> list[Path]:
    """``images/<name>.jpg`` + ``panoptic/<name>.png`` and an updated ``panoptic.json``.

    ``category_ids``: per-pixel WildDash2 category id, an index into the release's category names
    (``release="beta"``: 39, Cityscapes ids + 34..38 extras; ``"v2.0"``: the 81 of
    ``wd_public_v2p0``; ``names`` overrides them); 255 = void (segment id 0). The json's
    ``categories`` are written once, with those names. One segment per category, id from
    :func:`wilddash2_segment_id`, encoded as R + 256*G + 65536*B.
    """
    if release not in WILDDASH2_RELEASES:
        raise ValueError(f"release must be one of {list(WILDDASH2_RELEASES)}, got {release!r}")
    names = list(WILDDASH2_RELEASES[release] if names is None else names)
    root, stem = Path(root), Path(name).stem
    paths = [_write_rgb(root / "images" / f"{stem}.jpg", image)]
    if category_ids is None:
        return paths
    cats = np.asarray(category_ids)
    _check_hw(image, cats, False)
    pid = np.zeros(cats.shape, np.int64)
    segments = []
    for c in np.unique(cats):
        if c == L.IGNORE_INDEX:
            continue
        if not 0 <= c < len(names):
            raise ValueError(f"category id {c} is not one of the {len(names)} categories")
        m = cats == c
        sid = wilddash2_segment_id(c)
        pid[m] = sid
        ys, xs = np.nonzero(m)
        segments.append({"id": sid, "category_id": int(c), "area": int(m.sum()), "iscrowd": 0,
                         "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]})
    bgr = np.stack([(pid >> 16) & 255, (pid >> 8) & 255, pid & 255], axis=2).astype(np.uint8)
    paths.append(_imwrite(root / "panoptic" / f"{stem}.png", bgr))

    jpath = root / "panoptic.json"
    categories = [{"id": i, "name": n} for i, n in enumerate(names)]
    data = json.loads(jpath.read_text()) if jpath.is_file() else {"images": [], "annotations": [], "categories": categories}
    if data["categories"] != categories:
        raise ValueError(f"{jpath} already lists different categories")
    data["images"] = [x for x in data["images"] if x["id"] != stem] + [
        {"id": stem, "file_name": f"{stem}.jpg", "height": int(cats.shape[0]), "width": int(cats.shape[1])}]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != stem] + [
        {"image_id": stem, "file_name": f"{stem}.png", "segments_info": segments}]
    _prep(jpath).write_text(json.dumps(data))
    paths.append(jpath)
    return paths


def _acdc_dir(kind: str, root: Path, condition: str, split: str, seq: str) -> Path:
    return root / kind / condition / split / seq


def write_acdc(root: str | Path, condition: str, split: str, seq: str, frame: int, image: np.ndarray,
               label_ids: np.ndarray | None) -> list[Path]:
    """``rgb_anon/<cond>/<split>/<seq>/<seq>_frame_NNNNNN_rgb_anon.png`` + ``gt/...`` with
    ``_gt_labelIds`` (from ``label_ids``, Cityscapes ids), ``_gt_labelTrainIds``, ``_gt_labelColor``
    and an all-valid ``_gt_invIds``."""
    root, stem = Path(root), f"{seq}_frame_{frame:06d}"
    paths = [_write_rgb(_acdc_dir("rgb_anon", root, condition, split, seq) / f"{stem}_rgb_anon.png", image)]
    if label_ids is not None:
        _check_hw(image, label_ids, False)
        ids = _as_u8_2d(label_ids, "label_ids")
        d = _acdc_dir("gt", root, condition, split, seq)
        paths += [
            _write_gray(d / f"{stem}_gt_labelIds.png", ids),
            _write_gray(d / f"{stem}_gt_labelTrainIds.png", L.ID_TO_TRAIN_ID_LUT[ids]),
            _write_rgb(d / f"{stem}_gt_labelColor.png", L.ID_PALETTE[ids]),
            _write_gray(d / f"{stem}_gt_invIds.png", np.zeros_like(ids)),
        ]
    return paths


def write_acdc_ref(root: str | Path, condition: str, split: str, seq: str, frame: int, image: np.ndarray) -> Path:
    """Reference (clear-weather) frame: ``rgb_anon/<cond>/<split>_ref/<seq>/<seq>_frame_NNNNNN_rgb_ref_anon.png``."""
    root = Path(root)
    return _write_rgb(_acdc_dir("rgb_anon", root, condition, f"{split}_ref", seq)
                      / f"{seq}_frame_{frame:06d}_rgb_ref_anon.png", image)
