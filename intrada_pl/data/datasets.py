"""One ``torch`` Dataset per on-disk layout, all returning images + 19-class train IDs.

Every class reads the dataset *as extracted from the official archives* (see each ``layout``
and ``/work/shared/DATASETS.md``); nothing has to be converted beforehand. The base class holds
all shared behaviour (root resolution, scanning, list files, error messages, ``__getitem__``);
a subclass only states where its files are and how its label encoding maps to train IDs.

Label reading is split in two so that tools can check data without guessing:

* :meth:`SegmentationDataset.read_raw_label` returns the label exactly as encoded on disk
  (GTA5 palette indices, SYNTHIA R channel, ...), at its on-disk size;
* :meth:`SegmentationDataset.raw_to_train_id` maps such values to train IDs (elementwise), and
  :meth:`SegmentationDataset.valid_raw_values` says which raw values the encoding allows.

:meth:`read_label` = raw -> train IDs -> resized (NEAREST) to the image size when they differ,
unless the transform resizes labels itself (``transform.resizes_label``): it then gets the label
at its on-disk size and resizes it once, straight to the training size, as the reference does.
Only datasets whose labels may differ in size from their images (``label_size_may_differ``: GTA5's
20801-20860, Synscapes at 2k) are resized; elsewhere a label of another size is refused.

Images that cannot be used are refused when the dataset is built, in one line, rather than met
(or silently skipped) mid-run: an entry named like an image that is a directory, a dangling
symbolic link or a link loop, and a file name that is not valid UTF-8 (see :meth:`image_problem`).
"""

from __future__ import annotations

import errno
import importlib
import io
import json
import os
import re
import stat
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from intrada_pl.errors import BadInputError

from . import labels as L

__all__ = [
    "DatasetLayoutError", "LabelFormatError", "ImageFileError", "SegmentationDataset",
    "GTA5", "Synthia", "Synscapes", "Cityscapes", "FoggyCityscapes", "BDD100K", "Mapillary",
    "WildDash2", "ACDC", "DATASETS", "get_dataset_class", "build_dataset",
    "read_rgb", "read_index_png", "image_size", "resize_nearest", "display_path",
]


class DatasetLayoutError(BadInputError, FileNotFoundError):
    """The files under a dataset root do not match the layout the dataset class expects."""


class LabelFormatError(BadInputError, ValueError):
    """A label file decodes, but not in the encoding its dataset uses (e.g. 8-bit SYNTHIA), or
    not at its image's size."""


class ImageFileError(BadInputError, OSError):
    """An image or label file that cannot be used: empty, truncated, corrupt, no image at all, no
    file at all (a directory, a dangling link), or with a file name that is not valid UTF-8."""


def display_path(path: str | Path) -> str:
    """``path`` for a message: as bytes (``b'...'``) when it is not valid UTF-8, which Python
    holds as surrogate escapes that a terminal or a UTF-8 file refuses."""
    return str(path) if _is_utf8(str(path)) else repr(os.fsencode(path))


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _entry_problem(path: Path) -> str | None:
    """Why a directory entry named like an image is no file to read, or None if it is one: a glob
    also finds directories and broken links, which the dataset must not lose unnoticed."""
    try:
        if stat.S_ISREG(path.stat().st_mode):
            return None
    except FileNotFoundError:
        if path.is_symlink():
            return f"is a symbolic link to {os.readlink(path)!r}, which does not exist"
        return "does not exist"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be read ({error.strerror})"
    return "is a directory, not an image file" if path.is_dir() else "is not a regular file"


def _name_problem(name: str) -> str | None:
    """Why a sample name cannot be used, or None: names go into the ranking's lists and the
    prediction files, written as UTF-8, so a Latin-1 name would fail there, after hours of work."""
    if _is_utf8(name):
        return None
    return ("has a file name that is not valid UTF-8, which the ranking's lists and the prediction files need: "
            "rename it (e.g. convmv -r -f latin1 -t utf8 --notest on its folder)")


