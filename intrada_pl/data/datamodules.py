"""LightningDataModules: which datasets feed which stage, at which size.

Datasets are named by registry key (``gta5``, ``synthia``, ``synscapes``, ``cityscapes``, ...) or
by a dotted class path to any ``SegmentationDataset`` subclass, so a new dataset plugs in from
YAML without touching this file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Subset
from torchdata.stateful_dataloader import StatefulDataLoader

from intrada_pl.data.datasets import SegmentationDataset, build_dataset, read_index_png, resize_nearest
from intrada_pl.data.ranking_manifest import EASY, HARD, PSEUDO_LABELS, pseudo_label_path, ranking_file, read_ranking
from intrada_pl.data.transforms import Resampling, SegmentationTransform, Size
from intrada_pl.errors import ConfigValueError


#: What a saved StatefulDataLoader state says about its sampler, in either form (no workers: at
#: the top; with workers: in the main process's snapshot).
SAMPLER_KEYS = ("_index_sampler_state", "_sampler_iter_state", "_sampler_iter_yielded", "_IterableDataset_len_called", "_shared_seed")



def check_loader_settings(owner: str, settings: Mapping[str, Any]) -> None:
    """Image sizes, batch sizes and worker counts a data module's loaders can use: refused here in
    one line naming the option, rather than deep inside PyTorch or OpenCV (``height and width
    must be > 0``, with no option named)."""
    for key, value in settings.items():
        if (key == "size" or key.endswith("_size")) and not key.endswith("batch_size") and value is not None:
            if len(value) != 2 or min(value) < 1:
                raise ConfigValueError(f"{owner} {key} must be a positive [width, height], got {list(value)}")
        elif key.endswith("batch_size") and value is not None and value < 1:
            raise ConfigValueError(f"{owner} {key} must be at least 1, got {value}")
        elif key == "num_workers" and value < 0:
            raise ConfigValueError(f"{owner} num_workers must be 0 (load in the main process) or more, got {value}")

class ResumableDataLoader(StatefulDataLoader):
    """torchdata's StatefulDataLoader, resuming a state saved with another ``num_workers`` too.

    torchdata keeps the state of a loader without workers and of one with workers in two forms, and
    asserts that the worker count did not change (a changed ``--data.num_workers`` on resume ended
    in a 118-line traceback). A loader setting should be free to change between a run and its
    resume (another node, another CPU count), so such a state is cut down to what it means for a
    map-style dataset, the sampler's position and shuffling state, in the form this loader reads;
    the workers' own states (a stateful dataset's, their random seeds) are dropped."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict and saved_workers(state_dict) != self.num_workers:
            state_dict = self._position_only(state_dict)
        super().load_state_dict(state_dict)

    def _position_only(self, state: dict[str, Any]) -> dict[str, Any]:
        snapshot = state.get("_snapshot")
        main = snapshot["_main_snapshot"] if snapshot else state
        sampler = {key: main[key] for key in SAMPLER_KEYS}
        yielded = snapshot["_snapshot_step"] if snapshot else state["_num_yielded"]
        if not self.num_workers:
            # A snapshot is taken at every batch (torchdata's default, ours): none since it.
            return {**sampler, "_num_yielded": yielded, "fetcher_state": None, "dataset_state": None,
                    "_iterator_finished": state["_iterator_finished"]}
        base_seed = main.get("_base_seed")
        if base_seed is None:  # drawn as torch draws it for a fresh iterator
            base_seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
        main_snapshot = {**sampler, "_num_workers": self.num_workers, "_base_seed": base_seed}
        return {
            "_snapshot": {"_snapshot_step": yielded, "_last_yielded_worker_id": self.num_workers - 1,  # the next batch: worker 0's
                          "_main_snapshot": main_snapshot, "_worker_snapshots": {}},
            "_steps_since_snapshot": state.get("_steps_since_snapshot", 0),
            "_iterator_finished": state["_iterator_finished"],
        }


def saved_workers(state: dict[str, Any]) -> int:
    """How many workers the loader that saved ``state`` ran."""
    return state["_snapshot"]["_main_snapshot"]["_num_workers"] if "_snapshot" in state else 0


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, train: bool) -> DataLoader:
    """Training loaders shuffle, drop the ragged last batch and are *stateful*: their position and
    shuffling state go into checkpoints, so a resumed run sees exactly the batches an
    uninterrupted one would (also with another ``num_workers``: :class:`ResumableDataLoader`).
    Evaluation loaders keep the dataset's order."""
    loader_class = ResumableDataLoader if train else DataLoader
    return loader_class(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )


class AdaptationDataModule(L.LightningDataModule):
    """What every training stage's data shares: a labelled ``source_set``, an optional unlabelled
    ``target_set`` and a labelled ``val_set`` (built by subclasses in ``setup``), the optional
    augmentations, and the loaders.

    Training batches are ``{"source": batch, "target": batch}`` (Lightning's CombinedLoader in
    ``max_size_cycle`` mode: an epoch is one pass over the source, the target cycles), each batch
    ``{"image": uint8 Bx3xHxW, "label": long BxHxW (255 = ignore), "name": list[str]}``.
    Validation images are resized to ``val_size`` with labels kept at full resolution.
    ``resize``: ``"pil"`` (default) resizes exactly as the reference (PIL bicubic images, PIL
    nearest labels); ``"opencv"`` resizes images with OpenCV's bicubic, faster but not
    antialiased (see :mod:`intrada_pl.data.transforms`).
    """

    def __init__(
        self,
        val_split: str = "val",
        val_list: str | None = None,
        val_size: Size | None = (1024, 512),
        scale_range: tuple[float, float] | None = None,
        crop_size: Size | None = None,
        hflip: bool = False,
        batch_size: int = 1,
        val_batch_size: int = 1,
        num_workers: int = 4,
        resize: Resampling = "pil",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_loader_settings(type(self).__name__, self.hparams)
        self.target_set: Dataset | None = None

    def train_transform(self, size: Size | None) -> SegmentationTransform:
        hp = self.hparams
        return SegmentationTransform(
            size, scale_range=hp.scale_range, crop_size=hp.crop_size, hflip=hp.hflip, resize=hp.resize
        )

    def build_val_set(self, dataset: str, root: str, options: dict[str, Any] | None) -> None:
        hp = self.hparams
        self.val_set = build_dataset(dataset, root, split=hp.val_split, list_file=hp.val_list, **(options or {}))
        self.val_set.transform = SegmentationTransform(hp.val_size, resize_label=False, resize=hp.resize)

    def train_dataloader(self) -> dict[str, DataLoader]:
        hp = self.hparams
        loaders = {"source": make_loader(self.source_set, hp.batch_size, hp.num_workers, train=True)}
        if self.target_set is not None:
            loaders["target"] = make_loader(self.target_set, hp.batch_size, hp.num_workers, train=True)
        return loaders

    def val_dataloader(self) -> DataLoader:
        return make_loader(self.val_set, self.hparams.val_batch_size, self.hparams.num_workers, train=False)


class SourceTargetDataModule(AdaptationDataModule):
    """Labelled source + unlabelled target for training, the target's labelled split for validation.

    Defaults follow ADVENT: GTA5 resized to 1280x720, Cityscapes to 1024x512, no crop, no flip,
    validation images at 1024x512 with labels kept at full resolution. ``use_target: false``
    (source-only training) loads no target training images. Further options (validation split,
    augmentation, batch sizes, workers): :class:`AdaptationDataModule`.
    """

    def __init__(
        self,
        source: str = "gta5",
        source_root: str = "data/GTA5",
        source_list: str | None = None,
        source_size: Size | None = (1280, 720),
        source_options: dict[str, Any] | None = None,
        target: str = "cityscapes",
        target_root: str = "data/Cityscapes",
        target_list: str | None = None,
        target_split: str = "train",
        target_size: Size | None = (1024, 512),
        target_options: dict[str, Any] | None = None,
        use_target: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit":
            self.source_set = build_dataset(hp.source, hp.source_root, list_file=hp.source_list, **(hp.source_options or {}))
            self.source_set.transform = self.train_transform(hp.source_size)
            if hp.use_target:
                self.target_set = build_dataset(
                    hp.target, hp.target_root, split=hp.target_split, list_file=hp.target_list, with_labels=False,
                    **(hp.target_options or {}),
                )
                self.target_set.transform = self.train_transform(hp.target_size)
        if stage in ("fit", "validate"):
            self.build_val_set(hp.target, hp.target_root, hp.target_options)


class TargetDataModule(L.LightningDataModule):
    """One dataset split for evaluation (``test``) or inference (``predict``, e.g. the entropy ranking).

    Images are resized to ``size`` (``resize``: ``"pil"``, the reference's pixels, or the faster
    ``"opencv"``); labels stay at full resolution so scores are taken at the ground truth's
    resolution, as in the reference evaluation. In ``predict`` they are resized (nearest, as
    PIL) to ``size`` with the images: the entropy ranking compares them with its pseudo-labels
    at the ranking resolution (``quality.json``), and a 1024x512 map is cheap.

    ``with_labels``: ``None`` (default) reads labels to evaluate (``test``, ``validate``) and not
    to predict (the reference's ranking reads none); ``True`` reads them in every stage (a
    missing label file is an error), ``False`` never; ``"auto"`` reads them when every image
    has a label file and otherwise goes without (so a ranking config works on Cityscapes train,
    which has gtFine, and on an unlabelled split alike).
    """

    def __init__(
        self,
        dataset: str = "cityscapes",
        root: str = "data/Cityscapes",
        split: str = "val",
        list_file: str | None = None,
        size: Size | None = (1024, 512),
        with_labels: bool | Literal["auto"] | None = None,
        options: dict[str, Any] | None = None,
        batch_size: int = 1,
        num_workers: int = 4,
        resize: Resampling = "pil",
    ) -> None:
        super().__init__()
        if with_labels not in (True, False, "auto", None):
            raise ConfigValueError(f"TargetDataModule with_labels must be true, false, auto or null, got {with_labels!r}")
        self.save_hyperparameters()
        check_loader_settings(type(self).__name__, self.hparams)

    def setup(self, stage: str) -> None:
        hp = self.hparams
        with_labels = stage != "predict" if hp.with_labels is None else hp.with_labels
        self.dataset = self._build(with_labels)
        self.dataset.transform = SegmentationTransform(hp.size, resize_label=stage == "predict", resize=hp.resize)

    def _build(self, with_labels: bool | str) -> SegmentationDataset:
        hp = self.hparams
        options = {"split": hp.split, "list_file": hp.list_file, **(hp.options or {})}
        if with_labels != "auto":
            return build_dataset(hp.dataset, hp.root, with_labels=with_labels, **options)
        dataset = build_dataset(hp.dataset, hp.root, with_labels=True, **{**options, "missing_labels": "keep"})
        if not dataset.missing_label_names:
            return dataset
        rank_zero_info(
            f"with_labels auto: {len(dataset.missing_label_names)} of {len(dataset)} images under {hp.root} have no label file "
            f"(first: {dataset.missing_label_names[0]}); using the images without labels"
        )
        return build_dataset(hp.dataset, hp.root, with_labels=False, **options)

    def _loader(self) -> DataLoader:
        return make_loader(self.dataset, self.hparams.batch_size, self.hparams.num_workers, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()

    def val_dataloader(self) -> DataLoader:
        return self._loader()


class PseudoLabelledDataset(Dataset):
    """A dataset's images paired with pseudo-label PNGs (train IDs) in ``label_dir``; items as
    every dataset's, ``{"image", "label", "name"}``. Refuses images without a pseudo-label."""

    def __init__(self, images: SegmentationDataset, label_dir: str | Path, transform: SegmentationTransform) -> None:
        self.images, self.label_dir, self.transform = images, Path(label_dir), transform
        missing = [name for name in images.names if not pseudo_label_path(label_dir, name).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(images)} images have no pseudo-label under {label_dir}; first: "
                f"{pseudo_label_path(label_dir, missing[0])}. Re-run the entropy ranking (make rank CKPT=...)."
            )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        name = self.images.names[i]
        image = self.images.read_image(i)
        label = read_index_png(pseudo_label_path(self.label_dir, name))
        # written at the ranking size (1024x512): a resizing transform takes it as it is (at that
        # size a no-op, as in the reference); otherwise back to the image grid, so crops/flips stay aligned
        if label.shape != image.shape[:2] and not self.transform.resizes_label:
            label = resize_nearest(label, image.shape[:2])
        out = self.transform(image=image, mask=label)
        return {"image": out["image"], "label": out["mask"], "name": name}


@dataclass(frozen=True)
class TargetImages:
    """Images of a target without labels, in a fixed order (a network's statistics are estimated
    on them): the ``loader`` and what it holds, the data ``settings`` (a TargetDataModule's) and
    the image ``names``, which identify the result, e.g. for a cache."""

    loader: DataLoader
    settings: dict[str, Any]
    names: list[str]


class EvaluationDataModule(TargetDataModule):
    """The target split(s) of ``intrada test``: the TargetDataModule settings, or, with ``targets``,
    several named targets, each a dict overriding those settings (one test dataloader each)::

        data:
          size: [1024, 512]
          targets:
            cityscapes: {dataset: cityscapes, root: data/Cityscapes}
            acdc_fog: {dataset: acdc, root: data/ACDC, options: {condition: fog}}
    """

    def __init__(self, targets: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.base_settings = kwargs
        self.targets = targets or {self.hparams.dataset: {}}

    def setup(self, stage: str) -> None:
        self.parts = {name: TargetDataModule(**self._settings(name)) for name in self.targets}
        for part in self.parts.values():
            part.setup(stage)

    def _settings(self, target: str, **overrides: Any) -> dict[str, Any]:
        return {**self.base_settings, **self.targets[target], **overrides}

    @property
    def target_names(self) -> list[str]:
        return list(self.targets)

    def test_dataloader(self) -> list:
        return [part.test_dataloader() for part in self.parts.values()]

    def adabn_images(self, target: str, split: str, max_images: int | None, batch_size: int) -> TargetImages:
        """What AdaBN re-estimates ``target``'s BatchNorm statistics on: its ``split`` images
        (labels unread) prepared as for the test, the first ``max_images`` (None: all), in
        dataset order, in batches of ``batch_size``."""
        data = TargetDataModule(**self._settings(target, split=split, with_labels=False, batch_size=batch_size))
        data.setup("test")
        names = data.dataset.names[:max_images]
        loader = make_loader(Subset(data.dataset, range(len(names))), batch_size, data.hparams.num_workers, train=False)
        return TargetImages(loader, dict(data.hparams), names)


class SplitDataModule(AdaptationDataModule):
    """The intra-domain stage's data (IntraDA, REFERENCE A4), read from the entropy ranking's output.

    ``ranking_dir`` holds ``easy.txt``, ``hard.txt`` and ``pseudo_labels/`` (read by
    :func:`~intrada_pl.data.ranking_manifest.read_ranking`); the images come from the dataset they
    were ranked on (``dataset``, ``root``, ``split``). Training batches are ``{"source": easy images
    with their pseudo-labels, "target": hard images}`` in :class:`SourceTargetDataModule`'s item
    format, both at 1024x512 by default as in the reference; validation is the dataset's
    ``val_split``. A manifest naming missing images or pseudo-labels is refused. An empty
    ``hard.txt`` (``lambda_`` 1.0) leaves the "source" side alone: plain self-training on pseudo-labels.
    """

    #: where a config names the ranking folder (for the error messages)
    option = "data.init_args.ranking_dir"

    def __init__(
        self,
        ranking_dir: str = "runs/rank_gta5/ranking",
        dataset: str = "cityscapes",
        root: str = "data/Cityscapes",
        split: str = "train",
        size: Size | None = (1024, 512),
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)

    def _images(self, list_name: str) -> SegmentationDataset:
        """The ranked dataset's images that the ranking's list ``list_name`` names."""
        hp = self.hparams
        list_file = ranking_file(hp.ranking_dir, list_name, self.option)
        return build_dataset(hp.dataset, hp.root, split=hp.split, list_file=list_file, with_labels=False, **(hp.options or {}))

    def setup(self, stage: str) -> None:
        hp = self.hparams
        if stage == "fit":
            manifest = read_ranking(hp.ranking_dir, self.option)
            if not manifest.easy:
                raise ConfigValueError(f"{Path(hp.ranking_dir) / EASY} lists no image (int(N * lambda_) was 0): "
                                       "re-run the ranking with a larger lambda_")
            transform = self.train_transform(hp.size)
            self.source_set = PseudoLabelledDataset(self._images(EASY), Path(hp.ranking_dir) / PSEUDO_LABELS, transform)
            if manifest.hard:
                self.target_set = self._images(HARD)
                self.target_set.transform = transform
        if stage in ("fit", "validate"):
            self.build_val_set(hp.dataset, hp.root, hp.options)