# ------------------------------------------------------------------------------------------
# Readers. Images go through cv2 (faster than PIL for both PNG and JPEG decoding). EXIF
# orientation is ignored on purpose: label PNGs are aligned with the stored pixel grid.
def _read_file(path: str | Path, what: str) -> bytes:
    """The bytes of an image or label file, refused if they stop before the format's end marker
    (a PNG's IEND chunk; a JPEG's end-of-image after its last scan): OpenCV would fill the
    missing rows of a truncated JPEG with grey, so a partial download or copy would pass silently."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        if isinstance(error, FileNotFoundError) and not Path(path).is_symlink():
            raise FileNotFoundError(f"{what} file not found: {path}") from None
        why = _entry_problem(Path(path)) or f"cannot be read ({error.strerror})"
        raise ImageFileError(f"{what} file {path} {why}") from None
    if not data:
        raise ImageFileError(f"{what} file {path} is empty (0 bytes): nothing was written to it (an interrupted "
                             f"download, copy or extraction?); replace it with the complete file")
    png, jpeg = data.startswith(b"\x89PNG\r\n\x1a\n"), data.startswith(b"\xff\xd8")
    if (png and data.rfind(b"IEND\xaeB`\x82") < 0) or (jpeg and data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda")):
        raise ImageFileError(f"{what} file {path} is truncated: its {'PNG' if png else 'JPEG'} data stops before the end "
                             f"(an interrupted download, copy or extraction?); replace it with the complete file")
    return data


def _undecodable(path: str | Path, what: str) -> ImageFileError:
    expected = "PNG" if what == "label" else "PNG or JPEG"
    return ImageFileError(f"{what} file {path} cannot be decoded: expected a {expected} image, "
                          f"the file is corrupt or of another kind; replace it with the original")


def _decode_cv2(path: str | Path, flags: int, what: str = "label") -> np.ndarray:
    """The array OpenCV decodes from an image or label file (``cv2.IMREAD_*`` ``flags``)."""
    image = cv2.imdecode(np.frombuffer(_read_file(path, what), np.uint8), flags)
    if image is None:
        raise _undecodable(path, what)
    return image


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB image (grey/RGBA/16-bit inputs are converted to 8-bit RGB)."""
    return cv2.cvtColor(_decode_cv2(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, "image"), cv2.COLOR_BGR2RGB)


def read_index_png(path: str | Path) -> np.ndarray:
    """HxW uint8 values of an 8-bit single-channel (L) or palette (P) PNG.

    PIL is used because cv2 expands palette PNGs to colours; for mode P we need the palette
    *indices* (GTA5, Mapillary), since distinct classes may share a colour.
    """
    data = _read_file(path, "label")
    try:
        with Image.open(io.BytesIO(data)) as im:
            mode = im.mode
            values = np.array(im) if mode in ("L", "P") else None
    except (OSError, SyntaxError) as error:  # PIL: UnidentifiedImageError, "broken PNG file", ...
        raise _undecodable(path, "label") from error
    if values is None:
        raise LabelFormatError(
            f"expected an 8-bit single-channel (L) or palette (P) label PNG, got PIL mode {mode!r}: {path}")
    return values


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header only (no decoding)."""
    with Image.open(path) as im:
        w, h = im.size
    return h, w


def resize_nearest(label: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """HxW label resized to ``hw`` by PIL NEAREST, the reference's label resize (it samples pixel
    centres, as cv2's INTER_NEAREST_EXACT does; cv2's INTER_NEAREST is shifted)."""
    return np.array(Image.fromarray(label).resize((hw[1], hw[0]), Image.NEAREST))


# ------------------------------------------------------------------------------------------
class SegmentationDataset(Dataset):
    """Base class: image + train-ID label + name, discovered from an on-disk layout.

    Args:
        root: dataset root as extracted (see ``layout``).
        split: split folder; ``None`` means the class's ``default_split``. Datasets without
            official splits (GTA5, SYNTHIA, Synscapes, WildDash2) accept and ignore it.
        list_file: optional text file with one name per line (the ADVENT list format, e.g.
            ``00001.png``); selects and orders samples. Blank lines are ignored.
        with_labels: read labels; if False, ``label`` is all 255 and label files are not needed.
        transform: ``transform(image=HxWx3 uint8, mask=HxW uint8) -> {"image", "mask"}``
            (albumentations-style); ``None`` returns uint8 CHW / int64 HW tensors. A transform
            whose ``resizes_label`` is true gets the label at its on-disk size (see ``read_label``).
        missing_labels: what to do with images whose label file is missing when
            ``with_labels``: ``"error"`` (default), ``"drop"`` the images, or ``"keep"`` them
            (reading such a label then raises; used by :mod:`intrada_pl.data.inspect`).
        unusable_images: what to do with images that cannot be used (:meth:`image_problem`):
            ``"error"`` (default: one error when the dataset is built), or ``"keep"`` them (reading
            one then raises; used by :mod:`intrada_pl.data.inspect` to list them all).
    """

    #: human description of the expected tree (used in errors and docs)
    layout: ClassVar[str] = "(undocumented)"
    default_split: ClassVar[str] = "all"
    #: sub-folders of ``root`` that may hold the real root (e.g. ``RAND_CITYSCAPES``)
    nested_roots: ClassVar[tuple[str, ...]] = ()
    #: image folders relative to the root, tried in order; ``{split}`` is substituted
    image_dir_candidates: ClassVar[tuple[str, ...]] = ("images",)
    #: glob under the image folder and full-match regex on the relative (posix) name
    image_glob: ClassVar[str] = "*.png"
    name_regex: ClassVar[str] = r"[^/]+\.png"
    #: train-ID lookup table for the raw label values
    label_lut: np.ndarray = L.ID_TO_TRAIN_ID_LUT
    #: whether a label may differ in size from its image (then resized NEAREST); elsewhere that is refused
    label_size_may_differ: ClassVar[bool] = False
    #: valid raw label values: 0..raw_label_max plus raw_label_extra
    raw_label_encoding: ClassVar[str] = "Cityscapes label ids 0..33"
    raw_label_max: int = 33
    raw_label_extra: tuple[int, ...] = ()

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        list_file: str | Path | None = None,
        with_labels: bool = True,
        transform: Callable[..., dict] | None = None,
        missing_labels: str = "error",
        unusable_images: str = "error",
    ) -> None:
        super().__init__()
        if missing_labels not in ("error", "drop", "keep"):
            raise ValueError(f"missing_labels must be 'error', 'drop' or 'keep', got {missing_labels!r}")
        if unusable_images not in ("error", "keep"):
            raise ValueError(f"unusable_images must be 'error' or 'keep', got {unusable_images!r}")
        self.split = self.default_split if split is None else str(split)
        self.list_file = None if list_file is None else Path(list_file)
        self.with_labels = bool(with_labels)
        self.transform = transform
        self._labels_ready = False
        self.root, self.image_root = self._resolve_root(Path(root).expanduser())

        found = self._discover()
        if not found:
            raise self._layout_error(
                f"no images found under {self.image_root} (patterns {list(self._image_globs())})")
        self.names: list[str] = self._select(found) if self.list_file else sorted(found, key=self.sort_key)
        self.image_paths: list[Path] = [found[n] for n in self.names]
        if unusable_images == "error":
            self._refuse_unusable_images()

        self.missing_label_names: list[str] = []
        if self.with_labels:
            self._ensure_labels()
            missing = [i for i in range(len(self.names)) if not self._label_exists(i)]
            self.missing_label_names = [self.names[i] for i in missing]
            if missing and missing_labels == "error":
                i = missing[0]
                raise self._layout_error(
                    f"{len(missing)} of {len(self.names)} images have no label file "
                    f"(pass with_labels=False to use the images alone); first: "
                    f"{self.image_paths[i]} -> expected {self.label_path(i)}")
            if missing and missing_labels == "drop":
                keep = sorted(set(range(len(self.names))) - set(missing))
                self.names = [self.names[i] for i in keep]
                self.image_paths = [self.image_paths[i] for i in keep]
                if not self.names:
                    raise self._layout_error(f"no image under {self.image_root} has a label file")

    # ---------------------------------------------------------------- layout helpers
    def _layout_error(self, msg: str) -> DatasetLayoutError:
        return DatasetLayoutError(
            f"{type(self).__name__}: {msg}\nExpected layout:\n{textwrap.indent(self.layout.strip(), '  ')}")

    def _refuse_unusable_images(self) -> None:
        """One error for the images that cannot be used, naming the first: before any work starts."""
        bad = [(i, why) for i in range(len(self.names)) if (why := self.image_problem(i))]
        if bad:
            i, why = bad[0]
            raise ImageFileError(
                f"{type(self).__name__}: {len(bad)} of {len(self.names)} images under {display_path(self.image_root)} "
                f"cannot be used; first: {display_path(self.image_paths[i])} {why}")

    def _image_dirs(self) -> tuple[str, ...]:
        return tuple(c.format(split=self.split) for c in self.image_dir_candidates)

    def _image_globs(self) -> tuple[str, ...]:
        return (self.image_glob,)

    def _name_regex(self) -> str:
        return self.name_regex

    def _resolve_root(self, root: Path) -> tuple[Path, Path]:
        """(dataset root, image folder): the first candidate root that holds an image folder."""
        if not root.is_dir():
            raise self._layout_error(f"dataset root {root} does not exist or is not a directory")
        tried = []
        for base in (root, *(root / n for n in self.nested_roots)):
            for rel in self._image_dirs():
                tried.append(base / rel)
                if tried[-1].is_dir():
                    return base, tried[-1]
        raise self._layout_error(
            f"no image folder under {root} (split {self.split!r}); looked for: "
            + ", ".join(str(t) for t in tried))

    def _discover(self) -> dict[str, Path]:
        """name (posix path relative to the image folder) -> image path, for names matching the layout
        (whatever the entry is: :meth:`image_problem` says which cannot be used)."""
        rx = re.compile(self._name_regex())
        found: dict[str, Path] = {}
        for pattern in self._image_globs():
            for p in self.image_root.glob(pattern):
                name = p.relative_to(self.image_root).as_posix()
                if rx.fullmatch(name):
                    found[name] = p
        return found

    def sort_key(self, name: str) -> Any:
        return name

    def _select(self, found: dict[str, Path]) -> list[str]:
        assert self.list_file is not None
        if not self.list_file.is_file():
            raise FileNotFoundError(f"list file not found: {self.list_file}")
        wanted = []
        for line in self.list_file.read_text().splitlines():
            line = line.strip().replace("\\", "/")
            if line:
                wanted.append(line[2:] if line.startswith("./") else line)
        missing = [n for n in wanted if n not in found]
        if missing:
            raise self._layout_error(
                f"{len(missing)} name(s) in list file {self.list_file} have no image under "
                f"{self.image_root}: " + ", ".join(repr(m) for m in missing[:5])
                + (" ..." if len(missing) > 5 else ""))
        if not wanted:
            raise self._layout_error(f"list file {self.list_file} is empty")
        return wanted

    # ---------------------------------------------------------------- label hooks
    def _prepare_labels(self) -> None:
        """Load whatever label decoding needs (configs, panoptic json). Called once, lazily."""

    def _ensure_labels(self) -> None:
        if not self._labels_ready:
            self._prepare_labels()
            self._labels_ready = True

    def _label_path(self, name: str) -> Path:
        raise NotImplementedError

    def _label_exists(self, i: int) -> bool:
        return self.label_path(i).is_file()

    def _decode_label(self, path: Path) -> np.ndarray:
        """Raw HxW label values as stored on disk (default: 8-bit L/P PNG)."""
        return read_index_png(path)

    # ---------------------------------------------------------------- public API
    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"

    def image_path(self, i: int) -> Path:
        return self.image_paths[i]

    def image_problem(self, i: int) -> str | None:
        """Why image ``i`` cannot be used ("is a directory, not an image file", "is a symbolic link
        loop", "has a file name that is not valid UTF-8, ..."), or None."""
        return _name_problem(self.names[i]) or _entry_problem(self.image_paths[i])

    def label_path(self, i: int) -> Path:
        self._ensure_labels()
        return self._label_path(self.names[i])

    def read_image(self, i: int) -> np.ndarray:
        """HxWx3 uint8 RGB at the on-disk size."""
        return read_rgb(self.image_paths[i])

    def read_raw_label(self, i: int) -> np.ndarray:
        """The label as encoded on disk (HxW integer array, on-disk size)."""
        self._ensure_labels()
        path = self.label_path(i)
        if not path.is_file():
            raise FileNotFoundError(f"label file not found: {path}")
        return self._decode_label(path)

    def raw_to_train_id(self, raw: np.ndarray) -> np.ndarray:
        """Map raw label values to train IDs (uint8, 255 = ignore). Elementwise."""
        self._ensure_labels()
        return L.map_ids(raw, self.label_lut)

    def valid_raw_values(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``values`` belong to this dataset's raw label encoding."""
        self._ensure_labels()
        values = np.asarray(values)
        return ((values >= 0) & (values <= self.raw_label_max)) | np.isin(values, self.raw_label_extra)

    def read_label(self, i: int, hw: tuple[int, int] | None = None, align: bool = True) -> np.ndarray:
        """HxW uint8 train IDs at the image size ``hw`` (read from the image header if None), or
        at the label file's own size with ``align=False`` (for a transform that resizes it).
        A label of another size than its image is refused unless ``label_size_may_differ``."""
        label = np.ascontiguousarray(self.raw_to_train_id(self.read_raw_label(i)), dtype=np.uint8)
        if hw is None:
            hw = image_size(self.image_paths[i])
        if label.shape[:2] == tuple(hw):
            return label
        if not self.label_size_may_differ:
            (h, w), (lh, lw) = hw, label.shape[:2]
            raise LabelFormatError(
                f"label {self.label_path(i)} is {lw}x{lh} but its image {self.image_paths[i]} is {w}x{h}: "
                f"{type(self).__name__} labels have the size of their image (a label of another image or resolution?)")
        return resize_nearest(label, hw) if align else label

    def __getitem__(self, i: int) -> dict[str, Any]:
        image = self.read_image(i)
        if self.with_labels:
            align = not getattr(self.transform, "resizes_label", False)
            label = self.read_label(i, hw=image.shape[:2], align=align)
        else:
            label = np.full(image.shape[:2], L.IGNORE_INDEX, dtype=np.uint8)
        name = self.names[i]
        if self.transform is not None:
            out = self.transform(image=image, mask=label)
            return {"image": out["image"], "label": out["mask"], "name": name}
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).contiguous(),
            "label": torch.from_numpy(label).long(),
            "name": name,
        }


# ------------------------------------------------------------------------------------------
# Source datasets
class GTA5(SegmentationDataset):
    """GTA5 (Playing for Data).

    Labels are palette PNGs whose *indices* are Cityscapes ids. Colours cannot be decoded back
    (ids 0-4 are all black, pole/polegroup share grey), so we read indices, never RGB. 60 labels
    (20801-20860) differ in size from their image; ``read_label`` resizes them (NEAREST).
    """

    label_size_may_differ = True

    layout = """
<root>/
  images/00001.png ... 24966.png   RGB frames (1914x1052, some 1914x1046)
  labels/00001.png ... 24966.png   8-bit palette PNGs, palette index = Cityscapes label id
Other files (e.g. labels/*_labelTrainIds.png written by DAFormer) are ignored; split is unused.
"""
    image_dir_candidates = ("images",)
    name_regex = r"\d+\.png"

    def _label_path(self, name: str) -> Path:
        return self.root / "labels" / name


class Synthia(SegmentationDataset):
    """SYNTHIA-RAND-CITYSCAPES.

    ``GT/LABELS`` are 16-bit-per-channel RGB PNGs with the class in R. PIL and a plain
    ``cv2.imread`` silently truncate them to 8 bit, so we require ``IMREAD_UNCHANGED`` uint16
    and take channel 2 (R in cv2's BGR order).
    """

    layout = """
<root>/                 the RAND_CITYSCAPES folder (or its parent)
  RGB/0000000.png ... 0009399.png         RGB frames (1280x760)
  GT/LABELS/0000000.png ... 0009399.png   16-bit 3-channel PNGs: R = SYNTHIA class id 0..22, G = instance
Files such as GT/LABELS/*_labelTrainIds.png are ignored; split is unused.
"""
    nested_roots = ("RAND_CITYSCAPES",)
    image_dir_candidates = ("RGB",)
    name_regex = r"\d+\.png"
    label_lut = L.SYNTHIA_TO_TRAIN_ID_LUT
    raw_label_encoding = "SYNTHIA class ids 0..22 (R channel, 16-bit)"
    raw_label_max = 22

    def _label_path(self, name: str) -> Path:
        return self.root / "GT" / "LABELS" / name

    def _decode_label(self, path: Path) -> np.ndarray:
        lab = _decode_cv2(path, cv2.IMREAD_UNCHANGED)
        if lab.dtype != np.uint16 or lab.ndim != 3 or lab.shape[2] not in (3, 4):
            channels = 1 if lab.ndim == 2 else lab.shape[2]
            raise LabelFormatError(
                f"SYNTHIA labels must be 16-bit RGB PNGs; got {lab.dtype} with {channels} channel(s): {path}")
        return lab[:, :, 2]


class Synscapes(SegmentationDataset):
    """Synscapes (7D Labs). Class maps hold Cityscapes ids and exist only at 1440x720, so with
    ``image_dir="rgb-2k"`` labels are upsampled (NEAREST). No official split; numeric order."""

    layout = """
<root>/                 the Synscapes folder (or its parent)
  img/rgb/1.png ... 25000.png      RGB 1440x720   (image_dir="rgb", default)
  img/rgb-2k/1.png ... 25000.png   RGB 2048x1024  (image_dir="rgb-2k")
  img/class/1.png ... 25000.png    8-bit single-channel Cityscapes label ids, 1440x720
Names are not zero-padded and are sorted numerically; split is unused.
"""
    nested_roots = ("Synscapes",)
    name_regex = r"\d+\.png"
    label_size_may_differ = True  # rgb-2k images, 1440x720 labels

    def __init__(self, root: str | Path, split: str | None = None, image_dir: str = "rgb", **kwargs: Any) -> None:
        if image_dir not in ("rgb", "rgb-2k"):
            raise ValueError(f"Synscapes image_dir must be 'rgb' or 'rgb-2k', got {image_dir!r}")
        self.image_variant = image_dir
        super().__init__(root, split, **kwargs)

    def _image_dirs(self) -> tuple[str, ...]:
        return (f"img/{self.image_variant}",)

    def sort_key(self, name: str) -> Any:
        return int(name.split(".", 1)[0])

    def _label_path(self, name: str) -> Path:
        return self.root / "img" / "class" / name


class Cityscapes(SegmentationDataset):
    """Cityscapes gtFine. ``_gtFine_labelIds.png`` (ids) is mapped at load time because
    ``_labelTrainIds.png`` is not shipped."""

    layout = """
<root>/
  leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   8-bit Cityscapes label ids
Names are '<city>/<city>_<seq>_<frame>_leftImg8bit.png' (ADVENT list format).
"""
    default_split = "train"
    image_dir_candidates = ("leftImg8bit/{split}",)

    def _image_suffix(self) -> str:
        return "_leftImg8bit.png"

    def _image_globs(self) -> tuple[str, ...]:
        return (f"*/*{self._image_suffix()}",)

    def _name_regex(self) -> str:
        return r"[^/]+/[^/]+" + re.escape(self._image_suffix())

    def _label_path(self, name: str) -> Path:
        stem = name[: -len(self._image_suffix())]
        return self.root / "gtFine" / self.split / f"{stem}_gtFine_labelIds.png"


# ------------------------------------------------------------------------------------------
# Target-only evaluation sets
class FoggyCityscapes(Cityscapes):
    """Foggy Cityscapes: fogged ``leftImg8bit`` at one density ``beta``, Cityscapes ``gtFine`` labels."""

    layout = """
<root>/
  leftImg8bit_foggy/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit_foggy_beta_{0.005,0.01,0.02}.png
  gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png   (from Cityscapes)
"""
    default_split = "val"
    image_dir_candidates = ("leftImg8bit_foggy/{split}",)

    def __init__(self, root: str | Path, split: str | None = None, beta: float | str = 0.005, **kwargs: Any) -> None:
        self.beta = str(beta)
        super().__init__(root, split, **kwargs)

    def _image_suffix(self) -> str:
        return f"_leftImg8bit_foggy_beta_{self.beta}.png"


class BDD100K(SegmentationDataset):
    """BDD100K 10K semantic segmentation. Masks are already train IDs (do not remap ids)."""

    layout = """
<root>/                 (or its parent holding bdd100k/)
  images/10k/{train,val,test}/<hash>.jpg
  labels/sem_seg/masks/{train,val}/<hash>.png          8-bit train IDs 0..18, 255 = ignore
or the older archive layout:
  seg/images/{train,val,test}/<hash>.jpg
  seg/labels/{train,val}/<hash>_train_id.png
"""
    default_split = "val"
    nested_roots = ("bdd100k",)
    image_dir_candidates = ("images/10k/{split}", "seg/images/{split}")
    image_glob = "*.jpg"
    name_regex = r"[^/]+\.jpg"
    label_lut = L.TRAIN_ID_LUT
    raw_label_encoding = "train IDs 0..18, 255 = ignore"
    raw_label_max = 18
    raw_label_extra = (L.IGNORE_INDEX,)

    def _label_path(self, name: str) -> Path:
        stem = name.rsplit(".", 1)[0]
        if self.image_root.parent.parent.name == "seg":   # seg/images/<split>
            return self.root / "seg" / "labels" / self.split / f"{stem}_train_id.png"
        return self.root / "labels" / "sem_seg" / "masks" / self.split / f"{stem}.png"


class Mapillary(SegmentationDataset):
    """Mapillary Vistas v1.2 (falls back to v1.1), mapped to the 19 classes by class *name*.

    The label value is an index into the config's ``labels`` list; the names -> train-ID
    mapping is :data:`intrada_pl.data.labels.MAPILLARY_NAME_TO_TRAIN_ID` (its index table for
    the stock v1.2 config is in that module). Images are large: resize for evaluation.
    """

    layout = """
<root>/
  config_v1.2.json                                   class names (labels[i]["name"])
  {training,validation,testing}/images/<key>.jpg
  {training,validation}/v1.2/labels/<key>.png        8-bit palette PNGs, index = class 0..65
v1.1 archives: config.json and {training,validation}/labels/<key>.png
"""
    default_split = "validation"
    image_dir_candidates = ("{split}/images",)
    image_glob = "*.jpg"
    name_regex = r"[^/]+\.jpg"
    raw_label_encoding = "Mapillary Vistas class indices 0..65"
    raw_label_max = 65

    def _prepare_labels(self) -> None:
        split_dir = self.root / self.split
        if not (split_dir / "v1.2" / "labels").is_dir() and (split_dir / "labels").is_dir():
            self.version, self.label_dir, config = "v1.1", split_dir / "labels", self.root / "config.json"
        else:
            self.version, self.label_dir = "v1.2", split_dir / "v1.2" / "labels"
            config = self.root / "config_v1.2.json"
        if config.is_file():
            names = [c["name"] for c in json.loads(config.read_text())["labels"]]
            self.label_lut = L.mapillary_lut(names)
            self.raw_label_max = len(names) - 1
        else:
            warnings.warn(f"Mapillary config {config} not found; assuming the stock v1.2 class order",
                          stacklevel=3)
            self.label_lut = L.MAPILLARY_V12_TO_TRAIN_ID_LUT
            self.raw_label_max = len(L.MAPILLARY_V12_NAMES) - 1
        self.raw_label_encoding = f"Mapillary Vistas {self.version} class indices 0..{self.raw_label_max}"

    def _label_path(self, name: str) -> Path:
        return self.label_dir / (name.rsplit(".", 1)[0] + ".png")


class WildDash2(SegmentationDataset):
    """WildDash2 (the beta or the final ``wd_public_v2p0`` release), COCO-panoptic ground truth.

    Pixel segment id = R + 256*G + 65536*B; ``panoptic.json`` maps it to a category, and the
    category's *name* (``categories[].name``) to a train ID by the official label policy
    (:data:`intrada_pl.data.labels.WILDDASH2_TO_CITYSCAPES`), so both releases (39 and 81
    categories) decode correctly. Names the policy does not know are scored as ignore, with one
    warning naming them. The raw label is the per-pixel category id: 255 for void (segment id 0),
    -1 for segment ids absent from the json.
    """

    layout = """
<root>/
  images/<name>.jpg
  panoptic/<name>.png      RGB PNG, segment id = R + 256*G + 65536*B (0 = void)
  panoptic.json            COCO panoptic: categories[].{id, name}, annotations[].file_name,
                           annotations[].segments_info[].{id, category_id}
"""
    image_glob = "*"
    name_regex = r"[^/]+\.(?:jpg|jpeg|png)"
    raw_label_extra = (L.IGNORE_INDEX,)

    def _prepare_labels(self) -> None:
        path = self.root / "panoptic.json"
        if not path.is_file():
            raise self._layout_error(f"panoptic annotation file {path} not found")
        data = json.loads(path.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
        if not categories:
            raise LabelFormatError(f"{path} lists no categories (categories[].id, .name)")
        unknown = L.wilddash2_unknown(categories.values())
        if unknown:
            warnings.warn(f"{path}: categories not in the WildDash2 label policy, scored as ignore: "
                          + ", ".join(repr(n) for n in unknown), stacklevel=2)
        self.label_lut = L.wilddash2_lut(categories)
        self.raw_label_max = max(categories)
        self.raw_label_encoding = (f"WildDash2 categories 0..{self.raw_label_max} of panoptic.json, "
                                   "255 = void (-1 = segment not in panoptic.json)")
        self._segments: dict[str, dict[int, int]] = {
            Path(a["file_name"]).stem: {int(s["id"]): int(s["category_id"]) for s in a["segments_info"]}
            for a in data["annotations"]
        }

    def _label_path(self, name: str) -> Path:
        return self.root / "panoptic" / (name.rsplit(".", 1)[0] + ".png")

    def _label_exists(self, i: int) -> bool:
        path = self.label_path(i)
        return path.stem in self._segments and path.is_file()

    def _decode_label(self, path: Path) -> np.ndarray:
        bgr = _decode_cv2(path, cv2.IMREAD_COLOR)
        if path.stem not in self._segments:
            raise LabelFormatError(f"no annotation for {path.name} in {self.root / 'panoptic.json'}: {path}")
        seg = {0: L.IGNORE_INDEX, **self._segments[path.stem]}
        bgr = bgr.astype(np.int32)
        pid = bgr[:, :, 2] + 256 * bgr[:, :, 1] + 65536 * bgr[:, :, 0]
        # few segments per image: binary search in the sorted ids beats np.unique on every pixel
        keys = np.array(sorted(seg), dtype=np.int32)
        cats = np.array([seg[k] for k in keys.tolist()], dtype=np.int32)
        pos = np.minimum(np.searchsorted(keys, pid), len(keys) - 1)
        return np.where(keys[pos] == pid, cats[pos], -1).astype(np.int32)


class ACDC(SegmentationDataset):
    """ACDC (adverse conditions). Uses ``_gt_labelTrainIds.png``; ``*_ref`` folders and
    ``_rgb_ref_anon`` images are not part of any split. Names are relative to ``rgb_anon``."""

    layout = """
<root>/
  rgb_anon/{fog,night,rain,snow}/{train,val,test}/<seq>/<seq>_frame_NNNNNN_rgb_anon.png
  gt/{fog,night,rain,snow}/{train,val}/<seq>/<seq>_frame_NNNNNN_gt_labelTrainIds.png   train IDs, 255 = ignore
(*_ref folders are ignored.) Names are '<condition>/<split>/<seq>/<file>'.
"""
    CONDITIONS: ClassVar[tuple[str, ...]] = ("fog", "night", "rain", "snow")
    default_split = "val"
    image_dir_candidates = ("rgb_anon",)
    label_lut = L.TRAIN_ID_LUT
    raw_label_encoding = "train IDs 0..18, 255 = ignore"
    raw_label_max = 18
    raw_label_extra = (L.IGNORE_INDEX,)

    def __init__(self, root: str | Path, split: str | None = None, condition: str = "all", **kwargs: Any) -> None:
        if condition != "all" and condition not in self.CONDITIONS:
            raise ValueError(f"ACDC condition must be one of {self.CONDITIONS} or 'all', got {condition!r}")
        self.condition = condition
        super().__init__(root, split, **kwargs)

    def _conditions(self) -> tuple[str, ...]:
        return self.CONDITIONS if self.condition == "all" else (self.condition,)

    def _image_globs(self) -> tuple[str, ...]:
        return tuple(f"{c}/{self.split}/*/*_rgb_anon.png" for c in self._conditions())

    def _name_regex(self) -> str:
        conds = "|".join(self._conditions())
        return rf"(?:{conds})/{re.escape(self.split)}/[^/]+/[^/]+_frame_\d+_rgb_anon\.png"

    def _label_path(self, name: str) -> Path:
        return self.root / "gt" / (name[: -len("_rgb_anon.png")] + "_gt_labelTrainIds.png")


# ------------------------------------------------------------------------------------------
DATASETS: dict[str, type[SegmentationDataset]] = {
    "gta5": GTA5,
    "synthia": Synthia,
    "synscapes": Synscapes,
    "cityscapes": Cityscapes,
    "foggy_cityscapes": FoggyCityscapes,
    "bdd100k": BDD100K,
    "mapillary": Mapillary,
    "wilddash2": WildDash2,
    "acdc": ACDC,
}


def get_dataset_class(name: str) -> type[SegmentationDataset]:
    """Registry key (case-insensitive, '-' == '_') or dotted path of a SegmentationDataset subclass."""
    key = name.strip().lower().replace("-", "_")
    if key in DATASETS:
        return DATASETS[key]
    known = ", ".join(sorted(DATASETS))
    if "." not in name:
        raise ValueError(f"unknown dataset {name!r}; known keys: {known} (or a dotted class path)")
    module_name, _, attr = name.strip().rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import dataset class {name!r} ({e}); known keys: {known}") from e
    if not (isinstance(cls, type) and issubclass(cls, SegmentationDataset)):
        raise TypeError(f"{name!r} is not a SegmentationDataset subclass; known keys: {known}")
    return cls


def build_dataset(name: str, root: str | Path, **kwargs: Any) -> SegmentationDataset:
    """Instantiate a dataset by registry key or dotted class path."""
    return get_dataset_class(name)(root, **kwargs)
